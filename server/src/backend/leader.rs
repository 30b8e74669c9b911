//! Singletons: jobs that run on one node at a time (the presence sweep,
//! retention, alert evaluation, nudge scheduling), whichever backend the
//! server runs on.
//!
//! Each [`Job`] has its own election. A node takes part through an
//! [`Elector`] ([`Backend::elect`]), which publishes "am I leader for this
//! job, and under which term" as a [`Leadership`] watch;
//! [`Elector::run_while_leader`] runs the job's future only while the node
//! leads: it is cancelled (through a child of the server's shutdown token)
//! at once when leadership is lost, and started again when it is regained.
//!
//! - SQLite is one node: leadership is always held, under term 1, through
//!   the same interface, so the server's code is the same for both.
//! - PostgreSQL (`postgres/leader.rs`): a dedicated session connection per
//!   job and node tries `pg_try_advisory_lock(job.key())` every
//!   [`ElectionConfig::retry`]; the node leads while that session lives,
//!   checked every [`ElectionConfig::check_interval`]. Acquiring bumps the
//!   job's term in `leases(job, holder_node, term, acquired_at_ms)`.
//!
//! Guarantees and limits:
//! 1. At most one session holds a job's advisory lock; PostgreSQL releases
//!    it when that session ends (unlock, disconnect, `pg_terminate_backend`,
//!    a server-side timeout). So at most one node *believes with reason*
//!    that it leads.
//! 2. A node learns that it lost the lock only when it notices its session
//!    is gone: at once when the connection closes, otherwise at its next
//!    check (`check_interval`, failing after `check_timeout`). Until then
//!    an old leader may still be running its job while a new one starts:
//!    two jobs can overlap for that long. Writes that must not overlap are
//!    *fenced*: they carry the [`LeaderTerm`] and are refused
//!    ([`StoreError::Fenced`](super::StoreError::Fenced)) once a newer term was acquired
//!    (`PgBackend::fenced`). Jobs whose effects are idempotent or deduped
//!    by a unique key (alert delivery) need no fence.
//! 3. The other way round, a partition between a leader and PostgreSQL:
//!    the node steps down after a failed check, but the server keeps the
//!    session, and the lock, until it notices the session is dead: by TCP
//!    keepalive or `tcp_user_timeout` (set on the dedicated connection, see
//!    `postgres/leader.rs`), or by `idle_session_timeout`, which a leading
//!    session sets to [`ElectionConfig::leader_idle_timeout`] so a leader
//!    that stops checking (partitioned, or its process paused while the
//!    kernel still answers keepalives) loses the lock within that time. No
//!    node leads in between: a gap in availability, never two leaders.
//! 4. A graceful stop ([`Elector::run_while_leader`] returning on
//!    shutdown) waits for the job to end before unlocking, so the next
//!    leader never overlaps it and takes over at its next try, without
//!    waiting for any timeout.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Backend;
use super::presence::NodeId;

/// A job that runs on one node at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    /// Ending the sessions of silent nodes (`backend/presence.rs`).
    PresenceSweep,
    /// Retention of metrics and results (`metrics/retention.rs`).
    Retention,
    /// Alert rule evaluation (`alerts.rs`).
    AlertEvaluation,
    /// Nudge scheduling (`nudges.rs`).
    Nudges,
    /// Deleting release blobs no manifest references, on a shared
    /// database (`releases.rs`).
    ReleaseGc,
}

impl Job {
    /// Every job, for tests and start-up.
    pub const ALL: [Job; 5] = [
        Job::PresenceSweep,
        Job::Retention,
        Job::AlertEvaluation,
        Job::Nudges,
        Job::ReleaseGc,
    ];

