//! What a flush produces: [`Sample`]s, plain data shaped to map onto the
//! agent's perfdata samples (`outrider_protocol::PerfData` in
//! `protocol/src/result.rs`) without loss:
//!
//! | perfdata field | from the sample |
//! |---|---|
//! | `label` | [`Sample::label`]: the name, then the tags as `;key=value` (Graphite 1.1 form) |
//! | `value` | [`Sample::value`], always finite |
//! | `uom` | [`Sample::unit`]: `ms` for `ms` timer statistics except the count, else empty |
//! | result time (`started_at_ms`) | [`Sample::timestamp_ms`] |
//!
//! [`Sample::kind`] says what the value is (a per-interval count, a level, a
//! timer statistic, a Graphite point) for callers that keep it apart, e.g.
//! as the pseudo-check a sample is filed under.

use std::fmt;

use crate::error::ConfigError;

/// One value of one series at one time, ready for the spool.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series name: the StatsD name (with the statistic's suffix for
    /// timers, e.g. `api.latency.p90`) or the Graphite path without its tags.
    pub name: String,
    /// Tags, sorted by key then value, without duplicates.
    pub tags: Vec<Tag>,
    /// Finite: non-finite values are refused by the parsers and arithmetic
    /// that overflows is dropped at flush.
    pub value: f64,
    pub kind: SampleKind,
    /// Unit of measure in perfdata terms: `ms` for the statistics of a `ms`
    /// timer that are durations, empty otherwise. Counters are *not* `c`:
    /// perfdata's `c` means an ever-growing counter, while a StatsD counter
    /// sample is the count within one flush interval.
    pub unit: &'static str,
    /// Unix milliseconds: the flush time for StatsD samples, the line's own
    /// time for Graphite samples (or the receive time for `-1`/absent).
    pub timestamp_ms: i64,
}

impl Sample {
    /// The perfdata label: the name, then `;key=value` per tag (`;key` for a
    /// DogStatsD tag without a value), in tag order, so a Graphite 1.1 path
    /// comes back as carbon normalises it (tags sorted by name) and two
    /// samples have the same label exactly when they are the same series.
    pub fn label(&self) -> String {
        let extra: usize = self
            .tags
            .iter()
            .map(|t| t.key.len() + t.value.len() + 2)
            .sum();
        let mut label = String::with_capacity(self.name.len() + extra);
        label.push_str(&self.name);
        for tag in &self.tags {
            label.push(';');
            label.push_str(&tag.key);
            if !tag.value.is_empty() {
                label.push('=');
                label.push_str(&tag.value);
            }
        }
        label
    }
}

/// One tag of a series. A DogStatsD tag without `:` (`#canary`) has an empty
/// value; Graphite tags always have one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// What a sample's value means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SampleKind {
    /// StatsD `c`: the sum of the interval's increments, each divided by its
    /// sample rate.
    Counter,
    /// StatsD `g`: the level at flush time.
    Gauge,
    /// StatsD `ms`, `h`, `d`: one statistic of the interval's values.
    Timer(TimerStat),
    /// StatsD `s`: the number of distinct members seen in the interval.
    Set,
    /// A Graphite plaintext point, passed through as sent.
    Graphite,
}

/// The statistics a timer (or histogram, or distribution) flushes, each
/// as its own series `<name>.<suffix>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerStat {
    /// Arithmetic mean of the values received (sample rates do not weigh it).
    Mean,
    /// Largest value.
    Upper,
    /// Smallest value.
    Lower,
    /// Sum of the values received.
    Sum,
    /// Number of values, each counted `1 / sample rate` times (as StatsD).
    Count,
    /// Nearest-rank percentile over the timer's reservoir.
    Percentile(Percentile),
}

impl TimerStat {
    /// The suffix appended to the timer's name: `mean`, `upper`, `lower`,
    /// `sum`, `count`, or `p90`, `p99_9`, `p99_95` for percentiles (a `.`
    /// would add a Graphite path level, so decimals use `_`).
    pub fn suffix(self) -> String {
        match self {
            TimerStat::Mean => "mean".into(),
            TimerStat::Upper => "upper".into(),
            TimerStat::Lower => "lower".into(),
            TimerStat::Sum => "sum".into(),
            TimerStat::Count => "count".into(),
            TimerStat::Percentile(p) => p.to_string(),
        }
    }
}

