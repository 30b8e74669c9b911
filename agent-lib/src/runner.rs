//! Runs one Nagios plugin as a supervised child process.
//!
//! Invariants:
//! - Each run is its own process group (`process_group(0)`), so a timeout or
//!   cancellation signals the plugin *and* everything it started.
//! - No signal handlers: exit is observed through a pidfd (readable on exit)
//!   or, on kernels without pidfds, by polling `waitid(WNOWAIT)`. The child is
//!   reaped only after the last group signal, so its pid — the process-group
//!   id — cannot be reused by an unrelated process while we may still signal it.
//! - Output is capped ([`OUTPUT_CAP`], rest discarded while still draining the
//!   pipe so the plugin never blocks); reading stops [`DRAIN_AFTER_EXIT`]
//!   after the plugin exits even if a grandchild keeps the pipe open, and such
//!   leftovers are killed with the group.
//! - A child is never leaked: if the run's future is dropped mid-run, a drop
//!   guard kills the group and reaps the child.
//! - Every way a run can go wrong is an UNKNOWN result saying what happened:
//!   could not start, timed out (and the group was killed), exit code outside
//!   0-3 (named, with the shell's meaning of 126 and 127), killed by a signal
//!   (named).
//! - Compatible with how Nagios and NRPE run plugins: a file without an
//!   interpreter line is run as a `/bin/sh` script, as `execvp` does when
//!   `exec` fails with `ENOEXEC`; a plugin that writes only to stderr is
//!   reported as Nagios Core 4 does, `(No output on stdout) stderr: …`.
//!
//! Which program runs a script by its extension is [`interpreter`].

use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use outrider_protocol::{CheckResult, CheckState, PerfData, UnknownPerfData};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::nagios::parse_output;
use crate::sys;

pub mod interpreter;

/// Largest amount of stdout kept per run; the rest is read and discarded.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// Largest amount of stderr kept per run (used only when stdout is empty).
pub const STDERR_CAP: usize = 8 * 1024;
/// How long to keep reading output after the plugin itself exited.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Time between SIGTERM and SIGKILL on a timeout.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// Poll period when the kernel has no pidfd support.
const EXIT_POLL: Duration = Duration::from_millis(50);
/// Summary used when a plugin printed nothing.
const NO_OUTPUT: &str = "(no output returned from plugin)";
/// Prefix of a summary taken from stderr (Nagios Core 4's wording).
const STDERR_ONLY: &str = "(No output on stdout) stderr: ";
/// What `execvp` runs a file with when the kernel cannot exec it (`ENOEXEC`).
const ENOEXEC_SHELL: &str = "/bin/sh";

/// Time limits of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Time from spawn until the group gets SIGTERM and the run is UNKNOWN.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

impl RunLimits {
    /// `timeout` with the default kill grace.
    pub fn new(timeout: Duration) -> RunLimits {
        RunLimits {
            timeout,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }
}

/// The outcome of one run, before it gets a sequence number.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    pub state: CheckState,
    pub summary: String,
    pub long_output: String,
    pub perfdata: Vec<PerfData>,
    /// Perfdata items printed with the value `U` (undetermined).
    pub unknown_perfdata: Vec<UnknownPerfData>,
    /// Wall-clock start, Unix milliseconds.
    pub started_at_ms: i64,
    pub duration_ms: u64,
    /// The stub's update outcome this result reports (`outrider.update`).
    pub update_event: Option<Box<outrider_protocol::UpdateEvent>>,
}

impl RunOutcome {
    /// The wire result for check `check` with sequence number `seq`.
    pub fn into_result(self, seq: u64, check: &str) -> CheckResult {
        CheckResult {
            seq,
            check: check.to_owned(),
            state: self.state,
            summary: self.summary,
            long_output: self.long_output,
            perfdata: self.perfdata,
            unknown_perfdata: self.unknown_perfdata,
            started_at_ms: self.started_at_ms,
            duration_ms: self.duration_ms,
            update_event: self.update_event,
        }
    }
}