    /// The job's advisory lock key: eight ASCII letters, like
    /// [`MIGRATION_LOCK`](super::MIGRATION_LOCK). Stable across versions: two servers of
    /// different versions sharing a database must contend for the same
    /// key, so a key never changes once released (a test pins them).
    pub const fn key(self) -> i64 {
        match self {
            Job::PresenceSweep => 0x6f75_7472_7377_6570, // "outrswep"
            Job::Retention => 0x6f75_7472_7265_746e,     // "outrretn"
            Job::AlertEvaluation => 0x6f75_7472_616c_7274, // "outralrt"
            Job::Nudges => 0x6f75_7472_6e75_6467,        // "outrnudg"
            Job::ReleaseGc => 0x6f75_7472_726c_6763,     // "outrrlgc"
        }
    }

    /// The job's name in `leases.job` and in logs; stable like the key.
    pub const fn name(self) -> &'static str {
        match self {
            Job::PresenceSweep => "presence-sweep",
            Job::Retention => "retention",
            Job::AlertEvaluation => "alert-evaluation",
            Job::Nudges => "nudges",
            Job::ReleaseGc => "release-gc",
        }
    }
}

/// A node's leadership of a job under one term: the fencing token its
/// writes for the job carry. Terms count up from 1 per job; each
/// acquisition, on any node, takes the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderTerm {
    pub job: Job,
    pub node: NodeId,
    pub term: i64,
}

/// The term under which SQLite, one node, leads every job.
pub const SQLITE_TERM: i64 = 1;

/// Whether a write fenced by term `mine` may go ahead when the job's
/// newest term is `current` (`None`: never acquired). Only the newest
/// term's holder may write: a paused old leader is refused once anyone
/// took over.
pub fn fence_admits(mine: i64, current: Option<i64>) -> bool {
    current == Some(mine)
}

/// Time settings of an election. The defaults suit production; tests
/// shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// How often a follower tries to take the lock (and reconnects after
    /// losing its session).
    pub retry: Duration,
    /// How often a leader checks that its session still lives.
    pub check_interval: Duration,
    /// How long a check (or a connect, or a try) may take before it
    /// counts as failed: a leader steps down.
    pub check_timeout: Duration,
    /// The leading session's `idle_session_timeout`: PostgreSQL ends the
    /// session, releasing the lock, when the leader has not checked for
    /// this long. Must exceed `check_interval` plus `check_timeout`.
    pub leader_idle_timeout: Duration,
}

/// A follower tries every 5 s.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(5);
/// A leader checks its session every second.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A check failing after 2 s makes the leader step down.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// PostgreSQL drops a leader silent for 5 s (five missed checks).
pub const DEFAULT_LEADER_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            retry: DEFAULT_RETRY,
            check_interval: DEFAULT_CHECK_INTERVAL,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            leader_idle_timeout: DEFAULT_LEADER_IDLE_TIMEOUT,
        }
    }
}

/// What a follower's attempt to take the lock gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tried {
    /// The lock is ours and the term was bumped to this.
    Acquired(i64),
    /// Another session holds the lock.
    Busy,
    /// No session, or it failed or timed out (connect, try or term bump).
    Failed,
}

/// What a leader's check of its session gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The session answered in time: the lock is still ours.
    Alive,
    /// The session is gone (the connection closed or the query failed).
    Lost,
    /// The session did not answer within `check_timeout`.
    TimedOut,
}

/// One thing an elector learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Shutdown,
    Tried(Tried),
    Checked(Checked),
}

/// What an elector does about an [`Observation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Publish the new term: the node leads.
    StepUp,
    /// Keep leading; check again after `check_interval`.
    Stay,
    /// Keep following on the same session; try again after `retry`.
    Retry,
    /// Follow; drop the session (it failed) and reconnect after `retry`.
    Reconnect,
    /// Stop leading at once: publish "not leader" (cancelling the job),
    /// drop the session, reconnect after `retry`.
    StepDown,
    /// Shut down: publish "not leader"; `release` unlocks first so the
    /// next leader need not wait for a timeout.
    Stop { release: bool },
}

