//! Which events are logged: `OUTRIDER_LOG`, parsed and matched.
//!
//! The syntax is the `tracing-subscriber` `Targets` one the stub used
//! before it had its own logger, so existing unit files keep working
//! (except that a bare word must be a level, so a typo is an error rather
//! than a target): a comma-separated list of `level` (the default) and `target=level`
//! directives, e.g. `debug` or `info,outrider_agent_stub=trace,agent=warn`.
//! A directive applies to its target and every target below it
//! (`a` covers `a::b`); the longest matching target wins; without a default
//! directive, events of unlisted targets are not logged.

use std::fmt;

use tracing::level_filters::LevelFilter;

/// A parsed `OUTRIDER_LOG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    default: LevelFilter,
    /// `(target, level)`, longest target first, so the first match wins.
    targets: Vec<(String, LevelFilter)>,
}

/// An `OUTRIDER_LOG` directive that is not `level` or `target=level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    directive: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OUTRIDER_LOG: '{}' is not a level (off, error, warn, info, debug, trace) \
             or target=level",
            self.directive
        )
    }
}

impl std::error::Error for FilterError {}

impl Default for Filter {
    /// `info` for everything.
    fn default() -> Filter {
        Filter {
            default: LevelFilter::INFO,
            targets: Vec::new(),
        }
    }
}

impl Filter {
    /// Parses a directive list.
    ///
    /// Fails on the first directive whose level is not one of `off`,
    /// `error`, `warn`, `info`, `debug`, `trace` (any case) or whose target
    /// is empty.
    pub fn parse(spec: &str) -> Result<Filter, FilterError> {
        let mut filter = Filter {
            default: LevelFilter::OFF,
            targets: Vec::new(),
        };
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let error = || FilterError {
                directive: directive.to_owned(),
            };
            match directive.split_once('=') {
                Some((target, level)) => {
                    let target = target.trim();
                    if target.is_empty() {
                        return Err(error());
                    }
                    let level = level.trim().parse().map_err(|_| error())?;
                    filter.targets.retain(|(t, _)| t != target);
                    filter.targets.push((target.to_owned(), level));
                }
                None => filter.default = directive.parse().map_err(|_| error())?,
            }
        }
        filter
            .targets
            .sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Ok(filter)
    }

    /// The level that applies to `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| covers(t, target))
            .map_or(self.default, |(_, level)| *level)
    }

    /// The most verbose level any target may log at.
    pub fn max_level(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, level)| *level)
            .fold(self.default, LevelFilter::max)
    }
}

/// Whether a directive for `directive` applies to `target`: the same
/// target or one below it in the `::` path.
fn covers(directive: &str, target: &str) -> bool {
    target
        .strip_prefix(directive)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_table() {
        use LevelFilter as L;
        let cases: &[(&str, &str, LevelFilter)] = &[
            ("", "outrider_agent_stub", L::OFF),
            ("debug", "anything", L::DEBUG),
            ("WARN", "anything", L::WARN),
            ("info,agent=trace", "agent", L::TRACE),
            ("info,agent=trace", "agent::x", L::TRACE),
            ("info,agent=trace", "agents", L::INFO),
            ("info,agent=trace", "rustls", L::INFO),
            ("agent=debug", "rustls", L::OFF),
            ("a=error,a::b=trace", "a::b::c", L::TRACE),
            ("a::b=trace,a=error", "a::c", L::ERROR),
            ("a=debug,a=warn", "a", L::WARN),
            (" info , agent = off ", "agent", L::OFF),
            ("off,agent=info", "x", L::OFF),
        ];
        for (spec, target, want) in cases {
            let filter = Filter::parse(spec).unwrap();
            assert_eq!(filter.level_for(target), *want, "{spec:?} for {target:?}");
        }
    }

    #[test]
    fn the_max_level_is_the_most_verbose_directive() {
        assert_eq!(Filter::default().max_level(), LevelFilter::INFO);
        let filter = Filter::parse("warn,agent=debug").unwrap();
        assert_eq!(filter.max_level(), LevelFilter::DEBUG);
        assert_eq!(Filter::parse("").unwrap().max_level(), LevelFilter::OFF);
    }

    #[test]
    fn bad_directives_are_named() {
        for (spec, bad) in [
            ("verbose", "verbose"),
            ("info,agent=loud", "agent=loud"),
            ("=debug", "=debug"),
            ("info,agent", "agent"),
        ] {
            let err = Filter::parse(spec).unwrap_err();
            assert_eq!(err.directive, bad, "{spec}");
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
    }
}
