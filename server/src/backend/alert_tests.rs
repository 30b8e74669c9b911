//! The behaviour suite of the alerts area ([`AlertStore`],
//! `backend/alerts.rs`), built like `backend/agent_tests.rs`: every test is
//! one generic function given two "nodes" on one shared store, and
//! `two_node_suite!` (`two_nodes.rs`) runs each against SQLite (one store on a real file: one node,
//! so both handles are that node's) and PostgreSQL (two [`PgBackend`]s
//! with their own pools on one fresh database of the test binary's private
//! cluster, `outrider-pgtest`, as two server processes would be). Saves
//! carry a term won in a real election of alert evaluation
//! ([`Backend::elect`]): on SQLite always term 1, on PostgreSQL the
//! advisory lock and the `leases` row of `backend/postgres/leader.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use outrider_protocol::Fingerprint;

use super::agents::{Admission, AgentStore, Registration};
use super::alerts::{AlertStore, MAX_OUTBOX_PAGE, OutboxBatch};
use super::leader::{ElectionConfig, Job, LeaderTerm};
use super::two_nodes::two_node_suite;
use super::{Backend, StoreError};
use crate::store::TokenGrant;

two_node_suite!(
    the_state_and_rows_are_saved_together_and_a_row_only_once,
    rows_carry_the_agents_effective_tags_or_the_site_tag,
    the_outbox_reads_newest_first_and_is_bounded,
    a_term_not_granted_or_of_another_job_is_refused_and_writes_nothing,
    a_stale_leaders_save_is_refused_and_leaders_in_sequence_never_duplicate_a_row,
    concurrent_saves_of_one_decision_store_it_once,
);

const T0: i64 = 1_800_000_000_000;

/// How long an election may take in a test before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Elections that settle fast.
const FAST: ElectionConfig = ElectionConfig {
    retry: Duration::from_millis(20),
    check_interval: Duration::from_millis(20),
    check_timeout: Duration::from_secs(5),
    leader_idle_timeout: Duration::from_secs(10),
};

fn fp(i: u32) -> Fingerprint {
    format!("{i:020x}").parse().unwrap()
}

fn batch(key: &str, group: &str) -> OutboxBatch {
    OutboxBatch {
        batch_key: key.into(),
        group_key: group.into(),
        severity: "critical".into(),
        notifications: "[]".into(),
    }
}

fn agent_batch(key: &str) -> OutboxBatch {
    batch(key, &format!("agent/{}", fp(1)))
}

/// `node` elected leader of alert evaluation on `b`: its elector (to stop
/// it) and its term.
async fn lead(b: &Backend, node: &str) -> (super::leader::Elector, LeaderTerm) {
    let elector = b.elect(Job::AlertEvaluation, node.parse().unwrap(), FAST);
    let mut leadership = elector.leadership();
    let term = tokio::time::timeout(DEADLINE, leadership.leading())
        .await
        .unwrap_or_else(|_| panic!("{node} did not lead within {DEADLINE:?}"))
        .expect("the election is running");
    (elector, term)
}

/// The outbox's batch keys, newest first.
async fn keys(b: &Backend) -> Vec<String> {
    b.alert_outbox(MAX_OUTBOX_PAGE)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.batch_key)
        .collect()
}

async fn the_state_and_rows_are_saved_together_and_a_row_only_once(a: Backend, b: Backend) {
    let (elector, term) = lead(&a, "a").await;
    assert_eq!(b.alert_state().await.unwrap(), None);
    assert!(b.alert_outbox(10).await.unwrap().is_empty());
    let n = a
        .save_alerts(&term, "{\"v\":1}".into(), vec![agent_batch("a@1#1")], T0)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(b.alert_state().await.unwrap().as_deref(), Some("{\"v\":1}"));
    // The same decision again (a retry after an unknown outcome) is not a
    // second row, and its first version is kept.
    let again = OutboxBatch {
        severity: "warning".into(),
        ..agent_batch("a@1#1")
    };
    let n = a
        .save_alerts(
            &term,
            "{\"v\":2}".into(),
            vec![again, agent_batch("a@1#2")],
            T0 + 10,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(b.alert_state().await.unwrap().as_deref(), Some("{\"v\":2}"));
    let rows = b.alert_outbox(10).await.unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.batch_key.as_str(),
                r.severity.as_str(),
                r.created_at_ms,
                r.routed_at_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a@1#2", "critical", T0 + 10, None),
            ("a@1#1", "critical", T0, None)
        ]
    );
    assert!(rows[0].id > rows[1].id);
    assert!(rows.iter().all(|r| r.notifications.is_empty()));
    // A save without rows still stores the state.
    assert_eq!(
        a.save_alerts(&term, "{\"v\":3}".into(), vec![], T0 + 20)
            .await
            .unwrap(),
        0
    );
    assert_eq!(b.alert_state().await.unwrap().as_deref(), Some("{\"v\":3}"));
    assert_eq!(keys(&b).await.len(), 2);
    elector.stop().await;
}

