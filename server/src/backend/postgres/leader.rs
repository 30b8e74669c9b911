//! Elections on PostgreSQL: one advisory lock per job, held by a
//! dedicated session connection per node (`backend/leader.rs` has the
//! design, its guarantees and its limits).
//!
//! Why a dedicated connection, not one from the pool: the lock belongs to
//! the session, so losing the connection must release it (a pooled
//! connection outlives its user), and a pooled connection handed to
//! someone else would carry the lock, or an `unlock`, with it.
//!
//! The session is set up so that PostgreSQL notices a dead leader by
//! itself:
//! - TCP keepalive, both ends: the client probes after 5 s idle, every
//!   1 s, 3 probes (`keepalives_*`); the server the same
//!   (`tcp_keepalives_idle/interval/count`) and gives up on unacknowledged
//!   data after 5 s (`tcp_user_timeout`). A node that vanishes from the
//!   network loses the lock in about 8 s. (On a Unix socket these do not
//!   apply and PostgreSQL ignores them.)
//! - `idle_session_timeout`, set when the session starts leading to
//!   `ElectionConfig::leader_idle_timeout`: a leader that stops checking
//!   (partitioned, or its process paused while the kernel still answers
//!   keepalives) loses its session and the lock within that time.
//! - `client_connection_check_interval` (1 s): while a statement of the
//!   session runs (a term bump waiting for a row), PostgreSQL also checks
//!   that the client is still there, so a node that died mid-statement
//!   loses the lock about as fast as an idle one, not when the statement
//!   ends.
//! - `lock_timeout`, the election's `check_timeout`: no statement of the
//!   session waits behind another's lock for longer than the node waits
//!   for it. The one that can, the term bump, waits for a fenced write in
//!   flight (below); past the timeout PostgreSQL cancels it, the try
//!   fails and the node closes the session, so a stuck writer cannot keep
//!   the advisory lock held by a session nobody is waiting on.
//!
//! Each acquisition bumps the job's term in `leases` in the same session
//! right after taking the lock; a fenced write ([`PgBackend::fenced`])
//! reads that row `FOR SHARE` in its own transaction and goes ahead only
//! under the newest term. A new leader's bump waits for a fenced write in
//! flight to commit, so no write of an old term commits after a newer term
//! was acquired.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{PgBackend, PgTls};
use crate::backend::StoreError;
use crate::backend::leader::{
    Action, Checked, ElectionConfig, Elector, Job, LeaderTerm, Leadership, Observation, Tried,
    decide, fence_admits,
};
use crate::backend::presence::NodeId;

/// Client-side TCP keepalive of the dedicated session: first probe after
/// this much silence...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// ...then one probe this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// ...and the connection is dead after this many unanswered.
const KEEPALIVE_RETRIES: u32 = 3;

/// The server side of the same, plus `tcp_user_timeout` (ms).
const SERVER_KEEPALIVE: &str = "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 1; \
     SET tcp_keepalives_count = 3; SET tcp_user_timeout = 5000";

/// The session's `client_connection_check_interval`: how often PostgreSQL
/// checks, during a statement, that the client is still connected.
const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The statements that set a new session up beyond the keepalives: its
/// `lock_timeout` is `timeout` (the election's `check_timeout`).
fn session_setup(timeout: Duration) -> String {
    format!(
        "{SERVER_KEEPALIVE}; SET lock_timeout = {}",
        timeout.as_millis().max(1)
    )
}

/// Limits of a fenced write's transaction: the longest it may sit idle
/// between statements, and the longest one statement may run. A new
/// leader's term bump waits behind a fenced write in flight (its
/// `lock_timeout` makes it retry), so these bound how long a stalled old
/// leader can delay failover; a live leader's alert or nudge write takes
/// milliseconds.
const FENCED_LIMITS: &str = "SET LOCAL idle_in_transaction_session_timeout = '15s'; \
     SET LOCAL statement_timeout = '60s'";

/// The oldest PostgreSQL (`server_version_num`) with
/// `idle_session_timeout`, which a leading session relies on.
const MIN_SERVER_VERSION: i32 = 140_000;