/// A percentile in (0, 100] with at most two decimals (Telegraf's defaults
/// include 99.95), kept in hundredths so it is exact, hashable and renders
/// the same every time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percentile(u16);

impl Percentile {
    /// `value` as a percentile; fails outside (0, 100] or with more than two
    /// decimals (which would otherwise be silently rounded).
    pub fn new(value: f64) -> Result<Percentile, ConfigError> {
        let hundredths = (value * 100.0).round();
        let exact = (value * 100.0 - hundredths).abs() < 1e-6;
        if !(value.is_finite() && exact && (1.0..=10_000.0).contains(&hundredths)) {
            return Err(ConfigError::InvalidPercentile { value });
        }
        // In 1..=10_000 (checked above), so it fits a u16 exactly.
        Ok(Percentile(hundredths as u16))
    }

    /// The percentile as a number, e.g. `99.9`.
    pub fn value(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// The 1-based nearest rank of this percentile among `n` sorted values:
    /// the smallest rank whose share of the values reaches the percentile,
    /// `ceil(p / 100 * n)`, at least 1. Integer arithmetic, so p50 of 10
    /// values is exactly rank 5.
    pub fn rank(self, n: usize) -> usize {
        let n = n as u128;
        let rank = (u128::from(self.0) * n).div_ceil(10_000);
        // rank <= n because self.0 <= 10_000, so it fits a usize.
        (rank as usize).max(1)
    }
}

impl fmt::Display for Percentile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "p{whole}"),
            f10 if f10 % 10 == 0 => write!(f, "p{whole}_{}", f10 / 10),
            _ => write!(f, "p{whole}_{frac:02}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_parse_render_and_rank() {
        // (input, suffix, rank among 10 values, rank among 1000 values)
        let cases = [
            (50.0, "p50", 5, 500),
            (90.0, "p90", 9, 900),
            (99.0, "p99", 10, 990),
            (99.9, "p99_9", 10, 999),
            (99.95, "p99_95", 10, 1000),
            (100.0, "p100", 10, 1000),
            (0.01, "p0_01", 1, 1),
            (12.05, "p12_05", 2, 121),
        ];
        for (value, suffix, rank10, rank1000) in cases {
            let p = Percentile::new(value).unwrap();
            assert_eq!(p.to_string(), suffix, "{value}");
            assert_eq!(p.value(), value);
            assert_eq!((p.rank(10), p.rank(1000)), (rank10, rank1000), "{value}");
            assert_eq!(p.rank(0), 1, "never rank 0");
        }
        for bad in [0.0, -1.0, 100.01, 99.999, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    Percentile::new(bad),
                    Err(ConfigError::InvalidPercentile { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn labels_carry_the_tags_in_graphite_form() {
        let tag = |k: &str, v: &str| Tag {
            key: k.into(),
            value: v.into(),
        };
        let sample = |tags: Vec<Tag>| Sample {
            name: "api.latency.p90".into(),
            tags,
            value: 1.0,
            kind: SampleKind::Gauge,
            unit: "",
            timestamp_ms: 0,
        };
        let cases = [
            (vec![], "api.latency.p90"),
            (vec![tag("env", "prod")], "api.latency.p90;env=prod"),
            (
                vec![tag("canary", ""), tag("env", "prod")],
                "api.latency.p90;canary;env=prod",
            ),
        ];
        for (tags, want) in cases {
            assert_eq!(sample(tags).label(), want);
        }
    }

    #[test]
    fn timer_suffixes() {
        let p = Percentile::new(99.9).unwrap();
        let cases = [
            (TimerStat::Mean, "mean"),
            (TimerStat::Upper, "upper"),
            (TimerStat::Lower, "lower"),
            (TimerStat::Sum, "sum"),
            (TimerStat::Count, "count"),
            (TimerStat::Percentile(p), "p99_9"),
        ];
        for (stat, want) in cases {
            assert_eq!(stat.suffix(), want);
        }
    }
}
