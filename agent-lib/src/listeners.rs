//! The loopback metric listeners: StatsD over UDP and Graphite plaintext
//! over TCP (`agent.toml` `[listeners]`, `config/listeners.rs`), aggregated
//! per flush interval by `outrider_local_metrics` into the spool's metric
//! samples (`SharedOutbox::push_samples`).
//!
//! Invariants:
//! - Loopback only: the addresses are checked when `agent.toml` is read,
//!   and a stub of ABI 1.2 binds nothing else either. The sockets come from
//!   the stub when it can lend them, else the generation binds its own
//!   ([`socket`] has the trade-off).
//! - Everything is bounded: one datagram buffer; at most `max_connections`
//!   Graphite connections (more are closed at once and counted), each with
//!   one read buffer and at most one pending line
//!   (`graphite::LineBuffer`); at most `max_series` series and the
//!   aggregator's byte budget per interval (values beyond are dropped and
//!   counted).
//! - One lock, held only to ingest one read or to flush, never across an
//!   await.
//! - Each Graphite line accepted tells the collector supervisor that its
//!   sender is alive: `DataSignal::seen(collector_of_metric(path), now)`,
//!   once per distinct sender per read.
//! - Nothing already read is lost at a stop: [`Listeners::stop`] ends the
//!   tasks, which first read what is already queued on their sockets, then
//!   flushes the partial interval into the spool before the outbox is
//!   handed over. What arrives after that waits in a lent socket for the
//!   next generation.
//! - Counts: every flush that saw any traffic also stores the interval's
//!   counts as the agent's own counter samples `outrider.listener.*`
//!   (`listeners/samples.rs`): datagrams, lines received, parse errors,
//!   connections and refused connections, dropped values. Parse errors are
//!   also logged, once per interval with the first error. A listener that
//!   cannot get its socket is a WARNING result of check
//!   `outrider.listeners` naming the address and the error; the other
//!   listener and the agent run on.

pub mod samples;
pub mod socket;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outrider_local_metrics::graphite::{self, LineBuffer};
use outrider_local_metrics::{Aggregator, AggregatorConfig};
use outrider_protocol::CheckState;
use tokio::io::AsyncReadExt;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::collectors::DataSignal;
use crate::collectors::render::collector_of_metric;
use crate::config::listeners::ListenerSettings;
use crate::host::HostHooks;
use crate::outbox::SharedOutbox;
use crate::runner::RunOutcome;
use samples::{Counts, count_samples, to_metric_sample};

/// The check a listener that cannot start reports under.
pub const LISTENERS_CHECK: &str = "outrider.listeners";
/// Largest UDP payload: a datagram is read whole into this buffer.
const DATAGRAM_BYTES: usize = 65_536;
/// One read of a Graphite connection.
const READ_BYTES: usize = 16 * 1024;
/// Most datagrams (or reads per connection) taken at a stop from what is
/// already queued, so a sender that never pauses cannot hold the stop up.
const DRAIN_MAX: usize = 100_000;

/// What the tasks share.
struct Shared {
    state: Mutex<State>,
    outbox: Arc<SharedOutbox>,
    signal: DataSignal,
    hooks: Arc<dyn HostHooks>,
}

struct State {
    aggregator: Aggregator,
    counts: Counts,
    /// The counts at the last flush.
    flushed: Counts,
    /// Samples the spool refused, counted into `counts.dropped`.
    refused: u64,
    /// The interval's first parse error, for its log line.
    first_error: Option<String>,
}

