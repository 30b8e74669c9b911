//! Asking collectd whether a rendered config is usable, before it is used.
//!
//! `collectd -t -C <file>` parses the config, loads every plugin it names
//! and runs their config callbacks, then exits: non-zero with a message on
//! stderr when something is wrong. Some builds ship a `-t` that exits 0
//! without reading anything (collectd 5.9 to 5.12, Debian 12's `collectd-core`
//! among them; fixed upstream in 2020 after 5.12.0). So the first
//! validation probes the flag once: `-t` on a file that does not exist must
//! fail. When it does not, validation uses `-T` instead, which reads and
//! checks the config the same way, then runs each read plugin once,
//! dispatches those values to the write plugins (the agent's own loopback
//! Graphite listener) and exits, non-zero on a config or plugin init error.
//!
//! The validator runs like a plugin (own process group, killed at
//! [`VALIDATE_TIMEOUT`]); its output is kept up to
//! [`VALIDATOR_OUTPUT_CAP`] bytes per stream and carried in the CRITICAL
//! result of a rejected config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::runner::{RunLimits, run_captured, signal_name};

/// Longest a validation may take before its group is killed.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of the validator's stdout and of its stderr kept.
pub const VALIDATOR_OUTPUT_CAP: usize = 8 * 1024;
/// What runs collectd when nothing else is configured (found on `PATH`).
pub const DEFAULT_COLLECTD: &str = "collectd";

/// Which collectd flag checks a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFlag {
    /// `-t`: parse and configure only.
    Config,
    /// `-T`: also read once and write those values (see the module docs).
    ReadOnce,
}

impl TestFlag {
    fn arg(self) -> &'static str {
        match self {
            TestFlag::Config => "-t",
            TestFlag::ReadOnce => "-T",
        }
    }
}

/// What a validation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    Valid,
    /// The config must not be used; the text is collectd's own output
    /// (bounded), or why collectd could not be run.
    Invalid(String),
    /// The supervisor is stopping.
    Cancelled,
}

/// The collectd program, with the test flag it honours (probed once).
#[derive(Debug)]
pub struct Collectd {
    /// Program and leading arguments.
    command: Vec<String>,
    flag: OnceCell<TestFlag>,
}

impl Collectd {
    /// collectd run as `program`.
    pub fn new(program: impl Into<PathBuf>) -> Collectd {
        Collectd::from_command(vec![program.into().to_string_lossy().into_owned()])
    }

    /// collectd run through a wrapper: `command` is the program and its
    /// leading arguments (`nice -n 10 collectd`, or a test's fake collectd
    /// run by `/bin/sh`).
    pub fn from_command(command: Vec<String>) -> Collectd {
        Collectd {
            command,
            flag: OnceCell::new(),
        }
    }

    fn with_args(&self, args: &[&str], config: &Path) -> Vec<String> {
        let mut command = self.command.clone();
        command.extend(args.iter().map(|a| (*a).to_owned()));
        command.push(config.to_string_lossy().into_owned());
        command
    }

    /// The command running collectd in the foreground on `config`.
    pub fn run_command(&self, config: &Path) -> Vec<String> {
        self.with_args(&["-f", "-C"], config)
    }

    /// The flag this collectd honours; `missing` must be a path that does
    /// not exist. The answer is kept once collectd answered; while it
    /// cannot be run (not installed yet) `-t` is assumed, and the
    /// validation reports why collectd could not run. `None` when `cancel`
    /// fired.
    pub async fn test_flag(&self, missing: &Path, cancel: &CancellationToken) -> Option<TestFlag> {
        let probed = self
            .flag
            .get_or_try_init(|| async {
                let probe = self.with_args(&["-t", "-C"], missing);
                let limits = RunLimits::new(VALIDATE_TIMEOUT);
                match run_captured(&probe, limits, VALIDATOR_OUTPUT_CAP, cancel).await {
                    // `-t` accepted a file that does not exist: it checks nothing.
                    Ok(Some(c)) if c.status.is_some_and(|s| s.success()) => Ok(TestFlag::ReadOnce),
                    Ok(Some(_)) => Ok(TestFlag::Config),
                    Ok(None) => Err(None),
                    Err(_) => Err(Some(TestFlag::Config)),
                }
            })
            .await;
        match probed {
            Ok(flag) => Some(*flag),
            Err(unprobed) => unprobed,
        }
    }

