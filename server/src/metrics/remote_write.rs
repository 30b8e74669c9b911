//! Prometheus remote_write forwarding (`--remote-write-url`): every stored
//! result's state and perfdata and every metric sample from a collector
//! reach a Prometheus-compatible receiver (Prometheus with
//! `--web.enable-remote-write-receiver`, VictoriaMetrics, Mimir, …), through
//! a disk queue so a receiver outage or a server restart loses nothing.
//!
//! Path of a point:
//! 1. ingest ([`crate::ingest`]) hands what it committed to [`Feed`], which
//!    copies the few fields needed into a bounded channel with `try_send`:
//!    ingest never waits; a full channel drops the batch and counts its
//!    points (`reason="overflow"`);
//! 2. the batcher ([`run`]) names the points ([`series`]), groups them
//!    into series and, once `--remote-write-batch-samples` points are
//!    held or every `--remote-write-flush-interval-ms`, encodes one request
//!    ([`wire`]) and appends it to the disk queue ([`queue`]), which evicts
//!    its oldest requests beyond `--remote-write-queue-bytes`
//!    (`reason="queue_full"`);
//! 3. the sender posts the oldest queued request, one at a time (so each
//!    series' samples arrive in time order, as receivers require), and
//!    deletes it once the receiver answered 2xx, or a 4xx that judges the
//!    data and will never succeed (`reason="rejected"`, logged with the
//!    start of the receiver's answer); 5xx, 429 and transport errors are
//!    retried with jittered backoff, honouring `Retry-After`. Answers that
//!    say the URL or credentials are wrong (401, 403, 404, 405, 407, 3xx)
//!    are retried too, unlike the spec says ([`wire::decide`]): the queue
//!    waits for the fix instead of being emptied, and the sender logs the
//!    status when it appears, changes or clears (`ConfigAlarm`).
//!
//! Shutdown: [`run`]'s token is cancelled by the server's start (`lib.rs`)
//! only after the agent sessions closed, since a session commits results
//! until it ends and those must reach the queue too. The batcher then
//! writes what it holds (and what is still in the channel) to the queue;
//! the sender stops between requests or abandons the one in flight, which
//! stays queued and is sent again after the restart. Receivers take a
//! resent identical sample without complaint.
//!
//! Every count is on `/metrics` ([`Stats::render`]).

pub mod queue;
pub mod series;
pub mod wire;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrider_protocol::{CheckResult, Fingerprint};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::queue::Queue;
use self::series::{Batch, Origin};
use self::wire::Decision;
use super::MetricsConfigError;
use crate::store::Store;

/// Default cap of the disk queue: about an hour of 100,000 samples/s at
/// ~3 compressed bytes a sample.
pub const DEFAULT_QUEUE_BYTES: u64 = 1 << 30;
/// Smallest `--remote-write-queue-bytes`: room for a few requests.
pub const MIN_QUEUE_BYTES: u64 = 1 << 20;
/// Default samples per request (Prometheus' own `max_samples_per_send`
/// is 2,000; VictoriaMetrics' vmagent sends up to 10,000).
pub const DEFAULT_BATCH_SAMPLES: u32 = 5_000;
/// Largest `--remote-write-batch-samples`: receivers refuse bodies past a
/// few MiB (Prometheus: 32 MiB decompressed).
pub const MAX_BATCH_SAMPLES: u32 = 100_000;
/// Default milliseconds a partial batch waits before it is queued.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1_000;
/// Bounds of `--remote-write-flush-interval-ms`.
pub const FLUSH_INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=60_000;
/// Default request timeout.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Committed batches (of up to a frame of results each) waiting for the
/// batcher; beyond it ingest drops (and counts) instead of waiting.
pub const CHANNEL_BATCHES: usize = 4_096;
/// Hostnames remembered; the cache is cleared when it grows past this, and
/// every [`HOSTNAME_REFRESH`] so a renamed host shows its new name.
const MAX_HOSTNAMES: usize = 100_000;
const HOSTNAME_REFRESH: Duration = Duration::from_secs(600);
/// Bytes of a refusing receiver's answer that are logged.
const MAX_LOGGED_BODY: usize = 512;
/// At most one warning per kind (drops, retries) per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Directory of the disk queue under the data directory.
pub const QUEUE_DIR: &str = "remote_write";

