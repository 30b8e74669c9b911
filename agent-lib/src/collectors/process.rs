//! One collector process: spawned in its own process group, output to
//! size-capped files, observed through a pidfd, stopped with its group.
//!
//! Invariants (the plugin runner's, `runner.rs`, for a long-lived child):
//! - The process leads its own group (`process_group(0)`); stopping sends
//!   SIGTERM to the group, waits the grace, then SIGKILL to the group, so
//!   whatever it forked goes too. When the leader exits on its own, what is
//!   left of its group is killed before the restart, so orphans do not pile
//!   up with every crash.
//! - The child is reaped only after the last group signal, so its pid (the
//!   group id) cannot be reused by an unrelated process while it may still
//!   be signalled; a dropped [`CollectorProcess`] kills its group and reaps.
//! - A collector must stay in the foreground (collectd runs with `-f`): a
//!   leader that exits is an exit, even if it left a daemon behind, and
//!   that daemon is killed with the rest of the group.
//! - stdout and stderr go to files, not pipes (nothing of the agent's has to
//!   stay open for the child to write): `stdout.log` and `stderr.log` in the
//!   collector's directory, opened for appending. [`LogFiles::trim`] keeps
//!   each under its cap by copy-and-truncate: the file is copied to
//!   `<name>.1` (replacing the older copy) and truncated, and the child's
//!   `O_APPEND` writes continue at the new end. Disk use per stream stays
//!   near twice the cap; lines written between the copy and the truncation
//!   are lost (logrotate's `copytruncate` trade-off).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::runner::{signal_name, wait_for_exit};
use crate::sys;

/// Default cap of each of a collector's log files, bytes.
pub const LOG_CAP_BYTES: u64 = 1024 * 1024;

/// A collector's stdout and stderr files.
#[derive(Clone, Debug)]
pub struct LogFiles {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl LogFiles {
    /// `stdout.log` and `stderr.log` in `dir`.
    pub fn in_dir(dir: &Path) -> LogFiles {
        LogFiles {
            stdout: dir.join("stdout.log"),
            stderr: dir.join("stderr.log"),
        }
    }

    /// Copies each file over `cap` bytes to `<file>.1` and truncates it
    /// (see the module docs). Fails on the first file it cannot handle.
    pub fn trim(&self, cap: u64) -> io::Result<()> {
        for path in [&self.stdout, &self.stderr] {
            let len = match std::fs::metadata(path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if len > cap {
                let mut old = path.as_os_str().to_owned();
                old.push(".1");
                std::fs::copy(path, &old)?;
                OpenOptions::new().write(true).open(path)?.set_len(0)?;
            }
        }
        Ok(())
    }

    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }
}

type ExitFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running collector process (see the module docs).
pub struct CollectorProcess {
    child: Child,
    /// Resolves when the leader exited; `None` once it did.
    exit: Option<ExitFuture>,
    reaped: bool,
}

impl std::fmt::Debug for CollectorProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorProcess")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl CollectorProcess {
    /// Starts `argv` in `dir` with its output appended to `logs`. Fails when
    /// the log files cannot be opened or the program cannot be started.
    pub fn spawn(argv: &[String], dir: &Path, logs: &LogFiles) -> io::Result<CollectorProcess> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(LogFiles::open(&logs.stdout)?)
            .stderr(LogFiles::open(&logs.stderr)?)
            .spawn()?;
        let pid = child.id();
        Ok(CollectorProcess {
            child,
            exit: Some(Box::pin(wait_for_exit(pid))),
            reaped: false,
        })
    }

    /// Its pid, which is also its process-group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resolves when the process exited on its own; then kills what is left
    /// of its group, reaps it and says how it ended ("exited with code 1").
    /// Cancel-safe: dropping the future before it resolves loses nothing.
    pub async fn exited(&mut self) -> String {
        if let Some(exit) = &mut self.exit {
            exit.await;
            self.exit = None;
        }
        let _ = sys::kill_group(self.pid(), libc::SIGKILL);
        self.reap()
    }

    /// Stops the whole group: SIGTERM, up to `grace` for the leader to
    /// exit, then SIGKILL (again after the leader is gone, for members that
    /// ignored SIGTERM). Returns how it ended.
    pub async fn stop(mut self, grace: Duration) -> String {
        let pid = self.pid();
        if let Some(mut exit) = self.exit.take() {
            let _ = sys::kill_group(pid, libc::SIGTERM);
            if tokio::time::timeout(grace, &mut exit).await.is_err() {
                let _ = sys::kill_group(pid, libc::SIGKILL);
                exit.await;
            }
        }
        let _ = sys::kill_group(pid, libc::SIGKILL);
        self.reap()
    }

    /// Reaps the exited leader and describes its end.
    fn reap(&mut self) -> String {
        let status = self.child.wait();
        self.reaped = true;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(sig)) => format!("was killed by signal {}", signal_name(sig)),
                (None, None) => format!("ended with {s}"),
            },
            Err(e) => format!("ended, but could not be reaped: {e}"),
        }
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = sys::kill_group(self.child.id(), libc::SIGKILL);
            // SIGKILL cannot be ignored, so this wait is short.
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_over_the_cap_are_copied_aside_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::in_dir(dir.path());
        std::fs::write(&logs.stdout, "x".repeat(100)).unwrap();
        std::fs::write(&logs.stderr, "small").unwrap();
        logs.trim(50).unwrap();
        assert_eq!(std::fs::metadata(&logs.stdout).unwrap().len(), 0);
        let old = std::fs::read_to_string(dir.path().join("stdout.log.1")).unwrap();
        assert_eq!(old.len(), 100);
        assert_eq!(std::fs::read_to_string(&logs.stderr).unwrap(), "small");
        assert!(!dir.path().join("stderr.log.1").exists());
    }

    #[tokio::test]
    async fn a_child_writing_with_append_continues_at_the_start_after_a_trim() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogFiles::in_dir(dir.path());
        let mut f = LogFiles::open(&logs.stdout).unwrap();
        use std::io::Write;
        f.write_all(&[b'a'; 64]).unwrap();
        logs.trim(10).unwrap();
        f.write_all(b"after").unwrap();
        // No hole of zeros before "after": O_APPEND writes at the new end.
        assert_eq!(std::fs::read(&logs.stdout).unwrap(), b"after");
    }
}