/// The elector's decision; the I/O loop (`postgres/leader.rs`) only does
/// what it says. A failed check counts as lost: the node cannot prove it
/// still holds the lock, so it must not act as if it did.
pub fn decide(held: bool, observation: &Observation) -> Action {
    match (held, observation) {
        (held, Observation::Shutdown) => Action::Stop { release: held },
        (false, Observation::Tried(Tried::Acquired(_))) => Action::StepUp,
        (false, Observation::Tried(Tried::Busy)) => Action::Retry,
        (false, Observation::Tried(Tried::Failed)) => Action::Reconnect,
        (true, Observation::Checked(Checked::Alive)) => Action::Stay,
        (true, Observation::Checked(Checked::Lost | Checked::TimedOut)) => Action::StepDown,
        // Not produced by the loop (a leader does not try, a follower
        // does not check); answered safely all the same.
        (true, Observation::Tried(_)) => Action::Stay,
        (false, Observation::Checked(Checked::Alive)) => Action::Retry,
        (false, Observation::Checked(_)) => Action::Reconnect,
    }
}

/// "Am I leader for this job, and under which term": a watch an elector
/// publishes to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<Option<LeaderTerm>>,
}

impl Leadership {
    /// Leadership that never changes (SQLite: always `Some`).
    pub(crate) fn fixed(term: Option<LeaderTerm>) -> Leadership {
        let (tx, rx) = watch::channel(term);
        // A closed channel keeps its last value: receivers read it and
        // `changed` tells them nothing more will come.
        drop(tx);
        Leadership { rx }
    }

    pub(crate) fn channel() -> (watch::Sender<Option<LeaderTerm>>, Leadership) {
        let (tx, rx) = watch::channel(None);
        (tx, Leadership { rx })
    }

    /// The term this node leads under now, if it leads.
    pub fn current(&self) -> Option<LeaderTerm> {
        self.rx.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// Waits until the node leads and returns the term; `None` when the
    /// elector is gone without leading.
    pub async fn leading(&mut self) -> Option<LeaderTerm> {
        // An error means the elector is gone and its last word was "not
        // leader" (`wait_for` checks the current value first).
        self.rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// Waits until the node no longer leads under `term` (it stepped down,
    /// or a newer term replaced it). Never returns while the elector is
    /// gone and `term` was its last word (SQLite's fixed leadership).
    pub async fn ended(&mut self, term: &LeaderTerm) {
        if self
            .rx
            .wait_for(|now| now.as_ref() != Some(term))
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }
}

/// A node's part in one job's election; see the module documentation.
/// Dropping it without [`Elector::stop`] stops the election task too,
/// without waiting for it.
#[derive(Debug)]
pub struct Elector {
    leadership: Leadership,
    stop: CancellationToken,
    /// Stop the election when the elector is dropped unstopped.
    _stop_on_drop: tokio_util::sync::DropGuard,
    task: Option<JoinHandle<()>>,
}

impl Elector {
    pub(crate) fn new(
        leadership: Leadership,
        stop: CancellationToken,
        task: Option<JoinHandle<()>>,
    ) -> Elector {
        Elector {
            leadership,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            task,
        }
    }

    /// The watch of this node's leadership of the job.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Leaves the election: a leader unlocks, so another node takes over
    /// at its next try. Returns when the election task has ended.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!("election task failed: {e}");
        }
    }

