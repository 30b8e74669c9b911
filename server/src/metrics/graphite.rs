//! Graphite plaintext forwarding: every stored perfdata sample becomes one
//! line `<prefix>.<agent>.<check>.<label> <value> <unix seconds>\n` sent to
//! a carbon receiver over TCP; every metric sample from a collector
//! ([`Queue::push_samples`]) one line
//! `<prefix>.<agent>.outrider_samples.<name levels>;<tags> <value> <secs>`.
//!
//! Ingest never waits for carbon: [`Queue::push_results`] appends to a
//! bounded in-memory queue and, when it is full, drops the *oldest* lines
//! (newer data is worth more to a dashboard), counting them
//! ([`Queue::dropped`], exported on `/metrics`) and logging at most one
//! warning per [`DROP_WARN_INTERVAL`]. [`run`] connects, writes what is
//! queued in chunks, and on any error reconnects with jittered exponential
//! backoff; lines of a failed write are put back at the front. Carbon
//! accepts back-dated timestamps, so samples keep their own time.
//!
//! Path components are sanitised: anything but `A-Z a-z 0-9 _ -` becomes
//! `_` (a `.` inside a check name or label would otherwise add a level).
//! A line longer than [`MAX_LINE_BYTES`] (a perfdata label is whatever a
//! plugin printed) is dropped and counted ([`Queue::oversized`]) rather
//! than handed to carbon, whose whisper files are named by the path.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outrider_protocol::{CheckResult, Fingerprint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::MetricsConfigError;

/// Longest line sent, newline included. Carbon stores each path as a
/// file path and file systems refuse names past 255 bytes per component
/// and a few KiB in all; the prefix is at most [`MAX_PREFIX_BYTES`], a
/// fingerprint 20, a check name 64.
pub const MAX_LINE_BYTES: usize = 512;

/// Longest `--graphite-prefix`, so the fixed parts leave room for a label.
pub const MAX_PREFIX_BYTES: usize = 128;

/// At most one "lines dropped" warning per this interval.
pub const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Lines written per `write_all`.
const CHUNK_LINES: usize = 1_000;
/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that `addr` looks like `host:port`.
pub fn check_addr(addr: &str) -> Result<(), MetricsConfigError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(())
        }
        _ => Err(MetricsConfigError::GraphiteAddr(addr.to_owned())),
    }
}

/// Checks that `prefix` is one or more dot-separated sanitised components.
pub fn check_prefix(prefix: &str) -> Result<(), MetricsConfigError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_BYTES
        && prefix
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(is_path_byte));
    if ok {
        Ok(())
    } else {
        Err(MetricsConfigError::GraphitePrefix(prefix.to_owned()))
    }
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The bounded line queue shared by ingest and the sender.
#[derive(Debug)]
pub struct Queue {
    prefix: String,
    capacity: usize,
    state: Mutex<QueueState>,
    ready: Notify,
    dropped: AtomicU64,
    oversized: AtomicU64,
}

#[derive(Debug, Default)]
struct QueueState {
    lines: VecDeque<String>,
    last_warning: Option<Instant>,
    dropped_since_warning: u64,
}

impl Queue {
    /// A queue of at most `capacity` lines (at least one).
    pub fn new(prefix: String, capacity: usize) -> Queue {
        Queue {
            prefix,
            capacity: capacity.max(1),
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            dropped: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
        }
    }

    /// Lines dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines dropped for exceeding [`MAX_LINE_BYTES`], since start.
    pub fn oversized(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }

    /// Lines waiting.
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// Whether no line is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues one line per perfdata sample of `results`.
    pub fn push_results(&self, agent: &Fingerprint, results: &[CheckResult]) {
        let mut lines = Vec::new();
        for r in results {
            let ts = r.started_at_ms.div_euclid(1000);
            for p in &r.perfdata {
                if !p.value.is_finite() {
                    continue;
                }
                let mut line = String::with_capacity(64);
                line.push_str(&self.prefix);
                for part in [agent.as_str(), &r.check, &p.label] {
                    line.push('.');
                    push_sanitised(&mut line, part);
                }
                self.finish_line(line, p.value, ts, &mut lines);
            }
        }
        if !lines.is_empty() {
            self.push_lines(lines);
        }
    }