/// Checks `--remote-write-url`: an absolute `http` or `https` URL without
/// credentials in it.
///
/// Fails with [`MetricsConfigError::RemoteWriteUrlCredentials`] (which does
/// not repeat the URL) when it carries a user name or password
/// (`user:password@host`): the URL is logged at start and with every
/// failed request, so a password in it would end up in the logs.
pub fn check_url(url: &str) -> Result<reqwest::Url, MetricsConfigError> {
    let bad = |why: &str| MetricsConfigError::RemoteWriteUrl(url.to_owned(), why.to_owned());
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(MetricsConfigError::RemoteWriteUrlCredentials);
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(parsed)
}

/// Whether credentials may go to `url` without TLS: `https`, or plain
/// `http` to a loopback address (`127.0.0.0/8`, `::1`, `localhost`), where
/// nobody but this host can read them on the way.
pub fn protects_credentials(url: &reqwest::Url) -> bool {
    if url.scheme() == "https" {
        return true;
    }
    // An IPv6 host comes bracketed, `[::1]`.
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Why samples were dropped; `/metrics` label `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The channel from ingest was full (the batcher fell behind), or
    /// closed (ingest after the grace period of a stopping server).
    Overflow,
    /// Evicted from the disk queue to stay under its cap.
    QueueFull,
    /// The queue could not be written (disk full, permissions).
    DiskError,
    /// A queued segment was damaged (samples counted when its header was
    /// readable).
    Corrupt,
    /// The receiver refused the request's data for good: 400 or another
    /// 4xx that [`wire::decide`] does not take for a configuration error.
    Rejected,
}

impl Dropped {
    pub const ALL: [Dropped; 5] = [
        Dropped::Overflow,
        Dropped::QueueFull,
        Dropped::DiskError,
        Dropped::Corrupt,
        Dropped::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dropped::Overflow => "overflow",
            Dropped::QueueFull => "queue_full",
            Dropped::DiskError => "disk_error",
            Dropped::Corrupt => "corrupt",
            Dropped::Rejected => "rejected",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request is sent again; `/metrics` label `reason` of
/// `outrider_remote_write_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retried {
    /// The receiver asked for it: 5xx or 429.
    Receiver,
    /// No answer: connection refused or reset, timeout, TLS failure.
    Transport,
    /// The answer says the URL or credentials are wrong
    /// ([`Decision::Misconfigured`]).
    Config,
}

impl Retried {
    pub const ALL: [Retried; 3] = [Retried::Receiver, Retried::Transport, Retried::Config];

    pub fn label(self) -> &'static str {
        match self {
            Retried::Receiver => "receiver",
            Retried::Transport => "transport",
            Retried::Config => "config",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Request outcome classes on `/metrics`: `status="2xx"` … and `"error"`
/// for a request that got no answer.
const REQUEST_CLASSES: [&str; 5] = ["2xx", "4xx", "5xx", "other", "error"];

/// Counters and gauges of the forwarding, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent_samples: AtomicU64,
    pub dropped: [AtomicU64; Dropped::ALL.len()],
    pub requests: [AtomicU64; REQUEST_CLASSES.len()],
    pub retries: [AtomicU64; Retried::ALL.len()],
    pub queued_bytes: AtomicU64,
    pub queued_samples: AtomicU64,
    pub queued_requests: AtomicU64,
}

impl Stats {
    fn drop_samples(&self, why: Dropped, n: u64) {
        self.dropped[why.index()].fetch_add(n, Ordering::Relaxed);
    }

    fn request(&self, class: &str) {
        if let Some(i) = REQUEST_CLASSES.iter().position(|c| *c == class) {
            self.requests[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn queue_gauges(&self, queue: &Queue) {
        self.queued_bytes.store(queue.bytes(), Ordering::Relaxed);
        self.queued_samples
            .store(queue.samples(), Ordering::Relaxed);
        self.queued_requests
            .store(queue.len() as u64, Ordering::Relaxed);
    }

    fn retry(&self, why: Retried) {
        self.retries[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests retried for `why` since start.
    pub fn retried(&self, why: Retried) -> u64 {
        self.retries[why.index()].load(Ordering::Relaxed)
    }

    /// Samples dropped for `why` since start.
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why.index()].load(Ordering::Relaxed)
    }

    /// The families of the `/metrics` exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2_048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "outrider_remote_write_sent_samples_total",
            "counter",
            "Samples the remote_write receiver accepted (2xx).",
            &[("", load(&self.sent_samples))],
        );
        let dropped: Vec<(String, u64)> = Dropped::ALL
            .iter()
            .map(|d| (format!("{{reason=\"{}\"}}", d.label()), self.dropped(*d)))
            .collect();
        let dropped: Vec<(&str, u64)> = dropped.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            "outrider_remote_write_dropped_samples_total",
            "counter",
            "Samples that will never reach the remote_write receiver, by reason.",
            &dropped,
        );
        let requests: Vec<(String, u64)> = REQUEST_CLASSES
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{{status=\"{c}\"}}"), load(&self.requests[i])))
            .collect();
        let requests: Vec<(&str, u64)> = requests.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            "outrider_remote_write_requests_total",
            "counter",
            "remote_write requests by answer class (error: no answer).",
            &requests,
        );
        let retries: Vec<(String, u64)> = Retried::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.label()), self.retried(*r)))
            .collect();
        let retries: Vec<(&str, u64)> = retries.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            "outrider_remote_write_retries_total",
            "counter",
            "remote_write requests retried, by reason (receiver: 5xx or 429; transport: no answer; config: 401, 403, 404, 405, 407 or 3xx, the URL or credentials are wrong).",
            &retries,
        );
        family(
            "outrider_remote_write_queued_samples",
            "gauge",
            "Samples in the disk queue waiting for the receiver.",
            &[("", load(&self.queued_samples))],
        );
        family(
            "outrider_remote_write_queued_bytes",
            "gauge",
            "Bytes of the disk queue (bounded by --remote-write-queue-bytes).",
            &[("", load(&self.queued_bytes))],
        );
        family(
            "outrider_remote_write_queued_requests",
            "gauge",
            "Requests in the disk queue.",
            &[("", load(&self.queued_requests))],
        );
        out
    }
}

