//! The behaviour suite of the store backends: every test is one generic
//! function over a [`Backend`], and [`suite!`] runs each against both a
//! real SQLite file in a temporary directory and a fresh database in the
//! test binary's private PostgreSQL cluster (`outrider-pgtest`). A backend
//! passes when it behaves as the rules of its area say, the same for both.

use std::collections::{HashMap, HashSet};

use outrider_protocol::Fingerprint;

use super::presence::{
    Heartbeat, Lease, NODE_SILENCE_MS, NodeId, PresenceStore, Session, Swept, fences, lost_leases,
    next_generation, swept,
};
use super::{Backend, PgBackend, PgTls, SqliteBackend};

/// What keeps a backend's storage alive for one test.
type Guard = Option<tempfile::TempDir>;

async fn sqlite() -> (Guard, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("test.db"))
        .await
        .unwrap();
    (Some(dir), Backend::Sqlite(SqliteBackend::new(store)))
}

async fn postgres() -> (Guard, Backend) {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let backend = PgBackend::with_config(db.config, PgTls::Disable, 8)
        .await
        .unwrap();
    (None, Backend::Postgres(backend))
}

/// A private PostgreSQL cluster of its own serving TLS on loopback TCP
/// with a fresh self-signed certificate for 127.0.0.1, and that
/// certificate (PEM), the one CA a client should trust for it.
pub(crate) fn tls_cluster() -> (outrider_pgtest::Cluster, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let cluster = outrider_pgtest::Cluster::start_tls(outrider_pgtest::TlsFiles {
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    })
    .unwrap();
    (cluster, cert_pem)
}

/// Instantiates each named generic test once per backend.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_guard, backend) = super::sqlite().await;
                    super::$test(backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_guard, backend) = super::postgres().await;
                    super::$test(backend).await;
                }
            )*
        }
    };
}

suite!(
    a_connect_takes_the_session_with_the_next_generation,
    a_late_disconnect_from_the_old_node_leaves_the_agent_up,
    a_heartbeat_refreshes_owned_sessions_and_reports_lost_ones,
    a_node_that_stops_heartbeating_is_swept_once,
    a_session_reconnected_elsewhere_is_not_swept_with_its_old_node,
    a_node_restarted_under_the_same_id_has_its_old_sessions_swept,
    concurrent_connects_from_two_nodes_leave_one_owner_with_the_highest_generation,
    concurrent_sweeps_end_each_session_once,
    a_heartbeat_with_another_nodes_lease_changes_nothing,
    a_long_random_history_matches_the_pure_rules,
    a_reconnect_on_the_same_node_loses_the_older_lease,
    a_failover_racing_the_old_nodes_late_writes_and_sweeps_ends_with_every_agent_up_on_the_new_node,
);

fn fp(i: u32) -> Fingerprint {
    format!("{i:020x}").parse().unwrap()
}

fn node(n: &str) -> NodeId {
    n.parse().unwrap()
}

/// A time well past zero, so `now - NODE_SILENCE_MS` stays positive.
const T0: i64 = 1_800_000_000_000;

async fn a_connect_takes_the_session_with_the_next_generation(b: Backend) {
    assert_eq!(b.session(&fp(1)).await.unwrap(), None);
    let first = b.connect(&fp(1), &node("a"), T0).await.unwrap();
    assert_eq!((first.generation, first.node.as_str()), (1, "a"));
    let s = b.session(&fp(1)).await.unwrap().unwrap();
    assert_eq!(
        (
            s.node.as_str(),
            s.generation,
            s.connected_at_ms,
            s.last_seen_ms,
            s.ended_at_ms
        ),
        ("a", 1, T0, T0, None)
    );
    // Ended, then back: the generation goes on, it never restarts.
    assert!(b.disconnect(&first, T0 + 1).await.unwrap());
    assert_eq!(
        b.session(&fp(1)).await.unwrap().unwrap().ended_at_ms,
        Some(T0 + 1)
    );
    let second = b.connect(&fp(1), &node("b"), T0 + 2).await.unwrap();
    assert_eq!((second.generation, second.node.as_str()), (2, "b"));
    assert!(b.session(&fp(1)).await.unwrap().unwrap().is_up());
    // Another agent has its own generations.
    assert_eq!(
        b.connect(&fp(2), &node("a"), T0).await.unwrap().generation,
        1
    );
}

