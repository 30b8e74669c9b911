//! Elections against a real PostgreSQL (`outrider-pgtest`): every "node"
//! is its own `PgBackend` (its own pool and election sessions) in this
//! process, contending for the same advisory lock in one fresh database.
//!
//! Every test has a database of its own, and an advisory lock belongs to
//! its database (PostgreSQL keys it by the database's oid as well, see
//! `holder`), so tests running in parallel never contend for a job's lock
//! even though they elect the same [`JOB`]
//! (`tests_in_other_databases_do_not_contend_for_the_same_job` checks it).
//!
//! Conditions are awaited with a generous [`DEADLINE`], never slept for,
//! and no test relies on something happening within a short window: the
//! timeouts a test does rely on (a leader stepping down before PostgreSQL
//! ends its session) are many times what they need on an idle machine, and
//! a node that lost the lock and must not take it back at once (a
//! "paused" old leader) retries only after [`PAUSED`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::backend::StoreError;
use crate::backend::leader::{ElectionConfig, Job, LeaderTerm, Leadership};
use crate::backend::{PgBackend, PgTls};

/// Generous, for a loaded 2-core CI machine: a failure here means a
/// condition never came.
const DEADLINE: Duration = Duration::from_secs(60);

/// Fast elections for tests: quick retries and checks, but a check (and a
/// connect, a try) may take seconds before a leader steps down, so a
/// loaded machine does not make a leader lose the lock the test did not
/// take from it.
const FAST: ElectionConfig = ElectionConfig {
    retry: Duration::from_millis(20),
    check_interval: Duration::from_millis(20),
    check_timeout: Duration::from_secs(5),
    leader_idle_timeout: Duration::from_secs(10),
};

/// The retry of an old leader that must not take the lock back while the
/// test looks at its successor: longer than any test (a stop cancels it).
const PAUSED: Duration = Duration::from_secs(600);

const JOB: Job = Job::Retention;

async fn database() -> outrider_pgtest::TestDb {
    outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap()
}

async fn node_backend(db: &outrider_pgtest::TestDb) -> PgBackend {
    PgBackend::with_config(db.config.clone(), PgTls::Disable, 2)
        .await
        .unwrap()
}

