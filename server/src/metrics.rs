//! The metric side of the server: ingest counters and the Graphite queue
//! (fed by [`crate::ingest`]), the series query API, the Prometheus exposition, Graphite forwarding and
//! retention.
//!
//! | route                        | auth                      | module          |
//! |------------------------------|---------------------------|-----------------|
//! | `GET /api/v1/series`         | admin                     | `query`         |
//! | `GET /api/v1/series/query`   | admin                     | `query`         |
//! | `GET /metrics`               | see [`MetricsAccess`]     | [`prometheus`]  |
//!
//! `/metrics` exposes fingerprints, host names, check names and values,
//! nothing that allows changing anything. It is open without a token only
//! while the server listens on loopback (a local Prometheus); bound to any
//! other address it needs `--metrics-token(-file)` and answers 401 without
//! one ([`MetricsAccess`]). With a token it requires
//! `Authorization: Bearer <token>` (Prometheus: `authorization:
//! { credentials_file: … }` in the scrape config).
//!
//! Background tasks ([`spawn`]): the retention loop and, when configured,
//! the Graphite sender, both on the server's task tracker and stopped by
//! its shutdown token. The remote_write worker ([`remote_write`]) needs its
//! disk queue opened first, so the server's start opens and spawns it.

pub mod graphite;
pub mod prometheus;
pub mod query;
pub mod remote_write;
pub mod retention;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::get;
use outrider_protocol::Fingerprint;

use crate::AppState;
use crate::ingest::names::Refusal;
use crate::ingest::samples::SampleRefusal;
use crate::store::EnrollmentRefusal;

/// Days raw perfdata points are kept before they are folded into rollups.
pub const DEFAULT_RAW_RETENTION_DAYS: u32 = 7;
/// Days five-minute rollups are kept.
pub const DEFAULT_ROLLUP_RETENTION_DAYS: u32 = 400;
/// Days check results (state, output) are kept; each check's latest result
/// is kept however old.
pub const DEFAULT_RESULTS_RETENTION_DAYS: u32 = 7;
/// Seconds between two retention passes.
pub const DEFAULT_RETENTION_INTERVAL_SECS: u64 = 600;
/// First component of every Graphite metric path.
pub const DEFAULT_GRAPHITE_PREFIX: &str = "outrider";
/// Lines the Graphite queue holds while the carbon host is unreachable;
/// the oldest are dropped beyond it.
pub const DEFAULT_GRAPHITE_QUEUE_LINES: usize = 100_000;