async fn a_late_disconnect_from_the_old_node_leaves_the_agent_up(b: Backend) {
    let on_a = b.connect(&fp(1), &node("a"), T0).await.unwrap();
    let on_b = b.connect(&fp(1), &node("b"), T0 + 10).await.unwrap();
    // A notices its socket is gone only now: stale, nothing changes.
    assert!(!b.disconnect(&on_a, T0 + 20).await.unwrap());
    let s = b.session(&fp(1)).await.unwrap().unwrap();
    assert_eq!(
        (s.node.as_str(), s.generation, s.ended_at_ms),
        ("b", 2, None)
    );
    // B's own disconnect ends it, once.
    assert!(b.disconnect(&on_b, T0 + 30).await.unwrap());
    assert!(!b.disconnect(&on_b, T0 + 31).await.unwrap());
    // A reconnect on the same node fences that node's older lease too.
    let again = b.connect(&fp(1), &node("b"), T0 + 40).await.unwrap();
    assert!(!b.disconnect(&on_b, T0 + 41).await.unwrap());
    assert!(b.session(&fp(1)).await.unwrap().unwrap().is_up());
    assert_eq!(again.generation, 3);
}

async fn a_heartbeat_refreshes_owned_sessions_and_reports_lost_ones(b: Backend) {
    let mut leases: Vec<Lease> = Vec::new();
    for i in 1..=3 {
        leases.push(b.connect(&fp(i), &node("a"), T0).await.unwrap());
    }
    // Agent 2 moved to b; agent 3's session ended.
    b.connect(&fp(2), &node("b"), T0 + 1).await.unwrap();
    assert!(b.disconnect(&leases[2], T0 + 2).await.unwrap());
    let beat = b.heartbeat(&node("a"), &leases, T0 + 5_000).await.unwrap();
    assert_eq!(beat.refreshed, 1);
    assert_eq!(beat.lost, vec![leases[1].clone(), leases[2].clone()]);
    assert_eq!(
        b.session(&fp(1)).await.unwrap().unwrap().last_seen_ms,
        T0 + 5_000
    );
    let moved = b.session(&fp(2)).await.unwrap().unwrap();
    assert_eq!((moved.node.as_str(), moved.last_seen_ms), ("b", T0 + 1));
    // An empty heartbeat still says the node is alive.
    assert_eq!(
        b.heartbeat(&node("c"), &[], T0).await.unwrap(),
        Default::default()
    );
}

async fn a_node_that_stops_heartbeating_is_swept_once(b: Backend) {
    let on_a = b.connect(&fp(1), &node("a"), T0).await.unwrap();
    let on_b = b.connect(&fp(2), &node("b"), T0).await.unwrap();
    b.heartbeat(&node("a"), std::slice::from_ref(&on_a), T0)
        .await
        .unwrap();
    b.heartbeat(&node("b"), std::slice::from_ref(&on_b), T0)
        .await
        .unwrap();
    // Within the silence both are fine.
    let now = T0 + NODE_SILENCE_MS;
    assert_eq!(b.sweep(now, NODE_SILENCE_MS).await.unwrap(), vec![]);
    // B keeps beating, A does not.
    b.heartbeat(&node("b"), std::slice::from_ref(&on_b), now)
        .await
        .unwrap();
    let later = now + 1;
    assert_eq!(
        b.sweep(later, NODE_SILENCE_MS).await.unwrap(),
        vec![Swept {
            agent: fp(1),
            node: node("a"),
            generation: 1
        }]
    );
    assert_eq!(
        b.session(&fp(1)).await.unwrap().unwrap().ended_at_ms,
        Some(later)
    );
    assert!(b.session(&fp(2)).await.unwrap().unwrap().is_up());
    // Swept once; A's late disconnect and heartbeat change nothing.
    assert_eq!(b.sweep(later + 1, NODE_SILENCE_MS).await.unwrap(), vec![]);
    assert!(!b.disconnect(&on_a, later + 2).await.unwrap());
    let beat = b
        .heartbeat(&node("a"), std::slice::from_ref(&on_a), later + 3)
        .await
        .unwrap();
    assert_eq!(beat.lost, vec![on_a]);
}

