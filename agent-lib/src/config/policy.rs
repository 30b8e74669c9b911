//! The host's own limits on what the server may make it run: the
//! `[policy]` table of `agent.toml`.
//!
//! The server decides which checks an agent runs and whether it accepts
//! ad-hoc scripts; whoever controls the server (or steals its admin token)
//! controls those decisions. This table is written on the host and never
//! sent by the server, so it bounds what a compromised server can do. Both
//! must agree (AND): a check runs only if the server configured it *and*
//! its program passes [`LocalPolicy::check_command`]; an ad-hoc script runs
//! only if the server allows it *and* `allow_adhoc = true` here.
//!
//! ```toml
//! [policy]
//! allow_adhoc = false            # default
//! allow_raw_collector_config = false   # default
//! allowed_commands = [           # default: DEFAULT_ALLOWED_COMMANDS
//!     "builtin:", "plugin:", "/usr/lib/nagios/plugins", "/opt/site-checks",
//! ]
//! ```
//!
//! Rules of [`LocalPolicy::check_command`] (what an operator reading the
//! list expects it to mean):
//! - Only `command[0]`, the program the agent executes, is judged. An
//!   interpreter check `["/usr/bin/python3", "/etc/x.py"]` is allowed only
//!   if `/usr/bin/python3` is; allowing an interpreter (or a shell) allows
//!   anything it can be told to run, `-c` code included, so list the
//!   script's directory and give the script a `#!` line instead.
//! - An entry is an absolute path: a directory allows every file below it
//!   (whole components: `/usr/lib/nagios/plugins` does not allow
//!   `/usr/lib/nagios/plugins-evil/x`), a file allows exactly that file.
//! - The program must be an absolute path (a bare name would be looked up
//!   in `PATH`). It is judged by where it really is: symlinks and `..` are
//!   resolved first, so a link in an allowed directory pointing at
//!   `/bin/sh` is refused, while an entry that is itself a symlink
//!   (`/usr/lib64` → `/usr/lib`) still allows what lies below its target.
//! - `builtin:` allows the checks built into the agent, `plugin:` the
//!   plugins the server distributes into the plugin cache. Note `plugin:`
//!   runs files whose content the server chose: remove it where the server
//!   must not be able to run new code on the host.
//! - Plugins that run the command they are given ([`COMMAND_WRAPPERS`]:
//!   `negate`, `urlize`) would let any command through an allowed
//!   directory; they are allowed only when their own path is an entry.
//! - Ad-hoc scripts are not judged by `allowed_commands`: allowing them
//!   (`allow_adhoc = true`) already means "run any code the server sends".
//!
//! - A collectd collector's raw config fragment (`raw_config`) can load
//!   collectd's `exec`, `python` or `perl` plugins and so run any code as
//!   the agent's user, which `allowed_commands` never sees. A definition
//!   carrying one is refused unless `allow_raw_collector_config = true`
//!   ([`LocalPolicy::check_raw_collector_config`]); its collector does not
//!   run and reports CRITICAL naming the switch. Typed plugins (`cpu`,
//!   `df`, …) need no switch.
//!
//! The file system is behind a resolver argument, so the decision is a
//! pure function tested by table; the executor passes [`real_path`]. The
//! program is executed by the path it was given: replacing it between the
//! check and the exec needs write access to an allowed directory, which
//! already allows replacing the plugin.
//!
//! How the table reaches the library: the stub reads `agent.toml` with a
//! parser that ignores fields it does not know (`stub/src/config.rs`) and
//! hands the whole text, unchanged, in the `agent_toml` key of
//! `HostApiV1.config` (`stub/src/generation.rs`), so every stub, old or
//! new, carries `[policy]`; no ABI or protocol change. A library older
//! than `[policy]` parses `agent.toml` strictly and refuses to start on
//! the unknown table — a host never runs without the policy it wrote.

use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::AgentError;

/// Entry allowing every built-in check (`command[0]` = `builtin:<name>`).
pub const BUILTINS: &str = "builtin:";
/// Entry allowing every plugin of the plugin cache (`plugin:<name>`).
pub const PLUGINS: &str = "plugin:";