/// One committed batch, reduced to what naming needs.
#[derive(Debug)]
struct Item {
    agent: Fingerprint,
    /// Metric samples (`store/samples.rs`) rather than check results.
    samples: bool,
    readings: Vec<Reading>,
    points: u64,
}

#[derive(Debug)]
struct Reading {
    check: String,
    at_ms: i64,
    state: u8,
    /// `(label, uom, value)`.
    values: Vec<(String, String, f64)>,
}

/// Ingest's side: never blocks.
#[derive(Debug)]
pub struct Feed {
    tx: mpsc::Sender<Item>,
    pub stats: Arc<Stats>,
}

impl Feed {
    /// Hands committed results of agent `agent` to the batcher: each
    /// result's state and finite perfdata values.
    pub fn push_results(&self, agent: &Fingerprint, results: &[CheckResult]) {
        self.push(agent, false, results);
    }

    /// Hands stored metric samples (pseudo results of check
    /// `outrider.samples`, `store/samples.rs`) to the batcher.
    pub fn push_samples(&self, agent: &Fingerprint, stored: &[CheckResult]) {
        self.push(agent, true, stored);
    }

    fn push(&self, agent: &Fingerprint, samples: bool, results: &[CheckResult]) {
        let mut points = 0;
        let readings: Vec<Reading> = results
            .iter()
            .map(|r| {
                let values: Vec<(String, String, f64)> = r
                    .perfdata
                    .iter()
                    .filter(|p| p.value.is_finite())
                    .map(|p| (p.label.clone(), p.uom.clone(), p.value))
                    .collect();
                points += values.len() as u64 + u64::from(!samples);
                Reading {
                    check: r.check.clone(),
                    at_ms: r.started_at_ms,
                    state: r.state.exit_code() as u8,
                    values,
                }
            })
            .collect();
        if points == 0 {
            return;
        }
        let item = Item {
            agent: agent.clone(),
            samples,
            readings,
            points,
        };
        if let Err(e) = self.tx.try_send(item) {
            let item = match e {
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => {
                    item
                }
            };
            self.stats.drop_samples(Dropped::Overflow, item.points);
        }
    }
}