/// The running listeners; see the module docs.
pub struct Listeners {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The addresses actually listened on (for tests and logs).
    pub statsd: Option<SocketAddr>,
    pub graphite: Option<SocketAddr>,
    /// What `outrider.listeners` says now (true: OK), for the state blob,
    /// so the next generation reports only a change.
    pub reported_ok: Option<bool>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("statsd", &self.statsd)
            .field("graphite", &self.graphite)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Now as Unix milliseconds.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Listeners {
    /// Gets the sockets of `settings` and starts the listener and flush
    /// tasks, children of `cancel`; must be called inside the runtime. A
    /// listener whose socket cannot be had is reported (module docs);
    /// `previous` is what the previous generation reported (state blob):
    /// `outrider.listeners` is reported only when that changes.
    pub fn start(
        settings: &ListenerSettings,
        previous: Option<bool>,
        hooks: Arc<dyn HostHooks>,
        outbox: Arc<SharedOutbox>,
        signal: DataSignal,
        cancel: CancellationToken,
    ) -> Listeners {
        let config = AggregatorConfig {
            max_series: settings.max_series,
            ..AggregatorConfig::default()
        };
        let aggregator = Aggregator::new(config).expect("the default percentiles are valid");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                aggregator,
                counts: Counts::default(),
                flushed: Counts::default(),
                refused: 0,
                first_error: None,
            }),
            outbox,
            signal,
            hooks,
        });
        let mut listeners = Listeners {
            shared: shared.clone(),
            cancel: cancel.clone(),
            tasks: Vec::new(),
            statsd: None,
            graphite: None,
            reported_ok: previous,
        };
        let mut problems = Vec::new();
        if let Some(addr) = settings.statsd {
            match socket::udp(shared.hooks.as_ref(), addr) {
                Ok((udp, source)) => {
                    shared.hooks.info(&format!(
                        "StatsD listener on udp {addr} ({})",
                        source.describe()
                    ));
                    listeners.statsd = udp.local_addr().ok();
                    listeners.tasks.push(tokio::spawn(run_statsd(
                        udp,
                        shared.clone(),
                        cancel.clone(),
                    )));
                }
                Err(e) => problems.push(format!("StatsD cannot listen on udp {addr}: {e}")),
            }
        }
        if let Some(addr) = settings.graphite {
            match socket::tcp(shared.hooks.as_ref(), addr) {
                Ok((tcp, source)) => {
                    shared.hooks.info(&format!(
                        "Graphite listener on tcp {addr} ({})",
                        source.describe()
                    ));
                    listeners.graphite = tcp.local_addr().ok();
                    listeners.tasks.push(tokio::spawn(run_graphite(
                        tcp,
                        settings.max_connections,
                        shared.clone(),
                        cancel.clone(),
                    )));
                }
                Err(e) => problems.push(format!("Graphite cannot listen on tcp {addr}: {e}")),
            }
        }
        let any = settings.statsd.is_some() || settings.graphite.is_some();
        let ok = problems.is_empty();
        if !ok {
            shared.hooks.warn(&problems.join("; "));
        }
        if must_report(any, ok, previous) {
            let outcome = match (ok, any) {
                (true, true) => RunOutcome::note(CheckState::Ok, "metric listeners running".into()),
                (true, false) => RunOutcome::note(CheckState::Ok, "metric listeners off".into()),
                (false, _) => RunOutcome::note(CheckState::Warning, problems.join("; ")),
            };
            shared.outbox.push(LISTENERS_CHECK, outcome);
            listeners.reported_ok = Some(ok);
        }
        listeners
            .tasks
            .push(tokio::spawn(run_flush(settings.flush, shared, cancel)));
        listeners
    }

    /// The counts since start.
    pub fn counts(&self) -> Counts {
        lock(&self.shared.state).counts
    }

    /// Stops every task (each first reads what is already queued) and
    /// flushes the partial interval into the spool.
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                self.shared
                    .hooks
                    .error(&format!("a metric listener task failed: {e}"));
            }
        }
        self.shared.flush();
    }
}

/// Whether `outrider.listeners` is reported at a start: when what it says
/// changes — at a cold start with listeners on, when a problem starts or
/// ends, or when the listeners are turned off after a problem.
pub fn must_report(any_on: bool, ok: bool, previous: Option<bool>) -> bool {
    match any_on {
        true => previous != Some(ok),
        false => previous == Some(false),
    }
}

impl Shared {
    fn ingest_statsd(&self, datagram: &[u8]) {
        let mut state = lock(&self.state);
        let got = state.aggregator.ingest_statsd(datagram);
        state.counts.statsd_datagrams += 1;
        state.counts.statsd_lines += got.lines as u64;
        state.counts.statsd_parse_errors += got.errors as u64;
        if let (None, Some(e)) = (&state.first_error, got.first_error) {
            state.first_error = Some(format!("StatsD: {e}"));
        }
    }

