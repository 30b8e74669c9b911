//! The behaviour suite of the update events area ([`UpdateEventStore`],
//! `backend/update_events.rs`), run like `backend/agent_tests.rs`: each
//! generic test gets two "nodes" on one shared store, SQLite (one file,
//! one node) and PostgreSQL (two pools on one fresh database of
//! `outrider-pgtest`'s cluster), and must behave the same on both. Agents
//! are registered through the agents area, whose table the health reads.

use outrider_protocol::api::{BuildCount, ChannelHealth, FailureGroup, UpdateHealth};
use outrider_protocol::{Fingerprint, UpdateEvent};

use super::agents::{Admission, AgentStore, Registration};
use super::two_nodes::two_node_suite;
use super::update_events::{
    KEEP_BUILDS_PER_AGENT, KEEP_PER_AGENT, MAX_REASON_BYTES, ROLLBACK_WINDOW_MS, UpdateEventStore,
};
use super::{Backend, PgBackend, PgTls};
use crate::store::TokenGrant;

two_node_suite!(
    an_event_is_stored_once_and_listed_newest_first,
    retention_keeps_the_newest_events_and_builds_of_each_agent,
    the_latest_event_of_a_build_is_the_highest_id_whatever_the_arrival_order,
    health_counts_builds_failures_and_recent_rollbacks_per_channel,
    concurrent_writers_on_two_nodes_keep_the_bounds_of_one_agent,
);

const T0: i64 = 1_800_000_000_000;

fn fp(i: u32) -> Fingerprint {
    format!("{i:020x}").parse().unwrap()
}

fn sha(i: u64) -> String {
    format!("{i:064x}")
}

/// Registers `agent` on `channel`, running build `build` (version
/// `version`).
async fn enroll(b: &Backend, agent: &Fingerprint, channel: &str, build: u64, version: &str) {
    let reg = Registration {
        fingerprint: agent.clone(),
        public_key: "aa".repeat(32),
        hostname: agent.to_string(),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        build_sha256: Some(sha(build)),
        build_version: Some(version.into()),
        tags: vec![],
        admission: Admission::Enrolled(TokenGrant {
            id: "t".into(),
            allowed_tags: None,
        }),
        stub_version: None,
        channel: Some(channel.into()),
        protocol_version: 2,
    };
    b.register(reg, T0).await.unwrap().unwrap();
}

fn event(id: u64, kind: &str, build: u64, reason: &str, at_ms: i64) -> UpdateEvent {
    UpdateEvent {
        id,
        kind: kind.into(),
        at_unix_ms: at_ms,
        build_sha256: Some(sha(build)),
        version: Some(format!("1.{build}")),
        to_sha256: None,
        to_version: None,
        reason: reason.into(),
    }
}