/// Metric storage and output settings (flattened into the server's flags).
#[derive(Clone, Debug, clap::Args)]
pub struct MetricsConfig {
    /// Days raw perfdata points are kept before being folded into
    /// five-minute rollups (min, max, mean, count).
    #[arg(long, default_value_t = DEFAULT_RAW_RETENTION_DAYS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub raw_retention_days: u32,
    /// Days five-minute rollups are kept; at least the raw retention.
    #[arg(long, default_value_t = DEFAULT_ROLLUP_RETENTION_DAYS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rollup_retention_days: u32,
    /// Days check results are kept (each check's latest is always kept).
    #[arg(long, default_value_t = DEFAULT_RESULTS_RETENTION_DAYS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub results_retention_days: u32,
    /// Seconds between two retention passes.
    #[arg(long, default_value_t = DEFAULT_RETENTION_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_interval_secs: u64,
    /// Carbon plaintext receiver (`host:port`) to forward every perfdata
    /// sample to; no forwarding when absent.
    #[arg(long, env = "OUTRIDER_GRAPHITE_ADDR")]
    pub graphite_addr: Option<String>,
    /// First component of the Graphite paths
    /// (`<prefix>.<agent>.<check>.<label>`).
    #[arg(long, default_value = DEFAULT_GRAPHITE_PREFIX)]
    pub graphite_prefix: String,
    /// Lines queued for Graphite at most; the oldest are dropped (and
    /// counted) when the carbon host cannot keep up.
    #[arg(long, default_value_t = DEFAULT_GRAPHITE_QUEUE_LINES)]
    pub graphite_queue_lines: usize,
    /// Distinct perfdata series (check and label) one agent may have;
    /// samples that would create more are dropped, counted, and reported
    /// as a WARNING result `outrider.series_limit` of that agent.
    #[arg(long, default_value_t = crate::store::DEFAULT_MAX_SERIES_PER_AGENT,
          value_parser = parse_max_series)]
    pub max_series_per_agent: usize,
    /// Bearer token `GET /metrics` requires. Without one, `/metrics` is
    /// open only when the server listens on a loopback address, and
    /// answers 401 otherwise.
    #[arg(long, env = "OUTRIDER_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// File holding the `/metrics` token (mode 0600 or stricter), instead
    /// of `--metrics-token`; read once at start.
    #[arg(
        long,
        env = "OUTRIDER_METRICS_TOKEN_FILE",
        conflicts_with = "metrics_token"
    )]
    pub metrics_token_file: Option<PathBuf>,
    /// Prometheus remote_write receiver to forward every result state,
    /// perfdata value and metric sample to, e.g.
    /// `http://prometheus:9090/api/v1/write`; no forwarding when absent.
    /// Requests wait in a disk queue under the data directory until the
    /// receiver answers.
    #[arg(long, env = "OUTRIDER_REMOTE_WRITE_URL")]
    pub remote_write_url: Option<String>,
    /// Bytes the remote_write disk queue may hold while the receiver is
    /// away or slow; beyond it the oldest requests are dropped (and
    /// counted). At least 1 MiB.
    #[arg(long, default_value_t = remote_write::DEFAULT_QUEUE_BYTES)]
    pub remote_write_queue_bytes: u64,
    /// Samples per remote_write request (1 to 100,000).
    #[arg(long, default_value_t = remote_write::DEFAULT_BATCH_SAMPLES)]
    pub remote_write_batch_samples: u32,
    /// Milliseconds a partial remote_write batch waits before it is queued
    /// (10 to 60,000).
    #[arg(long, default_value_t = remote_write::DEFAULT_FLUSH_INTERVAL_MS)]
    pub remote_write_flush_interval_ms: u64,
    /// Seconds one remote_write request may take before it is retried.
    #[arg(long, default_value_t = remote_write::DEFAULT_TIMEOUT_SECS)]
    pub remote_write_timeout_secs: u64,
    /// File holding a bearer token (mode 0600 or stricter) sent with every
    /// remote_write request; read once at start.
    #[arg(long, env = "OUTRIDER_REMOTE_WRITE_BEARER_TOKEN_FILE")]
    pub remote_write_bearer_token_file: Option<PathBuf>,
    /// User name for HTTP basic auth on remote_write requests, with
    /// `--remote-write-basic-auth-password-file`; instead of a bearer token.
    #[arg(long, env = "OUTRIDER_REMOTE_WRITE_BASIC_AUTH_USER")]
    pub remote_write_basic_auth_user: Option<String>,
    /// File holding the basic auth password (mode 0600 or stricter); read
    /// once at start.
    #[arg(long, env = "OUTRIDER_REMOTE_WRITE_BASIC_AUTH_PASSWORD_FILE")]
    pub remote_write_basic_auth_password_file: Option<PathBuf>,
    /// Send the remote_write credentials over plain `http://` to a host
    /// that is not loopback (a trusted network). Without it, that is a
    /// config error: anyone on the path could read the token or password.
    #[arg(long)]
    pub remote_write_allow_insecure_credentials: bool,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            raw_retention_days: DEFAULT_RAW_RETENTION_DAYS,
            rollup_retention_days: DEFAULT_ROLLUP_RETENTION_DAYS,
            results_retention_days: DEFAULT_RESULTS_RETENTION_DAYS,
            retention_interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
            graphite_addr: None,
            graphite_prefix: DEFAULT_GRAPHITE_PREFIX.to_owned(),
            graphite_queue_lines: DEFAULT_GRAPHITE_QUEUE_LINES,
            max_series_per_agent: crate::store::DEFAULT_MAX_SERIES_PER_AGENT,
            metrics_token: None,
            metrics_token_file: None,
            remote_write_url: None,
            remote_write_queue_bytes: remote_write::DEFAULT_QUEUE_BYTES,
            remote_write_batch_samples: remote_write::DEFAULT_BATCH_SAMPLES,
            remote_write_flush_interval_ms: remote_write::DEFAULT_FLUSH_INTERVAL_MS,
            remote_write_timeout_secs: remote_write::DEFAULT_TIMEOUT_SECS,
            remote_write_bearer_token_file: None,
            remote_write_basic_auth_user: None,
            remote_write_basic_auth_password_file: None,
            remote_write_allow_insecure_credentials: false,
        }
    }
}