/// The worker's settings, from the flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: reqwest::Url,
    pub queue_dir: PathBuf,
    pub queue_bytes: u64,
    pub batch_samples: usize,
    pub flush_interval: Duration,
    pub timeout: Duration,
    /// Credentials sent with every request, read from their files at start.
    pub auth: Auth,
}

/// How requests authenticate. `Debug` never shows the secret.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic` (RFC 7617).
    Basic { user: String, password: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Basic { user, .. } => write!(f, "Basic({user:?}, <redacted>)"),
        }
    }
}

/// The background half, started by [`run`].
#[derive(Debug)]
pub struct Worker {
    rx: mpsc::Receiver<Item>,
    queue: Arc<Mutex<Queue>>,
    settings: Settings,
    stats: Arc<Stats>,
    queued: Arc<Notify>,
}

/// Opens the disk queue (logging what it set aside) and returns the
/// ingest side and the worker.
///
/// Fails when the queue directory cannot be created or listed.
pub fn open(settings: Settings) -> anyhow::Result<(Arc<Feed>, Worker)> {
    let (queue, losses) = Queue::open(&settings.queue_dir, settings.queue_bytes)?;
    let stats = Arc::new(Stats::default());
    note_losses(&stats, &losses);
    stats.queue_gauges(&queue);
    if !queue.is_empty() {
        info!(
            requests = queue.len(),
            samples = queue.samples(),
            "remote_write: resending what the previous run queued"
        );
    }
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let feed = Arc::new(Feed {
        tx,
        stats: stats.clone(),
    });
    let worker = Worker {
        rx,
        queue: Arc::new(Mutex::new(queue)),
        settings,
        stats,
        queued: Arc::new(Notify::new()),
    };
    Ok((feed, worker))
}

/// Counts and logs what the queue set aside or evicted.
fn note_losses(stats: &Stats, losses: &queue::Losses) {
    for e in &losses.corrupt {
        error!("{e}");
    }
    stats.drop_samples(Dropped::Corrupt, losses.corrupt_samples);
    if losses.evicted_samples > 0 || losses.evicted_segments > 0 {
        stats.drop_samples(Dropped::QueueFull, losses.evicted_samples);
        warn!(
            samples = losses.evicted_samples,
            requests = losses.evicted_segments,
            "remote_write queue full (--remote-write-queue-bytes): the oldest requests were dropped (counted in outrider_remote_write_dropped_samples_total{{reason=\"queue_full\"}})"
        );
    }
}

/// Runs the batcher and the sender until `shutdown`; see the module docs.
pub async fn run(worker: Worker, store: Store, shutdown: CancellationToken) {
    let Worker {
        rx,
        queue,
        settings,
        stats,
        queued,
    } = worker;
    let batcher = batch(
        rx,
        Shared {
            queue: queue.clone(),
            stats: stats.clone(),
            queued: queued.clone(),
        },
        &settings,
        store,
        &shutdown,
    );
    let sender = send(
        Shared {
            queue,
            stats,
            queued,
        },
        &settings,
        &shutdown,
    );
    tokio::join!(batcher, sender);
}

struct Shared {
    queue: Arc<Mutex<Queue>>,
    stats: Arc<Stats>,
    queued: Arc<Notify>,
}