async fn rows_carry_the_agents_effective_tags_or_the_site_tag(a: Backend, b: Backend) {
    let (elector, term) = lead(&a, "a").await;
    b.register(
        Registration {
            fingerprint: fp(1),
            public_key: "01".repeat(32),
            hostname: "web-1".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
            build_sha256: None,
            build_version: None,
            tags: vec!["web".into()],
            admission: Admission::Enrolled(TokenGrant {
                id: "t".into(),
                allowed_tags: None,
            }),
            stub_version: None,
            channel: None,
            protocol_version: 2,
        },
        T0,
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        b.set_server_tags(&fp(1), &["prod".into(), "web".into()])
            .await
            .unwrap()
    );
    a.save_alerts(
        &term,
        "{}".into(),
        vec![
            agent_batch("a@1#1"),
            batch("site@1#1", "site/dc1"),
            batch("gone@1#1", &format!("agent/{}", fp(2))),
            batch("odd@1#1", "rack/7"),
        ],
        T0,
    )
    .await
    .unwrap();
    let rows: Vec<_> = b
        .alert_outbox(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.batch_key, r.tags))
        .collect();
    let owned = |k: &str, t: &[&str]| {
        (
            k.to_owned(),
            t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        rows,
        [
            owned("odd@1#1", &[]),
            owned("gone@1#1", &[]),
            owned("site@1#1", &["dc1"]),
            owned("a@1#1", &["prod", "web"]),
        ]
    );
    elector.stop().await;
}

async fn the_outbox_reads_newest_first_and_is_bounded(a: Backend, b: Backend) {
    let (elector, term) = lead(&a, "a").await;
    let n = MAX_OUTBOX_PAGE as usize + 5;
    let batches: Vec<_> = (0..n).map(|i| agent_batch(&format!("k#{i:05}"))).collect();
    assert_eq!(
        a.save_alerts(&term, "{}".into(), batches, T0)
            .await
            .unwrap(),
        n
    );
    let all = keys(&b).await;
    assert_eq!(all.len(), MAX_OUTBOX_PAGE as usize);
    assert_eq!(all[0], format!("k#{:05}", n - 1));
    assert_eq!(
        all.last().unwrap(),
        &format!("k#{:05}", n - MAX_OUTBOX_PAGE as usize)
    );
    assert_eq!(
        b.alert_outbox(u32::MAX).await.unwrap().len(),
        MAX_OUTBOX_PAGE as usize
    );
    assert_eq!(b.alert_outbox(3).await.unwrap().len(), 3);
    assert!(b.alert_outbox(0).await.unwrap().is_empty());
    elector.stop().await;
}