    /// Appends one line per metric sample of `stored`, the pseudo results
    /// of check `outrider.samples` (`store/samples.rs`, label
    /// `name;key=value…`): `<prefix>.<agent>.outrider_samples.<name>` where
    /// the name's dots stay levels (each component sanitised, as a listener's
    /// Graphite path was), followed by its tags as Graphite 1.1 tags
    /// `;key=value` (sanitised).
    pub fn push_samples(&self, agent: &Fingerprint, stored: &[CheckResult]) {
        let mut lines = Vec::new();
        for r in stored {
            let ts = r.started_at_ms.div_euclid(1000);
            for p in &r.perfdata {
                if !p.value.is_finite() {
                    continue;
                }
                let mut parts = p.label.split(';');
                let name = parts.next().unwrap_or_default();
                let mut line = String::with_capacity(64);
                line.push_str(&self.prefix);
                for part in [agent.as_str(), &r.check] {
                    line.push('.');
                    push_sanitised(&mut line, part);
                }
                for component in name.split('.') {
                    line.push('.');
                    push_sanitised(&mut line, component);
                }
                for tag in parts {
                    let (key, value) = tag.split_once('=').unwrap_or((tag, ""));
                    line.push(';');
                    push_sanitised(&mut line, key);
                    line.push('=');
                    push_sanitised(&mut line, value);
                }
                self.finish_line(line, p.value, ts, &mut lines);
            }
        }
        if !lines.is_empty() {
            self.push_lines(lines);
        }
    }

    /// Ends `line` (a path so far) with its value and time, and keeps it in
    /// `lines` unless it grew past [`MAX_LINE_BYTES`] (counted, dropped).
    fn finish_line(&self, mut line: String, value: f64, ts: i64, lines: &mut Vec<String>) {
        let _ = writeln!(line, " {value} {ts}");
        if line.len() > MAX_LINE_BYTES {
            self.oversized.fetch_add(1, Ordering::Relaxed);
        } else {
            lines.push(line);
        }
    }

    /// Appends `lines`, dropping the oldest beyond capacity.
    fn push_lines(&self, lines: Vec<String>) {
        let mut dropped = 0;
        {
            let mut state = self.lock();
            for line in lines {
                if state.lines.len() >= self.capacity {
                    state.lines.pop_front();
                    dropped += 1;
                }
                state.lines.push_back(line);
            }
            if dropped > 0 {
                self.note_dropped(&mut state, dropped);
            }
        }
        self.ready.notify_one();
    }

    /// Puts back lines whose write failed, ahead of newer ones, keeping
    /// the newest `capacity` overall.
    fn requeue(&self, lines: Vec<String>) {
        let mut state = self.lock();
        let room = self.capacity.saturating_sub(state.lines.len());
        let skip = lines.len().saturating_sub(room);
        for line in lines.into_iter().skip(skip).rev() {
            state.lines.push_front(line);
        }
        if skip > 0 {
            self.note_dropped(&mut state, skip as u64);
        }
    }

    fn note_dropped(&self, state: &mut QueueState, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        state.dropped_since_warning += n;
        let due = state
            .last_warning
            .is_none_or(|t| t.elapsed() >= DROP_WARN_INTERVAL);
        if due {
            warn!(
                dropped = state.dropped_since_warning,
                total = self.dropped(),
                capacity = self.capacity,
                "graphite queue full: oldest lines dropped"
            );
            state.last_warning = Some(Instant::now());
            state.dropped_since_warning = 0;
        }
    }

    /// Takes up to `max` lines from the front.
    fn take(&self, max: usize) -> Vec<String> {
        let mut state = self.lock();
        let n = state.lines.len().min(max);
        state.lines.drain(..n).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Poisoning needs a panic while holding the lock; the state is a
        // plain queue that stays consistent, so keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn push_sanitised(out: &mut String, part: &str) {
    if part.is_empty() {
        out.push('_');
        return;
    }
    for b in part.bytes() {
        out.push(if is_path_byte(b) { b as char } else { '_' });
    }
}

/// The sender: keeps a connection to `addr` and drains `queue` into it
/// until `shutdown`. Lines still queued at shutdown are dropped (they are
/// in the store; Graphite is a copy).
pub async fn run(queue: std::sync::Arc<Queue>, addr: String, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()));
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            res = connect => match res {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(%addr, "cannot connect to graphite: {e}; retrying in {backoff:?}");
                    if sleep_or_stop(jittered(backoff), &shutdown).await { return; }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(_) => {
                    warn!(%addr, "connecting to graphite timed out; retrying in {backoff:?}");
                    if sleep_or_stop(jittered(backoff), &shutdown).await { return; }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        info!(%addr, "connected to graphite");
        backoff = MIN_BACKOFF;
        match drain(&queue, stream, &shutdown).await {
            Drained::Shutdown => return,
            Drained::Failed(e) => {
                warn!(%addr, "writing to graphite failed: {e}; reconnecting");
                if sleep_or_stop(jittered(backoff), &shutdown).await {
                    return;
                }
            }
        }
    }
}

enum Drained {
    Shutdown,
    Failed(std::io::Error),
}