fn parse_max_series(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a whole number of series, at least 1"
        )),
    }
}

/// A metric setting that cannot work; each names its flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsConfigError {
    #[error(
        "--rollup-retention-days ({rollup}) must be at least --raw-retention-days ({raw}): rollups are made from raw points"
    )]
    RollupsShorterThanRaw { raw: u32, rollup: u32 },
    #[error("--graphite-addr {0:?} must be host:port, e.g. carbon.example:2003")]
    GraphiteAddr(String),
    #[error(
        "--graphite-prefix {0:?} must be at most 128 bytes of dot-separated components of A-Z, a-z, 0-9, '_', '-'"
    )]
    GraphitePrefix(String),
    #[error("--graphite-queue-lines must be at least 1")]
    GraphiteQueueEmpty,
    #[error("--metrics-token is empty; give a token or leave the flag out")]
    EmptyMetricsToken,
    #[error(
        "--remote-write-url {0:?} is not usable ({1}); give the receiver's full URL, e.g. http://prometheus:9090/api/v1/write"
    )]
    RemoteWriteUrl(String, String),
    #[error(
        "--remote-write-url must not carry a user name or password (user:password@host): the URL is logged; give basic auth with --remote-write-basic-auth-user and --remote-write-basic-auth-password-file, or a token with --remote-write-bearer-token-file"
    )]
    RemoteWriteUrlCredentials,
    #[error("--remote-write-queue-bytes ({0}) must be at least 1048576 (1 MiB)")]
    RemoteWriteQueueBytes(u64),
    #[error("--remote-write-batch-samples ({0}) must be between 1 and 100000")]
    RemoteWriteBatchSamples(u32),
    #[error("--remote-write-flush-interval-ms ({0}) must be between 10 and 60000")]
    RemoteWriteFlushInterval(u64),
    #[error("--remote-write-timeout-secs must be at least 1")]
    RemoteWriteTimeout,
    #[error(
        "--remote-write-basic-auth-user and --remote-write-basic-auth-password-file go together, and not with --remote-write-bearer-token-file"
    )]
    RemoteWriteAuth,
    #[error(
        "--remote-write-url {0:?} is plain http to a host that is not loopback, so the remote_write credentials would cross the network readable: use an https:// URL, or add --remote-write-allow-insecure-credentials if the network is trusted"
    )]
    RemoteWriteInsecureCredentials(String),
}

impl MetricsConfig {
    /// Checks what clap cannot: relations between fields and formats.
    pub fn validate(&self) -> Result<(), MetricsConfigError> {
        if self.rollup_retention_days < self.raw_retention_days {
            return Err(MetricsConfigError::RollupsShorterThanRaw {
                raw: self.raw_retention_days,
                rollup: self.rollup_retention_days,
            });
        }
        if let Some(addr) = &self.graphite_addr {
            graphite::check_addr(addr)?;
        }
        graphite::check_prefix(&self.graphite_prefix)?;
        if self.graphite_queue_lines == 0 {
            return Err(MetricsConfigError::GraphiteQueueEmpty);
        }
        if self
            .metrics_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(MetricsConfigError::EmptyMetricsToken);
        }
        if let Some(url) = &self.remote_write_url {
            remote_write::check_url(url)?;
        }
        if self.remote_write_queue_bytes < remote_write::MIN_QUEUE_BYTES {
            return Err(MetricsConfigError::RemoteWriteQueueBytes(
                self.remote_write_queue_bytes,
            ));
        }
        if !(1..=remote_write::MAX_BATCH_SAMPLES).contains(&self.remote_write_batch_samples) {
            return Err(MetricsConfigError::RemoteWriteBatchSamples(
                self.remote_write_batch_samples,
            ));
        }
        if !remote_write::FLUSH_INTERVAL_MS.contains(&self.remote_write_flush_interval_ms) {
            return Err(MetricsConfigError::RemoteWriteFlushInterval(
                self.remote_write_flush_interval_ms,
            ));
        }
        if self.remote_write_timeout_secs == 0 {
            return Err(MetricsConfigError::RemoteWriteTimeout);
        }
        let basic = (
            self.remote_write_basic_auth_user.is_some(),
            self.remote_write_basic_auth_password_file.is_some(),
        );
        let bearer = self.remote_write_bearer_token_file.is_some();
        if matches!(basic, (true, false) | (false, true)) || (basic.0 && bearer) {
            return Err(MetricsConfigError::RemoteWriteAuth);
        }
        if let Some(url) = &self.remote_write_url
            && (basic.0 || bearer)
            && !self.remote_write_allow_insecure_credentials
            && !remote_write::protects_credentials(&remote_write::check_url(url)?)
        {
            return Err(MetricsConfigError::RemoteWriteInsecureCredentials(
                url.clone(),
            ));
        }
        Ok(())
    }
}