/// How the elector reaches PostgreSQL: the pool's settings, for its own
/// connections.
#[derive(Clone, Debug)]
pub(crate) struct SessionSettings {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

/// The dedicated connection: the client and the task driving its socket.
struct Session {
    client: tokio_postgres::Client,
    driver: JoinHandle<()>,
}

impl Session {
    /// Connects with the settings above (`timeout` also becomes its
    /// `lock_timeout`); fails after `timeout`, and when the server is older
    /// than PostgreSQL 14 or (with TLS) does not speak TLS.
    async fn open(
        settings: &SessionSettings,
        job: Job,
        node: &NodeId,
        timeout: Duration,
    ) -> Result<Session, StoreError> {
        let mut config = settings.tls.enforce(settings.config.clone());
        config
            .application_name(format!("outrider leader {} {node}", job.name()))
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        let connect = async {
            let (client, driver) = match &settings.tls {
                PgTls::Disable => {
                    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                    (client, tokio::spawn(drive(connection)))
                }
                PgTls::Rustls(tls) => {
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                    let (client, connection) = config.connect(tls).await?;
                    (client, tokio::spawn(drive(connection)))
                }
            };
            let session = Session { client, driver };
            let version: i32 = session
                .client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await?
                .get(0);
            if version < MIN_SERVER_VERSION {
                return Err(StoreError::Config(format!(
                    "PostgreSQL server version {version} cannot hold elections: it needs {MIN_SERVER_VERSION} (14) or newer, for idle_session_timeout"
                )));
            }
            session
                .client
                .batch_execute(&session_setup(timeout))
                .await?;
            // On its own: PostgreSQL refuses it where the kernel cannot
            // report a closed socket (Windows); there the keepalives and
            // the idle timeout remain, so elections go on without it.
            if let Err(e) = session
                .client
                .batch_execute(&format!(
                    "SET client_connection_check_interval = {}",
                    CLIENT_CHECK_INTERVAL.as_millis()
                ))
                .await
            {
                warn!(
                    job = job.name(),
                    "the election session cannot set client_connection_check_interval \
                     (a node that dies mid-statement keeps the lock until the keepalives \
                     notice): {e}"
                );
            }
            Ok::<_, StoreError>(session)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(session) => session.map_err(|e| super::no_tls(e, &config)),
            Err(_) => Err(StoreError::Timeout {
                what: "connecting the election session",
                after: timeout,
            }),
        }
    }

    /// Ends the session now: drops the client (PostgreSQL ends the
    /// session, releasing its locks, when it reads the close) and awaits
    /// the driver, aborting it when the socket does not close in time.
    async fn close(self, timeout: Duration) {
        let Session { client, mut driver } = self;
        drop(client);
        // Already awaited to its end by the elector's select: polling a
        // finished task again would panic.
        if driver.is_finished() {
            return;
        }
        if tokio::time::timeout(timeout, &mut driver).await.is_err() {
            driver.abort();
            let _ = driver.await;
        }
    }
}

/// Drives a connection until it closes; its end is how the elector learns
/// at once that its session is gone.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        warn!("election session closed: {e}");
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Tries the lock on `session` and, when taken, bumps the term and arms
/// `idle_session_timeout`. Any failure is [`Tried::Failed`]: the caller
/// drops the session, and with it a lock taken before the failure.
async fn try_acquire(session: &Session, job: Job, node: &NodeId, config: &ElectionConfig) -> Tried {
    let attempt = async {
        let client = &session.client;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&job.key()])
            .await?
            .get(0);
        if !locked {
            return Ok::<_, StoreError>(Tried::Busy);
        }
        let term: i64 = client
            .query_one(
                "INSERT INTO leases (job, holder_node, term, acquired_at_ms) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (job) DO UPDATE SET term = leases.term + 1,
                     holder_node = excluded.holder_node, acquired_at_ms = excluded.acquired_at_ms
                 RETURNING term",
                &[&job.name(), &node.as_str(), &now_ms()],
            )
            .await?
            .get(0);
        client
            .batch_execute(&format!(
                "SET idle_session_timeout = {}",
                config.leader_idle_timeout.as_millis()
            ))
            .await?;
        Ok(Tried::Acquired(term))
    };
    match tokio::time::timeout(config.check_timeout, attempt).await {
        Ok(Ok(tried)) => tried,
        Ok(Err(e)) => {
            warn!(job = job.name(), "taking the lock failed: {e}");
            Tried::Failed
        }
        Err(_) => {
            warn!(job = job.name(), "taking the lock timed out");
            Tried::Failed
        }
    }
}

/// A leader's check: the session answers a query within the timeout.
/// While it lives the lock is ours: only its session's end or an unlock
/// on it releases an advisory lock, and nothing else uses the session.
async fn check(client: &tokio_postgres::Client, timeout: Duration) -> Checked {
    match tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await {
        Ok(Ok(_)) => Checked::Alive,
        Ok(Err(_)) => Checked::Lost,
        Err(_) => Checked::TimedOut,
    }
}

