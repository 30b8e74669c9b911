//! The bus against a real PostgreSQL (a fresh database of the test
//! binary's `outrider-pgtest` cluster), with real tasks and connections:
//! several nodes' buses in one process, each with its own `LISTEN`
//! connection, sharing one database as separate server processes would.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{BusTasks, ListenConfig, PgBus};
use crate::backend::bus::{BusConfig, BusError, Incoming, Kind, Topic, now_ms};
use crate::backend::presence::{NODE_SILENCE_MS, NodeId, PresenceStore};
use crate::backend::{PgBackend, PgTls};

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often a started node heartbeats (the server's presence task: 5 s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

struct Db {
    backend: PgBackend,
    listen: ListenConfig,
    /// A plain connection for the test's own looks and faults.
    sql: tokio_postgres::Client,
}

async fn db() -> Db {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let backend = PgBackend::with_config(db.config.clone(), PgTls::Disable, 8)
        .await
        .unwrap();
    let (sql, conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    Db {
        backend,
        listen: ListenConfig {
            config: db.config,
            tls: PgTls::Disable,
        },
        sql,
    }
}

fn node(n: &str) -> NodeId {
    n.parse().unwrap()
}

/// A bus that never polls (an hour, busy or not): only notifications,
/// and the take right after (re)connecting, deliver its messages.
fn no_polling() -> BusConfig {
    BusConfig {
        poll_interval: Duration::from_secs(3600),
        busy_poll: Duration::from_secs(3600),
        ..BusConfig::default()
    }
}

fn run_now() -> Kind {
    "run_now".parse().unwrap()
}

/// Marks `n` alive in the presence area (as its heartbeat task would).
async fn alive(db: &Db, n: &str) {
    db.backend.heartbeat(&node(n), &[], now_ms()).await.unwrap();
}

/// A running node's bus, and what a responder did with its messages.
struct Node {
    bus: PgBus,
    shutdown: CancellationToken,
    tasks: BusTasks,
    responder: JoinSet<()>,
    broadcasts: mpsc::UnboundedReceiver<(NodeId, Topic, Vec<u8>)>,
}

impl Node {
    /// Starts node `n`'s bus with a responder answering every request
    /// `<n>:<payload>`, or failing it when the payload is `fail`.
    fn start(db: &Db, n: &str, config: BusConfig) -> Node {
        Node::start_with(db.listen.clone(), db, n, config)
    }

    /// [`Node::start`] with its own `LISTEN` settings.
    fn start_with(listen: ListenConfig, db: &Db, n: &str, config: BusConfig) -> Node {
        let shutdown = CancellationToken::new();
        let (bus, rx, tasks) = PgBus::start(
            db.backend.clone(),
            listen,
            node(n),
            config,
            shutdown.clone(),
        );
        let (btx, broadcasts) = mpsc::unbounded_channel();
        let mut responder = JoinSet::new();
        responder.spawn(respond(bus.clone(), rx, btx));
        responder.spawn(heartbeat(db.backend.clone(), node(n), shutdown.clone()));
        Node {
            bus,
            shutdown,
            tasks,
            responder,
            broadcasts,
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.tasks.join())
            .await
            .expect("the bus stops when cancelled");
        // The receiver's sender is gone with the tasks: the responder ends.
        while let Some(r) = self.responder.join_next().await {
            r.unwrap();
        }
    }
}

/// Keeps a started node alive in the presence area until it stops, as
/// the server's heartbeat task does: a test that runs longer than
/// `NODE_SILENCE_MS` on a loaded machine must not see its own nodes die.
async fn heartbeat(backend: PgBackend, n: NodeId, shutdown: CancellationToken) {
    loop {
        // A failed beat (PostgreSQL cut by a test) is retried next time.
        let _ = backend.heartbeat(&n, &[], now_ms()).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}

async fn respond(
    bus: PgBus,
    mut rx: mpsc::Receiver<Incoming>,
    broadcasts: mpsc::UnboundedSender<(NodeId, Topic, Vec<u8>)>,
) {
    while let Some(m) = rx.recv().await {
        match m {
            Incoming::Request(r) => {
                let result = if r.payload == b"fail" {
                    Err("the agent is not connected here")
                } else {
                    Ok([bus.node().as_str().as_bytes(), b":", &r.payload].concat())
                };
                let result = result.as_ref().map(Vec::as_slice).map_err(|e| *e);
                bus.reply(&r, result).await.unwrap();
            }
            Incoming::Broadcast(b) => {
                let _ = broadcasts.send((b.from, b.topic, b.payload));
            }
        }
    }
}

/// Waits until `cond` holds, checking every 10 ms; fails after
/// [`PATIENCE`].
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn rows(db: &Db) -> i64 {
    db.sql
        .query_one("SELECT count(*) FROM bus_messages", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Without polling: the notification alone wakes each side.
async fn a_request_reaches_its_node_and_the_reply_comes_back() {
    let db = db().await;
    alive(&db, "a").await;
    alive(&db, "b").await;
    let a = Node::start(&db, "a", no_polling());
    let b = Node::start(&db, "b", no_polling());
    let t = Duration::from_secs(5);
    let reply = a
        .bus
        .request(&node("b"), &run_now(), b"x", t)
        .await
        .unwrap();
    assert_eq!(reply, b"b:x");
    // And back the other way.
    let reply = b
        .bus
        .request(&node("a"), &run_now(), b"y", t)
        .await
        .unwrap();
    assert_eq!(reply, b"a:y");
    // A request that fails on its node fails at the caller with its text.
    match a.bus.request(&node("b"), &run_now(), b"fail", t).await {
        Err(BusError::Remote {
            node: n,
            kind,
            message,
        }) => {
            assert_eq!((n.as_str(), kind.as_str()), ("b", "run_now"));
            assert_eq!(message, "the agent is not connected here");
        }
        other => panic!("{other:?}"),
    }
    // Every row was taken.
    assert_eq!(rows(&db).await, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_at_once_notify_each_node_at_most_once_per_interval() {
    let db = db().await;
    for n in ["a", "b", "c"] {
        alive(&db, n).await;
    }
    let a = Node::start(&db, "a", no_polling());
    let b = Node::start(&db, "b", no_polling());
    let c = Node::start(&db, "c", no_polling());
    let per_node = 150;
    let mut calls = JoinSet::new();
    for i in 0..per_node * 2 {
        let bus = a.bus.clone();
        let target = node(if i % 2 == 0 { "b" } else { "c" });
        calls.spawn(async move {
            let payload = i.to_string();
            let reply = bus
                .request(
                    &target,
                    &run_now(),
                    payload.as_bytes(),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            assert_eq!(reply, format!("{target}:{i}").into_bytes());
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    // Requests went a → b, c; replies b, c → a. Each bus notified each
    // node at most once per 100 ms over the span it notified it.
    for (sender, targets) in [(&a, &["b", "c"][..]), (&b, &["a"]), (&c, &["a"])] {
        let stats = sender.bus.stats();
        let total: u64 = stats.notified.values().map(|r| r.count).sum();
        assert_eq!(stats.notifies, total);
        for t in targets {
            let r = &stats.notified[&node(t)];
            assert!(
                r.count <= (r.last_ms - r.first_ms) / 100 + 1,
                "{} → {t}: {r:?}",
                sender.bus.node()
            );
            assert!(r.min_gap_ms.is_none_or(|g| g >= 100), "{r:?}");
            // Coalesced: far fewer NOTIFYs than messages.
            assert!(r.count < per_node as u64, "{r:?}");
        }
    }
    assert_eq!(rows(&db).await, 0);
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_while_the_listen_connection_is_down_still_arrives() {
    let db = db().await;
    alive(&db, "a").await;
    alive(&db, "b").await;
    let a = Node::start(&db, "a", no_polling());
    let b = Node::start(&db, "b", no_polling());
    until("b listens", || async { b.bus.stats().listen_connects == 1 }).await;
    // Kill b's LISTEN connection: the NOTIFY of the next request is lost
    // (or reaches the new connection); without polling, the take right
    // after reconnecting finds it.
    let killed: i64 = db
        .sql
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
             FROM pg_stat_activity
             WHERE application_name = 'outrider-bus-b' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let t = Duration::from_secs(5);
    let reply = a
        .bus
        .request(&node("b"), &run_now(), b"1", t)
        .await
        .unwrap();
    assert_eq!(reply, b"b:1");
    until("b noticed the loss and listens again", || async {
        let s = b.bus.stats();
        s.listen_lost == 1 && s.listen_connects == 2
    })
    .await;
    let reply = a
        .bus
        .request(&node("b"), &run_now(), b"2", t)
        .await
        .unwrap();
    assert_eq!(reply, b"b:2");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_dead_node_fails_fast_with_the_node_named() {
    let db = db().await;
    alive(&db, "a").await;
    // c heartbeated 31 s ago; d never did.
    db.backend
        .heartbeat(&node("c"), &[], now_ms() - NODE_SILENCE_MS - 1_000)
        .await
        .unwrap();
    let a = Node::start(&db, "a", BusConfig::default());
    let long = Duration::from_secs(60);
    match a.bus.request(&node("c"), &run_now(), b"x", long).await {
        Err(BusError::NodeLost { node: n, silent_ms }) => {
            assert_eq!(n.as_str(), "c");
            assert!(silent_ms > NODE_SILENCE_MS, "{silent_ms}");
        }
        other => panic!("{other:?}"),
    }
    match a.bus.request(&node("d"), &run_now(), b"x", long).await {
        Err(BusError::UnknownNode { node: n }) => assert_eq!(n.as_str(), "d"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rows(&db).await, 0, "nothing was sent");
    // b is alive but its server hangs (no bus): a's request waits; then b
    // goes silent past the limit and the request fails fast, well before
    // its deadline of a minute.
    alive(&db, "b").await;
    let bus = a.bus.clone();
    let pending =
        tokio::spawn(async move { bus.request(&node("b"), &run_now(), b"x", long).await });
    until("the request is sent", || async { rows(&db).await == 1 }).await;
    db.sql
        .execute(
            "UPDATE nodes SET last_seen_ms = $1 WHERE node_id = 'b'",
            &[&(now_ms() - NODE_SILENCE_MS - 1)],
        )
        .await
        .unwrap();
    let result = tokio::time::timeout(PATIENCE, pending)
        .await
        .expect("fails fast, not at the deadline")
        .unwrap();
    assert!(
        matches!(&result, Err(BusError::NodeLost { node: n, .. }) if n.as_str() == "b"),
        "{result:?}"
    );
    assert_eq!(rows(&db).await, 0, "the dead node's request is deleted");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_not_executed_late() {
    let db = db().await;
    alive(&db, "a").await;
    alive(&db, "b").await;
    let a = Node::start(&db, "a", BusConfig::default());
    // b is alive but slow to take its messages: its bus starts late.
    let result = a
        .bus
        .request(&node("b"), &run_now(), b"x", Duration::from_millis(300))
        .await;
    assert!(
        matches!(&result, Err(BusError::DeadlineExceeded { node: n, timeout_ms: 300, .. }) if n.as_str() == "b"),
        "{result:?}"
    );
    assert_eq!(rows(&db).await, 1);
    let shutdown = CancellationToken::new();
    let (b, mut rx, tasks) = PgBus::start(
        db.backend.clone(),
        db.listen.clone(),
        node("b"),
        BusConfig::default(),
        shutdown.clone(),
    );
    until("b drops the expired request", || async {
        b.stats().expired_dropped == 1
    })
    .await;
    assert_eq!(rows(&db).await, 0);
    assert!(
        rx.try_recv().is_err(),
        "the expired request is not handed on"
    );
    // Answering a request past its deadline sends nothing.
    let late = crate::backend::bus::Request {
        id: 1,
        from: node("a"),
        kind: run_now(),
        payload: vec![],
        deadline_ms: now_ms() - 1,
    };
    assert!(!b.reply(&late, Ok(b"late")).await.unwrap());
    assert_eq!(rows(&db).await, 0);
    shutdown.cancel();
    tasks.join().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_live_node_exactly_once() {
    let db = db().await;
    for n in ["a", "b", "c"] {
        alive(&db, n).await;
    }
    // d is dead: nothing is sent to it.
    db.backend
        .heartbeat(&node("d"), &[], now_ms() - NODE_SILENCE_MS - 1_000)
        .await
        .unwrap();
    let mut nodes = vec![
        Node::start(&db, "a", no_polling()),
        Node::start(&db, "b", no_polling()),
        Node::start(&db, "c", no_polling()),
    ];
    for i in 0..20u8 {
        let sent = nodes[0]
            .bus
            .broadcast(Topic::ConfigChanged, &[i])
            .await
            .unwrap();
        assert_eq!(sent, 3);
    }
    // A last one, from b, sent after the others: once a node has it, it
    // has had everything before it (taken in id order).
    nodes[1]
        .bus
        .broadcast(Topic::LiveEvent, b"end")
        .await
        .unwrap();
    for n in &mut nodes {
        let mut got = Vec::new();
        loop {
            let m = tokio::time::timeout(PATIENCE, n.broadcasts.recv())
                .await
                .expect("every broadcast arrives")
                .unwrap();
            if m.1 == Topic::LiveEvent {
                assert_eq!((m.0.as_str(), &m.2[..]), ("b", &b"end"[..]));
                break;
            }
            assert_eq!((m.0.as_str(), m.1), ("a", Topic::ConfigChanged));
            got.push(m.2[0]);
        }
        assert_eq!(got, (0..20).collect::<Vec<u8>>(), "{}", n.bus.node());
    }
    assert_eq!(rows(&db).await, 0, "none left, for d either");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_and_too_many_pending_requests_are_refused() {
    let db = db().await;
    alive(&db, "a").await;
    alive(&db, "b").await;
    let limits = BusConfig {
        max_pending_per_node: 2,
        ..BusConfig::default()
    };
    let a = Node::start(&db, "a", limits);
    let big = vec![0u8; crate::backend::bus::MAX_PAYLOAD_BYTES + 1];
    let long = Duration::from_secs(60);
    assert!(matches!(
        a.bus.request(&node("b"), &run_now(), &big, long).await,
        Err(BusError::PayloadTooLarge { size, .. }) if size == big.len()
    ));
    assert!(matches!(
        a.bus.broadcast(Topic::LiveEvent, &big).await,
        Err(BusError::PayloadTooLarge { .. })
    ));
    // b does not answer: two requests wait on it, a third is refused.
    let mut waiting = JoinSet::new();
    for _ in 0..2 {
        let bus = a.bus.clone();
        waiting.spawn(async move { bus.request(&node("b"), &run_now(), b"x", long).await });
    }
    until("two requests wait", || async { rows(&db).await == 2 }).await;
    match a.bus.request(&node("b"), &run_now(), b"x", long).await {
        Err(BusError::TooManyPending {
            node: n,
            pending: 2,
        }) => assert_eq!(n.as_str(), "b"),
        other => panic!("{other:?}"),
    }
    // Callers that give up free their places.
    waiting.shutdown().await;
    let bus = a.bus.clone();
    let again = tokio::spawn(async move {
        bus.request(&node("b"), &run_now(), b"x", Duration::from_millis(1))
            .await
    });
    assert!(matches!(
        again.await.unwrap(),
        Err(BusError::DeadlineExceeded { .. })
    ));
    assert_eq!(rows(&db).await, 3, "nothing oversized was stored");
    // A timeout beyond the longest is cut to it (the row lives that long).
    let bus = a.bus.clone();
    let forever = tokio::spawn(async move {
        bus.request(&node("b"), &run_now(), b"x", Duration::MAX)
            .await
    });
    until("the request is sent", || async { rows(&db).await == 4 }).await;
    let longest: i64 = db
        .sql
        .query_one(
            "SELECT max(deadline_ms - created_at_ms) FROM bus_messages",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(longest, super::MAX_REQUEST_TIMEOUT.as_millis() as i64);
    forever.abort();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_when_the_node_stops_fail_with_shutting_down() {
    let db = db().await;
    alive(&db, "a").await;
    alive(&db, "b").await;
    let a = Node::start(&db, "a", BusConfig::default());
    // b does not answer.
    let bus = a.bus.clone();
    let long = Duration::from_secs(60);
    let waiting =
        tokio::spawn(async move { bus.request(&node("b"), &run_now(), b"x", long).await });
    until("the request is sent", || async { rows(&db).await == 1 }).await;
    let bus = a.bus.clone();
    a.stop().await;
    let result = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("told at shutdown, not at the deadline")
        .unwrap();
    assert!(matches!(result, Err(BusError::ShuttingDown)), "{result:?}");
    let result = bus.request(&node("b"), &run_now(), b"x", long).await;
    assert!(matches!(result, Err(BusError::ShuttingDown)), "{result:?}");
}

/// Over TCP with TLS, the `LISTEN` connection is encrypted too and the
/// bus works as over the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_works_over_tls_with_its_listen_connection_encrypted() {
    let (cluster, cert_pem) = crate::backend::tests::tls_cluster();
    let test_db = cluster.database().await.unwrap();
    let tls = PgTls::with_ca_pem(Some(&cert_pem)).unwrap();
    let config = cluster.tcp_config(&test_db.name);
    let backend = PgBackend::with_config(config.clone(), tls.clone(), 4)
        .await
        .unwrap();
    let (sql, conn) = test_db.config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let db = Db {
        backend,
        listen: ListenConfig { config, tls },
        sql,
    };
    alive(&db, "a").await;
    alive(&db, "b").await;
    let a = Node::start(&db, "a", BusConfig::default());
    let b = Node::start(&db, "b", BusConfig::default());
    let reply = a
        .bus
        .request(&node("b"), &run_now(), b"x", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply, b"b:x");
    until("b listens", || async { b.bus.stats().listen_connects == 1 }).await;
    let encrypted: Vec<bool> = db
        .sql
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'outrider-bus-b' AND a.datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(encrypted, [true]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_listen_gets_its_messages_by_polling() {
    let db = db().await;
    alive(&db, "a").await;
    alive(&db, "b").await;
    let a = Node::start(&db, "a", no_polling());
    // b's LISTEN connection goes to a database that does not exist.
    let mut broken = db.listen.clone();
    broken.config.dbname("no_such_database");
    let b = Node::start_with(broken, &db, "b", BusConfig::default());
    let t = Duration::from_secs(5);
    let reply = a
        .bus
        .request(&node("b"), &run_now(), b"x", t)
        .await
        .unwrap();
    assert_eq!(reply, b"b:x");
    assert_eq!(b.bus.stats().listen_connects, 0);
    a.stop().await;
    b.stop().await;
}

/// Requests registered while the receive task checks which target nodes
/// are alive are judged on the next round, not taken for unknown nodes:
/// 5 nodes all calling each other back to back, with polling on (each
/// round checks the targets), all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_between_many_live_nodes_at_once_all_succeed() {
    let db = db().await;
    let names = ["a", "b", "c", "d", "e"];
    for n in names {
        alive(&db, n).await;
    }
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::start(&db, n, BusConfig::default()))
        .collect();
    let mut callers = JoinSet::new();
    for (i, n) in nodes.iter().enumerate() {
        for c in 0..4 {
            let bus = n.bus.clone();
            callers.spawn(async move {
                for k in 0..25 {
                    let target = node(names[(i + 1 + (c + k) % 4) % 5]);
                    let reply = bus
                        .request(&target, &run_now(), b"x", Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|e| panic!("{} → {target}: {e}", bus.node()));
                    assert_eq!(reply, format!("{target}:x").into_bytes());
                }
            });
        }
    }
    while let Some(r) = callers.join_next().await {
        r.unwrap();
    }
    for n in nodes {
        n.stop().await;
    }
}