/// `allowed_commands` when agent.toml names none: the built-ins, the
/// plugin cache and the standard Nagios plugin directories of Debian/Ubuntu,
/// Red Hat (64-bit), a source install, and the monitoring-plugins package.
pub const DEFAULT_ALLOWED_COMMANDS: &[&str] = &[
    BUILTINS,
    PLUGINS,
    "/usr/lib/nagios/plugins",
    "/usr/lib64/nagios/plugins",
    "/usr/local/nagios/libexec",
    "/usr/lib/monitoring-plugins",
];

/// File names of plugins that execute the command line they are given.
pub const COMMAND_WRAPPERS: &[&str] = &["negate", "urlize"];

/// Most entries in `allowed_commands`: a bigger list is a mistake.
pub const MAX_ALLOWED_COMMANDS: usize = 256;

/// Prefix of every refusal's summary, so results and answers are easy to
/// find and tell apart from a plugin's own UNKNOWN.
pub const REFUSED: &str = "refused by local policy";

/// The `[policy]` table as written in agent.toml.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyToml {
    /// Lets the server run ad-hoc scripts on this host (if it also allows
    /// them for the agent). Off by default; the installer's
    /// `--allow-adhoc` sets it.
    #[serde(default)]
    pub allow_adhoc: bool,
    /// Lets collectd collectors use a raw config fragment from the server
    /// (which can run any code through collectd's exec/python/perl
    /// plugins). Off by default.
    #[serde(default)]
    pub allow_raw_collector_config: bool,
    /// Programs checks may run: absolute path prefixes, plus `builtin:`
    /// and `plugin:`. Replaces [`DEFAULT_ALLOWED_COMMANDS`] when present
    /// (so a host can drop `plugin:`); at most [`MAX_ALLOWED_COMMANDS`].
    #[serde(default)]
    pub allowed_commands: Option<Vec<String>>,
}

/// Whether ad-hoc scripts may run; a security switch, so not a bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdhocScripts {
    Refused,
    Allowed,
}

/// Whether collectd collectors may carry a raw config fragment; a
/// security switch, so not a bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawCollectorConfig {
    Refused,
    Allowed,
}

/// One validated `allowed_commands` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedCommand {
    /// `builtin:`
    Builtins,
    /// `plugin:`
    Plugins,
    /// An absolute, `..`-free path: this file, or everything below it.
    Path(PathBuf),
}

/// The host's policy, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPolicy {
    pub adhoc: AdhocScripts,
    pub raw_collector_config: RawCollectorConfig,
    pub allowed: Vec<AllowedCommand>,
}

impl Default for LocalPolicy {
    /// The policy of an agent.toml without `[policy]`.
    fn default() -> LocalPolicy {
        LocalPolicy::from_toml(&PolicyToml::default())
            .expect("the default allowed commands are valid entries")
    }
}

/// Why the policy refuses a run; the text follows [`REFUSED`] in results.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// `allow_adhoc` is not set on the host.
    #[error("ad-hoc scripts are off on this host (agent.toml [policy] allow_adhoc = false)")]
    Adhoc,
    /// `allow_raw_collector_config` is not set on the host.
    #[error(
        "raw collectd config fragments are off on this host (agent.toml [policy] \
         allow_raw_collector_config = false)"
    )]
    RawCollectorConfig,
    /// `builtin:` is not an entry.
    #[error("built-in checks are not in agent.toml [policy] allowed_commands")]
    Builtins,
    /// `plugin:` is not an entry.
    #[error("plugins distributed by the server are not in agent.toml [policy] allowed_commands")]
    Plugins,
    /// `command[0]` is not an absolute path.
    #[error("{program:?} is not an absolute path")]
    Relative { program: String },
    /// The program's real location could not be determined.
    #[error("cannot resolve {program:?}: {reason}")]
    Unresolvable { program: String, reason: String },
    /// The program (after resolving) is below no entry.
    #[error("{program:?}{} is outside agent.toml [policy] allowed_commands", via(.program, .resolved))]
    Outside { program: String, resolved: PathBuf },
    /// The program runs other commands and its path is not an entry itself.
    #[error(
        "{program:?} runs the command it is given; list its exact path in agent.toml [policy] \
         allowed_commands to allow that"
    )]
    Wrapper { program: String },
}

