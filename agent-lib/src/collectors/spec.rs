//! What a collector is: the definition the server will send, checked once.
//!
//! Wire form (JSON, unknown fields refused so a typo is reported, not
//! ignored):
//!
//! ```json
//! {"name": "system", "kind": "collectd", "interval_secs": 10,
//!  "plugins": [{"plugin": "cpu"}, {"plugin": "df", "mount_points": ["/"]}],
//!  "raw_config": "LoadPlugin uptime\n", "graphite_port": 2003}
//! {"name": "app", "kind": "command", "argv": ["/usr/bin/app-exporter", "-v"],
//!  "interval_secs": 30}
//! ```
//!
//! Parse, don't validate: a [`CollectorSpec`] only exists valid. Its
//! constructor ([`CollectorSpec::from_wire`], also behind `Deserialize`)
//! refuses, naming the field, what the protocol crate's structural rules
//! refuse (`CollectorSpecWire::validate`, the same rules the server judges
//! a definition by when an operator adds it: a bad name — no dots, at most
//! [`MAX_NAME_LEN`] characters so `outrider.collector.<name>` is still a
//! valid check name —, an empty or oversized `argv`, a field that does not
//! belong to the kind, an interval outside
//! [`MIN_INTERVAL_SECS`]..=[`MAX_INTERVAL_SECS`], a port of 0, a raw
//! fragment over [`MAX_RAW_CONFIG_BYTES`] or holding a NUL), and then what
//! only the agent knows: plugins it does not configure and plugin options
//! with characters collectd's config syntax cannot carry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

// The structural limits are the protocol crate's, shared with the server.
pub use outrider_protocol::{
    MAX_COLLECTOR_ARG_BYTES as MAX_ARG_BYTES, MAX_COLLECTOR_ARGV as MAX_ARGV,
    MAX_COLLECTOR_NAME_LEN as MAX_NAME_LEN, MAX_RAW_CONFIG_BYTES,
};
/// Most plugins a collectd collector loads through `plugins`.
pub const MAX_PLUGINS: usize = 32;
/// Most entries in one plugin option list (mount points, interfaces).
pub const MAX_OPTION_VALUES: usize = 64;
/// Longest plugin option value, in bytes.
pub const MAX_OPTION_BYTES: usize = 256;
/// Shortest collection interval.
pub const MIN_INTERVAL_SECS: u32 = *outrider_protocol::COLLECTOR_INTERVAL_SECS.start();
/// Longest collection interval.
pub const MAX_INTERVAL_SECS: u32 = *outrider_protocol::COLLECTOR_INTERVAL_SECS.end();
/// collectd's interval when the definition names none (collectd's own default).
pub const DEFAULT_INTERVAL_SECS: u32 = 10;
/// The agent's Graphite plaintext listener when the definition names none.
pub const DEFAULT_GRAPHITE_PORT: u16 = 2003;

/// A collector name: 1-[`MAX_NAME_LEN`] characters of a-z, 0-9, '_', '-'.
///
/// Stricter than a check name: no '.', because the name is the first
/// component of the collector's Graphite paths (`render.rs`), which is how
/// the listener knows who sent a line, and a directory name under the
/// data dir (so never `.` or `..`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CollectorName(String);

impl CollectorName {
    /// Fails when `name` breaks the rule (the error names the field `name`).
    pub fn new(name: &str) -> Result<CollectorName, AgentError> {
        if !outrider_protocol::is_valid_collector_name(name) {
            return Err(AgentError::CollectorSpec {
                collector: name.to_owned(),
                field: "name".into(),
                reason: format!("must be 1-{MAX_NAME_LEN} characters of a-z, 0-9, '_', '-'"),
            });
        }
        Ok(CollectorName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The check its results are reported under: `outrider.collector.<name>`.
    pub fn check_name(&self) -> String {
        format!("{}{}", super::COLLECTOR_CHECK_PREFIX, self.0)
    }
}

impl std::fmt::Display for CollectorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated collector definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CollectorSpecWire", into = "CollectorSpecWire")]
pub struct CollectorSpec {
    name: CollectorName,
    kind: CollectorKind,
    graphite_port: u16,
}

/// What runs, with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollectorKind {
    /// collectd, configured by the agent ([`super::render`]).
    Collectd(CollectdSettings),
    /// Any program; the agent only keeps it running.
    Command(CommandSettings),
}

/// Settings of a collectd collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectdSettings {
    /// collectd's `Interval`, seconds.
    pub interval_secs: u32,
    /// Plugins loaded with their options, in order.
    pub plugins: Vec<CollectdPlugin>,
    /// Appended verbatim to the rendered config (checked by collectd itself).
    pub raw_config: Option<String>,
}

