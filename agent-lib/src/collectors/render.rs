//! collectd's configuration, rendered from a [`CollectdSettings`].
//!
//! The rendered file, in order:
//! 1. globals: `Hostname` (the agent's host name, given by the caller),
//!    `FQDNLookup false` (no DNS at start, so a broken resolver cannot stall
//!    collectd), `Interval`, and a `BaseDir`/`PIDFile` inside the collector's
//!    own directory under the agent's data dir (`<data_dir>/collectors/<name>/`);
//! 2. `logfile` to stderr, which the supervisor sends to a size-capped file;
//! 3. the plugins of the definition, in their order, with their options;
//! 4. `write_graphite` to the agent's own Graphite listener on
//!    `127.0.0.1:<graphite_port>` over TCP (`LogSendErrors true`,
//!    `StoreRates true`, so counters arrive as rates);
//! 5. the raw fragment, verbatim, last: it may load more plugins, and
//!    collectd itself judges it when the file is validated.
//!
//! Metric naming scheme: `Prefix "<collector name>."`, `Postfix ""`,
//! `EscapeCharacter "_"`, `SeparateInstances false`, `AlwaysAppendDS false`,
//! so every line collectd sends is
//! `<collector>.<host with dots as _>.<plugin>[-<instance>].<type>[-<instance>] <value> <unix time>\r\n`.
//! The first path component names the collector that sent a line
//! ([`collector_of_metric`]); the listener uses it to feed the supervisor's
//! "data seen" signal.
//!
//! Strings are written in collectd's double-quoted form with `\` and `"`
//! escaped; control characters cannot occur (the spec refuses them in
//! plugin options, and they are dropped from the host name).

use std::fmt::Write as _;
use std::path::Path;

use super::spec::{CollectdPlugin, CollectdSettings, CollectorName};

/// Name of the rendered config inside the collector's directory.
pub const CONFIG_FILE: &str = "collectd.conf";
/// Name of collectd's pid file inside the collector's directory.
pub const PID_FILE: &str = "collectd.pid";

/// The `Prefix` of collector `name`'s Graphite lines.
pub fn graphite_prefix(name: &CollectorName) -> String {
    format!("{name}.")
}

/// The collector that sent Graphite metric `path` under the scheme above:
/// its first path component (`None` for an empty one).
pub fn collector_of_metric(path: &str) -> Option<&str> {
    path.split('.').next().filter(|c| !c.is_empty())
}

/// collectd's config text for collector `name` (see the module docs);
/// `dir` is the collector's own directory.
pub fn collectd_config(
    name: &CollectorName,
    settings: &CollectdSettings,
    graphite_port: u16,
    hostname: &str,
    dir: &Path,
) -> String {
    let hostname: String = hostname.chars().filter(|c| !c.is_control()).collect();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut line = |text: String| {
        let _ = writeln!(out, "{text}");
    };
    line(format!(
        "# Written by the Outrider agent for collector {name}; changes are overwritten."
    ));
    line(format!("Hostname {}", quote(&hostname)));
    line("FQDNLookup false".into());
    line(format!("Interval {}", settings.interval_secs));
    line(format!("BaseDir {}", quote(&dir.to_string_lossy())));
    line(format!(
        "PIDFile {}",
        quote(&dir.join(PID_FILE).to_string_lossy())
    ));
    line(String::new());
    line("LoadPlugin logfile".into());
    line("<Plugin logfile>".into());
    line("  LogLevel info".into());
    line("  File STDERR".into());
    line("  Timestamp true".into());
    line("</Plugin>".into());
    for plugin in &settings.plugins {
        line(String::new());
        line(format!("LoadPlugin {}", plugin.name()));
        let (option, values) = match plugin {
            CollectdPlugin::Df { mount_points } => ("MountPoint", mount_points),
            CollectdPlugin::Interface { interfaces } => ("Interface", interfaces),
            CollectdPlugin::Cpu | CollectdPlugin::Memory | CollectdPlugin::Load => continue,
        };
        if values.is_empty() {
            continue;
        }
        line(format!("<Plugin {}>", plugin.name()));
        for value in values {
            line(format!("  {option} {}", quote(value)));
        }
        line("  IgnoreSelected false".into());
        line("</Plugin>".into());
    }
    line(String::new());
    line("LoadPlugin write_graphite".into());
    line("<Plugin write_graphite>".into());
    line("  <Node \"outrider\">".into());
    line("    Host \"127.0.0.1\"".into());
    line(format!("    Port \"{graphite_port}\""));
    line("    Protocol \"tcp\"".into());
    line("    LogSendErrors true".into());
    line(format!("    Prefix {}", quote(&graphite_prefix(name))));
    line("    Postfix \"\"".into());
    line("    StoreRates true".into());
    line("    AlwaysAppendDS false".into());
    line("    SeparateInstances false".into());
    line("    EscapeCharacter \"_\"".into());
    line("  </Node>".into());
    line("</Plugin>".into());
    if let Some(raw) = &settings.raw_config {
        line(String::new());
        line("# Raw fragment of the collector definition:".into());
        line(raw.trim_end().to_owned());
    }
    out
}