impl Shared {
    /// Runs `f` on the queue on the blocking pool (file I/O, fsync) and
    /// refreshes the gauges.
    async fn with_queue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Queue) -> T + Send + 'static,
    ) -> T {
        let queue = self.queue.clone();
        let stats = self.stats.clone();
        let run = move || {
            // Poisoning needs a panic while holding the lock; the index
            // stays consistent with the files, so keep using it.
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            let out = f(&mut q);
            stats.queue_gauges(&q);
            out
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// The batcher: names points, groups them and queues a request per batch.
async fn batch(
    mut rx: mpsc::Receiver<Item>,
    shared: Shared,
    settings: &Settings,
    store: Store,
    shutdown: &CancellationToken,
) {
    let mut batch = Batch::default();
    let mut hosts = Hostnames::default();
    let mut tick = tokio::time::interval(settings.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // The tick before the channel: a channel that always has an
            // item ready must not starve the flush of a partial batch.
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if !batch.is_empty() {
                    flush(&mut batch, &shared).await;
                }
            }
            item = rx.recv() => {
                let Some(item) = item else { break };
                add(&mut batch, &mut hosts, &store, item).await;
                if batch.len() >= settings.batch_samples {
                    flush(&mut batch, &shared).await;
                    tick.reset();
                }
            }
        }
    }
    // Shutdown: what ingest already handed over goes to disk, not away.
    rx.close();
    while let Some(item) = rx.recv().await {
        add(&mut batch, &mut hosts, &store, item).await;
        if batch.len() >= settings.batch_samples {
            flush(&mut batch, &shared).await;
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &shared).await;
    }
}

async fn add(batch: &mut Batch, hosts: &mut Hostnames, store: &Store, item: Item) {
    let hostname = hosts.of(store, &item.agent).await;
    let origin = Origin {
        agent: item.agent.as_str(),
        hostname: &hostname,
    };
    for r in item.readings {
        if item.samples {
            for (label, uom, value) in r.values {
                batch.push(series::sample_labels(origin, &label, &uom), r.at_ms, value);
            }
        } else {
            batch.push(
                series::state_labels(origin, &r.check),
                r.at_ms,
                f64::from(r.state),
            );
            for (label, uom, value) in r.values {
                batch.push(
                    series::perfdata_labels(origin, &r.check, &label, &uom),
                    r.at_ms,
                    value,
                );
            }
        }
    }
}

/// Encodes the batch and appends it to the queue.
async fn flush(batch: &mut Batch, shared: &Shared) {
    let (series, samples) = batch.take();
    let body = match wire::encode(series) {
        Ok(body) => body,
        Err(e) => {
            // Unreachable for a bounded batch; counted rather than panicked.
            error!("remote_write: cannot compress a request: {e}");
            shared
                .stats
                .drop_samples(Dropped::DiskError, samples as u64);
            return;
        }
    };
    let appended = shared
        .with_queue(move |q| q.append(&body, samples as u64))
        .await;
    match appended {
        Ok(losses) => note_losses(&shared.stats, &losses),
        Err(e) => {
            shared
                .stats
                .drop_samples(Dropped::DiskError, samples as u64);
            error!(
                samples,
                "{e}; the batch is dropped (counted in outrider_remote_write_dropped_samples_total{{reason=\"disk_error\"}})"
            );
        }
    }
    shared.queued.notify_one();
}

/// Hostnames by fingerprint, looked up in the store on first use.
#[derive(Debug)]
struct Hostnames {
    names: HashMap<Fingerprint, Arc<str>>,
    since: Instant,
}

impl Default for Hostnames {
    fn default() -> Hostnames {
        Hostnames {
            names: HashMap::new(),
            since: Instant::now(),
        }
    }
}

impl Hostnames {
    async fn of(&mut self, store: &Store, agent: &Fingerprint) -> Arc<str> {
        if self.names.len() >= MAX_HOSTNAMES || self.since.elapsed() >= HOSTNAME_REFRESH {
            self.names.clear();
            self.since = Instant::now();
        }
        if let Some(name) = self.names.get(agent) {
            return name.clone();
        }
        let name: Arc<str> = match store.agent(agent).await {
            Ok(Some(info)) => info.hostname.into(),
            Ok(None) => "".into(),
            Err(e) => {
                // Not remembered: the next batch asks again.
                warn!(fingerprint = %agent, "remote_write: reading the agent's hostname failed: {e:#}");
                return "".into();
            }
        };
        self.names.insert(agent.clone(), name.clone());
        name
    }
}