impl RunOutcome {
    /// An outcome the agent reports itself (no run behind it): `state`
    /// and `summary` only, started now, no duration.
    pub fn note(state: CheckState, summary: String) -> RunOutcome {
        RunOutcome {
            state,
            summary,
            long_output: String::new(),
            perfdata: Vec::new(),
            unknown_perfdata: Vec::new(),
            started_at_ms: unix_ms(),
            duration_ms: 0,
            update_event: None,
        }
    }

    /// An UNKNOWN outcome saying `summary`, for a run that never started.
    pub fn unknown(summary: String) -> RunOutcome {
        RunOutcome::note(CheckState::Unknown, summary)
    }
}

/// Wall-clock now, Unix milliseconds.
pub(crate) use outrider_protocol::unix_now_ms as unix_ms;

/// How supervision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Exited,
    TimedOut,
    Cancelled,
}

/// A byte buffer that keeps the first `cap` bytes and counts the rest.
#[derive(Debug)]
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    dropped: usize,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped {
            buf: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(self.cap - self.buf.len());
        self.buf.extend_from_slice(&bytes[..keep]);
        self.dropped += bytes.len() - keep;
    }
}

/// Kills and reaps the child if the run is abandoned before it was reaped.
#[derive(Debug)]
struct Running {
    child: Child,
    reaped: bool,
}

impl Running {
    /// Reaps the child; called once supervision saw it exit, so `wait` returns at once.
    fn reap(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait();
        self.reaped = true;
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = sys::kill_group(self.child.id(), libc::SIGKILL);
            // SIGKILL cannot be ignored, so this wait is short.
            let _ = self.child.wait();
        }
    }
}

/// What a command printed and how it ended, uninterpreted: for tools the
/// agent runs itself (a collector's config validator), not plugins.
#[derive(Debug)]
pub struct Captured {
    /// How it exited; `None` when it timed out (its group was then killed).
    pub status: Option<ExitStatus>,
    /// The first `cap` bytes of stdout.
    pub stdout: Vec<u8>,
    /// The first `cap` bytes of stderr.
    pub stderr: Vec<u8>,
    /// Bytes beyond the cap, both streams together, discarded.
    pub dropped: usize,
}

/// Runs `command` as [`run_plugin`] does (its own process group, timeout
/// then TERM and KILL to the group, output drained and capped at `cap`
/// bytes per stream) without interpreting the output. Fails when the
/// command is empty or cannot be started or reaped; `Ok(None)` when
/// `cancel` fired (the group is then killed).
pub async fn run_captured(
    command: &[String],
    limits: RunLimits,
    cap: usize,
    cancel: &CancellationToken,
) -> std::io::Result<Option<Captured>> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let child = Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut running = Running {
        child,
        reaped: false,
    };
    let mut out = Capped::new(cap);
    let mut err = Capped::new(cap);
    let ended = supervise(&mut running.child, limits, cancel, &mut out, &mut err).await;
    let status = running.reap()?;
    Ok(match ended {
        Ended::Cancelled => None,
        Ended::TimedOut | Ended::Exited => Some(Captured {
            status: (ended == Ended::Exited).then_some(status),
            dropped: out.dropped + err.dropped,
            stdout: out.buf,
            stderr: err.buf,
        }),
    })
}