/// A plugin the agent knows how to configure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CollectdPlugin {
    Cpu,
    Memory,
    Load,
    /// File system usage; only `mount_points` when not empty.
    Df {
        mount_points: Vec<String>,
    },
    /// Network interface counters; only `interfaces` when not empty.
    Interface {
        interfaces: Vec<String>,
    },
}

impl CollectdPlugin {
    /// The plugin's collectd name.
    pub fn name(&self) -> &'static str {
        match self {
            CollectdPlugin::Cpu => "cpu",
            CollectdPlugin::Memory => "memory",
            CollectdPlugin::Load => "load",
            CollectdPlugin::Df { .. } => "df",
            CollectdPlugin::Interface { .. } => "interface",
        }
    }
}

/// Settings of a generic `command` collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSettings {
    /// Program and arguments, run without a shell.
    pub argv: Vec<String>,
    /// How often it sends data, seconds; without it silence is not judged.
    pub interval_secs: Option<u32>,
}

impl CollectorSpec {
    /// Validates a wire definition (see the module docs); fails with
    /// [`AgentError::CollectorSpec`] naming the first offending field.
    pub fn from_wire(wire: CollectorSpecWire) -> Result<CollectorSpec, AgentError> {
        let name = CollectorName::new(&wire.name)?;
        wire.validate().map_err(|e| AgentError::CollectorSpec {
            collector: e.collector,
            field: e.field,
            reason: e.reason,
        })?;
        let bad = |field: &str, reason: String| AgentError::CollectorSpec {
            collector: wire.name.clone(),
            field: field.to_owned(),
            reason,
        };
        let graphite_port = wire.graphite_port.unwrap_or(DEFAULT_GRAPHITE_PORT);
        let kind = match wire.kind {
            KindWire::Collectd => CollectorKind::Collectd(CollectdSettings {
                interval_secs: wire.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS),
                plugins: plugins(&wire, &bad)?,
                raw_config: wire.raw_config.clone(),
            }),
            KindWire::Command => CollectorKind::Command(CommandSettings {
                argv: wire.argv.clone().unwrap_or_default(),
                interval_secs: wire.interval_secs,
            }),
        };
        Ok(CollectorSpec {
            name,
            kind,
            graphite_port,
        })
    }

    pub fn name(&self) -> &CollectorName {
        &self.name
    }

    pub fn kind(&self) -> &CollectorKind {
        &self.kind
    }

    /// The loopback port of the agent's Graphite listener it sends to.
    pub fn graphite_port(&self) -> u16 {
        self.graphite_port
    }

    /// How often data is expected, if known (silence is judged against it).
    pub fn interval(&self) -> Option<Duration> {
        let secs = match &self.kind {
            CollectorKind::Collectd(s) => Some(s.interval_secs),
            CollectorKind::Command(s) => s.interval_secs,
        };
        secs.map(|s| Duration::from_secs(u64::from(s)))
    }
}