    /// Adds a block of complete Graphite lines read at `now_ms` and signals
    /// their senders.
    fn ingest_graphite(&self, block: &[u8], now_ms: i64) {
        let mut senders: Vec<&str> = Vec::new();
        {
            let mut state = lock(&self.state);
            for line in outrider_local_metrics::lines(block) {
                match graphite::parse_line(line) {
                    Ok(parsed) => {
                        state.aggregator.add_graphite(&parsed, now_ms);
                        state.counts.graphite_lines += 1;
                        if let Some(sender) = collector_of_metric(parsed.name)
                            && !senders.contains(&sender)
                        {
                            senders.push(sender);
                        }
                    }
                    Err(e) => {
                        state.counts.graphite_parse_errors += 1;
                        if state.first_error.is_none() {
                            state.first_error = Some(format!("Graphite: {e}"));
                        }
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        for sender in senders {
            self.signal.seen(sender, now);
        }
    }

    fn count_overlong(&self, dropped: usize) {
        if dropped > 0 {
            let mut state = lock(&self.state);
            state.counts.graphite_parse_errors += dropped as u64;
            if state.first_error.is_none() {
                state.first_error = Some(format!(
                    "Graphite: a line longer than {} bytes",
                    graphite::MAX_LINE_BYTES
                ));
            }
        }
    }

    /// Moves the interval's samples, and its counts if there was traffic,
    /// into the spool.
    fn flush(&self) {
        let now_ms = unix_ms();
        let (stored, error) = {
            let mut state = lock(&self.state);
            let stats = state.aggregator.stats();
            state.counts.dropped =
                stats.dropped_series_limit + stats.dropped_values + state.refused;
            let samples = state.aggregator.flush(now_ms);
            let mut stored: Vec<_> = samples.into_iter().map(to_metric_sample).collect();
            stored.extend(count_samples(&state.flushed, &state.counts, now_ms));
            state.flushed = state.counts;
            let errors = state.counts.statsd_parse_errors + state.counts.graphite_parse_errors;
            (stored, state.first_error.take().map(|e| (errors, e)))
        };
        if let Some((total, first)) = error {
            self.hooks.warn(&format!(
                "metric listeners refused lines in the last interval ({total} since start); the \
                 first: {first}"
            ));
        }
        if stored.is_empty() {
            return;
        }
        let count = stored.len() as u64;
        if let Err(e) = self.outbox.push_samples(stored, now_ms) {
            // One bad sample refuses the whole push, which stored nothing;
            // the aggregator's samples are valid by construction, so this
            // is not expected: say so, and count them as dropped.
            self.hooks
                .warn(&format!("metric samples refused by the spool: {e}"));
            lock(&self.state).refused += count;
        }
    }
}

async fn run_statsd(socket: tokio::net::UdpSocket, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            got = socket.recv(&mut buf) => match got {
                Ok(n) => shared.ingest_statsd(&buf[..n]),
                // ICMP errors and the like: nothing to do but read on.
                Err(e) => shared.hooks.debug(&format!("StatsD receive: {e}")),
            },
        }
    }
    // What is already queued is this generation's to keep.
    for _ in 0..DRAIN_MAX {
        match socket.try_recv(&mut buf) {
            Ok(n) => shared.ingest_statsd(&buf[..n]),
            Err(_) => break,
        }
    }
}

async fn run_graphite(
    listener: tokio::net::TcpListener,
    max_connections: usize,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() < max_connections => {
                    lock(&shared.state).counts.graphite_connections += 1;
                    connections.spawn(run_connection(stream, shared.clone(), cancel.clone()));
                }
                Ok((stream, peer)) => {
                    lock(&shared.state).counts.graphite_connections_refused += 1;
                    shared.hooks.debug(&format!(
                        "Graphite connection from {peer} closed: {max_connections} already open"
                    ));
                    drop(stream);
                }
                Err(e) => {
                    shared.hooks.debug(&format!("Graphite accept: {e}"));
                    // EMFILE and the like: give the system a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn run_connection(
    mut stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; READ_BYTES];
    let mut lines = LineBuffer::default();
    let feed = |lines: &mut LineBuffer, chunk: &[u8]| {
        let now_ms = unix_ms();
        let dropped = lines.feed(chunk, |block| shared.ingest_graphite(block, now_ms));
        shared.count_overlong(dropped);
    };
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                for _ in 0..DRAIN_MAX {
                    match stream.try_read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => feed(&mut lines, &buf[..n]),
                    }
                }
                break;
            }
            got = stream.read(&mut buf) => match got {
                Ok(0) | Err(_) => break,
                Ok(n) => feed(&mut lines, &buf[..n]),
            },
        }
    }
    // A sender may omit the last line's `\n`.
    let now_ms = unix_ms();
    lines.finish(|rest| shared.ingest_graphite(rest, now_ms));
}

async fn run_flush(every: Duration, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => shared.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::must_report;

    #[test]
    fn the_listeners_result_is_reported_only_when_it_changes() {
        // (any listener on, all got their socket, previous report, report?)
        let cases = [
            (true, true, None, true),
            (true, true, Some(true), false),
            (true, false, Some(true), true),
            (true, false, Some(false), false),
            (true, true, Some(false), true),
            (false, true, None, false),
            (false, true, Some(true), false),
            (false, true, Some(false), true),
        ];
        for (any, ok, previous, want) in cases {
            assert_eq!(
                must_report(any, ok, previous),
                want,
                "{any} {ok} {previous:?}"
            );
        }
    }
}