/// `" (resolves to …)"` when resolving changed the path.
fn via(program: &str, resolved: &Path) -> String {
    if Path::new(program) == resolved {
        String::new()
    } else {
        format!(" (resolves to {})", resolved.display())
    }
}

impl Refusal {
    /// The UNKNOWN summary or RPC error reporting this refusal.
    pub fn summary(&self) -> String {
        format!("{REFUSED}: {self}")
    }
}

impl LocalPolicy {
    /// Validates `[policy]`. Fails naming the first entry that is neither
    /// `builtin:`, `plugin:` nor an absolute path without `..`, or a list
    /// longer than [`MAX_ALLOWED_COMMANDS`].
    pub fn from_toml(toml: &PolicyToml) -> Result<LocalPolicy, AgentError> {
        let defaults = || DEFAULT_ALLOWED_COMMANDS.iter().map(|s| (*s).to_owned());
        let entries: Vec<String> = match &toml.allowed_commands {
            Some(list) => list.clone(),
            None => defaults().collect(),
        };
        if entries.len() > MAX_ALLOWED_COMMANDS {
            return Err(AgentError::PolicyEntry {
                entry: format!("{} entries", entries.len()),
                reason: format!("at most {MAX_ALLOWED_COMMANDS} entries are allowed"),
            });
        }
        let allowed = entries
            .into_iter()
            .map(|entry| match entry.as_str() {
                BUILTINS => Ok(AllowedCommand::Builtins),
                PLUGINS => Ok(AllowedCommand::Plugins),
                path if !path.starts_with('/') => Err(AgentError::PolicyEntry {
                    entry,
                    reason: "must be an absolute path, `builtin:` or `plugin:`".into(),
                }),
                path if has_parent_dir(Path::new(path)) => Err(AgentError::PolicyEntry {
                    entry,
                    reason: "must not contain `..`".into(),
                }),
                path => Ok(AllowedCommand::Path(PathBuf::from(path))),
            })
            .collect::<Result<_, _>>()?;
        Ok(LocalPolicy {
            adhoc: if toml.allow_adhoc {
                AdhocScripts::Allowed
            } else {
                AdhocScripts::Refused
            },
            raw_collector_config: if toml.allow_raw_collector_config {
                RawCollectorConfig::Allowed
            } else {
                RawCollectorConfig::Refused
            },
            allowed,
        })
    }

    /// A policy of `adhoc` and the `allowed` entries, validated as
    /// [`LocalPolicy::from_toml`] does (for tests and embedders).
    pub fn new(adhoc: AdhocScripts, allowed: &[&str]) -> Result<LocalPolicy, AgentError> {
        LocalPolicy::from_toml(&PolicyToml {
            allow_adhoc: adhoc == AdhocScripts::Allowed,
            allow_raw_collector_config: false,
            allowed_commands: Some(allowed.iter().map(|s| (*s).to_owned()).collect()),
        })
    }

    /// Whether an ad-hoc script may run (the server's consent is checked
    /// separately). Fails with [`Refusal::Adhoc`].
    pub fn check_adhoc(&self) -> Result<(), Refusal> {
        match self.adhoc {
            AdhocScripts::Allowed => Ok(()),
            AdhocScripts::Refused => Err(Refusal::Adhoc),
        }
    }

    /// Whether a collectd collector may use a raw config fragment. Fails
    /// with [`Refusal::RawCollectorConfig`].
    pub fn check_raw_collector_config(&self) -> Result<(), Refusal> {
        match self.raw_collector_config {
            RawCollectorConfig::Allowed => Ok(()),
            RawCollectorConfig::Refused => Err(Refusal::RawCollectorConfig),
        }
    }