    /// Validates `config` (see the module docs); `missing` as for
    /// [`Collectd::test_flag`].
    pub async fn validate(
        &self,
        config: &Path,
        missing: &Path,
        cancel: &CancellationToken,
    ) -> Validation {
        if cancel.is_cancelled() {
            return Validation::Cancelled;
        }
        let Some(flag) = self.test_flag(missing, cancel).await else {
            return Validation::Cancelled;
        };
        let command = self.with_args(&[flag.arg(), "-C"], config);
        let shown = command.join(" ");
        let limits = RunLimits::new(VALIDATE_TIMEOUT);
        let captured = match run_captured(&command, limits, VALIDATOR_OUTPUT_CAP, cancel).await {
            Ok(Some(captured)) => captured,
            Ok(None) => return Validation::Cancelled,
            Err(e) => return Validation::Invalid(format!("cannot run `{shown}`: {e}")),
        };
        let how = match captured.status {
            Some(s) if s.success() => return Validation::Valid,
            None => format!("did not finish within {}s", VALIDATE_TIMEOUT.as_secs()),
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(code), _) => format!("exited with code {code}"),
                    (None, Some(sig)) => format!("was killed by signal {}", signal_name(sig)),
                    (None, None) => format!("ended with {s}"),
                }
            }
        };
        let mut text = format!("`{shown}` {how}");
        for stream in [&captured.stderr, &captured.stdout] {
            let part = String::from_utf8_lossy(stream);
            let part = part.trim();
            if !part.is_empty() {
                text.push('\n');
                text.push_str(part);
            }
        }
        if captured.dropped > 0 {
            text.push_str(&format!(
                "\n[{} more bytes of output discarded]",
                captured.dropped
            ));
        }
        Validation::Invalid(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake collectd run by /bin/sh (no exec of a freshly written file,
    /// so no ETXTBSY from a sibling test's fork): with `-t` it checks
    /// nothing when `broken_t`, else it refuses a missing file or one
    /// containing "bad"; `-T` always checks.
    fn fake(dir: &Path, broken_t: bool) -> Collectd {
        let script = dir.join(if broken_t { "broken-t.sh" } else { "good-t.sh" });
        let t_branch = if broken_t { "exit 0" } else { "check \"$3\"" };
        let body = format!(
            "check() {{ test -f \"$1\" || {{ echo \"stat ($1) failed\" >&2; exit 1; }}\n\
             if grep -q bad \"$1\"; then echo 'Could not find plugin \"bad\"' >&2; echo out; exit 1; fi; }}\n\
             case \"$1\" in -t) {t_branch};; -T) check \"$3\";; esac\nexit 0\n"
        );
        std::fs::write(&script, body).unwrap();
        Collectd::from_command(vec![
            "/bin/sh".into(),
            script.to_string_lossy().into_owned(),
        ])
    }

    #[tokio::test]
    async fn a_t_flag_that_checks_nothing_is_replaced_by_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("good.conf"), dir.path().join("bad.conf"));
        std::fs::write(&good, "LoadPlugin cpu\n").unwrap();
        std::fs::write(&bad, "LoadPlugin bad\n").unwrap();
        let missing = dir.path().join("missing.conf");
        let cancel = CancellationToken::new();
        for (broken_t, flag) in [(false, TestFlag::Config), (true, TestFlag::ReadOnce)] {
            let collectd = fake(dir.path(), broken_t);
            assert_eq!(
                collectd.validate(&good, &missing, &cancel).await,
                Validation::Valid
            );
            let Validation::Invalid(text) = collectd.validate(&bad, &missing, &cancel).await else {
                panic!("bad config accepted (broken -t: {broken_t})")
            };
            let shown = collectd.with_args(&[flag.arg(), "-C"], &bad).join(" ");
            assert_eq!(
                text,
                format!("`{shown}` exited with code 1\nCould not find plugin \"bad\"\nout")
            );
            assert_eq!(collectd.test_flag(&missing, &cancel).await, Some(flag));
        }
    }

    #[tokio::test]
    async fn a_missing_collectd_is_invalid_saying_so_and_is_probed_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("collectd");
        let collectd = Collectd::new(&absent);
        let cancel = CancellationToken::new();
        let missing = dir.path().join("missing.conf");
        let Validation::Invalid(text) = collectd.validate(&missing, &missing, &cancel).await else {
            panic!("validated without collectd")
        };
        assert!(
            text.starts_with(&format!("cannot run `{}", absent.display())),
            "{text}"
        );
        assert!(collectd.flag.get().is_none(), "a failed probe is not kept");
        cancel.cancel();
        assert_eq!(
            collectd.validate(&missing, &missing, &cancel).await,
            Validation::Cancelled
        );
    }
}