async fn a_term_not_granted_or_of_another_job_is_refused_and_writes_nothing(
    a: Backend,
    b: Backend,
) {
    let (elector, granted) = lead(&a, "a").await;
    let later = LeaderTerm {
        term: granted.term + 1,
        ..granted.clone()
    };
    match a
        .save_alerts(&later, "{}".into(), vec![agent_batch("x#1")], T0)
        .await
    {
        Err(StoreError::Fenced {
            job: "alert-evaluation",
            term,
            current,
        }) => assert_eq!((term, current), (later.term, Some(granted.term))),
        other => panic!("a term never granted was not fenced: {other:?}"),
    }
    let foreign = LeaderTerm {
        job: Job::Retention,
        ..granted.clone()
    };
    match a
        .save_alerts(&foreign, "{}".into(), vec![agent_batch("x#1")], T0)
        .await
    {
        Err(StoreError::ForeignTerm {
            expected: "alert-evaluation",
            got: "retention",
        }) => {}
        other => panic!("a term of another job was not refused: {other:?}"),
    }
    assert_eq!(b.alert_state().await.unwrap(), None);
    assert!(keys(&b).await.is_empty());
    // The granted term writes.
    a.save_alerts(&granted, "{}".into(), vec![agent_batch("x#1")], T0)
        .await
        .unwrap();
    assert_eq!(keys(&b).await, ["x#1"]);
    elector.stop().await;
}

async fn a_stale_leaders_save_is_refused_and_leaders_in_sequence_never_duplicate_a_row(
    a: Backend,
    b: Backend,
) {
    let (a_elector, a_term) = lead(&a, "a").await;
    a.save_alerts(
        &a_term,
        "{\"by\":\"a\"}".into(),
        vec![agent_batch("i@1#1"), agent_batch("i@1#2")],
        T0,
    )
    .await
    .unwrap();
    a_elector.stop().await;
    let (b_elector, b_term) = lead(&b, "b").await;
    match &a {
        // One node: leadership is the same term, for good.
        Backend::Sqlite(_) => assert_eq!(b_term.term, a_term.term),
        Backend::Postgres(_) => assert!(b_term.term > a_term.term, "{b_term:?}"),
    }
    // The new leader decides again what a stored (i@1#2) and more.
    let n = b
        .save_alerts(
            &b_term,
            "{\"by\":\"b\"}".into(),
            vec![agent_batch("i@1#2"), agent_batch("i@1#3")],
            T0 + 10,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    if b_term.term != a_term.term {
        // a, paused through the takeover, saves under its old term:
        // refused, neither its state nor its rows written.
        match a
            .save_alerts(
                &a_term,
                "{\"by\":\"stale a\"}".into(),
                vec![agent_batch("i@1#3"), agent_batch("stale#1")],
                T0 + 20,
            )
            .await
        {
            Err(StoreError::Fenced {
                job: "alert-evaluation",
                term,
                current,
            }) => assert_eq!((term, current), (a_term.term, Some(b_term.term))),
            other => panic!("the stale leader's save was not fenced: {other:?}"),
        }
    }
    assert_eq!(
        a.alert_state().await.unwrap().as_deref(),
        Some("{\"by\":\"b\"}")
    );
    assert_eq!(keys(&a).await, ["i@1#3", "i@1#2", "i@1#1"]);
    b_elector.stop().await;
    // a leads again, under a newer term still on PostgreSQL, and saves its
    // old decisions once more: no row twice.
    let (a_elector, a_again) = lead(&a, "a").await;
    assert!(a_again.term >= b_term.term);
    let n = a
        .save_alerts(
            &a_again,
            "{\"by\":\"a again\"}".into(),
            vec![agent_batch("i@1#1"), agent_batch("i@1#3")],
            T0 + 30,
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(keys(&b).await, ["i@1#3", "i@1#2", "i@1#1"]);
    a_elector.stop().await;
}

async fn concurrent_saves_of_one_decision_store_it_once(a: Backend, b: Backend) {
    let (elector, term) = lead(&a, "a").await;
    // Two saves under the same term (one node's retry racing its first
    // attempt, or on SQLite simply two calls), overlapping decisions.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, node) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let term = term.clone();
        let batches: Vec<_> = (0..20)
            .map(|k| agent_batch(&format!("c#{:02}", k + i * 5)))
            .collect();
        tasks.spawn(async move { node.save_alerts(&term, "{}".into(), batches, T0).await });
    }
    let mut new = 0;
    while let Some(done) = tasks.join_next().await {
        new += done.unwrap().unwrap();
    }
    let stored = keys(&a).await;
    let distinct: BTreeSet<_> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "a row stored twice");
    // Keys c#00 to c#34: each stored once, counted new once.
    assert_eq!((stored.len(), new), (35, 35));
    elector.stop().await;
}
