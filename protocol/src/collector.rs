//! Collector definitions on the wire: what the server assigns, what
//! `ServerMessage::Config` carries to agents announcing
//! [`crate::capability::COLLECTORS`].
//!
//! The agent parses each definition into its own valid-by-construction
//! type (`agent-lib/src/collectors/spec.rs`), which is the authority on
//! every limit; [`CollectorSpecWire::validate`] repeats the structural rules
//! so the server refuses an unusable definition when an operator adds it,
//! not when an agent receives it.
//!
//! Definitions refuse unknown fields (a typo is reported, not ignored). So
//! that a definition from a newer server never costs an agent its whole
//! config, [`AgentConfig::collectors`](crate::AgentConfig::collectors)
//! holds [`CollectorEntry`]s: a definition this build cannot parse stays
//! raw JSON, and the agent refuses that one collector alone.

use serde::{Deserialize, Serialize};

/// Longest collector name: `outrider.collector.` plus the name stays
/// within the 64 characters of a check name.
pub const MAX_COLLECTOR_NAME_LEN: usize = 64 - COLLECTOR_CHECK_PREFIX.len();
/// Prefix of the check a collector's results are reported under.
pub const COLLECTOR_CHECK_PREFIX: &str = "outrider.collector.";
/// Most arguments of a `command` collector, program included.
pub const MAX_COLLECTOR_ARGV: usize = 64;
/// Longest single argument, in bytes.
pub const MAX_COLLECTOR_ARG_BYTES: usize = 4096;
/// Largest raw collectd config fragment, in bytes.
pub const MAX_RAW_CONFIG_BYTES: usize = 64 * 1024;
/// Collection intervals allowed, seconds.
pub const COLLECTOR_INTERVAL_SECS: std::ops::RangeInclusive<u32> = 1..=3600;

/// The wire form of a collector definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSpecWire {
    /// Collector name; its results are `outrider.collector.<name>`.
    pub name: String,
    /// `collectd` or `command`.
    pub kind: KindWire,
    /// `command` only: program and arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Collection interval, seconds: collectd's `Interval` (10 when
    /// absent), or how often a `command` collector sends data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u32>,
    /// `collectd` only: plugins to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<Vec<PluginWire>>,
    /// `collectd` only: a config fragment appended verbatim. It can load
    /// any collectd plugin (`exec`, `python`, …), so agents run it only
    /// where `agent.toml` `[policy] allow_raw_collector_config = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_config: Option<String>,
    /// Loopback port of the agent's Graphite listener (2003 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphite_port: Option<u16>,
}

/// A collector kind on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindWire {
    Collectd,
    Command,
}

/// A collectd plugin on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginWire {
    /// `cpu`, `memory`, `load`, `df` or `interface`.
    pub plugin: String,
    /// `df` only: the mount points to report (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_points: Option<Vec<String>>,
    /// `interface` only: the interfaces to report (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
}

/// One entry of [`crate::AgentConfig::collectors`]: a definition this build
/// understands, or the raw JSON of one it does not (a newer server's
/// field), which the agent refuses alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CollectorEntry {
    Known(CollectorSpecWire),
    Unparsed(serde_json::Value),
}

impl CollectorEntry {
    /// The collector's name, when the entry has one.
    pub fn name(&self) -> Option<&str> {
        match self {
            CollectorEntry::Known(w) => Some(&w.name),
            CollectorEntry::Unparsed(v) => v.get("name").and_then(|n| n.as_str()),
        }
    }
}

/// Why a collector definition is unusable; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("collector {collector:?}: {field} {reason}")]
pub struct CollectorSpecError {
    pub collector: String,
    pub field: String,
    pub reason: String,
}

