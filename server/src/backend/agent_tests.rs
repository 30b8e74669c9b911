//! The behaviour suite of the agents area ([`AgentStore`],
//! `backend/agents.rs`): every test is one generic function given two
//! "nodes" on one shared store, and `two_node_suite!` (`two_nodes.rs`) runs each against SQLite
//! (one store on a real file in a temporary directory: one node, so both
//! handles are that node's, as the server has one writer) and PostgreSQL
//! (two [`PgBackend`]s with their own pools on one fresh database of the
//! test binary's private cluster, `outrider-pgtest`, as two server
//! processes would be). A backend passes when it behaves as the rules of
//! the area say, the same for both; concurrent registrations must give a
//! result that running them one after the other gives.

use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence};

use super::Backend;
use super::agents::{Admission, AgentStore, Registered, Registration};
use super::presence::PresenceStore;
use super::two_nodes::{two_node_suite, wait_for_a_lock_wait};
use crate::store::TokenGrant;

two_node_suite!(
    a_first_enrollment_pins_the_key_and_stores_the_hello,
    a_pinned_registration_updates_the_row_and_keeps_the_connected_since,
    a_registration_with_another_key_or_after_removal_is_refused_and_writes_nothing,
    an_enrollment_over_a_stored_row_replaces_its_key_token_and_allow_list,
    presence_changes_are_reported_once_and_a_start_marks_connected_agents_down,
    the_old_nodes_late_down_does_not_overwrite_a_session_up_elsewhere,
    server_tags_and_adhoc_are_set_on_known_agents_only,
    agents_are_listed_by_hostname_then_fingerprint,
    concurrent_enrollments_of_one_fingerprint_leave_one_registration_whole,
    pinned_registrations_racing_a_removal_and_a_new_key_never_mix_into_the_new_row,
);

