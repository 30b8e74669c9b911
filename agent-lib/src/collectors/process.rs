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
//! - Hot swaps: [`CollectorProcess::hand_over`] lets go of a running process
//!   without signalling or reaping it, and [`CollectorProcess::adopt`] takes
//!   it up in the next generation. The library runs inside the stub's
//!   process, so the collector stays a child of that process across
//!   generations and `waitpid` still reaps it and reports its status; the
//!   adopter proves it has the same process (not a reused pid) by opening a
//!   pidfd first and then comparing the start time in `/proc/<pid>/stat`
//!   with the one handed over, and watches the exit through that pidfd.
//!   Should the process not be our child (never expected: only a new stub
//!   exec'd from another would do that), its exit is still seen through the
//!   pidfd but its status is unknown, and its group is still killed.

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

/// How the leader is known: spawned by this generation, or adopted.
enum Leader {
    Spawned(Child),
    Adopted(u32),
}

/// What a generation hands over about a running collector process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handed {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line, and field 5
/// (`pgrp`). The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((start, pgrp))
}

/// The start time and process group of `pid`, from `/proc`.
pub fn stat_of(pid: u32) -> io::Result<(u64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))
}

/// Why a handed-over process was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// It is gone (or `/proc` and pidfds cannot say).
    #[error("process {pid} is gone: {source}")]
    Gone { pid: u32, source: io::Error },
    /// Another process has the pid now.
    #[error("process {pid} started at {actual}, not at {expected}: the pid was reused")]
    Reused {
        pid: u32,
        expected: u64,
        actual: u64,
    },
    /// It no longer leads its own process group.
    #[error("process {pid} is in group {pgrp}, not its own")]
    NotGroupLeader { pid: u32, pgrp: u32 },
}

/// A running collector process (see the module docs).
pub struct CollectorProcess {
    leader: Leader,
    /// Resolves when the leader exited; `None` once it did.
    exit: Option<ExitFuture>,
    reaped: bool,
}

impl std::fmt::Debug for CollectorProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorProcess")
            .field("pid", &self.pid())
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
            leader: Leader::Spawned(child),
            exit: Some(Box::pin(wait_for_exit(pid))),
            reaped: false,
        })
    }

    /// Takes up a process a previous generation handed over, after proving
    /// it is the same one (module docs). Must be called inside the runtime.
    pub fn adopt(handed: Handed) -> Result<CollectorProcess, AdoptError> {
        let pid = handed.pid;
        let gone = |source| AdoptError::Gone { pid, source };
        // The pidfd first: from here on it names this process, whatever
        // happens to the pid, so the start time read next is its own.
        let pidfd = sys::pidfd_open(pid).map_err(gone)?;
        let (actual, pgrp) = stat_of(pid).map_err(gone)?;
        if actual != handed.start_time {
            return Err(AdoptError::Reused {
                pid,
                expected: handed.start_time,
                actual,
            });
        }
        if pgrp != pid {
            return Err(AdoptError::NotGroupLeader { pid, pgrp });
        }
        let fd = sys::async_fd(pidfd, tokio::io::Interest::READABLE).map_err(gone)?;
        let exit: ExitFuture = Box::pin(async move {
            // A pidfd is readable exactly when the process has exited.
            let _ = fd.readable().await;
        });
        Ok(CollectorProcess {
            leader: Leader::Adopted(pid),
            exit: Some(exit),
            reaped: false,
        })
    }

    /// Lets go of the process for the next generation: no signal, no reap
    /// (the drop guard is disarmed). Its start time is read now, so the
    /// adopter can tell it from a later process with the same pid.
    pub fn hand_over(mut self) -> io::Result<Handed> {
        let pid = self.pid();
        let (start_time, _) = stat_of(pid)?;
        self.reaped = true;
        Ok(Handed { pid, start_time })
    }

    /// Its pid, which is also its process-group id.
    pub fn pid(&self) -> u32 {
        match &self.leader {
            Leader::Spawned(child) => child.id(),
            Leader::Adopted(pid) => *pid,
        }
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
        self.reaped = true;
        let status = match &mut self.leader {
            Leader::Spawned(child) => child.wait(),
            Leader::Adopted(pid) => sys::wait_pid(*pid),
        };
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(sig)) => format!("was killed by signal {}", signal_name(sig)),
                (None, None) => format!("ended with {s}"),
            },
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                "ended (status unknown: not a child of this process)".into()
            }
            Err(e) => format!("ended, but could not be reaped: {e}"),
        }
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = sys::kill_group(self.pid(), libc::SIGKILL);
            // SIGKILL cannot be ignored, so this wait is short.
            let _ = match &mut self.leader {
                Leader::Spawned(child) => child.wait(),
                Leader::Adopted(pid) => sys::wait_pid(*pid),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_by_table() {
        let cases: [(&str, Option<(u64, u32)>); 4] = [
            (
                "1234 (collectd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1 2",
                Some((98765, 1234)),
            ),
            // A command name with spaces and a `)`.
            (
                "77 (a) b (c)) R 1 70 70 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 1 2",
                Some((5, 70)),
            ),
            ("77 (short) R 1 70", None),
            ("no parenthesis", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_stat(line), want, "{line}");
        }
        let (start, _) = stat_of(std::process::id()).unwrap();
        assert!(start > 0);
    }

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