/// A plain connection for the test's own queries (pg_locks, terminate).
async fn admin(db: &outrider_pgtest::TestDb) -> (tokio_postgres::Client, JoinHandle<()>) {
    let (client, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    (
        client,
        tokio::spawn(async move { connection.await.unwrap() }),
    )
}

/// The backend pid holding `job`'s advisory lock in this database, if any.
async fn holder(admin: &tokio_postgres::Client, job: Job) -> Option<i32> {
    admin
        .query_opt(
            "SELECT pid FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((classid::bigint << 32) | objid::bigint) = $1",
            &[&job.key()],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// The holder and term `leases` records for `job`, if it was ever taken.
async fn lease(admin: &tokio_postgres::Client, job: Job) -> Option<(String, i64)> {
    admin
        .query_opt(
            "SELECT holder_node, term FROM leases WHERE job = $1",
            &[&job.name()],
        )
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `cond` until it holds.
async fn until<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    within(what, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Counts the jobs running on all nodes at once; any second one is a
/// violation of the election.
#[derive(Clone, Default)]
struct Jobs {
    running: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    overlapped: Arc<AtomicBool>,
}

type JobFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Jobs {
    fn job(&self) -> impl FnMut(LeaderTerm, CancellationToken) -> JobFuture + Send + use<> {
        let jobs = self.clone();
        move |_term, cancel| {
            let jobs = jobs.clone();
            Box::pin(async move {
                if jobs.running.fetch_add(1, Ordering::SeqCst) != 0 {
                    jobs.overlapped.store(true, Ordering::SeqCst);
                }
                jobs.started.fetch_add(1, Ordering::SeqCst);
                cancel.cancelled().await;
                jobs.running.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

/// A node running the job while it leads.
struct Node {
    leadership: Leadership,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Node {
    fn start(backend: &PgBackend, name: &str, config: ElectionConfig, jobs: &Jobs) -> Node {
        let elector = backend.elect(JOB, name.parse().unwrap(), config);
        let leadership = elector.leadership();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (shutdown, job) = (shutdown.clone(), jobs.job());
            async move { elector.run_while_leader(&shutdown, job).await }
        });
        Node {
            leadership,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within("the node to stop", self.task).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_nodes_run_the_job_on_one_node_at_a_time_across_handovers() {
    let db = database().await;
    let backends = [
        node_backend(&db).await,
        node_backend(&db).await,
        node_backend(&db).await,
    ];
    let jobs = Jobs::default();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&backends[i], &format!("n{i}"), FAST, &jobs))
        .collect();
    let mut last_term = 0;
    for round in 1..=8 {
        // Someone leads and runs the job; exactly one node says it leads.
        until("a leader running the job", || async {
            jobs.started() >= round
        })
        .await;
        assert_eq!(
            jobs.started(),
            round,
            "the job started on more than one node"
        );
        let leaders: Vec<usize> = (0..3)
            .filter(|&i| nodes[i].leadership.is_leader())
            .collect();
        assert_eq!(leaders.len(), 1, "round {round}");
        let term = nodes[leaders[0]].leadership.current().unwrap();
        assert!(
            term.term > last_term,
            "terms count up: {} after {last_term}",
            term.term
        );
        last_term = term.term;
        // The leader shuts down: the job ends, the lock goes, a
        // restarted node joins in its place.
        let i = leaders[0];
        let old = std::mem::replace(
            &mut nodes[i],
            Node::start(&backends[i], &format!("n{i}"), FAST, &jobs),
        );
        old.stop().await;
    }
    until("the last leader's job", || async { jobs.started() == 9 }).await;
    for node in nodes {
        node.stop().await;
    }
    assert!(
        !jobs.overlapped.load(Ordering::SeqCst),
        "two jobs ran at once"
    );
    assert_eq!(jobs.running(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_steps_down_another_takes_over_and_the_old_terms_writes_are_refused() {
    let db = database().await;
    let (admin, admin_driver) = admin(&db).await;
    admin
        .batch_execute("CREATE TABLE work (node TEXT NOT NULL, term BIGINT NOT NULL)")
        .await
        .unwrap();
    let (a_backend, b_backend) = (node_backend(&db).await, node_backend(&db).await);
    let (a_jobs, b_jobs) = (Jobs::default(), Jobs::default());
    // a, once down, stays out of the race: b is the one to take over.
    let paused = ElectionConfig {
        retry: PAUSED,
        ..FAST
    };
    let a = Node::start(&a_backend, "a", paused, &a_jobs);
    let mut a_leadership = a.leadership.clone();
    let a_term = within("a to lead", a_leadership.leading()).await.unwrap();
    assert_eq!(a_term.term, 1);
    until("a's job", || async { a_jobs.running() == 1 }).await;
    let b = Node::start(&b_backend, "b", FAST, &b_jobs);

    // PostgreSQL ends a's election session: a notices, cancels its job.
    let pid = holder(&admin, JOB).await.expect("a holds the lock");
    assert!(
        admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get::<_, bool>(0)
    );
    within("a to step down", a_leadership.ended(&a_term)).await;
    until("a's job to be cancelled", || async {
        a_jobs.running() == 0
    })
    .await;

    // b takes over under the next term and runs the job.
    let mut b_leadership = b.leadership.clone();
    let b_term = within("b to lead", b_leadership.leading()).await.unwrap();
    assert_eq!((b_term.node.as_str(), b_term.term), ("b", 2));
    until("b's job", || async { b_jobs.running() == 1 }).await;

    // a, paused through all that, still holds term 1: its write is
    // refused; b's goes through.
    let write = |backend: &PgBackend, term: LeaderTerm| {
        let backend = backend.clone();
        async move {
            backend
                .fenced(&term.clone(), move |tx| {
                    Box::pin(async move {
                        tx.execute(
                            "INSERT INTO work (node, term) VALUES ($1, $2)",
                            &[&term.node.as_str(), &term.term],
                        )
                        .await?;
                        Ok(())
                    })
                })
                .await
        }
    };
    match write(&a_backend, a_term.clone()).await {
        Err(StoreError::Fenced {
            job: "retention",
            term: 1,
            current: Some(2),
        }) => {}
        other => panic!("a's stale write was not fenced: {other:?}"),
    }
    write(&b_backend, b_term.clone()).await.unwrap();
    let rows: Vec<(String, i64)> = admin
        .query("SELECT node, term FROM work", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [("b".to_owned(), 2)]);
    let stored: (String, i64) = admin
        .query_one(
            "SELECT holder_node, term FROM leases WHERE job = 'retention'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(stored, ("b".to_owned(), 2));

    // a follows again, and never ran alongside b's job after stepping down.
    assert!(!a.leadership.is_leader());
    a.stop().await;
    b.stop().await;
    drop(admin);
    admin_driver.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_for_a_job_never_acquired_is_fenced() {
    let db = database().await;
    let backend = node_backend(&db).await;
    let term = LeaderTerm {
        job: Job::Nudges,
        node: "a".parse().unwrap(),
        term: 1,
    };
    let out = backend
        .fenced(&term, |_tx| Box::pin(async { Ok(()) }))
        .await;
    assert!(
        matches!(
            out,
            Err(StoreError::Fenced {
                job: "nudges",
                term: 1,
                current: None
            })
        ),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_releases_the_lock_before_stop_returns() {
    let db = database().await;
    let (admin, _driver) = admin(&db).await;
    let backend = node_backend(&db).await;
    let jobs = Jobs::default();
    let a = Node::start(&backend, "a", FAST, &jobs);
    until("a's job", || async { jobs.running() == 1 }).await;
    assert!(holder(&admin, JOB).await.is_some());
    a.stop().await;
    // Unlocked, not left to a timeout: free the moment stop returned.
    assert_eq!(holder(&admin, JOB).await, None);
    assert_eq!(jobs.running(), 0);
    // The next node takes it at its first try.
    let b = Node::start(&backend, "b", FAST, &jobs);
    until("b's job", || async { jobs.started() == 2 }).await;
    assert_eq!(b.leadership.current().unwrap().term, 2);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_silent_past_its_idle_timeout_loses_the_lock_to_another_node() {
    let db = database().await;
    let (admin, _driver) = admin(&db).await;
    let (a_backend, b_backend) = (node_backend(&db).await, node_backend(&db).await);
    // a checks too rarely for its idle timeout: PostgreSQL ends its
    // session, as it would for a paused or partitioned leader; and it does
    // not try again while the test runs.
    let silent = ElectionConfig {
        check_interval: Duration::from_secs(600),
        leader_idle_timeout: Duration::from_millis(300),
        retry: PAUSED,
        ..FAST
    };
    let (a_jobs, b_jobs) = (Jobs::default(), Jobs::default());
    let a = Node::start(&a_backend, "a", silent, &a_jobs);
    let mut a_leadership = a.leadership.clone();
    // a's term from the lease row, which stays when a loses the lock: its
    // leadership may be over before this test gets to look at it.
    until("a to take the lock", || async {
        lease(&admin, JOB).await.is_some()
    })
    .await;
    assert_eq!(lease(&admin, JOB).await, Some(("a".to_owned(), 1)));
    let a_term = LeaderTerm {
        job: JOB,
        node: "a".parse().unwrap(),
        term: 1,
    };
    let b = Node::start(&b_backend, "b", FAST, &b_jobs);
    let mut b_leadership = b.leadership.clone();
    let b_term = within("b to take over", b_leadership.leading())
        .await
        .unwrap();
    assert_eq!(b_term.term, 2);
    // a learns it at once from its closed socket, not at its next check
    // (600 s away).
    within("a to step down", a_leadership.ended(&a_term)).await;
    assert!(!a.leadership.is_leader());
    until("a's job to be cancelled", || async {
        a_jobs.running() == 0
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// A Unix-socket proxy in front of the cluster that can be frozen: it then
/// forwards nothing more but keeps every connection open, as a network
/// partition does (neither end sees a close). It can also be cut: every
/// connection closes and new ones are refused until it is healed, as when
/// PostgreSQL goes away and comes back.
struct Proxy {
    dir: tempfile::TempDir,
    freeze: CancellationToken,
    /// `Some`: up, and cancelling the token cuts the connections made
    /// under it; `None`: cut, refusing connections.
    up: Arc<std::sync::Mutex<Option<CancellationToken>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(dir.path().join(".s.PGSQL.5432")).unwrap();
        let upstream = outrider_pgtest::Cluster::shared()
            .unwrap_or_else(|e| panic!("{e}"))
            .socket_dir()
            .join(".s.PGSQL.5432");
        let freeze = CancellationToken::new();
        let up = Arc::new(std::sync::Mutex::new(Some(CancellationToken::new())));
        let task = tokio::spawn({
            let (freeze, up) = (freeze.clone(), up.clone());
            async move {
                // Dropped with the proxy's task: every piped connection
                // closes then.
                let mut pipes = tokio::task::JoinSet::new();
                loop {
                    let (down, _) = listener.accept().await.unwrap();
                    let Some(cut) = up.lock().unwrap().clone() else {
                        // Cut: the client sees its connection close.
                        continue;
                    };
                    let up = tokio::net::UnixStream::connect(&upstream).await.unwrap();
                    let (down_read, down_write) = down.into_split();
                    let (up_read, up_write) = up.into_split();
                    pipes.spawn(pipe(down_read, up_write, freeze.clone(), cut.clone()));
                    pipes.spawn(pipe(up_read, down_write, freeze.clone(), cut));
                }
            }
        });
        Proxy {
            dir,
            freeze,
            up,
            task,
        }
    }

    /// Closes every connection and refuses new ones.
    fn cut(&self) {
        if let Some(cut) = self.up.lock().unwrap().take() {
            cut.cancel();
        }
    }

    /// Accepts connections again.
    fn heal(&self) {
        *self.up.lock().unwrap() = Some(CancellationToken::new());
    }

    fn config(&self, db: &outrider_pgtest::TestDb) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(5432)
            .user(outrider_pgtest::SUPERUSER)
            .dbname(&db.name);
        config
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes one way until either end closes or `cut`; frozen, holds
/// both ends open and moves nothing.
async fn pipe(
    mut from: tokio::net::unix::OwnedReadHalf,
    mut to: tokio::net::unix::OwnedWriteHalf,
    freeze: CancellationToken,
    cut: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = cut.cancelled() => return,
            _ = freeze.cancelled() => std::future::pending().await,
            n = from.read(&mut buf) => n,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) if !freeze.is_cancelled() => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Ok(_) => std::future::pending().await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_and_the_lock_passes_on_when_postgresql_drops_its_session()
{
    let db = database().await;
    let (admin, _driver) = admin(&db).await;
    let proxy = Proxy::start();
    // a reaches PostgreSQL through the proxy; b directly.
    let a_backend = PgBackend::with_config(proxy.config(&db), PgTls::Disable, 2)
        .await
        .unwrap();
    let b_backend = node_backend(&db).await;
    // a steps down within a check (2 s) of the freeze; PostgreSQL ends its
    // session only after the idle timeout: the gap the test looks at is
    // many times what a's step-down and the test's queries need.
    let config = ElectionConfig {
        check_timeout: Duration::from_secs(2),
        leader_idle_timeout: Duration::from_secs(12),
        ..FAST
    };
    let (a_jobs, b_jobs) = (Jobs::default(), Jobs::default());
    let a = Node::start(&a_backend, "a", config, &a_jobs);
    let mut a_leadership = a.leadership.clone();
    let a_term = within("a to lead", a_leadership.leading()).await.unwrap();
    until("a's job", || async { a_jobs.running() == 1 }).await;
    let a_pid = holder(&admin, JOB).await.expect("a holds the lock");
    let b = Node::start(&b_backend, "b", config, &b_jobs);

    proxy.freeze.cancel();
    // a's check times out: it steps down and cancels its job...
    within("a to step down", a_leadership.ended(&a_term)).await;
    until("a's job to be cancelled", || async {
        a_jobs.running() == 0
    })
    .await;
    // ...while PostgreSQL, seeing no close, still holds a's session and
    // lock: nobody leads for a while (a gap, never two leaders).
    assert_eq!(holder(&admin, JOB).await, Some(a_pid));
    assert!(!b.leadership.is_leader());
    // Then a's session idles past its idle_session_timeout: PostgreSQL
    // ends it and b takes over.
    let mut b_leadership = b.leadership.clone();
    let b_term = within("b to take over", b_leadership.leading())
        .await
        .unwrap();
    assert_eq!(b_term.term, a_term.term + 1);
    until("b's job", || async { b_jobs.running() == 1 }).await;
    assert!(!a.leadership.is_leader());
    assert!(!a_jobs.overlapped.load(Ordering::SeqCst));
    b.stop().await;
    drop(proxy);
    a.stop().await;
}

/// Starts a fenced write under `term` that inserts its term into `work`,
/// then holds its transaction open until `release` (or its sender is
/// dropped), runs one more statement and commits; returns once the write
/// has passed the fence.
async fn held_fenced_write(
    backend: &PgBackend,
    term: &LeaderTerm,
    release: tokio::sync::oneshot::Receiver<()>,
) -> JoinHandle<Result<(), StoreError>> {
    let (inside_tx, inside) = tokio::sync::oneshot::channel::<()>();
    let write = tokio::spawn({
        let (backend, term) = (backend.clone(), term.clone());
        async move {
            backend
                .fenced(&term.clone(), move |tx| {
                    Box::pin(async move {
                        tx.execute("INSERT INTO work (term) VALUES ($1)", &[&term.term])
                            .await?;
                        inside_tx.send(()).unwrap();
                        let _ = release.await;
                        tx.execute("SELECT 1", &[]).await?;
                        Ok(())
                    })
                })
                .await
        }
    });
    within("the write to pass the fence", inside).await.unwrap();
    write
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leaders_term_waits_for_the_old_leaders_fenced_write_in_flight() {
    let db = database().await;
    let (admin, _driver) = admin(&db).await;
    admin
        .batch_execute("CREATE TABLE work (term BIGINT NOT NULL)")
        .await
        .unwrap();
    let (a_backend, b_backend) = (node_backend(&db).await, node_backend(&db).await);
    // b's try must wait for the row lock, not time out (its lock_timeout
    // is its check_timeout).
    let patient = ElectionConfig {
        check_timeout: DEADLINE,
        ..FAST
    };
    // a, once down, does not take the lock back before b.
    let paused = ElectionConfig {
        retry: PAUSED,
        ..FAST
    };
    let (a_jobs, b_jobs) = (Jobs::default(), Jobs::default());
    let a = Node::start(&a_backend, "a", paused, &a_jobs);
    let mut a_leadership = a.leadership.clone();
    let a_term = within("a to lead", a_leadership.leading()).await.unwrap();

    // a's fenced write passes the fence, writes, and waits before commit.
    let (go_on, go_on_rx) = tokio::sync::oneshot::channel::<()>();
    let write = held_fenced_write(&a_backend, &a_term, go_on_rx).await;

    // a loses its session; b takes the lock but its term bump waits on
    // the row a's write holds.
    let pid = holder(&admin, JOB).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    within("a to step down", a_leadership.ended(&a_term)).await;
    let b = Node::start(&b_backend, "b", patient, &b_jobs);
    until("b's term bump to wait for a's write", || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'outrider leader retention b' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(!b.leadership.is_leader());

    // a's write commits under term 1, before term 2 exists; then b leads.
    go_on.send(()).unwrap();
    within("a's write", write).await.unwrap().unwrap();
    let mut b_leadership = b.leadership.clone();
    let b_term = within("b to lead", b_leadership.leading()).await.unwrap();
    assert_eq!(b_term.term, 2);
    // From now on a's term writes nothing.
    let late = a_backend
        .fenced(&a_term, |tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO work (term) VALUES (1)", &[])
                    .await?;
                Ok(())
            })
        })
        .await;
    assert!(
        matches!(
            late,
            Err(StoreError::Fenced {
                current: Some(2),
                ..
            })
        ),
        "{late:?}"
    );
    let terms: Vec<i64> = admin
        .query("SELECT term FROM work", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(terms, [1]);
    a.stop().await;
    b.stop().await;
}

/// A leader stalled inside a fenced write (a paused process: it never
/// commits nor closes) cannot hold up failover for longer than the fenced
/// transaction's idle limit: PostgreSQL ends that transaction, frees the
/// lease row, and a new leader with the usual short lock timeout takes
/// over; the stalled write commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stalled_in_a_fenced_write_does_not_hold_up_failover() {
    let db = database().await;
    let (admin, _driver) = admin(&db).await;
    admin
        .batch_execute("CREATE TABLE work (term BIGINT NOT NULL)")
        .await
        .unwrap();
    let (a_backend, b_backend) = (node_backend(&db).await, node_backend(&db).await);
    let paused = ElectionConfig {
        retry: PAUSED,
        ..FAST
    };
    let (a_jobs, b_jobs) = (Jobs::default(), Jobs::default());
    let a = Node::start(&a_backend, "a", paused, &a_jobs);
    let mut a_leadership = a.leadership.clone();
    let a_term = within("a to lead", a_leadership.leading()).await.unwrap();
    // Stalled: never released, holding the row.
    let (_never, never_rx) = tokio::sync::oneshot::channel::<()>();
    let write = held_fenced_write(&a_backend, &a_term, never_rx).await;
    let pid = holder(&admin, JOB).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    within("a to step down", a_leadership.ended(&a_term)).await;
    // b keeps FAST's short lock timeout: it retries until PostgreSQL ends
    // a's idle transaction, then leads under the next term.
    let b = Node::start(&b_backend, "b", FAST, &b_jobs);
    let mut b_leadership = b.leadership.clone();
    let b_term = within("b to lead", b_leadership.leading()).await.unwrap();
    assert_eq!(b_term.term, a_term.term + 1);
    let count: i64 = admin
        .query_one("SELECT count(*) FROM work", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "the stalled write committed nothing");
    write.abort();
    a.stop().await;
    b.stop().await;
}

/// Over TCP with TLS (a cluster of its own): the election session is
/// encrypted like the pool's, names itself, and leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_over_tls_holds_the_lock_on_an_encrypted_named_session() {
    let (cluster, cert_pem) = crate::backend::tests::tls_cluster();
    let db = cluster.database().await.unwrap();
    let tls = PgTls::with_ca_pem(Some(&cert_pem)).unwrap();
    let backend = PgBackend::with_config(cluster.tcp_config(&db.name), tls, 1)
        .await
        .unwrap();
    let jobs = Jobs::default();
    let a = Node::start(&backend, "a", FAST, &jobs);
    until("a's job", || async { jobs.running() == 1 }).await;
    // The test's own connection over the socket.
    let (admin, _driver) = admin(&db).await;
    let pid = holder(&admin, JOB).await.expect("a holds the lock");
    let row = admin
        .query_one(
            "SELECT s.ssl, a.application_name FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid) WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, String>(1)),
        (true, "outrider leader retention a".to_owned())
    );
    a.stop().await;
    assert_eq!(holder(&admin, JOB).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgresql_goes_away_the_leader_steps_down_and_a_node_leads_again_when_it_is_back() {
    let db = database().await;
    let (admin, _driver) = admin(&db).await;
    let proxy = Proxy::start();
    let (a_backend, b_backend) = (
        PgBackend::with_config(proxy.config(&db), PgTls::Disable, 1)
            .await
            .unwrap(),
        PgBackend::with_config(proxy.config(&db), PgTls::Disable, 1)
            .await
            .unwrap(),
    );
    let jobs = Jobs::default();
    let a = Node::start(&a_backend, "a", FAST, &jobs);
    let mut a_leadership = a.leadership.clone();
    let a_term = within("a to lead", a_leadership.leading()).await.unwrap();
    let b = Node::start(&b_backend, "b", FAST, &jobs);
    until("a's job", || async { jobs.running() == 1 }).await;

    // Both nodes lose PostgreSQL: a's socket closes, it steps down at once.
    proxy.cut();
    within("a to step down", a_leadership.ended(&a_term)).await;
    until("the job to be cancelled", || async { jobs.running() == 0 }).await;
    // PostgreSQL saw the close and freed the lock, but nobody can reach it.
    until("the lock to be freed", || async {
        holder(&admin, JOB).await.is_none()
    })
    .await;
    assert!(!b.leadership.is_leader());

    // Back: the nodes reconnect and one leads under the next term.
    proxy.heal();
    until("a node to lead again", || async { jobs.running() == 1 }).await;
    let leaders: Vec<LeaderTerm> = [&a, &b]
        .iter()
        .filter_map(|n| n.leadership.current())
        .collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_eq!(leaders[0].term, a_term.term + 1);
    assert!(!jobs.overlapped.load(Ordering::SeqCst));
    a.stop().await;
    b.stop().await;
}

/// Why parallel tests may all elect [`JOB`]: one node in each of two
/// databases of the same cluster, both leading it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_in_other_databases_do_not_contend_for_the_same_job() {
    let (one, two) = (database().await, database().await);
    let (one_jobs, two_jobs) = (Jobs::default(), Jobs::default());
    let a = Node::start(&node_backend(&one).await, "a", FAST, &one_jobs);
    let b = Node::start(&node_backend(&two).await, "b", FAST, &two_jobs);
    until("both to run the job", || async {
        one_jobs.running() == 1 && two_jobs.running() == 1
    })
    .await;
    assert_eq!(a.leadership.current().unwrap().term, 1);
    assert_eq!(b.leadership.current().unwrap().term, 1);
    a.stop().await;
    b.stop().await;
}

/// The election session is opened with a `lock_timeout` (the election's
/// `check_timeout`) and a `client_connection_check_interval`: read back on
/// a session opened as the elector opens it. (Its TCP keepalives read as
/// zero here, on a Unix socket.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_session_bounds_lock_waits_and_checks_for_a_dead_client() {
    let db = database().await;
    let backend = node_backend(&db).await;
    let node = "a".parse().unwrap();
    let timeout = Duration::from_millis(2500);
    let session = Session::open(&backend.session, JOB, &node, timeout)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut shown = Vec::new();
    for name in [
        "lock_timeout",
        "client_connection_check_interval",
        "application_name",
    ] {
        let row = session
            .client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap();
        shown.push((name, row.get::<_, String>(0)));
    }
    assert_eq!(
        shown,
        [
            ("lock_timeout", "2500ms".to_owned()),
            ("client_connection_check_interval", "1s".to_owned()),
            ("application_name", "outrider leader retention a".to_owned()),
        ]
    );
    session.close(DEADLINE).await;
}

/// With TLS the election session, like the pool, refuses a server that
/// does not speak it: here the plain cluster's socket, where tokio-postgres'
/// default `sslmode` would have gone on in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_session_requires_tls_when_tls_is_configured() {
    let db = database().await;
    let settings = super::SessionSettings {
        config: db.config.clone(),
        tls: PgTls::with_ca_pem(None).unwrap(),
    };
    let node = "a".parse().unwrap();
    match Session::open(&settings, JOB, &node, DEADLINE).await {
        Ok(_) => panic!("connected in plain text"),
        Err(StoreError::NoTls { .. }) => {}
        Err(e) => panic!("{e}"),
    }
}