/// Runs `command` (program + arguments, no shell) under `limits`.
///
/// Never fails: spawn errors, timeouts and odd exits become UNKNOWN outcomes.
/// Returns `None` only when `cancel` fired; the plugin group is then killed.
pub async fn run_plugin(
    command: &[String],
    limits: RunLimits,
    cancel: &CancellationToken,
) -> Option<RunOutcome> {
    let started = Instant::now();
    let started_at_ms = unix_ms();
    let outcome = |state, summary: String, long_output: String, perfdata| RunOutcome {
        state,
        summary: if summary.is_empty() {
            NO_OUTPUT.to_owned()
        } else {
            summary
        },
        long_output,
        perfdata,
        unknown_perfdata: Vec::new(),
        started_at_ms,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        update_event: None,
    };

    let Some((program, args)) = command.split_first() else {
        return Some(outcome(
            CheckState::Unknown,
            "plugin command is empty".into(),
            String::new(),
            vec![],
        ));
    };
    let spawn = |program: &str, args: &[String]| {
        Command::new(program)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let spawned = match spawn(program, args) {
        // No `#!` line and not a binary: what execvp (and so NRPE) does.
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            spawn(ENOEXEC_SHELL, &enoexec_args(program, args))
        }
        other => other,
    };
    let mut running = match spawned {
        Ok(child) => Running {
            child,
            reaped: false,
        },
        Err(e) => {
            let summary = format!("could not start plugin {program}: {e}");
            return Some(outcome(CheckState::Unknown, summary, String::new(), vec![]));
        }
    };

    let mut out = Capped::new(OUTPUT_CAP);
    let mut err = Capped::new(STDERR_CAP);
    let ended = supervise(&mut running.child, limits, cancel, &mut out, &mut err).await;
    let status = running.reap();
    if ended == Ended::Cancelled {
        return None;
    }

    let mut text = String::from_utf8_lossy(&out.buf).into_owned();
    if text.trim().is_empty() {
        let stderr = String::from_utf8_lossy(&err.buf);
        text = if stderr.trim().is_empty() {
            String::new()
        } else {
            format!("{STDERR_ONLY}{}", stderr.trim_start())
        };
    }
    let mut parsed = parse_output(&text);
    let unknown_perfdata = std::mem::take(&mut parsed.unknown);
    if let Some(note) = parsed.skipped_note() {
        parsed.long_output = if parsed.long_output.is_empty() {
            note
        } else {
            format!("{}\n{note}", parsed.long_output)
        };
    }
    if out.dropped > 0 {
        let note = format!(
            "[output truncated: {} bytes over the {OUTPUT_CAP}-byte limit discarded]",
            out.dropped
        );
        parsed.long_output = if parsed.long_output.is_empty() {
            note
        } else {
            format!("{}\n{note}", parsed.long_output)
        };
    }
    let result = match (ended, status) {
        (Ended::TimedOut, _) => outcome(
            CheckState::Unknown,
            format!(
                "plugin timed out after {} and was killed with its process group",
                seconds(limits.timeout)
            ),
            text.trim_end().to_owned(),
            vec![],
        ),
        (_, Err(e)) => outcome(
            CheckState::Unknown,
            format!("could not reap plugin {program}: {e}"),
            text,
            vec![],
        ),
        // The plugin's report, perfdata (unknown samples too) included,
        // whatever its state.
        (_, Ok(status)) => RunOutcome {
            unknown_perfdata,
            ..match (status.code(), status.signal()) {
                (Some(code @ 0..=3), _) => outcome(
                    CheckState::from_exit_code(code),
                    parsed.summary,
                    parsed.long_output,
                    parsed.perfdata,
                ),
                (Some(code), _) => {
                    let summary = join_summary(odd_exit(code), &parsed.summary);
                    outcome(
                        CheckState::Unknown,
                        summary,
                        parsed.long_output,
                        parsed.perfdata,
                    )
                }
                (None, signal) => {
                    let what = format!(
                        "plugin was killed by signal {}",
                        signal_name(signal.unwrap_or(0))
                    );
                    outcome(
                        CheckState::Unknown,
                        join_summary(what, &parsed.summary),
                        parsed.long_output,
                        parsed.perfdata,
                    )
                }
            }
        },
    };
    Some(result)
}

/// The arguments of `/bin/sh` for a plugin the kernel would not exec: the
/// file, then its arguments (exactly what `execvp` passes on `ENOEXEC`).
fn enoexec_args(program: &str, args: &[String]) -> Vec<String> {
    std::iter::once(program.to_owned())
        .chain(args.iter().cloned())
        .collect()
}