async fn a_session_reconnected_elsewhere_is_not_swept_with_its_old_node(b: Backend) {
    let on_a = b.connect(&fp(1), &node("a"), T0).await.unwrap();
    b.heartbeat(&node("a"), &[on_a], T0).await.unwrap();
    // A goes silent; the agent reconnects on b, which has not beaten yet.
    let later = T0 + NODE_SILENCE_MS + 1;
    b.connect(&fp(1), &node("b"), later).await.unwrap();
    assert_eq!(b.sweep(later, NODE_SILENCE_MS).await.unwrap(), vec![]);
    let s = b.session(&fp(1)).await.unwrap().unwrap();
    assert_eq!((s.node.as_str(), s.ended_at_ms), ("b", None));
    // A never-heartbeating node's session goes after the silence.
    let swept = b
        .sweep(later + NODE_SILENCE_MS + 1, NODE_SILENCE_MS)
        .await
        .unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!((swept[0].node.as_str(), swept[0].generation), ("b", 2));
}

async fn a_node_restarted_under_the_same_id_has_its_old_sessions_swept(b: Backend) {
    // Node a holds two agents, then restarts (same --node-id) and forgets
    // them; one of them comes back to it, the other does not.
    let old = b.connect(&fp(1), &node("a"), T0).await.unwrap();
    b.connect(&fp(2), &node("a"), T0).await.unwrap();
    b.heartbeat(&node("a"), &[old], T0).await.unwrap();
    let back = b.connect(&fp(2), &node("a"), T0 + 10).await.unwrap();
    // The restarted node beats all along, carrying only what it holds.
    let later = T0 + NODE_SILENCE_MS + 1;
    for at in [T0 + 10, later] {
        b.heartbeat(&node("a"), std::slice::from_ref(&back), at)
            .await
            .unwrap();
    }
    assert_eq!(
        b.sweep(later, NODE_SILENCE_MS).await.unwrap(),
        vec![Swept {
            agent: fp(1),
            node: node("a"),
            generation: 1
        }]
    );
    assert!(b.session(&fp(2)).await.unwrap().unwrap().is_up());
}

async fn concurrent_connects_from_two_nodes_leave_one_owner_with_the_highest_generation(
    b: Backend,
) {
    const EACH: u32 = 20;
    let tasks: Vec<_> = (0..EACH * 2)
        .map(|i| {
            let b = b.clone();
            let n = if i % 2 == 0 { node("a") } else { node("b") };
            tokio::spawn(async move { b.connect(&fp(7), &n, T0 + i64::from(i)).await })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap().unwrap());
    }
    // Every connect got its own generation, none lost or repeated.
    let mut generations: Vec<u64> = leases.iter().map(|l| l.generation).collect();
    generations.sort_unstable();
    assert_eq!(generations, (1..=u64::from(EACH * 2)).collect::<Vec<_>>());
    // The owner is the connect with the highest generation, and only its
    // lease still fences: every other disconnect is stale.
    let newest = leases.iter().max_by_key(|l| l.generation).unwrap().clone();
    let s = b.session(&fp(7)).await.unwrap().unwrap();
    assert_eq!((&s.node, s.generation), (&newest.node, newest.generation));
    let disconnects: Vec<_> = leases
        .iter()
        .filter(|l| **l != newest)
        .map(|l| {
            let (b, l) = (b.clone(), l.clone());
            tokio::spawn(async move { b.disconnect(&l, T0 + 100).await })
        })
        .collect();
    for d in disconnects {
        assert!(!d.await.unwrap().unwrap());
    }
    assert!(b.session(&fp(7)).await.unwrap().unwrap().is_up());
    assert!(b.disconnect(&newest, T0 + 101).await.unwrap());
}

async fn concurrent_sweeps_end_each_session_once(b: Backend) {
    const AGENTS: u32 = 50;
    for i in 0..AGENTS {
        b.connect(&fp(i), &node(if i % 2 == 0 { "a" } else { "b" }), T0)
            .await
            .unwrap();
    }
    let later = T0 + NODE_SILENCE_MS + 1;
    let sweeps: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.sweep(later, NODE_SILENCE_MS).await })
        })
        .collect();
    let mut seen = HashSet::new();
    for s in sweeps {
        for swept in s.await.unwrap().unwrap() {
            assert!(seen.insert(swept.agent.clone()), "{swept:?} swept twice");
        }
    }
    assert_eq!(seen, (0..AGENTS).map(fp).collect::<HashSet<_>>());
}