fn ids(events: &[UpdateEvent]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

/// The versions of the failure groups of `channel`, sorted.
async fn failing_versions(b: &Backend, channel: &str) -> Vec<String> {
    let health = b.update_health(T0).await.unwrap();
    let mut v: Vec<String> = health
        .channels
        .iter()
        .filter(|c| c.channel == channel)
        .flat_map(|c| c.failing.iter().filter_map(|g| g.version.clone()))
        .collect();
    v.sort();
    v
}

async fn an_event_is_stored_once_and_listed_newest_first(a: Backend, b: Backend) {
    assert_eq!(a.update_events(&fp(1)).await.unwrap(), vec![]);
    let long = "é".repeat(MAX_REASON_BYTES);
    let e3 = event(3, "refused", 1, &long, T0);
    let e1 = UpdateEvent {
        build_sha256: None,
        version: None,
        ..event(1, "installed", 1, "", T0)
    };
    let e2 = UpdateEvent {
        to_sha256: Some(sha(9)),
        to_version: Some("0.9".into()),
        ..event(2, "rolled_back", 1, "probation failed", T0 + 1)
    };
    assert!(a.record_update_event(&fp(1), &e3, T0).await.unwrap());
    assert!(b.record_update_event(&fp(1), &e1, T0).await.unwrap());
    assert!(a.record_update_event(&fp(1), &e2, T0).await.unwrap());
    // A resend, on either node, changes nothing.
    let resent = event(2, "installed", 5, "other", T0);
    assert!(!b.record_update_event(&fp(1), &resent, T0).await.unwrap());
    // An id beyond i64 is stored as its maximum.
    let huge = event(u64::MAX, "installed", 2, "", T0);
    assert!(a.record_update_event(&fp(2), &huge, T0).await.unwrap());

    let cut = UpdateEvent {
        reason: "é".repeat(MAX_REASON_BYTES / 2),
        ..e3.clone()
    };
    assert_eq!(b.update_events(&fp(1)).await.unwrap(), vec![cut, e2, e1]);
    assert_eq!(
        ids(&a.update_events(&fp(2)).await.unwrap()),
        vec![i64::MAX as u64]
    );
}

async fn retention_keeps_the_newest_events_and_builds_of_each_agent(a: Backend, b: Backend) {
    enroll(&a, &fp(1), "dev", 999, "0.9").await;
    enroll(&a, &fp(2), "dev", 999, "0.9").await;
    for i in 1..=150u64 {
        let node = if i % 2 == 0 { &a } else { &b };
        let e = event(i, "refused", i % 30, "no", T0);
        assert!(node.record_update_event(&fp(1), &e, T0).await.unwrap());
    }
    for i in 1..=5u64 {
        let e = event(i, "refused", 100 + i, "no", T0);
        a.record_update_event(&fp(2), &e, T0).await.unwrap();
    }
    let kept = KEEP_PER_AGENT as u64;
    assert_eq!(
        ids(&a.update_events(&fp(1)).await.unwrap()),
        (150 - kept + 1..=150).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&b.update_events(&fp(2)).await.unwrap()),
        [5, 4, 3, 2, 1]
    );
    // The newest KEEP_BUILDS_PER_AGENT builds of agent 1 (ids 131 to 150,
    // builds i % 30), and all five of agent 2.
    let builds = KEEP_BUILDS_PER_AGENT as u64;
    let mut expected: Vec<String> = (150 - builds + 1..=150)
        .map(|i| format!("1.{}", i % 30))
        .chain((101..=105).map(|b| format!("1.{b}")))
        .collect();
    expected.sort();
    assert_eq!(failing_versions(&a, "dev").await, expected);
}

async fn the_latest_event_of_a_build_is_the_highest_id_whatever_the_arrival_order(
    a: Backend,
    b: Backend,
) {
    enroll(&a, &fp(1), "dev", 999, "0.9").await;
    let reasons = |health: UpdateHealth| -> Vec<(String, String)> {
        health
            .channels
            .into_iter()
            .flat_map(|c| c.failing)
            .map(|g| (g.kind, g.reason))
            .collect()
    };
    a.record_update_event(&fp(1), &event(5, "refused", 1, "newer", T0), T0)
        .await
        .unwrap();
    b.record_update_event(&fp(1), &event(3, "probation_failed", 1, "older", T0), T0)
        .await
        .unwrap();
    assert_eq!(
        reasons(a.update_health(T0).await.unwrap()),
        [("refused".to_owned(), "newer".to_owned())]
    );
    // A newer success about the build: no longer failing.
    b.record_update_event(&fp(1), &event(6, "installed", 1, "", T0), T0)
        .await
        .unwrap();
    assert_eq!(reasons(b.update_health(T0).await.unwrap()), []);
}