    /// Whether a check may run `command` (see the module docs for the
    /// rules). `resolve` returns a path's real location, as
    /// [`std::fs::canonicalize`] does. An empty command passes: it cannot
    /// run anything and the executor reports it as such.
    pub fn check_command(
        &self,
        command: &[String],
        resolve: &dyn Fn(&Path) -> io::Result<PathBuf>,
    ) -> Result<(), Refusal> {
        let Some(program) = command.first() else {
            return Ok(());
        };
        let has = |wanted: &AllowedCommand| self.allowed.contains(wanted);
        if program.starts_with(BUILTINS) {
            return has(&AllowedCommand::Builtins)
                .then_some(())
                .ok_or(Refusal::Builtins);
        }
        if program.starts_with(PLUGINS) {
            return has(&AllowedCommand::Plugins)
                .then_some(())
                .ok_or(Refusal::Plugins);
        }
        let path = Path::new(program);
        if !path.is_absolute() {
            return Err(Refusal::Relative {
                program: program.clone(),
            });
        }
        let resolved = match resolve(path) {
            Ok(resolved) => resolved,
            // A missing program would fail to start anyway, with the usual
            // "not found" result; let it, if its path as written is allowed.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !has_parent_dir(path) => {
                path.to_owned()
            }
            Err(e) => {
                return Err(Refusal::Unresolvable {
                    program: program.clone(),
                    reason: e.to_string(),
                });
            }
        };
        // Each entry as written and where it really is.
        let under = |exact: bool| {
            self.allowed.iter().any(|entry| {
                let AllowedCommand::Path(prefix) = entry else {
                    return false;
                };
                let real = resolve(prefix).ok();
                [Some(prefix.as_path()), real.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|p| {
                        if exact {
                            resolved == p
                        } else {
                            resolved.starts_with(p)
                        }
                    })
            })
        };
        if !under(false) {
            return Err(Refusal::Outside {
                program: program.clone(),
                resolved,
            });
        }
        let wraps = resolved
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| COMMAND_WRAPPERS.contains(&n));
        if wraps && !under(true) {
            return Err(Refusal::Wrapper {
                program: program.clone(),
            });
        }
        Ok(())
    }
}

/// Where `path` really is (`realpath`): the resolver the executor passes
/// to [`LocalPolicy::check_command`].
pub fn real_path(path: &Path) -> io::Result<PathBuf> {
    std::fs::canonicalize(path)
}