async fn a_heartbeat_with_another_nodes_lease_changes_nothing(b: Backend) {
    let on_a = b.connect(&fp(1), &node("a"), T0).await.unwrap();
    let err = b.heartbeat(&node("b"), &[on_a], T0 + 5).await.unwrap_err();
    assert!(
        matches!(err, super::StoreError::ForeignLease { .. }),
        "{err}"
    );
    assert_eq!(b.session(&fp(1)).await.unwrap().unwrap().last_seen_ms, T0);
    // Nothing was written: the session is still a's, and a's to sweep.
    assert_eq!(b.sweep(T0 + 1, 0).await.unwrap().len(), 1);
}

/// Nodes starting together migrate one at a time: all start, each
/// migration is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_starting_together_migrate_once() {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let config = db.config.clone();
            tokio::spawn(async move { PgBackend::with_config(config, PgTls::Disable, 2).await })
        })
        .collect();
    for s in starts {
        s.await.unwrap().unwrap();
    }
    let (client, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let known: Vec<i64> = super::postgres::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, known);
    // A database a newer server migrated is refused, and left as it is.
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')",
            &[],
        )
        .await
        .unwrap();
    let err = PgBackend::with_config(db.config.clone(), PgTls::Disable, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, super::StoreError::NewerSchema { found: 999, .. }),
        "{err}"
    );
    drop(client);
    driver.await.unwrap().unwrap();
}

/// Over TCP, TLS verifies the server against the given CA: a trusted
/// certificate connects (and the session is encrypted), an unknown one is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server() {
    let (cluster, cert_pem) = tls_cluster();
    let db = cluster.database().await.unwrap();
    let trusted = PgTls::with_ca_pem(Some(&cert_pem)).unwrap();
    let backend = PgBackend::with_config(cluster.tcp_config(&db.name), trusted, 2)
        .await
        .unwrap();
    let client = backend.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is not encrypted");
    drop(client);
    let lease = Backend::Postgres(backend)
        .connect(&fp(1), &node("a"), T0)
        .await
        .unwrap();
    assert_eq!(lease.generation, 1);
    // Only the web PKI roots: the test certificate is not trusted.
    let err = PgBackend::with_config(
        cluster.tcp_config(&db.name),
        PgTls::with_ca_pem(None).unwrap(),
        1,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, super::StoreError::Pool(_)), "{err}");
    assert!(
        format!("{:?}", err).to_lowercase().contains("certificate"),
        "{err:?}"
    );
    // Not a certificate: a clear error, before any connection.
    assert!(matches!(
        PgTls::with_ca_pem(Some(
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        )),
        Err(super::StoreError::Config(_))
    ));
}