fn fp(i: u32) -> Fingerprint {
    format!("{i:020x}").parse().unwrap()
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

/// A public key (hex) per number.
fn key(i: u8) -> String {
    format!("{i:02x}").repeat(32)
}

const T0: i64 = 1_800_000_000_000;

/// An enrollment of `agent` with key `k`, token `token` allowing
/// `allowed`, announcing `hostname` and `declared` tags.
fn enrollment(
    agent: &Fingerprint,
    k: u8,
    token: &str,
    allowed: Option<&[&str]>,
    hostname: &str,
    declared: &[&str],
) -> Registration {
    Registration {
        fingerprint: agent.clone(),
        public_key: key(k),
        hostname: hostname.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        build_sha256: Some("ab".repeat(32)),
        build_version: Some("0.2.0".into()),
        tags: tags(declared),
        admission: Admission::Enrolled(TokenGrant {
            id: token.into(),
            allowed_tags: allowed.map(tags),
        }),
        stub_version: Some("0.1.1".into()),
        channel: Some("dev".into()),
        protocol_version: 2,
    }
}

/// A registration of `agent` by its pinned key `k`.
fn pinned(agent: &Fingerprint, k: u8, hostname: &str, declared: &[&str]) -> Registration {
    Registration {
        admission: Admission::Pinned,
        ..enrollment(agent, k, "", None, hostname, declared)
    }
}

async fn info(b: &Backend, agent: &Fingerprint) -> AgentInfo {
    b.agent(agent).await.unwrap().expect("the agent is stored")
}

async fn a_first_enrollment_pins_the_key_and_stores_the_hello(a: Backend, b: Backend) {
    assert_eq!(a.pinned_key(&fp(1)).await.unwrap(), None);
    assert_eq!(a.agent(&fp(1)).await.unwrap(), None);
    assert_eq!(a.agents().await.unwrap(), vec![]);
    let reg = enrollment(&fp(1), 1, "t1", Some(&["web"]), "web-1", &["web", "db"]);
    assert_eq!(
        a.register(reg, T0).await.unwrap(),
        Some(Registered {
            acked_seq: 0,
            refused_tags: tags(&["db"]),
        })
    );
    // Seen from the other node too.
    assert_eq!(b.pinned_key(&fp(1)).await.unwrap(), Some(key(1)));
    let expected = AgentInfo {
        fingerprint: fp(1),
        hostname: "web-1".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        build_sha256: Some("ab".repeat(32)),
        build_version: Some("0.2.0".into()),
        presence: Presence::Connected,
        presence_since_ms: T0,
        registered_at_ms: T0,
        last_seen_ms: T0,
        tags: tags(&["web"]),
        server_tags: vec![],
        allow_adhoc: false,
        config_version: 0,
        version: "0.2.0".into(),
        stub_version: Some("0.1.1".into()),
        channel: Some("dev".into()),
        protocol_version: Some(2),
        enrollment_token: Some("t1".into()),
        allowed_tags: Some(tags(&["web"])),
        refused_tags: tags(&["db"]),
    };
    assert_eq!(info(&b, &fp(1)).await, expected);
    assert_eq!(b.agents().await.unwrap(), vec![expected]);
}

async fn a_pinned_registration_updates_the_row_and_keeps_the_connected_since(
    a: Backend,
    b: Backend,
) {
    let reg = enrollment(&fp(1), 1, "t1", Some(&["web", "db"]), "web-1", &["web"]);
    a.register(reg, T0).await.unwrap().unwrap();
    // Back on the other node: its tags held to the stored allow-list.
    let again = pinned(&fp(1), 1, "web-1b", &["db", "cache"]);
    assert_eq!(
        b.register(again, T0 + 10).await.unwrap(),
        Some(Registered {
            acked_seq: 0,
            refused_tags: tags(&["cache"]),
        })
    );
    let got = info(&a, &fp(1)).await;
    assert_eq!(
        (
            got.hostname.as_str(),
            got.tags.clone(),
            got.refused_tags.clone(),
            got.allowed_tags.clone(),
            got.enrollment_token.as_deref(),
        ),
        (
            "web-1b",
            tags(&["db"]),
            tags(&["cache"]),
            Some(tags(&["web", "db"])),
            Some("t1"),
        )
    );
    // Still connected: since the first session, seen now, registered then.
    assert_eq!(
        (
            got.presence,
            got.presence_since_ms,
            got.last_seen_ms,
            got.registered_at_ms
        ),
        (Presence::Connected, T0, T0 + 10, T0)
    );
    // Down, then back: connected since the new registration.
    assert_eq!(
        a.set_presence(&fp(1), Presence::Down, T0 + 20)
            .await
            .unwrap(),
        Some(T0 + 20)
    );
    b.register(pinned(&fp(1), 1, "web-1b", &[]), T0 + 30)
        .await
        .unwrap()
        .unwrap();
    let got = info(&a, &fp(1)).await;
    assert_eq!(
        (got.presence, got.presence_since_ms, got.tags),
        (Presence::Connected, T0 + 30, vec![])
    );
}

async fn a_registration_with_another_key_or_after_removal_is_refused_and_writes_nothing(
    a: Backend,
    b: Backend,
) {
    a.register(enrollment(&fp(1), 1, "t1", None, "web-1", &[]), T0)
        .await
        .unwrap()
        .unwrap();
    a.set_presence(&fp(1), Presence::Down, T0 + 1)
        .await
        .unwrap();
    let before = info(&a, &fp(1)).await;
    // Another key under the same fingerprint is not this agent.
    assert_eq!(
        b.register(pinned(&fp(1), 2, "forged", &["x"]), T0 + 5)
            .await
            .unwrap(),
        None
    );
    assert_eq!(info(&a, &fp(1)).await, before);
    // Removed (say, while this session authenticated): no row again.
    assert!(a.remove_agent(&fp(1)).await.unwrap());
    assert_eq!(
        b.register(pinned(&fp(1), 1, "web-1", &[]), T0 + 6)
            .await
            .unwrap(),
        None
    );
    assert_eq!(b.agent(&fp(1)).await.unwrap(), None);
    assert_eq!(b.pinned_key(&fp(1)).await.unwrap(), None);
    assert!(!b.remove_agent(&fp(1)).await.unwrap());
    assert_eq!(a.agents().await.unwrap(), vec![]);
    // Never known: refused too.
    assert_eq!(
        a.register(pinned(&fp(2), 1, "web-2", &[]), T0)
            .await
            .unwrap(),
        None
    );
    // Coming back takes a new token, and a new key may be pinned.
    b.register(enrollment(&fp(1), 3, "t2", None, "web-1", &[]), T0 + 7)
        .await
        .unwrap()
        .unwrap();
    let back = info(&a, &fp(1)).await;
    assert_eq!(
        (
            back.registered_at_ms,
            back.enrollment_token.as_deref(),
            back.presence
        ),
        (T0 + 7, Some("t2"), Presence::Connected)
    );
    assert_eq!(a.pinned_key(&fp(1)).await.unwrap(), Some(key(3)));
}

async fn an_enrollment_over_a_stored_row_replaces_its_key_token_and_allow_list(
    a: Backend,
    b: Backend,
) {
    // Two enrollments of one fingerprint (their sessions both found no
    // pinned key): the second refreshes the row the first made.
    a.register(enrollment(&fp(1), 1, "t1", None, "web-1", &["db"]), T0)
        .await
        .unwrap()
        .unwrap();
    let second = enrollment(&fp(1), 2, "t2", Some(&["web"]), "web-1", &["web", "db"]);
    assert_eq!(
        b.register(second, T0 + 1)
            .await
            .unwrap()
            .unwrap()
            .refused_tags,
        tags(&["db"])
    );
    assert_eq!(a.pinned_key(&fp(1)).await.unwrap(), Some(key(2)));
    let got = info(&a, &fp(1)).await;
    assert_eq!(
        (
            got.enrollment_token.as_deref(),
            got.allowed_tags,
            got.tags,
            got.registered_at_ms,
            got.presence_since_ms,
            got.last_seen_ms,
        ),
        (
            Some("t2"),
            Some(tags(&["web"])),
            tags(&["web"]),
            T0,
            T0,
            T0 + 1
        )
    );
    // The first key no longer registers.
    assert_eq!(
        a.register(pinned(&fp(1), 1, "web-1", &[]), T0 + 2)
            .await
            .unwrap(),
        None
    );
}

async fn the_old_nodes_late_down_does_not_overwrite_a_session_up_elsewhere(a: Backend, b: Backend) {
    let agent = fp(1);
    a.register(enrollment(&agent, 1, "t", None, "h", &[]), T0)
        .await
        .unwrap()
        .unwrap();
    let on_a = a.connect(&agent, &"a".parse().unwrap(), T0).await.unwrap();
    // The agent moves: node b takes the session and marks it connected
    // before node a notices its socket is gone.
    b.connect(&agent, &"b".parse().unwrap(), T0 + 1)
        .await
        .unwrap();
    b.set_presence(&agent, Presence::Connected, T0 + 1)
        .await
        .unwrap();
    // Node a's late end: its lease no longer fences, and its "down" (or a
    // goodbye) is not written while the agent is up on b.
    assert!(!a.disconnect(&on_a, T0 + 2).await.unwrap());
    for late in [Presence::Down, Presence::Deregistered] {
        assert_eq!(a.set_presence(&agent, late, T0 + 2).await.unwrap(), None);
        assert_eq!(info(&b, &agent).await.presence, Presence::Connected);
    }
    // Once b's session ends too, the agent is down.
    let on_b = b.session(&agent).await.unwrap().unwrap();
    let lease = super::presence::Lease {
        agent: agent.clone(),
        node: on_b.node,
        generation: on_b.generation,
    };
    assert!(b.disconnect(&lease, T0 + 3).await.unwrap());
    assert_eq!(
        b.set_presence(&agent, Presence::Down, T0 + 3)
            .await
            .unwrap(),
        Some(T0 + 3)
    );
}

async fn presence_changes_are_reported_once_and_a_start_marks_connected_agents_down(
    a: Backend,
    b: Backend,
) {
    assert_eq!(
        a.set_presence(&fp(9), Presence::Down, T0).await.unwrap(),
        None
    );
    for i in 1..=3 {
        a.register(enrollment(&fp(i), 1, "t", None, "h", &[]), T0)
            .await
            .unwrap()
            .unwrap();
    }
    // (presence, at, reported)
    let steps = [
        (Presence::Connected, T0 + 1, None),
        (Presence::Down, T0 + 2, Some(T0 + 2)),
        (Presence::Down, T0 + 3, None),
        (Presence::Deregistered, T0 + 4, Some(T0 + 4)),
        (Presence::Connected, T0 + 5, Some(T0 + 5)),
    ];
    let mut since = T0;
    for (presence, at, reported) in steps {
        assert_eq!(
            b.set_presence(&fp(1), presence, at).await.unwrap(),
            reported,
            "{presence:?} at {at}"
        );
        since = reported.unwrap_or(since);
        let got = info(&a, &fp(1)).await;
        assert_eq!((got.presence, got.presence_since_ms), (presence, since));
    }
    // Concurrent equal changes from both nodes: one reports it.
    let two = fp(2);
    let (x, y) = tokio::join!(
        a.set_presence(&two, Presence::Down, T0 + 6),
        b.set_presence(&two, Presence::Down, T0 + 7),
    );
    let reported: Vec<i64> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(info(&a, &fp(2)).await.presence_since_ms, reported[0]);
    // A start: agents 1 and 3 were connected, 2 is down already.
    assert_eq!(b.mark_connected_down(T0 + 10).await.unwrap(), 2);
    for (i, since) in [(1, T0 + 10), (2, reported[0]), (3, T0 + 10)] {
        let got = info(&a, &fp(i)).await;
        assert_eq!(
            (got.presence, got.presence_since_ms),
            (Presence::Down, since),
            "agent {i}"
        );
    }
    assert_eq!(a.mark_connected_down(T0 + 11).await.unwrap(), 0);
}

async fn server_tags_and_adhoc_are_set_on_known_agents_only(a: Backend, b: Backend) {
    assert!(!a.set_server_tags(&fp(1), &tags(&["x"])).await.unwrap());
    assert!(!a.set_allow_adhoc(&fp(1), true).await.unwrap());
    a.register(enrollment(&fp(1), 1, "t", None, "h", &["web", "b"]), T0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        b.set_server_tags(&fp(1), &tags(&["prod", "a", "web"]))
            .await
            .unwrap()
    );
    let got = info(&a, &fp(1)).await;
    // Effective tags: the Hello's ∪ the server's, sorted, once each.
    assert_eq!(
        (got.server_tags, got.tags),
        (
            tags(&["prod", "a", "web"]),
            tags(&["a", "b", "prod", "web"])
        )
    );
    // Replaced, not merged; a registration keeps them.
    assert!(a.set_server_tags(&fp(1), &tags(&["db"])).await.unwrap());
    a.register(pinned(&fp(1), 1, "h", &["web"]), T0 + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info(&b, &fp(1)).await.tags, tags(&["db", "web"]));
    assert!(a.set_server_tags(&fp(1), &[]).await.unwrap());
    assert_eq!(info(&b, &fp(1)).await.tags, tags(&["web"]));
    for allow in [true, false, true] {
        assert!(b.set_allow_adhoc(&fp(1), allow).await.unwrap());
        assert_eq!(info(&a, &fp(1)).await.allow_adhoc, allow);
    }
    // The same value again still finds the agent.
    assert!(a.set_allow_adhoc(&fp(1), true).await.unwrap());
}

async fn agents_are_listed_by_hostname_then_fingerprint(a: Backend, b: Backend) {
    // Byte order: upper case before lower case.
    for (i, host) in [(5, "b"), (4, "a"), (3, "B"), (1, "a"), (2, "Z")] {
        a.register(enrollment(&fp(i), 1, "t", None, host, &[]), T0)
            .await
            .unwrap()
            .unwrap();
    }
    let listed: Vec<(String, Fingerprint)> = b
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.hostname, a.fingerprint))
        .collect();
    let expected: Vec<(String, Fingerprint)> = [("B", 3), ("Z", 2), ("a", 1), ("a", 4), ("b", 5)]
        .into_iter()
        .map(|(h, i)| (h.to_owned(), fp(i)))
        .collect();
    assert_eq!(listed, expected);
}