/// Whether `path` has a `..` component.
fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cmd(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    fn policy(toml: &str) -> LocalPolicy {
        let parsed: PolicyToml = toml::from_str(toml).unwrap();
        LocalPolicy::from_toml(&parsed).unwrap()
    }

    /// A file system of symlinks and files: `links` maps a path to its
    /// target, `files` lists what exists. Resolves like `realpath`.
    fn fake_fs(
        links: &'static [(&'static str, &'static str)],
        files: &'static [&'static str],
    ) -> impl Fn(&Path) -> io::Result<PathBuf> {
        let links: HashMap<PathBuf, PathBuf> = links
            .iter()
            .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
            .collect();
        move |path: &Path| {
            let mut out = PathBuf::from("/");
            let mut todo: Vec<Component> = path.components().rev().collect();
            let mut hops = 0;
            while let Some(c) = todo.pop() {
                match c {
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(name) => {
                        out.push(name);
                        if let Some(target) = links.get(&out) {
                            hops += 1;
                            if hops > 40 {
                                return Err(io::Error::other("too many levels of symbolic links"));
                            }
                            if target.is_absolute() {
                                out = PathBuf::from("/");
                            } else {
                                out.pop();
                            }
                            let target: Vec<Component> = target.components().collect();
                            todo.extend(target.into_iter().rev());
                        }
                    }
                }
            }
            let dir = files.iter().any(|f| Path::new(f).starts_with(&out));
            if dir {
                Ok(out)
            } else {
                Err(io::Error::from(io::ErrorKind::NotFound))
            }
        }
    }

    #[test]
    fn commands_are_judged_by_table() {
        let fs = fake_fs(
            &[
                ("/usr/lib/nagios/plugins/evil", "/bin/sh"),
                ("/usr/lib/nagios/plugins/check_host", "check_icmp"),
                ("/usr/lib64", "/usr/lib"),
                ("/usr/lib/nagios/plugins/sub", "/usr/lib/nagios/plugins"),
                ("/opt/loop", "/opt/loop"),
            ],
            &[
                "/bin/sh",
                "/usr/bin/python3",
                "/etc/x.py",
                "/usr/lib/nagios/plugins/check_disk",
                "/usr/lib/nagios/plugins/check_icmp",
                "/usr/lib/nagios/plugins/negate",
                "/usr/lib/nagios/plugins-evil/x",
                "/usr/local/nagios/libexec/check_x",
                "/opt/site/check_a",
                "/opt/site/negate",
            ],
        );
        let default = LocalPolicy::default();
        let site = policy(
            "allowed_commands = [\"/opt/site\", \"/usr/bin/python3\", \"/opt/site/negate\"]",
        );
        let ok = Ok(());
        let outside = |program: &str, resolved: &str| {
            Err(Refusal::Outside {
                program: program.into(),
                resolved: resolved.into(),
            })
        };
        #[rustfmt::skip]
        let table: Vec<(&LocalPolicy, &[&str], Result<(), Refusal>)> = vec![
            // The defaults: built-ins, the plugin cache, Nagios directories.
            (&default, &["builtin:disk", "--path", "/"], ok.clone()),
            (&default, &["plugin:check_q", "-w", "1"], ok.clone()),
            (&default, &["/usr/lib/nagios/plugins/check_disk", "-w", "10%"], ok.clone()),
            (&default, &["/usr/local/nagios/libexec/check_x"], ok.clone()),
            // Not installed: passes, to fail with the usual "not found".
            (&default, &["/usr/lib/nagios/plugins/check_nope"], ok.clone()),
            // A symlink within the directory (check_host → check_icmp).
            (&default, &["/usr/lib/nagios/plugins/check_host"], ok.clone()),
            // An entry that is a symlink allows what lies below its target.
            (&default, &["/usr/lib64/nagios/plugins/check_disk"], ok.clone()),
            (&default, &["/usr/lib/nagios/plugins/sub/check_disk"], ok.clone()),
            // The attack: a shell with a command line.
            (&default, &["/bin/sh", "-c", "touch /tmp/pwned"], outside("/bin/sh", "/bin/sh")),
            // `..` out of an allowed directory, existing or not.
            (&default, &["/usr/lib/nagios/plugins/../../../../bin/sh", "-c", "x"],
                outside("/usr/lib/nagios/plugins/../../../../bin/sh", "/bin/sh")),
            (&default, &["/usr/lib/nagios/plugins/../../../../nope"],
                Err(Refusal::Unresolvable {
                    program: "/usr/lib/nagios/plugins/../../../../nope".into(),
                    reason: io::Error::from(io::ErrorKind::NotFound).to_string(),
                })),
            // A symlink in an allowed directory pointing out of it.
            (&default, &["/usr/lib/nagios/plugins/evil", "-c", "x"],
                outside("/usr/lib/nagios/plugins/evil", "/bin/sh")),
            // Whole components only.
            (&default, &["/usr/lib/nagios/plugins-evil/x"],
                outside("/usr/lib/nagios/plugins-evil/x", "/usr/lib/nagios/plugins-evil/x")),
            // Relative names would be looked up in PATH.
            (&default, &["check_disk"], Err(Refusal::Relative { program: "check_disk".into() })),
            (&default, &["./check_disk"], Err(Refusal::Relative { program: "./check_disk".into() })),
            (&default, &["usr/lib/nagios/plugins/check_disk"],
                Err(Refusal::Relative { program: "usr/lib/nagios/plugins/check_disk".into() })),
            // An interpreter is judged by itself, never by its script.
            (&default, &["/usr/bin/python3", "/usr/lib/nagios/plugins/check_disk"],
                outside("/usr/bin/python3", "/usr/bin/python3")),
            (&site, &["/usr/bin/python3", "/etc/x.py"], ok.clone()),
            // A command wrapper needs its own exact entry.
            (&default, &["/usr/lib/nagios/plugins/negate", "/bin/sh", "-c", "x"],
                Err(Refusal::Wrapper { program: "/usr/lib/nagios/plugins/negate".into() })),
            (&site, &["/opt/site/negate", "/opt/site/check_a"], ok.clone()),
            // A custom list replaces the defaults.
            (&site, &["/opt/site/check_a"], ok.clone()),
            (&site, &["builtin:load"], Err(Refusal::Builtins)),
            (&site, &["plugin:check_q"], Err(Refusal::Plugins)),
            (&site, &["/usr/lib/nagios/plugins/check_disk"],
                outside("/usr/lib/nagios/plugins/check_disk", "/usr/lib/nagios/plugins/check_disk")),
            // A symlink loop cannot be resolved.
            (&site, &["/opt/loop/x"], Err(Refusal::Unresolvable {
                program: "/opt/loop/x".into(),
                reason: "too many levels of symbolic links".into(),
            })),
            // Nothing to run: the executor says so.
            (&default, &[], ok.clone()),
        ];
        for (policy, command, expected) in table {
            assert_eq!(
                policy.check_command(&cmd(command), &fs),
                expected,
                "{command:?}"
            );
        }
    }

    #[test]
    fn real_symlinks_are_resolved_by_the_executor_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("check_ok"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/bin/sh", allowed.join("sh")).unwrap();
        std::os::unix::fs::symlink("check_ok", allowed.join("alias")).unwrap();
        let policy = policy(&format!("allowed_commands = [{:?}]", allowed.display()));
        let run = |name: &str| {
            let program = allowed.join(name).to_string_lossy().into_owned();
            policy.check_command(&[program], &real_path)
        };
        assert_eq!(run("check_ok"), Ok(()));
        assert_eq!(run("alias"), Ok(()));
        let escaped = run("sh").unwrap_err();
        assert!(matches!(escaped, Refusal::Outside { .. }), "{escaped}");
        assert!(
            escaped.summary().starts_with("refused by local policy: ")
                && escaped.summary().contains("resolves to"),
            "{}",
            escaped.summary()
        );
    }

    #[test]
    fn raw_collector_config_is_off_unless_the_host_allows_it() {
        let table = [
            ("", Err(Refusal::RawCollectorConfig)),
            (
                "allow_raw_collector_config = false",
                Err(Refusal::RawCollectorConfig),
            ),
            ("allow_adhoc = true", Err(Refusal::RawCollectorConfig)),
            ("allow_raw_collector_config = true", Ok(())),
        ];
        for (toml, want) in table {
            assert_eq!(policy(toml).check_raw_collector_config(), want, "{toml:?}");
        }
        assert_eq!(
            LocalPolicy::default().check_raw_collector_config(),
            Err(Refusal::RawCollectorConfig)
        );
        assert!(
            Refusal::RawCollectorConfig
                .summary()
                .contains("allow_raw_collector_config"),
            "the refusal names the setting"
        );
    }

    #[test]
    fn adhoc_is_off_unless_the_host_allows_it() {
        assert_eq!(LocalPolicy::default().check_adhoc(), Err(Refusal::Adhoc));
        assert_eq!(
            policy("allow_adhoc = false").check_adhoc(),
            Err(Refusal::Adhoc)
        );
        assert_eq!(policy("allow_adhoc = true").check_adhoc(), Ok(()));
        assert!(
            Refusal::Adhoc.summary().contains("allow_adhoc"),
            "the refusal names the setting"
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_them() {
        for (bad, why) in [
            ("\"usr/lib\"", "absolute"),
            ("\"\"", "absolute"),
            ("\"builtin:disk\"", "absolute"),
            ("\"/usr/lib/nagios/../../bin\"", "`..`"),
        ] {
            let parsed: PolicyToml =
                toml::from_str(&format!("allowed_commands = [{bad}]")).unwrap();
            let err = LocalPolicy::from_toml(&parsed).unwrap_err();
            assert!(matches!(err, AgentError::PolicyEntry { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("allowed_commands") && text.contains(why),
                "{text}"
            );
            assert!(err.is_config());
        }
        let many = PolicyToml {
            allowed_commands: Some(vec!["/x".into(); MAX_ALLOWED_COMMANDS + 1]),
            ..PolicyToml::default()
        };
        assert!(LocalPolicy::from_toml(&many).is_err());
        let empty = policy("allowed_commands = []");
        assert!(
            empty
                .check_command(&cmd(&["builtin:load"]), &|p| Ok(p.to_owned()))
                .is_err()
        );
    }
}