/// A backend given TLS never goes on in plain text. The plain cluster,
/// reached over TCP through a forwarder to its socket, is what a
/// middleman stripping TLS shows the client (the server answers "no TLS"
/// to the TLS request); with tokio-postgres' default `sslmode` (`prefer`)
/// the connection would go on unencrypted. Its Unix socket, where
/// PostgreSQL never speaks TLS, is refused the same way. The same TLS
/// settings connect to a TLS cluster: `postgres_over_tls_verifies_the_server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_tls_refuses_a_server_without_tls() {
    let cluster = outrider_pgtest::Cluster::shared().unwrap_or_else(|e| panic!("{e}"));
    let db = cluster.database().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = cluster.socket_dir().join(".s.PGSQL.5432");
    let forwarder = tokio::spawn(async move {
        let mut pipes = tokio::task::JoinSet::new();
        loop {
            let (mut down, _) = listener.accept().await.unwrap();
            let mut up = tokio::net::UnixStream::connect(&socket).await.unwrap();
            pipes.spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    let mut over_tcp = tokio_postgres::Config::new();
    over_tcp
        .host("127.0.0.1")
        .port(port)
        .user(outrider_pgtest::SUPERUSER)
        .dbname(&db.name);
    // The forwarder works: plain, the server is there.
    PgBackend::with_config(over_tcp.clone(), PgTls::Disable, 1)
        .await
        .unwrap();
    let tls = PgTls::with_ca_pem(None).unwrap();
    let tcp_server = format!("127.0.0.1:{port}");
    for (what, config, expect_server) in [
        ("over TCP", over_tcp, tcp_server.as_str()),
        ("on the socket", db.config.clone(), "/.s.PGSQL.5432"),
    ] {
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer,
            "{what}: the default"
        );
        let err = PgBackend::with_config(config, tls.clone(), 1)
            .await
            .expect_err(what);
        match &err {
            super::StoreError::NoTls { server } => {
                assert!(server.ends_with(expect_server), "{what}: {server}")
            }
            other => panic!("{what}: {other}"),
        }
        assert!(err.to_string().contains("does not offer TLS"), "{err}");
    }
    forwarder.abort();
}

/// The rules of `backend/presence.rs` over plain maps: what every backend
/// must do, step by step.
#[derive(Debug, Default)]
struct Model {
    sessions: HashMap<Fingerprint, Session>,
    nodes: HashMap<NodeId, i64>,
}

impl Model {
    fn connect(&mut self, agent: &Fingerprint, node: &NodeId, now_ms: i64) -> Lease {
        let generation = next_generation(self.sessions.get(agent).map(|s| s.generation));
        let session = Session {
            node: node.clone(),
            generation,
            connected_at_ms: now_ms,
            last_seen_ms: now_ms,
            ended_at_ms: None,
        };
        self.sessions.insert(agent.clone(), session);
        Lease {
            agent: agent.clone(),
            node: node.clone(),
            generation,
        }
    }

    fn disconnect(&mut self, lease: &Lease, now_ms: i64) -> bool {
        if !fences(self.sessions.get(&lease.agent), lease) {
            return false;
        }
        let s = self.sessions.get_mut(&lease.agent).unwrap();
        s.ended_at_ms = Some(now_ms);
        s.last_seen_ms = s.last_seen_ms.max(now_ms);
        true
    }

    fn heartbeat(&mut self, node: &NodeId, live: &[Lease], now_ms: i64) -> Heartbeat {
        let seen = self.nodes.entry(node.clone()).or_insert(now_ms);
        *seen = (*seen).max(now_ms);
        let mut refreshed = Vec::new();
        for lease in live {
            if fences(self.sessions.get(&lease.agent), lease) {
                let s = self.sessions.get_mut(&lease.agent).unwrap();
                s.last_seen_ms = s.last_seen_ms.max(now_ms);
                refreshed.push(lease.clone());
            }
        }
        Heartbeat {
            refreshed: refreshed.len(),
            lost: lost_leases(live, &refreshed),
        }
    }

    fn sweep(&mut self, now_ms: i64, silence_ms: i64) -> Vec<Swept> {
        let mut ended = Vec::new();
        for (agent, s) in &mut self.sessions {
            if swept(s, now_ms - silence_ms) {
                s.ended_at_ms = Some(now_ms);
                ended.push(Swept {
                    agent: agent.clone(),
                    node: s.node.clone(),
                    generation: s.generation,
                });
            }
        }
        ended.sort();
        ended
    }
}

/// A fixed pseudo-random history (xorshift, fixed seed) of connects,
/// disconnects (stale ones included), heartbeats and sweeps by three nodes
/// over five agents, the clock moving 0 to 20 s a step: the backend's every
/// answer and final state equal the [`Model`]'s.
async fn a_long_random_history_matches_the_pure_rules(b: Backend) {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let nodes = [node("a"), node("b"), node("c")];
    let mut model = Model::default();
    // What each node believes it holds, as a real node would.
    let mut held: HashMap<NodeId, Vec<Lease>> = HashMap::new();
    let mut now = T0;
    // (applied disconnects, stale ones, leases lost, sessions swept)
    let mut seen = (0, 0, 0, 0);
    for step in 0..300 {
        now += next(20_000) as i64;
        let n = &nodes[next(3) as usize];
        match next(10) {
            0..=3 => {
                let agent = fp(next(5) as u32);
                let got = b.connect(&agent, n, now).await.unwrap();
                assert_eq!(got, model.connect(&agent, n, now), "step {step}");
                held.entry(n.clone()).or_default().push(got);
            }
            4..=5 => {
                let leases = held.entry(n.clone()).or_default();
                if !leases.is_empty() {
                    let lease = leases.remove(next(leases.len() as u64) as usize);
                    let got = b.disconnect(&lease, now).await.unwrap();
                    assert_eq!(got, model.disconnect(&lease, now), "step {step} {lease:?}");
                    if got {
                        seen.0 += 1;
                    } else {
                        seen.1 += 1;
                    }
                }
            }
            6..=8 => {
                let leases = held.entry(n.clone()).or_default();
                let got = b.heartbeat(n, leases, now).await.unwrap();
                assert_eq!(got, model.heartbeat(n, leases, now), "step {step}");
                leases.retain(|l| !got.lost.contains(l));
                seen.2 += got.lost.len();
            }
            _ => {
                let mut got = b.sweep(now, NODE_SILENCE_MS).await.unwrap();
                got.sort();
                assert_eq!(got, model.sweep(now, NODE_SILENCE_MS), "step {step}");
                seen.3 += got.len();
            }
        }
    }
    for i in 0..5 {
        assert_eq!(
            b.session(&fp(i)).await.unwrap().as_ref(),
            model.sessions.get(&fp(i)),
            "agent {i}"
        );
    }
    // The history went through every outcome (the seed is fixed, so this
    // holds or never does).
    assert!(
        seen.0 > 0 && seen.1 > 0 && seen.2 > 0 && seen.3 > 0,
        "{seen:?}"
    );
}

async fn a_reconnect_on_the_same_node_loses_the_older_lease(b: Backend) {
    // The agent reconnected to the same node before that node noticed the
    // old socket was gone: the node holds both leases of one agent.
    let old = b.connect(&fp(1), &node("a"), T0).await.unwrap();
    let new = b.connect(&fp(1), &node("a"), T0 + 1).await.unwrap();
    let beat = b
        .heartbeat(&node("a"), &[old.clone(), new], T0 + 2)
        .await
        .unwrap();
    assert_eq!(beat.refreshed, 1);
    assert_eq!(beat.lost, vec![old]);
}

/// Node a dies holding 50 agents; all at once, the agents reconnect on b,
/// a's late disconnects and stale heartbeats arrive and four sweeps run.
/// Whatever the order: no error (no deadlock), every agent ends up on b
/// with generation 2, and a sweep only ever ends a session of a.
async fn a_failover_racing_the_old_nodes_late_writes_and_sweeps_ends_with_every_agent_up_on_the_new_node(
    b: Backend,
) {
    const AGENTS: u32 = 50;
    let mut on_a = Vec::new();
    for i in 0..AGENTS {
        on_a.push(b.connect(&fp(i), &node("a"), T0).await.unwrap());
    }
    b.heartbeat(&node("a"), &on_a, T0).await.unwrap();
    let later = T0 + NODE_SILENCE_MS + 1;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..AGENTS {
        let b = b.clone();
        tasks.spawn(async move {
            let lease = b.connect(&fp(i), &node("b"), later).await?;
            assert_eq!(lease.generation, 2);
            Ok::<_, super::StoreError>(Vec::new())
        });
    }
    for lease in on_a.clone() {
        let b = b.clone();
        tasks.spawn(async move {
            b.disconnect(&lease, later).await?;
            Ok(Vec::new())
        });
    }
    for _ in 0..5 {
        let (b, leases) = (b.clone(), on_a.clone());
        // Stale: stamped with a's last time, so a stays silent.
        tasks.spawn(async move {
            b.heartbeat(&node("a"), &leases, T0).await?;
            Ok(Vec::new())
        });
    }
    for _ in 0..4 {
        let b = b.clone();
        tasks.spawn(async move { b.sweep(later + 1, NODE_SILENCE_MS).await });
    }
    let mut swept = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        for s in done.unwrap().unwrap() {
            assert_eq!((s.node.as_str(), s.generation), ("a", 1), "{s:?}");
            assert!(swept.insert(s.agent.clone()), "{s:?} swept twice");
        }
    }
    for i in 0..AGENTS {
        let s = b.session(&fp(i)).await.unwrap().unwrap();
        assert_eq!(
            (s.node.as_str(), s.generation, s.ended_at_ms),
            ("b", 2, None),
            "agent {i}"
        );
    }
}