/// Twenty enrollments of one fingerprint at once, alternating nodes, each
/// with its own key, token, allow-list, host name and tags (as if run by
/// twenty sessions that all found no pinned key). Each is let in; the row
/// left is one registration's whole: its key, token, allow-list, host
/// name and tags belong together, as after running them one at a time.
async fn concurrent_enrollments_of_one_fingerprint_leave_one_registration_whole(
    a: Backend,
    b: Backend,
) {
    const N: u8 = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let tag = format!("t{i}");
        let reg = enrollment(
            &fp(7),
            i,
            &format!("token-{i}"),
            Some(&[tag.as_str()]),
            &format!("host-{i}"),
            &[tag.as_str(), "other"],
        );
        tasks.spawn(async move { node.register(reg, T0 + i64::from(i)).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(
            done.unwrap().unwrap(),
            Some(Registered {
                acked_seq: 0,
                refused_tags: tags(&["other"]),
            })
        );
    }
    let got = info(&a, &fp(7)).await;
    let k: u8 = got
        .hostname
        .strip_prefix("host-")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{got:?}"));
    let tag = format!("t{k}");
    assert_eq!(
        (
            b.pinned_key(&fp(7)).await.unwrap(),
            got.enrollment_token.clone(),
            got.allowed_tags.clone(),
            got.tags.clone(),
            got.refused_tags.clone(),
            got.last_seen_ms,
        ),
        (
            Some(key(k)),
            Some(format!("token-{k}")),
            Some(vec![tag.clone()]),
            vec![tag],
            tags(&["other"]),
            T0 + i64::from(k),
        ),
        "{got:?}"
    );
    // Inserted once: registered and connected since one of them.
    assert_eq!(got.registered_at_ms, got.presence_since_ms);
    assert!((T0..T0 + i64::from(N)).contains(&got.registered_at_ms));
    assert_eq!(a.agents().await.unwrap().len(), 1);
}

/// An enrolled agent's key-A sessions register on both nodes while, at
/// once, an operator removes it and a new key B enrolls under its
/// fingerprint. In any serial order a key-A registration after the
/// removal or after B is refused, and B's registration overwrites the
/// labels of those before it; so when a row is left it is B's whole, never
/// B's key with a key-A session's host name.
async fn pinned_registrations_racing_a_removal_and_a_new_key_never_mix_into_the_new_row(
    a: Backend,
    b: Backend,
) {
    for round in 0..5u32 {
        let agent = fp(100 + round);
        a.register(enrollment(&agent, 1, "t", None, "old", &[]), T0)
            .await
            .unwrap()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let reg = pinned(&agent, 1, &format!("pinned-{i}"), &[]);
            tasks.spawn(async move { node.register(reg, T0 + 1).await.map(|r| r.is_some()) });
        }
        let (remover, enroller) = (b.clone(), a.clone());
        let removed = agent.clone();
        tasks.spawn(async move { remover.remove_agent(&removed).await });
        let reg = enrollment(&agent, 2, "t-b", None, "new-key", &[]);
        tasks.spawn(async move { enroller.register(reg, T0 + 2).await.map(|r| r.is_some()) });
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        match a.agent(&agent).await.unwrap() {
            None => assert_eq!(b.pinned_key(&agent).await.unwrap(), None),
            Some(got) => {
                assert_eq!(b.pinned_key(&agent).await.unwrap(), Some(key(2)));
                assert_eq!(
                    (got.hostname.as_str(), got.enrollment_token.as_deref()),
                    ("new-key", Some("t-b")),
                    "round {round}"
                );
            }
        }
    }
}

