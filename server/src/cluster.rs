//! The multi-node mode: several server processes ("nodes") sharing one
//! PostgreSQL database (docs/architecture.md, "Store backends" and
//! "Running several nodes").
//!
//! Without `--database` the server is one node on its SQLite file and
//! nothing here runs. With it, this module
//! - connects to the database ([`connect`]; TLS decided by [`tls_choice`])
//!   and names the node ([`node_id`]);
//! - heartbeats every [`HEARTBEAT_EVERY`]: the node's row, the sessions it
//!   holds, and the sessions it lost, which it closes ([`heartbeat`]);
//! - on the node leading [`Job::PresenceSweep`], ends the sessions no live
//!   node carries and reports those agents down ([`sweep`]), to the alert
//!   engine too (as lost, by their session's generation);
//! - on the node leading [`Job::AlertEvaluation`], runs the alert engine
//!   (`alerts::lead`, through [`singleton_with_term`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use outrider_protocol::api::Presence;
use tokio_postgres::config::{Host, SslMode};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::AppState;
use crate::alerts::SessionEvent;
use crate::backend::leader::{ElectionConfig, Job, LeaderTerm};
use crate::backend::presence::{NODE_SILENCE_MS, NodeId, PresenceStore};
use crate::backend::{PgBackend, PgTls};
use crate::store::now_ms;

/// How often a node heartbeats, and how often the sweep looks: well
/// within [`NODE_SILENCE_MS`], so a few late beats never end live sessions.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The node name of a server on its SQLite file: one node.
pub const SQLITE_NODE: &str = "local";

/// Settings of the multi-node mode.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterConfig {
    /// PostgreSQL database shared by several server nodes
    /// (`postgresql://user@host/db`, or libpq's `host=… dbname=…`). Without
    /// it the server keeps everything in its SQLite file, as one node.
    #[arg(
        long,
        env = "OUTRIDER_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database: Option<String>,
    /// File holding the `--database` URL (mode 0600 or stricter), instead of
    /// `--database`, whose password others could read in the process list.
    #[arg(
        long,
        env = "OUTRIDER_DATABASE_FILE",
        conflicts_with = "database",
        value_name = "FILE"
    )]
    pub database_file: Option<PathBuf>,
    /// PEM certificates of the CA that signed PostgreSQL's certificate. With
    /// it, connections require TLS; without it, TLS is required anyway off
    /// loopback and verified against the bundled web roots.
    #[arg(long, env = "OUTRIDER_DATABASE_CA_FILE", value_name = "FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Connections this node keeps to PostgreSQL.
    #[arg(long, default_value_t = crate::backend::postgres::DEFAULT_MAX_CONNECTIONS)]
    pub database_max_connections: usize,
    /// This node's name among the nodes (1 to 64 of `A-Z a-z 0-9 . _ -`).
    /// By default one is made of the host name on the first start and kept
    /// in `<data-dir>/node.id`.
    #[arg(long, env = "OUTRIDER_NODE_ID")]
    pub node_id: Option<NodeId>,
}

/// What the command line gives without flags (a derived `Default` would
/// give a pool of one connection to a server configured in code, on which
/// one slow statement holds up every other).
impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            database: None,
            database_file: None,
            database_ca_file: None,
            database_max_connections: crate::backend::postgres::DEFAULT_MAX_CONNECTIONS,
            node_id: None,
        }
    }
}

impl ClusterConfig {
    /// Whether a shared database is configured.
    pub fn is_shared(&self) -> bool {
        self.database.is_some() || self.database_file.is_some()
    }
}

/// Whether connections to PostgreSQL use TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsChoice {
    Plain,
    Required,
}

/// Why the database settings cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterConfigError {
    #[error(
        "--database-ca-file is given but the database is reached over a Unix socket, on which PostgreSQL never speaks TLS; drop one of the two"
    )]
    CaOnUnixSocket,
}