/// Ingest counters, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Results stored (resent duplicates not counted).
    pub results: AtomicU64,
    /// Perfdata samples stored as points.
    pub samples: AtomicU64,
    /// Agent messages of an unknown type, skipped (see `docs/protocol.md`).
    pub unknown_messages: AtomicU64,
    /// The unknown types seen so far (at most [`MAX_UNKNOWN_KINDS`]), so
    /// each is logged once.
    unknown_kinds: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Results not stored because of their check name, by
    /// [`Refusal::index`].
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Refusals already logged (see [`Counters::refused_result`]).
    refused_logged: std::sync::Mutex<RefusalLog>,
    /// Unknown agents refused enrollment, by
    /// [`EnrollmentRefusal::index`].
    pub enrollment_refused: [AtomicU64; EnrollmentRefusal::ALL.len()],
    /// Perfdata samples dropped by `--max-series-per-agent`.
    pub series_dropped: AtomicU64,
    /// Results dated more than `MAX_FUTURE_MS` ahead, clamped.
    pub future_clamped: AtomicU64,
    /// Metric samples (`AgentMessage::Samples`) stored as points.
    pub metric_samples: AtomicU64,
    /// Metric samples refused, by [`SampleRefusal::index`].
    pub samples_refused: [AtomicU64; SampleRefusal::ALL.len()],
}

/// Unknown message types remembered for logging once each.
const MAX_UNKNOWN_KINDS: usize = 64;

/// `(agent, name)` pairs of refused results remembered for logging once
/// each; beyond them, one line per [`REFUSAL_LOG_INTERVAL`].
const MAX_LOGGED_REFUSALS: usize = 1_024;

/// Least time between two refusal log lines once
/// [`MAX_LOGGED_REFUSALS`] pairs were logged.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Default)]
struct RefusalLog {
    seen: std::collections::HashSet<(Fingerprint, String)>,
    last_overflow_line: Option<std::time::Instant>,
}

impl Counters {
    /// Counts a skipped message of unknown type `kind`; true the first
    /// time `kind` is seen (log it then).
    pub fn unknown_message(&self, kind: &str) -> bool {
        self.unknown_messages.fetch_add(1, Ordering::Relaxed);
        let mut kinds = self.unknown_kinds.lock().unwrap_or_else(|p| p.into_inner());
        kinds.len() < MAX_UNKNOWN_KINDS && kinds.insert(kind.to_owned())
    }

    /// Counts an unknown agent refused enrollment for `why`.
    pub fn refused_enrollment(&self, why: EnrollmentRefusal) {
        self.enrollment_refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a result of `fp` refused for `why`; true when it should be
    /// logged: the first time for each agent and `name` (the caller cuts
    /// it short: it is remembered), then (once
    /// `MAX_LOGGED_REFUSALS` pairs are remembered) at most once per
    /// `REFUSAL_LOG_INTERVAL`, so a hostile agent cannot flood the log.
    pub fn refused_result(&self, why: Refusal, fp: &Fingerprint, name: &str) -> bool {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        let mut log = self
            .refused_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (fp.clone(), name.to_owned());
        if log.seen.contains(&key) {
            return false;
        }
        if log.seen.len() < MAX_LOGGED_REFUSALS {
            log.seen.insert(key);
            return true;
        }
        let due = log
            .last_overflow_line
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            log.last_overflow_line = Some(std::time::Instant::now());
        }
        due
    }
}