/// At most one line per [`WARN_INTERVAL`], with how many were held back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// `Some(held back since the last line)` when a line is due.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < WARN_INTERVAL) {
            self.held += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held))
    }
}

/// Whether the receiver's answers say the sender is set up wrong
/// ([`Decision::Misconfigured`]), so that this is logged when it starts,
/// when the status changes and when it ends, not at every attempt (a wrong
/// URL is retried every few seconds until it is fixed).
#[derive(Debug, Default)]
struct ConfigAlarm {
    /// The status of the configuration error in force.
    status: Option<u16>,
}

/// A change of [`ConfigAlarm`]'s state, to be logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AlarmChange {
    /// Configuration error with this status (first, or a different one).
    Raised(u16),
    /// The receiver judged a request again (2xx or a data error): the
    /// configuration error with this status is over.
    Cleared(u16),
}

impl ConfigAlarm {
    /// Notes the answer `status` (`None`: no answer) that led to
    /// `decision`. Transport errors, 5xx and 429 leave the state as it is:
    /// they tell nothing about the URL or credentials.
    fn note(&mut self, status: Option<u16>, decision: Decision) -> Option<AlarmChange> {
        match (decision, status) {
            (Decision::Misconfigured, Some(status)) => {
                (self.status.replace(status) != Some(status)).then_some(AlarmChange::Raised(status))
            }
            (Decision::Done | Decision::Drop, _) => self.status.take().map(AlarmChange::Cleared),
            _ => None,
        }
    }
}