/// Waits `d`, or less when `stop` is cancelled.
async fn pause(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// The election loop of one job on one node: observe, [`decide`], act.
async fn elect(
    settings: Arc<SessionSettings>,
    job: Job,
    node: NodeId,
    config: ElectionConfig,
    stop: CancellationToken,
    tx: watch::Sender<Option<LeaderTerm>>,
) {
    let mut session: Option<Session> = None;
    let opening = crate::backend::outage::OutageLog::default();
    let mut held: Option<LeaderTerm> = None;
    loop {
        let observation = if stop.is_cancelled() {
            Observation::Shutdown
        } else if let Some(s) = session.as_mut().filter(|_| held.is_some()) {
            let client = &s.client;
            tokio::select! {
                biased;
                _ = stop.cancelled() => Observation::Shutdown,
                // The socket closed (terminated, server gone): at once.
                _ = &mut s.driver => Observation::Checked(Checked::Lost),
                checked = async {
                    tokio::time::sleep(config.check_interval).await;
                    check(client, config.check_timeout).await
                } => Observation::Checked(checked),
            }
        } else {
            // A follower's session that closed meanwhile (an idle or
            // terminated backend) is replaced before trying, not after a
            // failed try and another retry interval.
            if session.as_ref().is_some_and(|s| s.driver.is_finished()) {
                session = None;
            }
            // Cancelled by a stop mid-way, the session may hold a lock
            // taken just before: `Stop` closes it, which releases it.
            let attempt = async {
                if session.is_none() {
                    let what = format!("opening the election session of {}", job.name());
                    match Session::open(&settings, job, &node, config.check_timeout).await {
                        Ok(s) => {
                            opening.ok(&what);
                            session = Some(s);
                        }
                        Err(e) => {
                            opening.failed(&what, &e);
                        }
                    }
                }
                match &session {
                    Some(s) => try_acquire(s, job, &node, &config).await,
                    None => Tried::Failed,
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => Observation::Shutdown,
                tried = attempt => Observation::Tried(tried),
            }
        };
        match decide(held.is_some(), &observation) {
            Action::StepUp => {
                let Observation::Tried(Tried::Acquired(term)) = observation else {
                    unreachable!("decide steps up only on an acquisition")
                };
                let term = LeaderTerm {
                    job,
                    node: node.clone(),
                    term,
                };
                info!(job = job.name(), term = term.term, "leading");
                held = Some(term.clone());
                tx.send_replace(Some(term));
            }
            Action::Stay => {}
            Action::Retry => pause(config.retry, &stop).await,
            Action::Reconnect => {
                if let Some(s) = session.take() {
                    s.close(config.check_timeout).await;
                }
                pause(config.retry, &stop).await;
            }
            Action::StepDown => {
                // Cancel the job first: every moment it runs without the
                // lock is a moment it may overlap the next leader.
                tx.send_replace(None);
                warn!(
                    job = job.name(),
                    ?observation,
                    "stepped down: lost the election session"
                );
                held = None;
                if let Some(s) = session.take() {
                    s.close(config.check_timeout).await;
                }
                pause(config.retry, &stop).await;
            }
            Action::Stop { release } => {
                tx.send_replace(None);
                if let Some(s) = session.take() {
                    if release {
                        let key = job.key();
                        let unlock = async {
                            s.client
                                .execute("SELECT pg_advisory_unlock($1)", &[&key])
                                .await
                        };
                        match tokio::time::timeout(config.check_timeout, unlock).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => warn!(job = job.name(), "unlocking on stop: {e}"),
                            Err(_) => warn!(job = job.name(), "unlocking on stop timed out"),
                        }
                    }
                    s.close(config.check_timeout).await;
                }
                return;
            }
        }
    }
}

impl PgBackend {
    /// Joins `job`'s election as `node` (see [`Backend::elect`]): spawns
    /// the election task, so it needs a tokio runtime.
    ///
    /// [`Backend::elect`]: crate::backend::Backend::elect
    pub fn elect(&self, job: Job, node: NodeId, config: ElectionConfig) -> Elector {
        let (tx, leadership) = Leadership::channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(elect(
            self.session.clone(),
            job,
            node,
            config,
            stop.clone(),
            tx,
        ));
        Elector::new(leadership, stop, Some(task))
    }

    /// Runs `write` in a transaction that commits only while `term` is the
    /// job's newest: a leader's write for its job that a newer leader
    /// makes fail. Fails with [`StoreError::Fenced`] (nothing written)
    /// when another node acquired the job since, or as `write` fails.
    pub async fn fenced<R, F>(&self, term: &LeaderTerm, write: F) -> Result<R, StoreError>
    where
        F: for<'t> FnOnce(
            &'t tokio_postgres::Transaction<'t>,
        ) -> BoxFuture<'t, Result<R, StoreError>>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The lease row's lock below holds up a new leader's term bump, so
        // this transaction must not outlive a stalled leader (a paused
        // process, a lost network): PostgreSQL ends it when it idles or a
        // statement runs too long, freeing the row (FENCED_LIMITS).
        tx.batch_execute(FENCED_LIMITS).await?;
        // FOR SHARE: a new leader's term bump waits for this transaction,
        // so it commits either before the bump or not at all.
        let current: Option<i64> = tx
            .query_opt(
                "SELECT term FROM leases WHERE job = $1 FOR SHARE",
                &[&term.job.name()],
            )
            .await?
            .map(|row| row.get(0));
        if !fence_admits(term.term, current) {
            return Err(StoreError::Fenced {
                job: term.job.name(),
                term: term.term,
                current,
            });
        }
        let out = write(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