async fn health_counts_builds_failures_and_recent_rollbacks_per_channel(a: Backend, b: Backend) {
    enroll(&a, &fp(1), "dev", 2, "1.2").await;
    enroll(&a, &fp(2), "dev", 2, "1.2").await;
    enroll(&b, &fp(3), "dev", 1, "1.1").await;
    enroll(&b, &fp(4), "stable", 1, "1.1").await;
    let now = T0 + ROLLBACK_WINDOW_MS;
    // Agents 1 and 3 refused build 3 for the same reason; agent 2 refused
    // build 2 once but runs it now: not failing.
    a.record_update_event(&fp(1), &event(1, "refused", 3, "bad signature", T0), now)
        .await
        .unwrap();
    b.record_update_event(&fp(3), &event(1, "refused", 3, "bad signature", T0), now)
        .await
        .unwrap();
    a.record_update_event(&fp(2), &event(1, "refused", 2, "disk full", T0), now)
        .await
        .unwrap();
    // Rollbacks: two in the window (one at its very start), one before it.
    for (agent, id, at) in [(4, 1, now - 1), (4, 2, T0), (3, 2, T0 - 1)] {
        let e = event(id, "rolled_back", 1, "probation failed", at);
        b.record_update_event(&fp(agent), &e, now).await.unwrap();
    }
    let build = |version: &str, build: u64, agents: u64| BuildCount {
        version: version.into(),
        build_sha256: Some(sha(build)),
        agents,
    };
    let expected = UpdateHealth {
        channels: vec![
            ChannelHealth {
                channel: "dev".into(),
                builds: vec![build("1.2", 2, 2), build("1.1", 1, 1)],
                failing: vec![FailureGroup {
                    version: Some("1.3".into()),
                    build_sha256: Some(sha(3)),
                    kind: "refused".into(),
                    reason: "bad signature".into(),
                    agents: 2,
                }],
                rollbacks_24h: 0,
            },
            ChannelHealth {
                channel: "stable".into(),
                builds: vec![build("1.1", 1, 1)],
                failing: vec![],
                rollbacks_24h: 2,
            },
        ],
    };
    assert_eq!(a.update_health(now).await.unwrap(), expected);
    assert_eq!(b.update_health(now).await.unwrap(), expected);
}

/// The agent's old session ingests on one node while its new one does on
/// the other: events of one agent written at once from both. The bounds
/// hold exactly, as in any serial order.
async fn concurrent_writers_on_two_nodes_keep_the_bounds_of_one_agent(a: Backend, b: Backend) {
    enroll(&a, &fp(1), "dev", 999, "0.9").await;
    const N: u64 = 250;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=N {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            node.record_update_event(&fp(1), &event(i, "refused", i % 40, "no", T0), T0)
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert!(done.unwrap().unwrap());
    }
    let kept = KEEP_PER_AGENT as u64;
    assert_eq!(
        ids(&a.update_events(&fp(1)).await.unwrap()),
        (N - kept + 1..=N).rev().collect::<Vec<_>>()
    );
    let builds = KEEP_BUILDS_PER_AGENT as u64;
    let mut expected: Vec<String> = (N - builds + 1..=N)
        .map(|i| format!("1.{}", i % 40))
        .collect();
    expected.sort();
    assert_eq!(failing_versions(&b, "dev").await, expected);
}

/// PostgreSQL, step by step: node A's ingest transaction has stored a
/// full agent's worth of events and not committed; node B records one
/// more event of that agent. B waits for A's lock of the agent, then
/// prunes counting A's events: the newest `KEEP_PER_AGENT` are kept.
/// Without the lock B would count only its own row, prune nothing, and
/// one event too many would be left after A's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_agents_event_writes_take_turns_so_the_bound_counts_the_others() {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let node = || async {
        PgBackend::with_config(db.config.clone(), PgTls::Disable, 2)
            .await
            .unwrap()
    };
    let (a, b) = (node().await, node().await);
    let mut client = a.client().await.unwrap();
    let ingest = client.transaction().await.unwrap();
    let kept = KEEP_PER_AGENT as u64;
    for i in 1..=kept {
        let e = event(i, "installed", i, "", T0);
        assert!(
            super::postgres::update_events::insert(&ingest, fp(1).as_str(), &e, T0)
                .await
                .unwrap()
        );
    }
    let waiting = {
        let b = Backend::Postgres(b.clone());
        tokio::spawn(async move {
            b.record_update_event(&fp(1), &event(kept + 1, "installed", 0, "", T0), T0)
                .await
        })
    };
    super::two_nodes::wait_for_a_lock_wait(&db.config, Some("advisory")).await;
    ingest.commit().await.unwrap();
    assert!(waiting.await.unwrap().unwrap());
    assert_eq!(
        ids(&Backend::Postgres(b).update_events(&fp(1)).await.unwrap()),
        (2..=kept + 1).rev().collect::<Vec<_>>()
    );
}