/// How to reach PostgreSQL at `hosts` when the URL says `ssl_mode` and a CA
/// file is (`ca_given`) or is not given:
/// - a CA file: TLS, required (a Unix socket cannot have it: refused);
/// - `sslmode=disable` in the URL: plain, as the operator wrote;
/// - `sslmode=require` (or stricter): TLS;
/// - otherwise plain only when every host is a Unix socket or loopback,
///   TLS required for any other: libpq's default, `prefer`, would go on in
///   plain text when a host answered that it has no TLS.
pub fn tls_choice(
    hosts: &[Host],
    ssl_mode: SslMode,
    ca_given: bool,
) -> Result<TlsChoice, ClusterConfigError> {
    let unix = hosts.iter().any(|h| matches!(h, Host::Unix(_)));
    if ca_given {
        return if unix {
            Err(ClusterConfigError::CaOnUnixSocket)
        } else {
            Ok(TlsChoice::Required)
        };
    }
    match ssl_mode {
        SslMode::Disable => Ok(TlsChoice::Plain),
        SslMode::Require => Ok(TlsChoice::Required),
        _ if hosts.iter().all(is_local) => Ok(TlsChoice::Plain),
        _ => Ok(TlsChoice::Required),
    }
}

/// Whether `host` is this machine: a Unix socket or a loopback name or
/// address. No host at all means libpq's default socket.
fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// Connects to the database of `config` and migrates it. `None` when no
/// database is configured (the SQLite file is the store).
pub async fn connect(config: &ClusterConfig) -> anyhow::Result<Option<PgBackend>> {
    let url = match (&config.database, &config.database_file) {
        (Some(url), _) => url.clone(),
        (None, Some(file)) => crate::auth::read_token_file(file).context("--database-file")?,
        (None, None) => return Ok(None),
    };
    let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
        anyhow::anyhow!("--database is not a PostgreSQL URL or key=value string: {e}")
    })?;
    let ca = config
        .database_ca_file
        .as_deref()
        .map(|file| {
            std::fs::read_to_string(file)
                .with_context(|| format!("reading --database-ca-file {}", file.display()))
        })
        .transpose()?;
    let hosts = match parsed.get_hosts() {
        [] => vec![Host::Unix(PathBuf::from("/var/run/postgresql"))],
        hosts => hosts.to_vec(),
    };
    let tls = match tls_choice(&hosts, parsed.get_ssl_mode(), ca.is_some())? {
        TlsChoice::Plain => PgTls::Disable,
        TlsChoice::Required => PgTls::with_ca_pem(ca.as_deref())?,
    };
    let pg = PgBackend::with_config(parsed, tls, config.database_max_connections)
        .await
        .context("connecting to the --database")?;
    Ok(Some(pg))
}