/// The UNKNOWN summary of exit code `code` outside 0-3; 126 and 127 are the
/// shell's "found but not executable" and "not found", which Nagios reports
/// as likely a missing plugin.
fn odd_exit(code: i32) -> String {
    match code {
        126 => format!(
            "plugin exited with code {code} (not executable: check its permissions and interpreter)"
        ),
        127 => format!(
            "plugin exited with code {code} (command not found: the plugin or its interpreter may be missing)"
        ),
        _ => format!("plugin exited with code {code}"),
    }
}

/// `SIGKILL (9)`-style name of a signal number.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("{signal}"),
    };
    format!("{name} ({signal})")
}

fn join_summary(what: String, plugin_summary: &str) -> String {
    if plugin_summary.is_empty() {
        what
    } else {
        format!("{what}: {plugin_summary}")
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Waits for exit, timeout or cancellation while collecting output, then
/// signals the group as the outcome requires. Leaves the child unreaped.
async fn supervise(
    child: &mut Child,
    limits: RunLimits,
    cancel: &CancellationToken,
    out: &mut Capped,
    err: &mut Capped,
) -> Ended {
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .and_then(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)).ok());
    let stderr = child
        .stderr
        .take()
        .and_then(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)).ok());
    let reading = async { tokio::join!(read_capped(stdout, out), read_capped(stderr, err)) };
    let exited = wait_for_exit(pid);
    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(reading, exited, deadline);

    let mut output_closed = false;
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ended::Cancelled,
            () = &mut exited => break Ended::Exited,
            _ = &mut reading, if !output_closed => output_closed = true,
            () = &mut deadline => break Ended::TimedOut,
        }
    };
    match ended {
        Ended::Exited => {
            if !output_closed {
                output_closed = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reading)
                    .await
                    .is_ok();
            }
            if !output_closed {
                // Something the plugin started still holds our pipes; it would
                // pile up with every run, so it goes with the group.
                let _ = sys::kill_group(pid, libc::SIGKILL);
            }
        }
        Ended::TimedOut => {
            let _ = sys::kill_group(pid, libc::SIGTERM);
            if tokio::time::timeout(limits.kill_grace, &mut exited)
                .await
                .is_err()
            {
                let _ = sys::kill_group(pid, libc::SIGKILL);
                exited.await;
            }
            // Members that ignored SIGTERM but whose leader died.
            let _ = sys::kill_group(pid, libc::SIGKILL);
            if !output_closed {
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reading).await;
            }
        }
        Ended::Cancelled => {
            let _ = sys::kill_group(pid, libc::SIGKILL);
            exited.await;
        }
    }
    ended
}

/// Reads a pipe to EOF into `sink`, keeping at most its cap.
async fn read_capped(rx: Option<pipe::Receiver>, sink: &mut Capped) {
    let Some(mut rx) = rx else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sink.push(&chunk[..n]),
        }
    }
}

/// Resolves once child `pid` has exited (it stays unreaped).
pub(crate) async fn wait_for_exit(pid: u32) {
    if let Ok(fd) = sys::pidfd_open(pid)
        && let Ok(fd) = sys::async_fd(fd, Interest::READABLE)
    {
        // A pidfd is readable exactly when the process has exited.
        if fd.readable().await.is_ok() {
            return;
        }
    }
    // Old kernel (or registration failed): poll without reaping.
    loop {
        match sys::has_exited(pid) {
            Ok(false) => tokio::time::sleep(EXIT_POLL).await,
            // Exited, or not our child any more: nothing left to wait for.
            Ok(true) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_keeps_prefix_and_counts_rest() {
        let mut c = Capped::new(4);
        c.push(b"abc");
        c.push(b"defg");
        assert_eq!(c.buf, b"abcd");
        assert_eq!(c.dropped, 3);
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL (9)");
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV (11)");
        assert_eq!(signal_name(64), "64");
    }

    #[test]
    fn seconds_are_printed_plainly() {
        assert_eq!(seconds(Duration::from_secs(10)), "10s");
        assert_eq!(seconds(Duration::from_millis(300)), "0.3s");
    }

    #[tokio::test]
    async fn empty_command_is_unknown() {
        let out = run_plugin(
            &[],
            RunLimits::new(Duration::from_secs(1)),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.state, CheckState::Unknown);
    }
}