    /// Runs `job` whenever this node leads, until `shutdown`, then leaves
    /// the election ([`Elector::stop`]).
    ///
    /// `job(term, cancel)` starts the job for one term; it must return
    /// soon after `cancel` is cancelled, which happens at once when the
    /// node stops leading under `term` and on `shutdown` (`cancel` is a
    /// child of `shutdown`). A job is awaited before another starts, and
    /// before the lock is released on shutdown, so one node never runs two
    /// and a graceful handover never overlaps. A job that returns on its
    /// own is not restarted until the node leads under a new term.
    pub async fn run_while_leader<F, Fut>(self, shutdown: &CancellationToken, mut job: F)
    where
        F: FnMut(LeaderTerm, CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut leadership = self.leadership();
        loop {
            let term = tokio::select! {
                // Shutdown first: a node still leading must not start the
                // job again after stopping it for shutdown.
                biased;
                _ = shutdown.cancelled() => break,
                term = leadership.leading() => term,
            };
            let Some(term) = term else {
                // The election task is gone (it only ends on stop).
                break;
            };
            let cancel = shutdown.child_token();
            let run = job(term.clone(), cancel.clone());
            tokio::pin!(run);
            tokio::select! {
                _ = &mut run => {
                    // Done for this term: wait for the next one.
                    tokio::select! {
                        _ = leadership.ended(&term) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
                _ = leadership.ended(&term) => {}
                _ = shutdown.cancelled() => {}
            }
            cancel.cancel();
            run.await;
        }
        self.stop().await;
    }
}

impl Backend {
    /// Joins `job`'s election as `node`. SQLite: leads at once, under term
    /// 1, for good. PostgreSQL: starts the election task (a dedicated
    /// session connection); see `postgres/leader.rs`.
    pub fn elect(&self, job: Job, node: NodeId, config: ElectionConfig) -> Elector {
        match self {
            Backend::Sqlite(_) => Elector::new(
                Leadership::fixed(Some(LeaderTerm {
                    job,
                    node,
                    term: SQLITE_TERM,
                })),
                CancellationToken::new(),
                None,
            ),
            Backend::Postgres(pg) => pg.elect(job, node, config),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backend::MIGRATION_LOCK;

    #[test]
    fn job_keys_and_names_are_pinned_and_unique() {
        // Changing a key breaks rolling upgrades: two versions would lead
        // at once. (job, key as ASCII, name)
        let cases = [
            (Job::PresenceSweep, *b"outrswep", "presence-sweep"),
            (Job::Retention, *b"outrretn", "retention"),
            (Job::AlertEvaluation, *b"outralrt", "alert-evaluation"),
            (Job::Nudges, *b"outrnudg", "nudges"),
            (Job::ReleaseGc, *b"outrrlgc", "release-gc"),
        ];
        assert_eq!(cases.len(), Job::ALL.len());
        for (job, ascii, name) in cases {
            assert_eq!(job.key(), i64::from_be_bytes(ascii), "{job:?}");
            assert_eq!(job.name(), name);
        }
        let keys: HashSet<i64> = Job::ALL.iter().map(|j| j.key()).collect();
        let names: HashSet<&str> = Job::ALL.iter().map(|j| j.name()).collect();
        assert_eq!(keys.len(), Job::ALL.len());
        assert_eq!(names.len(), Job::ALL.len());
        assert!(!keys.contains(&MIGRATION_LOCK));
        // Nor any other advisory lock of the server's.
        use crate::backend::postgres::{BLOB_PUT_LOCK, GC_LOCK, ROOT_LOCK};
        for lock in [BLOB_PUT_LOCK, ROOT_LOCK, GC_LOCK] {
            assert!(!keys.contains(&lock), "{lock:#x}");
        }
    }

    #[test]
    fn a_fenced_write_is_admitted_only_under_the_newest_term() {
        // (mine, current, admitted)
        let cases = [
            (1, Some(1), true),
            (1, Some(2), false),
            (3, Some(2), false),
            (1, None, false),
        ];
        for (mine, current, admitted) in cases {
            assert_eq!(fence_admits(mine, current), admitted, "{mine} {current:?}");
        }
    }

    #[test]
    fn decisions_by_table() {
        use Action::*;
        use Checked::*;
        use Observation::{Checked as C, Shutdown, Tried as T};
        let cases = [
            (false, T(Tried::Acquired(7)), StepUp),
            (false, T(Tried::Busy), Retry),
            (false, T(Tried::Failed), Reconnect),
            (true, C(Alive), Stay),
            (true, C(Lost), StepDown),
            (true, C(TimedOut), StepDown),
            (true, Shutdown, Stop { release: true }),
            (false, Shutdown, Stop { release: false }),
            (true, T(Tried::Acquired(7)), Stay),
            (true, T(Tried::Failed), Stay),
            (false, C(Alive), Retry),
            (false, C(Lost), Reconnect),
            (false, C(TimedOut), Reconnect),
        ];
        for (held, observation, action) in cases {
            assert_eq!(decide(held, &observation), action, "{held} {observation:?}");
        }
    }

    fn term(n: i64) -> LeaderTerm {
        LeaderTerm {
            job: Job::Retention,
            node: "a".parse().unwrap(),
            term: n,
        }
    }

    /// A job that counts how many of it run and waits for cancellation.
    fn counting(
        running: &Arc<AtomicUsize>,
        started: &Arc<AtomicUsize>,
    ) -> impl FnMut(
        LeaderTerm,
        CancellationToken,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    + Send
    + use<> {
        let (running, started) = (running.clone(), started.clone());
        move |_term, cancel| {
            let (running, started) = (running.clone(), started.clone());
            Box::pin(async move {
                assert_eq!(
                    running.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two jobs at once"
                );
                started.fetch_add(1, Ordering::SeqCst);
                cancel.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn the_job_runs_only_while_leading_and_restarts_on_a_new_term() {
        let (tx, leadership) = Leadership::channel();
        let elector = Elector::new(leadership, CancellationToken::new(), None);
        let (running, started) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn({
            let job = counting(&running, &started);
            let shutdown = shutdown.clone();
            async move { elector.run_while_leader(&shutdown, job).await }
        });
        tx.send_replace(Some(term(1)));
        until("the job to start", || running.load(Ordering::SeqCst) == 1).await;
        tx.send_replace(None);
        until("the job to stop", || running.load(Ordering::SeqCst) == 0).await;
        tx.send_replace(Some(term(2)));
        until("the job to restart", || started.load(Ordering::SeqCst) == 2).await;
        // A newer term without a gap restarts it too.
        tx.send_replace(Some(term(3)));
        until("the job to restart again", || {
            started.load(Ordering::SeqCst) == 3
        })
        .await;
        shutdown.cancel();
        runner.await.unwrap();
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_job_that_returns_waits_for_the_next_term_and_shutdown_still_stops_it() {
        let (tx, leadership) = Leadership::channel();
        let elector = Elector::new(leadership, CancellationToken::new(), None);
        let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let runner = tokio::spawn({
            let (ran, shutdown) = (ran.clone(), shutdown.clone());
            async move {
                elector
                    .run_while_leader(&shutdown, move |term, _cancel| {
                        ran.lock().unwrap().push(term.term);
                        async {}
                    })
                    .await
            }
        });
        tx.send_replace(Some(term(1)));
        until("the job to run", || ran.lock().unwrap().len() == 1).await;
        // Still term 1: nothing restarts it. A new term does, once.
        tx.send_replace(Some(term(1)));
        tx.send_replace(Some(term(2)));
        until("the job to run again", || ran.lock().unwrap().len() == 2).await;
        // Shutdown while waiting for the next term ends the runner.
        shutdown.cancel();
        runner.await.unwrap();
        assert_eq!(*ran.lock().unwrap(), [1, 2]);
    }

    #[tokio::test]
    async fn sqlite_always_leads_under_term_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("t.db"))
            .await
            .unwrap();
        let backend = Backend::Sqlite(super::super::SqliteBackend::new(store));
        let node: NodeId = "solo".parse().unwrap();
        for job in Job::ALL {
            let elector = backend.elect(job, node.clone(), ElectionConfig::default());
            let mut leadership = elector.leadership();
            assert!(leadership.is_leader());
            let expected = LeaderTerm {
                job,
                node: node.clone(),
                term: 1,
            };
            assert_eq!(leadership.leading().await, Some(expected));
            let (running, started) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let shutdown = CancellationToken::new();
            let runner = tokio::spawn({
                let job = counting(&running, &started);
                let shutdown = shutdown.clone();
                async move { elector.run_while_leader(&shutdown, job).await }
            });
            until("the job to start", || running.load(Ordering::SeqCst) == 1).await;
            shutdown.cancel();
            runner.await.unwrap();
            assert_eq!(
                (
                    started.load(Ordering::SeqCst),
                    running.load(Ordering::SeqCst)
                ),
                (1, 0)
            );
        }
    }
}