/// PostgreSQL, step by step: a pinned registration that finds its row
/// locked by a removal or by a new key's enrollment waits, then reads the
/// row's newest version (none, or the new key) and is refused, writing
/// nothing; an enrollment that finds a new row
/// locked by another node's uncommitted enrollment waits, then takes the
/// conflict path and pins its own key over it, as the later of two serial
/// enrollments does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_registration_waits_for_the_agents_row_and_decides_on_its_newest_version() {
    let (db, node) = super::two_nodes::pg_database_node().await;
    let (mut other, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);

    // 1. A removal holds the row; a pinned registration waits, then is refused.
    node.register(enrollment(&fp(1), 1, "t1", None, "web-1", &[]), T0)
        .await
        .unwrap()
        .unwrap();
    let removal = other.transaction().await.unwrap();
    let deleted = removal
        .execute(
            "DELETE FROM agents WHERE fingerprint = $1",
            &[&fp(1).as_str()],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let waiting = {
        let node = node.clone();
        tokio::spawn(async move { node.register(pinned(&fp(1), 1, "web-1", &[]), T0 + 1).await })
    };
    wait_for_a_lock_wait(&db.config, None).await;
    removal.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), None);
    assert_eq!(node.agent(&fp(1)).await.unwrap(), None);

    // 2. Another node pins a new key (an enrollment, uncommitted); a
    // registration by the old key waits, then is refused and leaves the
    // new registration's row as it is.
    node.register(enrollment(&fp(3), 1, "t1", None, "old-key", &[]), T0)
        .await
        .unwrap()
        .unwrap();
    let repin = other.transaction().await.unwrap();
    repin
        .execute(
            "UPDATE agents SET public_key = $2, hostname = 'new-key' WHERE fingerprint = $1",
            &[&fp(3).as_str(), &key(2)],
        )
        .await
        .unwrap();
    let waiting = {
        let node = node.clone();
        tokio::spawn(async move {
            node.register(pinned(&fp(3), 1, "old-key", &[]), T0 + 1)
                .await
        })
    };
    wait_for_a_lock_wait(&db.config, None).await;
    repin.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), None);
    let got = info(&node, &fp(3)).await;
    assert_eq!((got.hostname.as_str(), got.last_seen_ms), ("new-key", T0));

    // 3. Another node's enrollment of a new fingerprint is uncommitted; ours
    // waits, then pins its key over it.
    let first = other.transaction().await.unwrap();
    first
        .execute(
            "INSERT INTO agents (fingerprint, public_key, hostname, os, arch, agent_version,
                                 presence, presence_since_ms, registered_at_ms, last_seen_ms,
                                 enrollment_token_id)
             VALUES ($1, $2, 'first', 'linux', 'x86_64', '0.1.0', 'connected', $3, $3, $3, 't1')",
            &[&fp(2).as_str(), &key(1), &T0],
        )
        .await
        .unwrap();
    let waiting = {
        let node = node.clone();
        tokio::spawn(async move {
            node.register(
                enrollment(&fp(2), 2, "t2", Some(&["web"]), "second", &["web"]),
                T0 + 1,
            )
            .await
        })
    };
    wait_for_a_lock_wait(&db.config, None).await;
    first.commit().await.unwrap();
    assert!(waiting.await.unwrap().unwrap().is_some());
    assert_eq!(node.pinned_key(&fp(2)).await.unwrap(), Some(key(2)));
    let got = info(&node, &fp(2)).await;
    assert_eq!(
        (
            got.hostname.as_str(),
            got.enrollment_token.as_deref(),
            got.registered_at_ms,
            got.tags
        ),
        ("second", Some("t2"), T0, tags(&["web"]))
    );
    drop(other);
    driver.await.unwrap().unwrap();
}

/// PostgreSQL lists in byte order whatever the column's collation (the
/// test cluster's default is C, so the column is given an ICU one here,
/// under which "a" sorts before "B").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_agents_are_listed_in_byte_order_whatever_the_collation() {
    let (db, node) = super::two_nodes::pg_database_node().await;
    let (client, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(r#"ALTER TABLE agents ALTER COLUMN hostname TYPE TEXT COLLATE "und-x-icu""#)
        .await
        .unwrap();
    let natural: Vec<String> = client
        .query(
            r#"SELECT h FROM (VALUES ('a'), ('B')) AS t(h) ORDER BY h COLLATE "und-x-icu""#,
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(natural, ["a", "B"], "the collation orders otherwise");
    drop(client);
    driver.await.unwrap().unwrap();
    agents_are_listed_by_hostname_then_fingerprint(node.clone(), node).await;
}