/// `text` as a collectd double-quoted string.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::spec::CollectorSpec;

    #[test]
    fn golden_config() {
        let spec: CollectorSpec = serde_json::from_str(
            r#"{"name":"system","kind":"collectd","interval_secs":5,"graphite_port":2103,
                "plugins":[{"plugin":"cpu"},{"plugin":"load"},{"plugin":"memory"},
                  {"plugin":"df","mount_points":["/","/srv/my \"data\""]},
                  {"plugin":"interface","interfaces":["eth0"]}],
                "raw_config":"LoadPlugin uptime\n\n"}"#,
        )
        .unwrap();
        let crate::collectors::spec::CollectorKind::Collectd(settings) = spec.kind() else {
            panic!("collectd")
        };
        let text = collectd_config(
            spec.name(),
            settings,
            spec.graphite_port(),
            "web-1.example",
            Path::new("/var/lib/outrider/collectors/system"),
        );
        let golden = r#"# Written by the Outrider agent for collector system; changes are overwritten.
Hostname "web-1.example"
FQDNLookup false
Interval 5
BaseDir "/var/lib/outrider/collectors/system"
PIDFile "/var/lib/outrider/collectors/system/collectd.pid"

LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File STDERR
  Timestamp true
</Plugin>

LoadPlugin cpu

LoadPlugin load

LoadPlugin memory

LoadPlugin df
<Plugin df>
  MountPoint "/"
  MountPoint "/srv/my \"data\""
  IgnoreSelected false
</Plugin>

LoadPlugin interface
<Plugin interface>
  Interface "eth0"
  IgnoreSelected false
</Plugin>

LoadPlugin write_graphite
<Plugin write_graphite>
  <Node "outrider">
    Host "127.0.0.1"
    Port "2103"
    Protocol "tcp"
    LogSendErrors true
    Prefix "system."
    Postfix ""
    StoreRates true
    AlwaysAppendDS false
    SeparateInstances false
    EscapeCharacter "_"
  </Node>
</Plugin>

# Raw fragment of the collector definition:
LoadPlugin uptime
"#;
        assert_eq!(text, golden);
    }

    #[test]
    fn host_names_and_paths_are_quoted_safely() {
        assert_eq!(quote(r#"a\b"c"#), r#""a\\b\"c""#);
        let name = CollectorName::new("c").unwrap();
        let settings = CollectdSettings {
            interval_secs: 10,
            plugins: vec![],
            raw_config: None,
        };
        let text = collectd_config(&name, &settings, 2003, "h\nInterval 1", Path::new("/d"));
        assert!(text.contains("Hostname \"hInterval 1\"\n"), "{text}");
        assert_eq!(text.matches("\nInterval ").count(), 1, "{text}");
    }

    #[test]
    fn metric_paths_name_their_collector() {
        let name = CollectorName::new("system").unwrap();
        let path = format!("{}web-1_example.cpu-0.cpu-idle", graphite_prefix(&name));
        assert_eq!(collector_of_metric(&path), Some("system"));
        assert_eq!(collector_of_metric(".x"), None);
    }
}