/// Whether `name` is 1-[`MAX_COLLECTOR_NAME_LEN`] characters of a-z, 0-9,
/// '_', '-' (no '.': the name is a Graphite path component and a directory).
pub fn is_valid_collector_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_COLLECTOR_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl CollectorSpecWire {
    /// The check its results are reported under.
    pub fn check_name(&self) -> String {
        format!("{COLLECTOR_CHECK_PREFIX}{}", self.name)
    }

    /// The structural rules (the agent checks the rest, e.g. plugin
    /// options): name, fields that belong to the kind, argv, interval,
    /// port, raw fragment size.
    pub fn validate(&self) -> Result<(), CollectorSpecError> {
        let bad = |field: &str, reason: String| CollectorSpecError {
            collector: self.name.clone(),
            field: field.to_owned(),
            reason,
        };
        if !is_valid_collector_name(&self.name) {
            return Err(bad(
                "name",
                format!("must be 1-{MAX_COLLECTOR_NAME_LEN} characters of a-z, 0-9, '_', '-'"),
            ));
        }
        if let Some(s) = self.interval_secs
            && !COLLECTOR_INTERVAL_SECS.contains(&s)
        {
            return Err(bad(
                "interval_secs",
                format!("= {s} is outside {COLLECTOR_INTERVAL_SECS:?}"),
            ));
        }
        if self.graphite_port == Some(0) {
            return Err(bad("graphite_port", "must not be 0".into()));
        }
        match self.kind {
            KindWire::Collectd => {
                if self.argv.is_some() {
                    return Err(bad("argv", "belongs to `command` collectors".into()));
                }
                if let Some(raw) = &self.raw_config {
                    if raw.len() > MAX_RAW_CONFIG_BYTES {
                        return Err(bad(
                            "raw_config",
                            format!("is {} bytes; at most {MAX_RAW_CONFIG_BYTES}", raw.len()),
                        ));
                    }
                    if raw.contains('\0') {
                        return Err(bad("raw_config", "contains a NUL byte".into()));
                    }
                }
            }
            KindWire::Command => {
                if self.plugins.is_some() || self.raw_config.is_some() {
                    let field = if self.plugins.is_some() {
                        "plugins"
                    } else {
                        "raw_config"
                    };
                    return Err(bad(field, "belongs to `collectd` collectors".into()));
                }
                let argv = self.argv.as_deref().unwrap_or_default();
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(bad("argv", "must name a program".into()));
                }
                if argv.len() > MAX_COLLECTOR_ARGV {
                    return Err(bad(
                        "argv",
                        format!("has {} entries; at most {MAX_COLLECTOR_ARGV}", argv.len()),
                    ));
                }
                if let Some(i) = argv
                    .iter()
                    .position(|a| a.len() > MAX_COLLECTOR_ARG_BYTES || a.contains('\0'))
                {
                    return Err(bad(
                        &format!("argv[{i}]"),
                        format!("must be at most {MAX_COLLECTOR_ARG_BYTES} bytes without NUL"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(name: &str) -> CollectorSpecWire {
        CollectorSpecWire {
            name: name.into(),
            kind: KindWire::Command,
            argv: Some(vec!["/usr/bin/x".into()]),
            interval_secs: None,
            plugins: None,
            raw_config: None,
            graphite_port: None,
        }
    }

    #[test]
    fn definitions_are_judged_by_table() {
        let collectd = CollectorSpecWire {
            kind: KindWire::Collectd,
            argv: None,
            raw_config: Some("LoadPlugin uptime\n".into()),
            ..command("system")
        };
        let table: Vec<(CollectorSpecWire, Option<&str>)> = vec![
            (command("app"), None),
            (collectd.clone(), None),
            (command("a.b"), Some("name")),
            (command(""), Some("name")),
            (
                command(&"x".repeat(MAX_COLLECTOR_NAME_LEN + 1)),
                Some("name"),
            ),
            (command(&"x".repeat(MAX_COLLECTOR_NAME_LEN)), None),
            (
                CollectorSpecWire {
                    argv: None,
                    ..command("a")
                },
                Some("argv"),
            ),
            (
                CollectorSpecWire {
                    argv: Some(vec![String::new()]),
                    ..command("a")
                },
                Some("argv"),
            ),
            (
                CollectorSpecWire {
                    argv: Some(vec!["x".into(); 65]),
                    ..command("a")
                },
                Some("argv"),
            ),
            (
                CollectorSpecWire {
                    argv: Some(vec!["/x".into(), "a\0".into()]),
                    ..command("a")
                },
                Some("argv[1]"),
            ),
            (
                CollectorSpecWire {
                    raw_config: Some("x".into()),
                    ..command("a")
                },
                Some("raw_config"),
            ),
            (
                CollectorSpecWire {
                    interval_secs: Some(0),
                    ..command("a")
                },
                Some("interval_secs"),
            ),
            (
                CollectorSpecWire {
                    graphite_port: Some(0),
                    ..command("a")
                },
                Some("graphite_port"),
            ),
            (
                CollectorSpecWire {
                    argv: Some(vec!["/x".into()]),
                    ..collectd.clone()
                },
                Some("argv"),
            ),
            (
                CollectorSpecWire {
                    raw_config: Some("x".repeat(MAX_RAW_CONFIG_BYTES + 1)),
                    ..collectd
                },
                Some("raw_config"),
            ),
        ];
        for (spec, want) in table {
            let got = spec.validate().err().map(|e| e.field);
            assert_eq!(got.as_deref(), want, "{spec:?}");
        }
    }

    #[test]
    fn an_entry_a_build_cannot_parse_stays_raw_and_keeps_its_name() {
        let entries: Vec<CollectorEntry> = serde_json::from_str(
            r#"[{"name":"app","kind":"command","argv":["/x"]},
                {"name":"new","kind":"command","argv":["/x"],"run_as":"nobody"},
                {"name":"odd","kind":"fluentd"}]"#,
        )
        .unwrap();
        assert!(matches!(&entries[0], CollectorEntry::Known(w) if w.name == "app"));
        assert!(matches!(&entries[1], CollectorEntry::Unparsed(_)));
        assert!(matches!(&entries[2], CollectorEntry::Unparsed(_)));
        let names: Vec<_> = entries.iter().map(CollectorEntry::name).collect();
        assert_eq!(names, [Some("app"), Some("new"), Some("odd")]);
        // Known entries encode exactly as the definition.
        assert_eq!(
            serde_json::to_string(&entries[0]).unwrap(),
            r#"{"name":"app","kind":"command","argv":["/x"]}"#
        );
    }
}