fn plugins(
    wire: &CollectorSpecWire,
    bad: &dyn Fn(&str, String) -> AgentError,
) -> Result<Vec<CollectdPlugin>, AgentError> {
    let Some(list) = &wire.plugins else {
        return Ok(Vec::new());
    };
    if list.len() > MAX_PLUGINS {
        return Err(bad(
            "plugins",
            format!("has {} entries; at most {MAX_PLUGINS}", list.len()),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let values = |option: &str, values: &[String]| -> Result<Vec<String>, AgentError> {
            if values.len() > MAX_OPTION_VALUES {
                return Err(bad(
                    &format!("plugins[{i}].{option}"),
                    format!("has {} entries; at most {MAX_OPTION_VALUES}", values.len()),
                ));
            }
            for (j, v) in values.iter().enumerate() {
                if v.is_empty() || v.len() > MAX_OPTION_BYTES || v.chars().any(char::is_control) {
                    return Err(bad(
                        &format!("plugins[{i}].{option}[{j}]"),
                        format!(
                            "= {v:?} must be 1-{MAX_OPTION_BYTES} bytes without control characters"
                        ),
                    ));
                }
            }
            Ok(values.to_vec())
        };
        let refuse = |option: &str, present: bool| {
            if present {
                Err(bad(
                    &format!("plugins[{i}].{option}"),
                    format!("is not an option of the {:?} plugin", p.plugin),
                ))
            } else {
                Ok(())
            }
        };
        let plugin = match p.plugin.as_str() {
            "cpu" | "memory" | "load" => {
                refuse("mount_points", p.mount_points.is_some())?;
                refuse("interfaces", p.interfaces.is_some())?;
                match p.plugin.as_str() {
                    "cpu" => CollectdPlugin::Cpu,
                    "memory" => CollectdPlugin::Memory,
                    _ => CollectdPlugin::Load,
                }
            }
            "df" => {
                refuse("interfaces", p.interfaces.is_some())?;
                CollectdPlugin::Df {
                    mount_points: values("mount_points", p.mount_points.as_deref().unwrap_or(&[]))?,
                }
            }
            "interface" => {
                refuse("mount_points", p.mount_points.is_some())?;
                CollectdPlugin::Interface {
                    interfaces: values("interfaces", p.interfaces.as_deref().unwrap_or(&[]))?,
                }
            }
            other => {
                return Err(bad(
                    &format!("plugins[{i}].plugin"),
                    format!(
                        "= {other:?} is not one the agent configures (cpu, memory, load, df, \
                         interface); load others through raw_config"
                    ),
                ));
            }
        };
        if out
            .iter()
            .any(|o: &CollectdPlugin| o.name() == plugin.name())
        {
            return Err(bad(
                &format!("plugins[{i}].plugin"),
                format!("= {:?} is listed twice", plugin.name()),
            ));
        }
        out.push(plugin);
    }
    Ok(out)
}

/// The wire form (see the module docs) lives in the protocol crate, which
/// the server shares; only [`CollectorSpec`] is used past the parser.
pub use outrider_protocol::{CollectorSpecWire, KindWire, PluginWire};

impl TryFrom<CollectorSpecWire> for CollectorSpec {
    type Error = AgentError;

    fn try_from(wire: CollectorSpecWire) -> Result<Self, Self::Error> {
        CollectorSpec::from_wire(wire)
    }
}

impl From<CollectorSpec> for CollectorSpecWire {
    fn from(spec: CollectorSpec) -> Self {
        let mut wire = CollectorSpecWire {
            name: spec.name.0,
            kind: KindWire::Command,
            argv: None,
            interval_secs: None,
            plugins: None,
            raw_config: None,
            graphite_port: Some(spec.graphite_port),
        };
        match spec.kind {
            CollectorKind::Collectd(s) => {
                wire.kind = KindWire::Collectd;
                wire.interval_secs = Some(s.interval_secs);
                wire.raw_config = s.raw_config;
                wire.plugins = Some(
                    s.plugins
                        .into_iter()
                        .map(|p| {
                            let name = p.name().to_owned();
                            let (mount_points, interfaces) = match p {
                                CollectdPlugin::Df { mount_points } => (Some(mount_points), None),
                                CollectdPlugin::Interface { interfaces } => {
                                    (None, Some(interfaces))
                                }
                                _ => (None, None),
                            };
                            PluginWire {
                                plugin: name,
                                mount_points,
                                interfaces,
                            }
                        })
                        .collect(),
                );
            }
            CollectorKind::Command(s) => {
                wire.argv = Some(s.argv);
                wire.interval_secs = s.interval_secs;
            }
        }
        wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CollectorSpec, String> {
        serde_json::from_str::<CollectorSpec>(json).map_err(|e| e.to_string())
    }

    fn field_of(json: &str) -> String {
        let wire: CollectorSpecWire = serde_json::from_str(json).unwrap();
        match CollectorSpec::from_wire(wire).unwrap_err() {
            AgentError::CollectorSpec { field, .. } => field,
            other => panic!("not a spec error: {other}"),
        }
    }

    #[test]
    fn good_definitions_parse_with_defaults_and_round_trip() {
        let spec = parse(
            r#"{"name":"system","kind":"collectd","plugins":[{"plugin":"cpu"},
                {"plugin":"df","mount_points":["/"]}],"raw_config":"LoadPlugin uptime\n"}"#,
        )
        .unwrap();
        assert_eq!(spec.graphite_port(), DEFAULT_GRAPHITE_PORT);
        assert_eq!(spec.interval(), Some(Duration::from_secs(10)));
        let CollectorKind::Collectd(s) = spec.kind() else {
            panic!("collectd")
        };
        assert_eq!(
            s.plugins,
            [
                CollectdPlugin::Cpu,
                CollectdPlugin::Df {
                    mount_points: vec!["/".into()]
                }
            ]
        );
        assert_eq!(spec.name().check_name(), "outrider.collector.system");
        // The longest name still makes a valid check name.
        let longest = CollectorName::new(&"a".repeat(MAX_NAME_LEN)).unwrap();
        assert!(outrider_protocol::is_valid_name(&longest.check_name()));
        let again: CollectorSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);

        let cmd = parse(r#"{"name":"app","kind":"command","argv":["/bin/app","-v"]}"#).unwrap();
        assert_eq!(cmd.interval(), None);
        assert!(matches!(cmd.kind(), CollectorKind::Command(c) if c.argv == ["/bin/app", "-v"]));
    }

    #[test]
    fn each_bad_field_is_named() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let cases = [
            (format!(r#"{{"name":"{long}","kind":"command","argv":["x"]}}"#), "name"),
            (r#"{"name":"Bad Name","kind":"command","argv":["x"]}"#.into(), "name"),
            (r#"{"name":"..","kind":"command","argv":["x"]}"#.into(), "name"),
            (r#"{"name":"sys.a","kind":"command","argv":["x"]}"#.into(), "name"),
            (r#"{"name":"","kind":"command","argv":["x"]}"#.into(), "name"),
            (r#"{"name":"a","kind":"command"}"#.into(), "argv"),
            (r#"{"name":"a","kind":"command","argv":[]}"#.into(), "argv"),
            (r#"{"name":"a","kind":"command","argv":["x","a\u0000b"]}"#.into(), "argv[1]"),
            (r#"{"name":"a","kind":"command","argv":["x"],"raw_config":""}"#.into(), "raw_config"),
            (r#"{"name":"a","kind":"collectd","argv":["x"]}"#.into(), "argv"),
            (r#"{"name":"a","kind":"collectd","interval_secs":0}"#.into(), "interval_secs"),
            (r#"{"name":"a","kind":"collectd","graphite_port":0}"#.into(), "graphite_port"),
            (r#"{"name":"a","kind":"collectd","plugins":[{"plugin":"nfs"}]}"#.into(), "plugins[0].plugin"),
            (r#"{"name":"a","kind":"collectd","plugins":[{"plugin":"cpu"},{"plugin":"cpu"}]}"#.into(), "plugins[1].plugin"),
            (r#"{"name":"a","kind":"collectd","plugins":[{"plugin":"cpu","interfaces":["x"]}]}"#.into(), "plugins[0].interfaces"),
            (r#"{"name":"a","kind":"collectd","plugins":[{"plugin":"df","mount_points":["/a\"\n"]}]}"#.into(), "plugins[0].mount_points[0]"),
            (r#"{"name":"a","kind":"collectd","raw_config":"a\u0000"}"#.into(), "raw_config"),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(&json), field, "{json}");
        }
        let big = format!(
            r#"{{"name":"a","kind":"collectd","raw_config":"{}"}}"#,
            "x".repeat(MAX_RAW_CONFIG_BYTES + 1)
        );
        assert_eq!(field_of(&big), "raw_config");
        let many = format!(
            r#"{{"name":"a","kind":"command","argv":[{}]}}"#,
            vec!["\"x\""; MAX_ARGV + 1].join(",")
        );
        assert_eq!(field_of(&many), "argv");
        // Unknown fields are refused by the parser, naming the field.
        let err = parse(r#"{"name":"a","kind":"command","argv":["x"],"argz":1}"#).unwrap_err();
        assert!(err.contains("argz"), "{err}");
        // The message is one sentence naming collector, field and rule.
        let err = parse(r#"{"name":"a","kind":"collectd","interval_secs":7200}"#).unwrap_err();
        assert!(
            err.contains(r#"collector "a": field `interval_secs` = 7200 is outside 1..=3600"#),
            "{err}"
        );
    }
}