/// This node's id: `given`, else the one kept in `<data_dir>/node.id`,
/// else a new one made of the host name and a random suffix (two hosts
/// cloned from one image must not share it), kept there for the next
/// start so logs and leases name the node the same way.
pub fn node_id(given: Option<NodeId>, data_dir: &Path) -> anyhow::Result<NodeId> {
    if let Some(node) = given {
        return Ok(node);
    }
    let file = data_dir.join("node.id");
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            return text
                .trim()
                .parse()
                .with_context(|| format!("{} holds no usable node id", file.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut suffix = [0u8; 3];
    getrandom::fill(&mut suffix).context("no randomness for a node id")?;
    let node: NodeId = made_node_id(&host, suffix)
        .parse()
        .context("the node id made of the host name")?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{node}\n"))
        .and_then(|()| std::fs::rename(&tmp, &file))
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(node)
}

/// A node id of the host name `host` (its characters a node id may not
/// hold dropped, at most 57 kept) and six hex digits of `suffix`.
fn made_node_id(host: &str, suffix: [u8; 3]) -> String {
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(57)
        .collect();
    let host = if host.is_empty() { "node" } else { &host };
    format!("{host}-{:02x}{:02x}{:02x}", suffix[0], suffix[1], suffix[2])
}

/// Since when this node's heartbeats have been succeeding without a
/// failure (Unix ms; 0: the latest one failed, or none ran yet): what the
/// sweep asks before it ends anybody's sessions ([`may_sweep`]).
#[derive(Debug, Default)]
pub struct BeatHealth(AtomicI64);

impl BeatHealth {
    fn succeeded(&self, now_ms: i64) {
        let _ = self
            .0
            .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn failed(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Since when the heartbeats have been succeeding, if they are.
    pub fn healthy_since(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&at| at > 0)
    }
}

/// Whether a sweep at `now_ms` may end sessions, given since when this
/// node's own heartbeats have been succeeding. Only after a full
/// [`NODE_SILENCE_MS`] of them: after an outage of the database every
/// node's sessions look silent, and a sweep run before the other nodes'
/// first beats since would call every agent down and make every node drop
/// its sockets. Once this node has reached the database for that long, so
/// could every live node, and a session still silent is held by nobody.
pub fn may_sweep(healthy_since_ms: Option<i64>, now_ms: i64) -> bool {
    healthy_since_ms.is_some_and(|since| now_ms.saturating_sub(since) >= NODE_SILENCE_MS)
}

/// Election timing of the singleton jobs.
pub fn election_config() -> ElectionConfig {
    ElectionConfig::default()
}

/// Beats every [`HEARTBEAT_EVERY`] until `shutdown`: refreshes this node
/// and the sessions it holds; sessions the table says it lost (the agent
/// moved to another node, or a sweep ended them while this node could not
/// beat) are closed as replaced, writing nothing more.
pub async fn heartbeat(state: Arc<AppState>, shutdown: CancellationToken) {
    let backend = state.store.backend();
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leases = state.sessions.leases();
        match backend.heartbeat(&state.node, &leases, now_ms()).await {
            Ok(beat) => {
                state.beat_health.succeeded(now_ms());
                if failing {
                    info!(node = %state.node, "heartbeat stored again");
                    failing = false;
                }
                for lease in &beat.lost {
                    if state.sessions.lose(lease) {
                        info!(fingerprint = %lease.agent, "session taken by another node; closed here");
                    }
                }
            }
            Err(e) => {
                state.beat_health.failed();
                // Logged once per outage: beats are retried every tick.
                if !failing {
                    warn!(node = %state.node, "heartbeat failed (retried every {}s): {e}", HEARTBEAT_EVERY.as_secs());
                    failing = true;
                }
            }
        }
    }
}

/// The presence sweep, on the node leading it, until `cancel`: every
/// [`HEARTBEAT_EVERY`], ends the sessions silent for [`NODE_SILENCE_MS`]
/// (their node died or forgot them) and reports those agents down, unless
/// they are up on a newer session by then (`AgentStore::set_presence`).
/// It waits while this node's own heartbeats have not been succeeding for
/// a silence's length ([`may_sweep`]).
pub async fn sweep(state: Arc<AppState>, cancel: CancellationToken) {
    let backend = state.store.backend();
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        if !may_sweep(state.beat_health.healthy_since(), now) {
            continue;
        }
        let swept = match backend.sweep(now, NODE_SILENCE_MS).await {
            Ok(swept) => swept,
            Err(e) => {
                warn!("presence sweep failed (retried): {e}");
                continue;
            }
        };
        for s in swept {
            // The engine ignores it if the agent opened a newer session.
            state
                .alerts
                .presence(&s.agent, s.generation, SessionEvent::Lost, Vec::new())
                .await;
            match state.store.set_presence(&s.agent, Presence::Down).await {
                Ok(Some(at_ms)) => {
                    info!(fingerprint = %s.agent, node = %s.node, "agent down: its node went silent");
                    state.events.presence(&s.agent, Presence::Down, at_ms);
                }
                Ok(None) => {}
                Err(e) => warn!(fingerprint = %s.agent, "cannot record presence down: {e:#}"),
            }
        }
    }
}

/// Runs `job` while this node leads `kind`, until `shutdown` (on SQLite:
/// at once, for good).
pub async fn singleton<F, Fut>(state: Arc<AppState>, kind: Job, shutdown: CancellationToken, job: F)
where
    F: Fn(Arc<AppState>, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    singleton_with_term(state, kind, shutdown, move |state, _, cancel| {
        job(state, cancel)
    })
    .await;
}

/// [`singleton`] for a job that needs its term (fenced writes).
pub async fn singleton_with_term<F, Fut>(
    state: Arc<AppState>,
    kind: Job,
    shutdown: CancellationToken,
    job: F,
) where
    F: Fn(Arc<AppState>, LeaderTerm, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let elector = state
        .store
        .backend()
        .elect(kind, state.node.clone(), election_config());
    elector
        .run_while_leader(&shutdown, |term, cancel| {
            if state.store.is_shared() {
                info!(job = kind.name(), term = term.term, "leading");
            }
            job(state.clone(), term, cancel)
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(name: &str) -> Host {
        Host::Tcp(name.to_owned())
    }

    /// A server configured in code gets what one started without flags
    /// gets (the in-process tests run nodes configured in code).
    #[test]
    fn the_default_in_code_is_the_command_lines() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            cluster: ClusterConfig,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["outrider-server"])
            .unwrap()
            .cluster;
        let coded = ClusterConfig::default();
        assert_eq!(
            parsed.database_max_connections,
            coded.database_max_connections
        );
        assert_eq!(
            (parsed.database, parsed.database_file, parsed.node_id),
            (coded.database, coded.database_file, coded.node_id)
        );
    }

    #[test]
    fn tls_is_required_off_loopback_unless_disabled_by_name() {
        let socket = Host::Unix("/run/postgresql".into());
        // (hosts, sslmode, CA file, choice)
        let cases = [
            (
                vec![socket.clone()],
                SslMode::Prefer,
                false,
                Ok(TlsChoice::Plain),
            ),
            (
                vec![tcp("localhost")],
                SslMode::Prefer,
                false,
                Ok(TlsChoice::Plain),
            ),
            (
                vec![tcp("127.0.0.1")],
                SslMode::Prefer,
                false,
                Ok(TlsChoice::Plain),
            ),
            (
                vec![tcp("::1")],
                SslMode::Prefer,
                false,
                Ok(TlsChoice::Plain),
            ),
            (
                vec![tcp("db.internal")],
                SslMode::Prefer,
                false,
                Ok(TlsChoice::Required),
            ),
            (
                vec![tcp("10.0.0.5")],
                SslMode::Prefer,
                false,
                Ok(TlsChoice::Required),
            ),
            // One remote host among local ones needs TLS.
            (
                vec![tcp("localhost"), tcp("db2")],
                SslMode::Prefer,
                false,
                Ok(TlsChoice::Required),
            ),
            // The operator's words win.
            (
                vec![tcp("db.internal")],
                SslMode::Disable,
                false,
                Ok(TlsChoice::Plain),
            ),
            (
                vec![tcp("localhost")],
                SslMode::Require,
                false,
                Ok(TlsChoice::Required),
            ),
            // A CA file means TLS, whatever the URL says.
            (
                vec![tcp("localhost")],
                SslMode::Disable,
                true,
                Ok(TlsChoice::Required),
            ),
            (
                vec![socket],
                SslMode::Prefer,
                true,
                Err(ClusterConfigError::CaOnUnixSocket),
            ),
        ];
        for (hosts, mode, ca, expected) in cases {
            assert_eq!(
                tls_choice(&hosts, mode, ca),
                expected,
                "{hosts:?} {mode:?} {ca}"
            );
        }
    }

    #[test]
    fn a_sweep_waits_for_a_silences_length_of_good_heartbeats() {
        let now = 1_000_000;
        // (healthy since, may sweep)
        let cases = [
            (None, false),
            (Some(now), false),
            (Some(now - NODE_SILENCE_MS + 1), false),
            (Some(now - NODE_SILENCE_MS), true),
            (Some(1), true),
        ];
        for (since, expected) in cases {
            assert_eq!(may_sweep(since, now), expected, "{since:?}");
        }
        let health = BeatHealth::default();
        assert_eq!(health.healthy_since(), None);
        health.succeeded(5);
        health.succeeded(9);
        assert_eq!(health.healthy_since(), Some(5), "the first success counts");
        health.failed();
        assert_eq!(health.healthy_since(), None);
        health.succeeded(12);
        assert_eq!(health.healthy_since(), Some(12));
    }

    #[test]
    fn a_made_node_id_keeps_the_usable_part_of_the_host_name() {
        let cases = [
            ("web-1\n", "web-1-0a0b0c"),
            ("bad host!name", "badhostname-0a0b0c"),
            ("", "node-0a0b0c"),
            ("ünïcode", "ncode-0a0b0c"),
        ];
        for (host, expected) in cases {
            let made = made_node_id(host, [10, 11, 12]);
            assert_eq!(made, expected);
            assert!(made.parse::<NodeId>().is_ok());
        }
        let long = made_node_id(&"h".repeat(200), [0, 0, 0]);
        assert_eq!(long.len(), 64);
        assert!(long.parse::<NodeId>().is_ok());
    }

    #[test]
    fn the_node_id_is_kept_across_starts_and_a_given_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_id(None, dir.path()).unwrap();
        assert_eq!(node_id(None, dir.path()).unwrap(), first);
        let given: NodeId = "eu-1".parse().unwrap();
        assert_eq!(node_id(Some(given.clone()), dir.path()).unwrap(), given);
        std::fs::write(dir.path().join("node.id"), "no spaces allowed\n").unwrap();
        let err = format!("{:#}", node_id(None, dir.path()).unwrap_err());
        assert!(err.contains("holds no usable node id"), "{err}");
    }
}