/// The sender: posts the oldest queued request until shutdown.
async fn send(shared: Shared, settings: &Settings, shutdown: &CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .user_agent(concat!("outrider-server/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            error!(
                "remote_write: cannot build the HTTP client: {e}; nothing is sent, the queue keeps filling"
            );
            return;
        }
    };
    let url = settings.url.as_str();
    let mut attempts = 0u32;
    let mut retry_log = Throttle::default();
    let mut drop_log = Throttle::default();
    let mut alarm = ConfigAlarm::default();
    while !shutdown.is_cancelled() {
        let Some(next) = shared.with_queue(Queue::oldest).await else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = shared.queued.notified() => continue,
            }
        };
        let (segment, body) = match next {
            Ok(next) => next,
            Err(damaged) => {
                shared.stats.drop_samples(Dropped::Corrupt, damaged.samples);
                error!("{}", damaged.error);
                continue;
            }
        };
        let mut request = client.post(url).body(body);
        for (name, value) in wire::HEADERS {
            request = request.header(name, value);
        }
        request = match &settings.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
        };
        let answer = tokio::select! {
            _ = shutdown.cancelled() => {
                shared.with_queue(move |q| q.release(segment.id)).await;
                return;
            }
            answer = answer(request) => answer,
        };
        let (decision, status, why) = match answer {
            Ok((status, retry_after, text)) => {
                shared.stats.request(wire::status_class(status));
                (
                    wire::decide(status, retry_after),
                    Some(status),
                    format!("HTTP {status}: {text}"),
                )
            }
            Err(e) => {
                shared.stats.request("error");
                (Decision::Retry(None), None, format!("{e}"))
            }
        };
        match alarm.note(status, decision) {
            Some(AlarmChange::Raised(_)) => error!(
                %url,
                "remote_write receiver refuses the requests as sent ({why}): check --remote-write-url and the credentials; requests stay queued (at most --remote-write-queue-bytes) and are retried, counted in outrider_remote_write_retries_total{{reason=\"config\"}}"
            ),
            Some(AlarmChange::Cleared(status)) => {
                info!(%url, "remote_write receiver takes requests again (it answered HTTP {status} before)");
            }
            None => {}
        }
        match decision {
            Decision::Done => {
                shared.with_queue(move |q| q.ack(segment.id)).await;
                shared
                    .stats
                    .sent_samples
                    .fetch_add(segment.samples, Ordering::Relaxed);
                attempts = 0;
            }
            Decision::Drop => {
                shared.with_queue(move |q| q.ack(segment.id)).await;
                let reason = Dropped::Rejected;
                shared.stats.drop_samples(reason, segment.samples);
                attempts = 0;
                if let Some(held) = drop_log.due() {
                    warn!(
                        %url,
                        samples = segment.samples,
                        earlier_unlogged = held,
                        "remote_write receiver refused a request for good ({why}); dropped (counted in outrider_remote_write_dropped_samples_total{{reason=\"{}\"}})",
                        reason.label()
                    );
                }
            }
            Decision::Retry(_) | Decision::Misconfigured => {
                let (after, why_retried) = match (decision, status) {
                    (Decision::Retry(after), Some(_)) => (after, Retried::Receiver),
                    (Decision::Retry(after), None) => (after, Retried::Transport),
                    // Misconfigured: the sender's own backoff, whatever
                    // the answer's Retry-After says.
                    _ => (None, Retried::Config),
                };
                shared.with_queue(move |q| q.release(segment.id)).await;
                shared.stats.retry(why_retried);
                let mut random = [0u8; 8];
                // Without OS randomness the un-jittered delay is still right.
                let _ = getrandom::fill(&mut random);
                let delay = wire::retry_delay(attempts, after, u64::from_le_bytes(random));
                attempts = attempts.saturating_add(1);
                // A configuration error is logged by the alarm above.
                if why_retried != Retried::Config
                    && let Some(held) = retry_log.due()
                {
                    warn!(%url, earlier_unlogged = held, "remote_write request failed ({why}); retrying in {delay:?}");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Sends `request`; the status, the parsed `Retry-After` and the start of
/// the body (at most [`MAX_LOGGED_BODY`] bytes are read).
async fn answer(
    request: reqwest::RequestBuilder,
) -> Result<(u16, Option<Duration>, String), reqwest::Error> {
    let mut response = request.send().await?;
    let status = response.status().as_u16();
    let now_ms = u64::try_from(crate::store::now_ms()).unwrap_or(0);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::notify::policy::parse_retry_after(v, now_ms));
    let mut body = Vec::new();
    if !(200..300).contains(&status) {
        while body.len() < MAX_LOGGED_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(MAX_LOGGED_BODY);
    }
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    Ok((status, retry_after, text))
}

/// The queue directory under `data_dir`.
pub fn queue_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(QUEUE_DIR)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckState, PerfData};

    use super::*;

    fn result(check: &str, values: &[f64]) -> CheckResult {
        CheckResult {
            seq: 1,
            check: check.into(),
            state: CheckState::Critical,
            summary: "long text that is not copied".into(),
            long_output: String::new(),
            perfdata: values
                .iter()
                .map(|v| PerfData {
                    label: "v".into(),
                    value: *v,
                    uom: String::new(),
                    warn: None,
                    crit: None,
                    min: None,
                    max: None,
                })
                .collect(),
            unknown_perfdata: Vec::new(),
            started_at_ms: 1_700_000_000_000,
            duration_ms: 1,
            update_event: None,
        }
    }

    #[test]
    fn ingest_never_waits_a_full_channel_drops_and_counts() {
        let (tx, mut rx) = mpsc::channel(1);
        let feed = Feed {
            tx,
            stats: Arc::new(Stats::default()),
        };
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        // State + two finite values = 3 points; the NaN is not one.
        feed.push_results(&fp, &[result("a", &[1.0, 2.0, f64::NAN])]);
        // The channel is full: these 1 + 1 points are dropped, not waited for.
        feed.push_results(&fp, &[result("b", &[5.0])]);
        assert_eq!(feed.stats.dropped(Dropped::Overflow), 2);
        // Samples carry no state point; nothing finite, nothing sent.
        feed.push_samples(&fp, &[result("outrider.samples", &[f64::INFINITY])]);
        assert_eq!(feed.stats.dropped(Dropped::Overflow), 2);
        let item = rx.try_recv().unwrap();
        assert_eq!((item.points, item.readings.len()), (3, 1));
        assert_eq!(item.readings[0].state, 2);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn stats_render_one_family_per_metric_with_every_reason() {
        let stats = Stats::default();
        stats.drop_samples(Dropped::QueueFull, 7);
        stats.request("5xx");
        stats.request("error");
        let text = stats.render();
        assert!(
            text.contains("outrider_remote_write_dropped_samples_total{reason=\"queue_full\"} 7\n")
        );
        assert!(text.contains("outrider_remote_write_requests_total{status=\"5xx\"} 1\n"));
        assert!(text.contains("outrider_remote_write_requests_total{status=\"error\"} 1\n"));
        stats.retry(Retried::Config);
        assert!(
            stats
                .render()
                .contains("outrider_remote_write_retries_total{reason=\"config\"} 1\n")
        );
        for d in Dropped::ALL {
            assert!(
                text.contains(&format!("{{reason=\"{}\"}}", d.label())),
                "{d:?}"
            );
        }
        for r in Retried::ALL {
            let line = format!(
                "outrider_remote_write_retries_total{{reason=\"{}\"}} 0\n",
                r.label()
            );
            assert!(text.contains(&line), "{line}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, 7);
    }

    #[test]
    fn what_the_queue_sets_aside_or_evicts_is_counted() {
        let stats = Stats::default();
        let losses = queue::Losses {
            evicted_samples: 30,
            evicted_segments: 2,
            corrupt: Vec::new(),
            corrupt_samples: 4,
        };
        note_losses(&stats, &losses);
        assert_eq!(stats.dropped(Dropped::QueueFull), 30);
        assert_eq!(stats.dropped(Dropped::Corrupt), 4);
    }

    #[test]
    fn a_configuration_error_is_logged_when_it_starts_changes_or_ends() {
        use Decision::{Done, Drop, Misconfigured, Retry};
        let mut alarm = ConfigAlarm::default();
        // (answer, decision, change to log)
        for (status, decision, want) in [
            (Some(200), Done, None),
            (Some(401), Misconfigured, Some(AlarmChange::Raised(401))),
            // Every further attempt with the same answer: nothing new.
            (Some(401), Misconfigured, None),
            (Some(401), Misconfigured, None),
            // A proxy's 502 or a refused connection says nothing about
            // the credentials: still the same error, not logged again.
            (Some(502), Retry(None), None),
            (None, Retry(None), None),
            (Some(401), Misconfigured, None),
            // Another wrong answer: logged.
            (Some(404), Misconfigured, Some(AlarmChange::Raised(404))),
            // Fixed: the receiver stores the request.
            (Some(204), Done, Some(AlarmChange::Cleared(404))),
            (Some(204), Done, None),
            (Some(308), Misconfigured, Some(AlarmChange::Raised(308))),
            // A data error means the receiver judged the data: fixed too.
            (Some(400), Drop, Some(AlarmChange::Cleared(308))),
            (Some(400), Drop, None),
        ] {
            assert_eq!(
                alarm.note(status, decision),
                want,
                "{status:?} {decision:?}"
            );
        }
    }

    #[test]
    fn urls_with_credentials_are_refused_without_repeating_them() {
        for bad in [
            "http://writer:pa55@127.0.0.1:9090/api/v1/write",
            "https://writer:pa55@vm.example/api/v1/write",
            "https://:pa55@vm.example/api/v1/write",
            "https://writer@vm.example/api/v1/write",
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(
                matches!(err, MetricsConfigError::RemoteWriteUrlCredentials),
                "{bad}: {err:?}"
            );
            let text = err.to_string();
            assert!(!text.contains("pa55"), "{text}");
            for flag in [
                "--remote-write-url",
                "--remote-write-basic-auth-user",
                "--remote-write-basic-auth-password-file",
                "--remote-write-bearer-token-file",
            ] {
                assert!(text.contains(flag), "{flag} missing in {text}");
            }
        }
        // An @ in the path is not userinfo.
        assert!(check_url("https://vm.example/insert/0@x/api/v1/write").is_ok());
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(check_url("http://127.0.0.1:9090/api/v1/write").is_ok());
        assert!(check_url("https://vm.example/api/v1/write").is_ok());
        for bad in [
            "",
            "/api/v1/write",
            "ftp://x/y",
            "http://",
            "prometheus:9090",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
    }
}