/// Who may read `GET /metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Anyone who can connect: the server listens on loopback only.
    Open,
    /// Requests with `Authorization: Bearer <token>`.
    Token(String),
    /// Nobody: the server listens beyond loopback and has no metrics
    /// token; every request is told how to configure one.
    Closed { listen: SocketAddr },
}

impl MetricsAccess {
    /// The rule for a server with `token` listening on `listen`. Without a
    /// token `/metrics` would hand fingerprints, host names and check
    /// output to anyone who can reach the port, so that is allowed on
    /// loopback only. Refusing to start instead would take the whole
    /// fleet's monitoring down over an exporter setting; a 401 naming the
    /// flag (and a warning at start) makes the scrape fail visibly.
    pub fn decide(token: Option<&str>, listen: SocketAddr) -> MetricsAccess {
        match token {
            Some(token) => MetricsAccess::Token(token.to_owned()),
            None if listen.ip().is_loopback() => MetricsAccess::Open,
            None => MetricsAccess::Closed { listen },
        }
    }
}

/// The metric side's shared state: one field of [`AppState`].
#[derive(Debug)]
pub struct Metrics {
    pub config: MetricsConfig,
    pub counters: Counters,
    /// Lines waiting for the Graphite sender, when forwarding is on.
    pub graphite: Option<Arc<graphite::Queue>>,
    /// Ingest's side of remote_write forwarding, when it is on; set by
    /// the server's start once the disk queue is open
    /// ([`remote_write::open`]).
    pub remote_write: Option<Arc<remote_write::Feed>>,
    /// Who may read `/metrics`.
    pub access: MetricsAccess,
}

impl Metrics {
    /// Validates `config` and prepares (but does not start) the outputs of
    /// a server listening on `listen` (the bound address).
    ///
    /// Fails with a sentence naming the bad flag.
    pub fn new(config: MetricsConfig, listen: SocketAddr) -> Result<Metrics, MetricsConfigError> {
        config.validate()?;
        let access = MetricsAccess::decide(config.metrics_token.as_deref(), listen);
        let graphite = config.graphite_addr.as_ref().map(|_| {
            Arc::new(graphite::Queue::new(
                config.graphite_prefix.clone(),
                config.graphite_queue_lines,
            ))
        });
        Ok(Metrics {
            config,
            counters: Counters::default(),
            graphite,
            remote_write: None,
            access,
        })
    }
}

/// Starts the retention loop (of the metrics, and of the results unless
/// the store is shared) and the Graphite sender on the server's task
/// tracker; both stop when the server's shutdown token is cancelled.
pub fn spawn(state: &Arc<AppState>) {
    let config = &state.metrics.config;
    // With several nodes the shared results are the `Retention`
    // singleton's (lib.rs); the metrics are this node's own.
    let parts = if state.store.is_shared() {
        retention::Parts::METRICS
    } else {
        retention::Parts::ALL
    };
    state.tasks.spawn(retention::run(
        state.store.clone(),
        retention::Policy::from_config(config),
        parts,
        state.shutdown.clone(),
    ));
    if let (Some(queue), Some(addr)) = (&state.metrics.graphite, &config.graphite_addr) {
        state.tasks.spawn(graphite::run(
            queue.clone(),
            addr.clone(),
            state.shutdown.clone(),
        ));
    }
}

/// Routes outside the admin token: `GET /metrics`.
pub fn public_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(prometheus::handler))
        .with_state(state)
}

