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
    program: PathBuf,
    flag: OnceCell<TestFlag>,
}

impl Collectd {
    pub fn new(program: impl Into<PathBuf>) -> Collectd {
        Collectd {
            program: program.into(),
            flag: OnceCell::new(),
        }
    }

    /// The command running collectd in the foreground on `config`.
    pub fn run_command(&self, config: &Path) -> Vec<String> {
        vec![
            self.program.to_string_lossy().into_owned(),
            "-f".into(),
            "-C".into(),
            config.to_string_lossy().into_owned(),
        ]
    }

    /// The flag this collectd honours; `missing` must be a path that does
    /// not exist. A collectd that cannot be run at all gets `-t`; the
    /// validation then reports why it could not run.
    pub async fn test_flag(&self, missing: &Path, cancel: &CancellationToken) -> TestFlag {
        *self
            .flag
            .get_or_init(|| async {
                let probe = vec![
                    self.program.to_string_lossy().into_owned(),
                    "-t".into(),
                    "-C".into(),
                    missing.to_string_lossy().into_owned(),
                ];
                let limits = RunLimits::new(VALIDATE_TIMEOUT);
                match run_captured(&probe, limits, VALIDATOR_OUTPUT_CAP, cancel).await {
                    Ok(Some(c)) if c.status.is_some_and(|s| s.success()) => TestFlag::ReadOnce,
                    _ => TestFlag::Config,
                }
            })
            .await
    }

    /// Validates `config` (see the module docs); `missing` as for
    /// [`Collectd::test_flag`].
    pub async fn validate(
        &self,
        config: &Path,
        missing: &Path,
        cancel: &CancellationToken,
    ) -> Validation {
        let flag = self.test_flag(missing, cancel).await;
        let command = vec![
            self.program.to_string_lossy().into_owned(),
            flag.arg().into(),
            "-C".into(),
            config.to_string_lossy().into_owned(),
        ];
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