async fn drain(queue: &Queue, mut stream: TcpStream, shutdown: &CancellationToken) -> Drained {
    let mut buf = Vec::new();
    loop {
        let lines = queue.take(CHUNK_LINES);
        if lines.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return Drained::Shutdown,
                _ = queue.ready.notified() => continue,
            }
        }
        buf.clear();
        for line in &lines {
            buf.extend_from_slice(line.as_bytes());
        }
        let write = async {
            stream.write_all(&buf).await?;
            stream.flush().await
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Drained::Shutdown,
            res = write => res,
        };
        if let Err(e) = outcome {
            queue.requeue(lines);
            return Drained::Failed(e);
        }
    }
}

/// Sleeps `delay` unless shutdown comes first; true when shutting down.
async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// `base` scaled by a random factor in [0.5, 1.0), so many servers that
/// lost the same carbon host do not reconnect in lockstep.
pub(crate) fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    // Without OS randomness the un-jittered delay is still correct.
    let _ = getrandom::fill(&mut byte);
    base.mul_f64(0.5 + f64::from(byte[0]) / 512.0)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckState, PerfData};

    use super::*;

    fn result(check: &str, labels: &[(&str, f64)]) -> CheckResult {
        CheckResult {
            seq: 1,
            check: check.into(),
            state: CheckState::Ok,
            summary: String::new(),
            long_output: String::new(),
            perfdata: labels
                .iter()
                .map(|(l, v)| PerfData {
                    label: (*l).into(),
                    value: *v,
                    uom: String::new(),
                    warn: None,
                    crit: None,
                    min: None,
                    max: None,
                })
                .collect(),
            unknown_perfdata: Vec::new(),
            started_at_ms: 1_700_000_000_999,
            duration_ms: 1,
            update_event: None,
        }
    }

    #[test]
    fn lines_are_sanitised_paths_with_unix_seconds() {
        let q = Queue::new("outrider.prod".into(), 10);
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        q.push_results(&fp, &[result("disk.root", &[("/ used", 0.5), ("", 2.0)])]);
        assert_eq!(
            q.take(10),
            [
                "outrider.prod.0123456789abcdef0123.disk_root.__used 0.5 1700000000\n",
                "outrider.prod.0123456789abcdef0123.disk_root._ 2 1700000000\n",
            ]
        );
    }

    #[test]
    fn samples_keep_their_levels_and_carry_their_tags() {
        let q = Queue::new("outrider.prod".into(), 10);
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        q.push_samples(
            &fp,
            &[result(
                "outrider.samples",
                &[("api.latency p90", 12.5), ("hits;env=prod;canary", 3.0)],
            )],
        );
        assert_eq!(
            q.take(10),
            [
                "outrider.prod.0123456789abcdef0123.outrider_samples.api.latency_p90 12.5 1700000000\n",
                "outrider.prod.0123456789abcdef0123.outrider_samples.hits;env=prod;canary=_ 3 1700000000\n",
            ]
        );
    }

    #[test]
    fn over_long_lines_are_dropped_and_counted() {
        let q = Queue::new("p".into(), 10);
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        // The longest line that fits: "p.<fp>.c.<label> 1 1700000000\n".
        let fixed = "p.0123456789abcdef0123.c. 1 1700000000\n".len();
        let fits = "x".repeat(MAX_LINE_BYTES - fixed);
        let over = "x".repeat(MAX_LINE_BYTES - fixed + 1);
        q.push_results(
            &fp,
            &[result("c", &[(&fits, 1.0), (&over, 1.0), ("ok", 1.0)])],
        );
        let lines = q.take(10);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1], "p.0123456789abcdef0123.c.ok 1 1700000000\n");
        assert_eq!(q.oversized(), 1);
        assert_eq!(q.dropped(), 0);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let q = Queue::new("p".into(), 3);
        q.push_lines((0..5).map(|i| format!("{i}\n")).collect());
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.take(10), ["2\n", "3\n", "4\n"]);
        // A failed write puts its lines back in front, within capacity.
        q.push_lines(vec!["5\n".into(), "6\n".into()]);
        q.requeue(vec!["a\n".into(), "b\n".into()]);
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.take(10), ["b\n", "5\n", "6\n"]);
    }

    #[test]
    fn bad_addresses_and_prefixes_are_refused() {
        assert!(check_addr("carbon:2003").is_ok());
        assert!(check_addr("[::1]:2003").is_ok());
        assert!(check_addr("carbon").is_err());
        assert!(check_addr(":2003").is_err());
        assert!(check_addr("carbon:0").is_err());
        assert!(check_prefix("a.b-c_d").is_ok());
        assert!(check_prefix("a..b").is_err());
        assert!(check_prefix("a b").is_err());
        assert!(check_prefix(&"a".repeat(MAX_PREFIX_BYTES)).is_ok());
        assert!(check_prefix(&"a".repeat(MAX_PREFIX_BYTES + 1)).is_err());
    }
}