/// Routes behind the admin token: the series API.
pub fn admin_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/series", get(query::list))
        .route("/api/v1/series/query", get(query::points))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_settings_name_their_flag() {
        let bad = MetricsConfig {
            raw_retention_days: 30,
            rollup_retention_days: 7,
            ..MetricsConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(MetricsConfigError::RollupsShorterThanRaw { raw: 30, rollup: 7 })
        ));
        let bad = MetricsConfig {
            graphite_addr: Some("carbon".into()),
            ..MetricsConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--graphite-addr")
        );
        let bad = MetricsConfig {
            metrics_token: Some(" ".into()),
            ..MetricsConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(MetricsConfigError::EmptyMetricsToken)
        ));
        assert!(MetricsConfig::default().validate().is_ok());
    }

    #[test]
    fn bad_remote_write_settings_name_their_flag() {
        let base = MetricsConfig::default;
        for (config, flag) in [
            (
                MetricsConfig {
                    remote_write_url: Some("prometheus:9090/api/v1/write".into()),
                    ..base()
                },
                "--remote-write-url",
            ),
            (
                MetricsConfig {
                    remote_write_url: Some("ftp://p/api/v1/write".into()),
                    ..base()
                },
                "--remote-write-url",
            ),
            (
                MetricsConfig {
                    remote_write_url: Some("http://:9090/api/v1/write".into()),
                    ..base()
                },
                "--remote-write-url",
            ),
            (
                MetricsConfig {
                    remote_write_url: Some("https://u:secret@vm.example/api/v1/write".into()),
                    ..base()
                },
                "--remote-write-basic-auth-password-file, or a token with --remote-write-bearer-token-file",
            ),
            (
                MetricsConfig {
                    remote_write_queue_bytes: 1000,
                    ..base()
                },
                "--remote-write-queue-bytes",
            ),
            (
                MetricsConfig {
                    remote_write_batch_samples: 0,
                    ..base()
                },
                "--remote-write-batch-samples",
            ),
            (
                MetricsConfig {
                    remote_write_batch_samples: 100_001,
                    ..base()
                },
                "--remote-write-batch-samples",
            ),
            (
                MetricsConfig {
                    remote_write_flush_interval_ms: 5,
                    ..base()
                },
                "--remote-write-flush-interval-ms",
            ),
            (
                MetricsConfig {
                    remote_write_timeout_secs: 0,
                    ..base()
                },
                "--remote-write-timeout-secs",
            ),
            (
                MetricsConfig {
                    remote_write_basic_auth_user: Some("u".into()),
                    ..base()
                },
                "--remote-write-basic-auth-password-file",
            ),
            (
                MetricsConfig {
                    remote_write_basic_auth_password_file: Some("p".into()),
                    ..base()
                },
                "--remote-write-basic-auth-user",
            ),
            (
                MetricsConfig {
                    remote_write_basic_auth_user: Some("u".into()),
                    remote_write_basic_auth_password_file: Some("p".into()),
                    remote_write_bearer_token_file: Some("t".into()),
                    ..base()
                },
                "not with --remote-write-bearer-token-file",
            ),
        ] {
            let err = config
                .validate()
                .map(|()| format!("{config:?} accepted"))
                .unwrap_or_else(|e| e.to_string());
            assert!(err.contains(flag), "{err}");
        }
        let good = MetricsConfig {
            remote_write_url: Some("https://vm.example:8428/api/v1/write".into()),
            remote_write_queue_bytes: remote_write::MIN_QUEUE_BYTES,
            remote_write_batch_samples: remote_write::MAX_BATCH_SAMPLES,
            ..base()
        };
        assert!(good.validate().is_ok());
    }

    #[test]
    fn credentials_go_over_plain_http_only_to_loopback_or_when_allowed() {
        #[derive(Clone, Copy, Debug)]
        enum Creds {
            None,
            Bearer,
            Basic,
        }
        for (url, creds, allow, ok) in [
            (
                "http://prometheus:9090/api/v1/write",
                Creds::None,
                false,
                true,
            ),
            (
                "http://prometheus:9090/api/v1/write",
                Creds::Bearer,
                false,
                false,
            ),
            (
                "http://prometheus:9090/api/v1/write",
                Creds::Basic,
                false,
                false,
            ),
            (
                "http://10.0.0.5:9090/api/v1/write",
                Creds::Bearer,
                false,
                false,
            ),
            (
                "http://[2001:db8::1]:9090/api/v1/write",
                Creds::Basic,
                false,
                false,
            ),
            // A name that merely starts like localhost is not loopback.
            (
                "http://localhost.example/api/v1/write",
                Creds::Bearer,
                false,
                false,
            ),
            (
                "http://prometheus:9090/api/v1/write",
                Creds::Bearer,
                true,
                true,
            ),
            (
                "http://prometheus:9090/api/v1/write",
                Creds::Basic,
                true,
                true,
            ),
            (
                "https://prometheus:9090/api/v1/write",
                Creds::Bearer,
                false,
                true,
            ),
            (
                "https://prometheus:9090/api/v1/write",
                Creds::Basic,
                false,
                true,
            ),
            (
                "http://127.0.0.1:9090/api/v1/write",
                Creds::Bearer,
                false,
                true,
            ),
            (
                "http://127.8.9.10:9090/api/v1/write",
                Creds::Basic,
                false,
                true,
            ),
            ("http://[::1]:9090/api/v1/write", Creds::Bearer, false, true),
            (
                "http://localhost:9090/api/v1/write",
                Creds::Basic,
                false,
                true,
            ),
            (
                "http://LOCALHOST:9090/api/v1/write",
                Creds::Bearer,
                false,
                true,
            ),
        ] {
            let config = MetricsConfig {
                remote_write_url: Some(url.into()),
                remote_write_bearer_token_file: matches!(creds, Creds::Bearer).then(|| "t".into()),
                remote_write_basic_auth_user: matches!(creds, Creds::Basic).then(|| "u".into()),
                remote_write_basic_auth_password_file: matches!(creds, Creds::Basic)
                    .then(|| "p".into()),
                remote_write_allow_insecure_credentials: allow,
                ..MetricsConfig::default()
            };
            match config.validate() {
                Ok(()) => assert!(ok, "{url} {creds:?} allow={allow}: accepted"),
                Err(MetricsConfigError::RemoteWriteInsecureCredentials(named)) if !ok => {
                    assert_eq!(named, url);
                    let text =
                        MetricsConfigError::RemoteWriteInsecureCredentials(named).to_string();
                    assert!(text.contains("--remote-write-allow-insecure-credentials"));
                    assert!(text.contains("https://"));
                }
                Err(e) => panic!("{url} {creds:?} allow={allow}: {e}"),
            }
        }
    }

    #[test]
    fn refusals_are_counted_always_and_logged_once_per_agent_and_name() {
        let counters = Counters::default();
        let a: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let b: Fingerprint = "1123456789abcdef0123".parse().unwrap();
        let nc = Refusal::NotConfigured;
        assert!(counters.refused_result(nc, &a, "x"));
        assert!(!counters.refused_result(nc, &a, "x"));
        assert!(counters.refused_result(Refusal::Reserved, &a, "y"));
        assert!(counters.refused_result(nc, &b, "x"));
        for i in 3..MAX_LOGGED_REFUSALS {
            assert!(counters.refused_result(nc, &a, &format!("n{i}")));
        }
        // Remembering no more pairs: one line per interval from now on.
        assert!(counters.refused_result(nc, &a, "new-1"));
        assert!(!counters.refused_result(nc, &a, "new-2"));
        assert!(!counters.refused_result(nc, &b, "x"));
        let total = MAX_LOGGED_REFUSALS as u64 + 4;
        assert_eq!(
            counters.refused[nc.index()].load(Ordering::Relaxed),
            total - 1
        );
        assert_eq!(
            counters.refused[Refusal::Reserved.index()].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn metrics_are_open_only_on_loopback_without_a_token() {
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap();
        for (token, listen, want) in [
            (None, "127.0.0.1:8470", MetricsAccess::Open),
            (None, "[::1]:8470", MetricsAccess::Open),
            (
                None,
                "0.0.0.0:8470",
                MetricsAccess::Closed {
                    listen: addr("0.0.0.0:8470"),
                },
            ),
            (
                None,
                "10.1.2.3:8470",
                MetricsAccess::Closed {
                    listen: addr("10.1.2.3:8470"),
                },
            ),
            (Some("t"), "0.0.0.0:8470", MetricsAccess::Token("t".into())),
            (
                Some("t"),
                "127.0.0.1:8470",
                MetricsAccess::Token("t".into()),
            ),
        ] {
            assert_eq!(
                MetricsAccess::decide(token, addr(listen)),
                want,
                "{token:?} {listen}"
            );
        }
    }
}
