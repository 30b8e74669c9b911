//! The behaviour suite of the results area ([`ResultStore`],
//! `backend/results.rs`), run like `backend/agent_tests.rs`: each generic
//! test gets two "nodes" on one shared store, SQLite (one file, one node)
//! and PostgreSQL (two pools on one fresh database of `outrider-pgtest`'s
//! cluster), and must behave the same on both. Each node also has its
//! embedded metrics store, as the server does: on SQLite the backend's own
//! store, on PostgreSQL a SQLite file of its own per node. Agents are
//! registered and removed through the agents area, whose table the ingest
//! writes.

use std::collections::BTreeSet;

use outrider_protocol::{
    CheckResult, CheckState, Fingerprint, PerfData, UnknownPerfData, UpdateEvent,
};

use super::agents::{Admission, AgentStore, Registration};
use super::results::{
    IngestLimits, Ingested, MAX_FUTURE_MS, ResultStore, ResultsCursor, SERIES_LIMIT_CHECK,
};
use super::two_nodes::{pg_database_node, two_node_suite, wait_for_a_lock_wait};
use super::update_events::UpdateEventStore;
use super::{Backend, StoreError};
use crate::store::test_support::load_result as result;
use crate::store::{Store, TokenGrant};

two_node_suite!(
    a_resent_batch_is_stored_once_and_still_acked,
    the_ack_is_never_lowered_and_covers_refused_results,
    the_latest_result_records_since_when_the_check_is_in_its_state,
    a_future_dated_start_is_clamped,
    nul_in_text_is_stored_as_the_replacement_character,
    update_events_are_stored_with_their_results_once,
    an_unregistered_or_removed_agent_stores_nothing,
    removal_drops_the_latest_results_and_enrolling_again_starts_above_them,
    the_server_writes_a_result_when_series_are_dropped,
    unknown_perfdata_items_show_with_the_latest_result,
    retention_deletes_old_results_in_steps_and_keeps_the_latest,
    concurrent_batches_from_two_nodes_store_each_result_once_and_ack_all,
);

const T0: i64 = 1_800_000_000_000;

fn fp(i: u32) -> Fingerprint {
    format!("{i:020x}").parse().unwrap()
}

/// One node: its results backend and its embedded metrics store.
struct Node {
    backend: Backend,
    metrics: Store,
    _dir: Option<tempfile::TempDir>,
}

impl Node {
    async fn of(backend: Backend) -> Node {
        match &backend {
            Backend::Sqlite(b) => Node {
                metrics: b.store().clone(),
                backend,
                _dir: None,
            },
            Backend::Postgres(_) => {
                let dir = tempfile::tempdir().unwrap();
                let metrics = Store::open(&dir.path().join("metrics.db")).await.unwrap();
                Node {
                    backend,
                    metrics,
                    _dir: Some(dir),
                }
            }
        }
    }

    async fn try_ingest(
        &self,
        agent: &Fingerprint,
        batch: Vec<CheckResult>,
        limits: IngestLimits,
        now: i64,
    ) -> Result<Ingested, StoreError> {
        self.backend
            .ingest(agent, batch, limits, &self.metrics, now)
            .await
    }

    async fn ingest(&self, agent: &Fingerprint, batch: Vec<CheckResult>) -> Ingested {
        self.try_ingest(agent, batch, IngestLimits::default(), T0)
            .await
            .unwrap()
    }

    async fn latest(&self, agent: Option<&Fingerprint>) -> Vec<outrider_protocol::api::ResultInfo> {
        self.backend.latest_results(agent).await.unwrap()
    }
}

fn registration(agent: &Fingerprint, hostname: &str) -> Registration {
    Registration {
        fingerprint: agent.clone(),
        public_key: "aa".repeat(32),
        hostname: hostname.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        build_sha256: None,
        build_version: None,
        tags: vec![],
        admission: Admission::Enrolled(TokenGrant {
            id: "t".into(),
            allowed_tags: None,
        }),
        stub_version: None,
        channel: None,
        protocol_version: 2,
    }
}

/// Registers `agent` as `hostname`; returns its `acked_seq`.
async fn enroll(b: &Backend, agent: &Fingerprint, hostname: &str) -> u64 {
    b.register(registration(agent, hostname), T0)
        .await
        .unwrap()
        .unwrap()
        .acked_seq
}

fn seqs(stored: &[CheckResult]) -> Vec<u64> {
    stored.iter().map(|r| r.seq).collect()
}

async fn nodes(a: Backend, b: Backend) -> (Node, Node, Fingerprint) {
    let (a, b) = (Node::of(a).await, Node::of(b).await);
    let agent = fp(1);
    enroll(&a.backend, &agent, "web-1").await;
    (a, b, agent)
}

async fn a_resent_batch_is_stored_once_and_still_acked(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let batch = vec![
        result(1, "load", CheckState::Ok),
        result(2, "load", CheckState::Critical),
    ];
    let first = a.ingest(&agent, batch.clone()).await;
    assert_eq!((first.acked_seq, seqs(&first.stored)), (2, vec![1, 2]));
    assert_eq!(first.samples, 2);
    // Lost ack: the agent resends the batch, to the other node.
    // The points are in the ingesting node's embedded store.
    assert_eq!(load_points(&a.metrics, &agent).await.len(), 2);
    let again = b.ingest(&agent, batch).await;
    assert_eq!((again.acked_seq, seqs(&again.stored)), (2, vec![]));
    assert_eq!(again.samples, 0);
    let latest = b.latest(None).await;
    assert_eq!(latest.len(), 1);
    let l = &latest[0];
    assert_eq!(
        (
            l.agent.clone(),
            l.hostname.as_str(),
            l.check.as_str(),
            l.seq,
            l.state
        ),
        (agent.clone(), "web-1", "load", 2, CheckState::Critical)
    );
    assert_eq!(
        (l.summary.as_str(), l.duration_ms, l.received_at_ms),
        ("run 2", 3, T0)
    );
    assert_eq!(l.perfdata, result(2, "load", CheckState::Ok).perfdata);
    assert_eq!(a.latest(Some(&agent)).await.len(), 1);
    assert!(a.latest(Some(&fp(9))).await.is_empty());
}

async fn the_ack_is_never_lowered_and_covers_refused_results(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    assert_eq!(
        a.ingest(&agent, vec![result(5, "load", CheckState::Ok)])
            .await
            .acked_seq,
        5
    );
    // A straggler is stored but neither lowers the ack nor moves latest.
    let late = b
        .ingest(&agent, vec![result(3, "load", CheckState::Critical)])
        .await;
    assert_eq!((late.acked_seq, seqs(&late.stored)), (5, vec![3]));
    assert_eq!(a.latest(None).await[0].seq, 5);
    // Results the caller refused are acked with the batch.
    let limits = IngestLimits {
        refused_up_to: 9,
        ..IngestLimits::default()
    };
    let refused = a
        .try_ingest(&agent, vec![result(6, "load", CheckState::Ok)], limits, T0)
        .await
        .unwrap();
    assert_eq!((refused.acked_seq, seqs(&refused.stored)), (9, vec![6]));
    let empty = b.try_ingest(&agent, vec![], limits, T0).await.unwrap();
    assert_eq!(empty.acked_seq, 9);
    // Seen again at the next registration.
    assert_eq!(
        b.backend
            .register(
                Registration {
                    admission: Admission::Pinned,
                    ..registration(&agent, "web-1")
                },
                T0
            )
            .await
            .unwrap()
            .unwrap()
            .acked_seq,
        9
    );
    // A seq beyond i64 stores nothing of its batch.
    let err = a
        .try_ingest(
            &agent,
            vec![
                result(10, "load", CheckState::Ok),
                result(u64::MAX, "load", CheckState::Ok),
            ],
            IngestLimits::default(),
            T0,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SeqOutOfRange { seq: u64::MAX }),
        "{err}"
    );
    assert_eq!(b.latest(None).await[0].seq, 6);
}

async fn the_latest_result_records_since_when_the_check_is_in_its_state(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let table = [
        (1, CheckState::Ok, 1_000),
        (2, CheckState::Ok, 1_000),
        (3, CheckState::Critical, 3_000),
        (4, CheckState::Critical, 3_000),
        (5, CheckState::Warning, 5_000),
        (6, CheckState::Ok, 6_000),
    ];
    for (seq, state, since) in table {
        // Alternating nodes, as an agent moving back and forth.
        let node = if seq % 2 == 0 { &a } else { &b };
        node.ingest(&agent, vec![result(seq, "load", state)]).await;
        let latest = a.latest(None).await;
        assert_eq!(
            (latest[0].seq, latest[0].state_since_ms),
            (seq, Some(since)),
            "after seq {seq}"
        );
    }
    // An older straggler changes neither the latest result nor since.
    b.ingest(&agent, vec![result(0, "load", CheckState::Critical)])
        .await;
    let latest = a.latest(None).await;
    assert_eq!((latest[0].seq, latest[0].state_since_ms), (6, Some(6_000)));
    // Checks and agents in order: host name (bytes), agent, check.
    enroll(&a.backend, &fp(2), "Web-0").await;
    b.ingest(
        &fp(2),
        vec![
            result(1, "zz", CheckState::Ok),
            result(2, "aa", CheckState::Ok),
        ],
    )
    .await;
    a.ingest(&agent, vec![result(7, "disk", CheckState::Ok)])
        .await;
    let order: Vec<_> = b
        .latest(None)
        .await
        .iter()
        .map(|l| (l.hostname.clone(), l.check.clone()))
        .collect();
    let expected = [
        ("Web-0", "aa"),
        ("Web-0", "zz"),
        ("web-1", "disk"),
        ("web-1", "load"),
    ];
    assert_eq!(
        order,
        expected.map(|(h, c)| (h.to_owned(), c.to_owned())).to_vec()
    );
}

async fn a_future_dated_start_is_clamped(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let mut r = result(1, "load", CheckState::Ok);
    r.started_at_ms = i64::MAX;
    let got = a.ingest(&agent, vec![r]).await;
    assert_eq!(got.clamped, 1);
    assert_eq!(got.stored[0].started_at_ms, T0 + MAX_FUTURE_MS);
    let latest = b.latest(None).await;
    assert_eq!(latest[0].started_at_ms, T0 + MAX_FUTURE_MS);
    assert_eq!(latest[0].state_since_ms, Some(T0 + MAX_FUTURE_MS));
    let mut r = result(2, "load", CheckState::Ok);
    r.started_at_ms = T0 + MAX_FUTURE_MS;
    assert_eq!(b.ingest(&agent, vec![r]).await.clamped, 0);
}

fn event(id: u64, reason: &str) -> UpdateEvent {
    UpdateEvent {
        id,
        kind: "refused".into(),
        at_unix_ms: T0,
        build_sha256: Some("ab".repeat(32)),
        version: Some("1.2.3".into()),
        to_sha256: None,
        to_version: None,
        reason: reason.into(),
    }
}

async fn nul_in_text_is_stored_as_the_replacement_character(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let mut r = result(1, "outrider.update", CheckState::Warning);
    r.summary = "bad\0output".into();
    r.long_output = "\0line two\0".into();
    r.update_event = Some(Box::new(event(1, "signature\0mismatch")));
    let got = a.ingest(&agent, vec![r]).await;
    // The sinks see what is stored.
    assert_eq!(got.stored[0].summary, "bad\u{FFFD}output");
    let latest = b.latest(None).await;
    assert_eq!(
        (latest[0].summary.as_str(), latest[0].long_output.as_str()),
        ("bad\u{FFFD}output", "\u{FFFD}line two\u{FFFD}")
    );
    let events = b.backend.update_events(&agent).await.unwrap();
    assert_eq!(events[0].reason, "signature\u{FFFD}mismatch");
}

async fn update_events_are_stored_with_their_results_once(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let with_event = |seq, id| {
        let mut r = result(seq, "outrider.update", CheckState::Warning);
        r.update_event = Some(Box::new(event(id, "refused")));
        r
    };
    a.ingest(&agent, vec![with_event(1, 1), with_event(2, 2)])
        .await;
    // Resent, with one more, on the other node.
    let again = b
        .ingest(&agent, vec![with_event(2, 2), with_event(3, 3)])
        .await;
    assert_eq!(seqs(&again.stored), vec![3]);
    let ids: Vec<u64> = a
        .backend
        .update_events(&agent)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![3, 2, 1]);
    // A batch that fails stores its events no more than its results.
    let failing = b
        .try_ingest(
            &agent,
            vec![with_event(4, 4), with_event(u64::MAX, 5)],
            IngestLimits::default(),
            T0,
        )
        .await;
    assert!(failing.is_err());
    assert_eq!(a.backend.update_events(&agent).await.unwrap().len(), 3);
}

async fn an_unregistered_or_removed_agent_stores_nothing(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let err = a
        .try_ingest(
            &fp(7),
            vec![result(1, "load", CheckState::Ok)],
            IngestLimits::default(),
            T0,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownAgent { fingerprint } if fingerprint == fp(7).as_str()),
        "{err}"
    );
    a.ingest(&agent, vec![result(1, "load", CheckState::Ok)])
        .await;
    assert!(b.backend.remove_agent(&agent).await.unwrap());
    let err = a
        .try_ingest(
            &agent,
            vec![result(2, "load", CheckState::Ok)],
            IngestLimits::default(),
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent { .. }), "{err}");
    assert!(b.latest(None).await.is_empty());
}

async fn removal_drops_the_latest_results_and_enrolling_again_starts_above_them(
    a: Backend,
    b: Backend,
) {
    let (a, b, agent) = nodes(a, b).await;
    let limits = IngestLimits {
        max_series: 1,
        refused_up_to: 0,
    };
    // Two perfdata labels over a limit of one: the server writes its own
    // result too, with a negative seq, which the floor must not take.
    let mut r = result(7, "load", CheckState::Ok);
    r.perfdata.push(PerfData {
        label: "load5".into(),
        ..r.perfdata[0].clone()
    });
    let got = a
        .try_ingest(
            &agent,
            vec![result(6, "disk", CheckState::Ok), r],
            limits,
            T0,
        )
        .await
        .unwrap();
    assert_eq!(got.stored.last().unwrap().check, SERIES_LIMIT_CHECK);
    assert!(b.backend.remove_agent(&agent).await.unwrap());
    assert!(a.latest(Some(&agent)).await.is_empty());
    // Enrolling again: its next results are not taken for stored ones.
    assert_eq!(enroll(&b.backend, &agent, "web-1").await, 7);
    assert!(b.latest(None).await.is_empty());
    let next = a
        .ingest(&agent, vec![result(8, "load", CheckState::Ok)])
        .await;
    assert_eq!((next.acked_seq, seqs(&next.stored)), (8, vec![8]));
}

fn with_labels(seq: u64, labels: std::ops::Range<usize>) -> CheckResult {
    let mut r = result(seq, "load", CheckState::Ok);
    r.started_at_ms = T0;
    r.perfdata = labels
        .map(|i| PerfData {
            label: format!("l{i}"),
            ..r.perfdata[0].clone()
        })
        .collect();
    r
}

async fn the_server_writes_a_result_when_series_are_dropped(a: Backend, _b: Backend) {
    let a = Node::of(a).await;
    let agent = fp(1);
    enroll(&a.backend, &agent, "web-1").await;
    let limits = IngestLimits {
        max_series: 3,
        refused_up_to: 0,
    };
    let got = a
        .try_ingest(&agent, vec![with_labels(1, 0..5)], limits, T0)
        .await
        .unwrap();
    assert_eq!((got.samples, got.series_dropped, got.acked_seq), (3, 2, 1));
    assert_eq!(got.stored.len(), 2);
    assert_eq!(got.stored[0].perfdata.len(), 3);
    let report = &got.stored[1];
    assert_eq!(
        (report.check.as_str(), report.state),
        (SERIES_LIMIT_CHECK, CheckState::Warning)
    );
    assert!(
        report.summary.starts_with("2 perfdata samples dropped"),
        "{}",
        report.summary
    );
    let latest = a.latest(None).await;
    let load = latest.iter().find(|l| l.check == "load").unwrap();
    // Stored trimmed: only the samples that were stored.
    assert_eq!(load.perfdata.len(), 3);
    let report = latest
        .iter()
        .find(|l| l.check == SERIES_LIMIT_CHECK)
        .unwrap();
    assert_eq!(
        (report.state, report.seq, report.received_at_ms),
        (CheckState::Warning, 0, T0)
    );
    // Within the report interval: drops, but no second WARNING.
    let got = a
        .try_ingest(&agent, vec![with_labels(2, 0..6)], limits, T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        (got.samples, got.series_dropped, got.stored.len()),
        (3, 3, 1)
    );
    // Quiet past the recovery time: an OK, once.
    let later = T0 + crate::store::metrics::SERIES_LIMIT_RECOVERY_MS;
    let got = a
        .try_ingest(&agent, vec![with_labels(3, 0..3)], limits, later)
        .await
        .unwrap();
    // The drops of seq 2 are reported first (the interval passed).
    assert_eq!(got.stored.len(), 2);
    assert!(
        got.stored[1]
            .summary
            .starts_with("3 perfdata samples dropped")
    );
    let later = later + crate::store::metrics::SERIES_LIMIT_RECOVERY_MS;
    let got = a
        .try_ingest(&agent, vec![with_labels(4, 0..3)], limits, later)
        .await
        .unwrap();
    assert_eq!(got.stored.len(), 2);
    assert_eq!(got.stored[1].state, CheckState::Ok);
    let got = a
        .try_ingest(&agent, vec![with_labels(5, 0..3)], limits, later + 1)
        .await
        .unwrap();
    assert_eq!(
        (got.stored.len(), got.acked_seq),
        (1, 5),
        "one OK, not one per batch"
    );
    let report = a
        .latest(None)
        .await
        .into_iter()
        .find(|l| l.check == SERIES_LIMIT_CHECK)
        .unwrap();
    assert_eq!(report.state, CheckState::Ok);
}

async fn unknown_perfdata_items_show_with_the_latest_result(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let mut r = result(1, "ping", CheckState::Ok);
    r.unknown_perfdata = vec![UnknownPerfData {
        label: "rta".into(),
        uom: "ms".into(),
        warn: Some("100".into()),
        crit: Some("500".into()),
        min: Some(0.0),
        max: None,
    }];
    a.ingest(&agent, vec![r]).await;
    let latest = b.latest(None).await;
    assert_eq!(
        latest[0].unknown_perfdata,
        vec![UnknownPerfData {
            label: "rta".into(),
            uom: "ms".into(),
            warn: None,
            crit: None,
            min: None,
            max: None,
        }]
    );
    // The next result without one shows none.
    a.ingest(&agent, vec![result(2, "ping", CheckState::Ok)])
        .await;
    assert!(b.latest(None).await[0].unknown_perfdata.is_empty());
}

async fn retention_deletes_old_results_in_steps_and_keeps_the_latest(a: Backend, b: Backend) {
    let (a, b, agent) = nodes(a, b).await;
    let other = fp(2);
    enroll(&a.backend, &other, "web-2").await;
    // More than one step's worth, received before the cut-off, then one
    // after it.
    let n = super::results::RESULTS_PER_STEP as u64 + 50;
    for chunk in (1..=n).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|&s| result(s, if s % 2 == 0 { "load" } else { "disk" }, CheckState::Ok))
            .collect();
        a.try_ingest(&agent, batch, IngestLimits::default(), T0)
            .await
            .unwrap();
    }
    b.try_ingest(
        &other,
        vec![result(1, "load", CheckState::Ok)],
        IngestLimits::default(),
        T0,
    )
    .await
    .unwrap();
    a.try_ingest(
        &agent,
        vec![result(n + 1, "cpu", CheckState::Ok)],
        IngestLimits::default(),
        T0 + 10,
    )
    .await
    .unwrap();
    let mut cursor = Some(ResultsCursor::default());
    let (mut steps, mut deleted) = (0, 0);
    while let Some(c) = cursor {
        let (next, d) = b.backend.results_retention_step(c, T0 + 1).await.unwrap();
        cursor = next;
        deleted += d;
        steps += 1;
        assert!(steps < 10, "the pass ends");
    }
    assert!(steps >= 2, "bounded steps, {steps}");
    // Everything but the latest two of the agent (load, disk) went.
    assert_eq!(deleted, n - 2);
    let latest: BTreeSet<(String, u64)> = a
        .latest(None)
        .await
        .into_iter()
        .map(|l| (l.check, l.seq))
        .collect();
    let expected: BTreeSet<(String, u64)> =
        [("cpu", n + 1), ("disk", n - 1), ("load", n), ("load", 1)]
            .into_iter()
            .map(|(c, s)| (c.to_owned(), s))
            .collect();
    assert_eq!(latest, expected);
    // A second pass finds nothing more.
    let (_, d) = a
        .backend
        .results_retention_step(ResultsCursor::default(), T0 + 1)
        .await
        .unwrap();
    assert_eq!(d, 0);
}

async fn concurrent_batches_from_two_nodes_store_each_result_once_and_ack_all(
    a: Backend,
    b: Backend,
) {
    let (a, b, agent) = nodes(a, b).await;
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    // Overlapping batches (each seq sent by up to three batches) from both
    // nodes at once, as an agent moving between nodes resends its spool.
    let checks = ["load", "disk", "cpu"];
    let mut tasks = Vec::new();
    for start in 1..=30u64 {
        let node = if start % 2 == 0 { a.clone() } else { b.clone() };
        let agent = agent.clone();
        let batch: Vec<_> = (start..start + 3)
            .map(|s| result(s, checks[(s % 3) as usize], CheckState::Ok))
            .collect();
        tasks.push(tokio::spawn(async move {
            let got = node.ingest(&agent, batch).await;
            // Each call acks at least what it was sent.
            assert!(
                got.acked_seq >= start + 2,
                "{} < {}",
                got.acked_seq,
                start + 2
            );
            seqs(&got.stored)
        }));
    }
    let mut stored = Vec::new();
    for t in tasks {
        stored.extend(t.await.unwrap());
    }
    stored.sort_unstable();
    assert_eq!(
        stored,
        (1..=32).collect::<Vec<_>>(),
        "each result stored once"
    );
    let latest: BTreeSet<u64> = a.latest(None).await.iter().map(|l| l.seq).collect();
    assert_eq!(latest, BTreeSet::from([30, 31, 32]));
    assert_eq!(b.ingest(&agent, vec![]).await.acked_seq, 32);
}

/// An ingest queued behind another node's removal of the agent (its row
/// held, deleted, not committed) finds no agent when the removal commits
/// and stores nothing; its latest results stay gone. Without the ingest's
/// lock of the agent's row first, the ingest would update the agent's
/// latest row and then wait for the agent's row while the removal waits
/// for that latest row: a deadlock, one of the two failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_ingest_queued_behind_a_removal_stores_nothing() {
    let (db, backend) = pg_database_node().await;
    let node = Node::of(backend).await;
    let agent = fp(1);
    enroll(&node.backend, &agent, "web-1").await;
    node.ingest(&agent, vec![result(1, "load", CheckState::Ok)])
        .await;
    let (mut client, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    // The removal's statements (postgres/agents.rs), held open.
    let removal = client.transaction().await.unwrap();
    removal
        .execute(
            "DELETE FROM agents WHERE fingerprint = $1",
            &[&agent.as_str()],
        )
        .await
        .unwrap();
    let node = std::sync::Arc::new(node);
    let queued = {
        let (node, agent) = (node.clone(), agent.clone());
        tokio::spawn(async move {
            node.try_ingest(
                &agent,
                vec![result(2, "load", CheckState::Critical)],
                IngestLimits::default(),
                T0,
            )
            .await
        })
    };
    wait_for_a_lock_wait(&db.config, None).await;
    removal
        .execute(
            "DELETE FROM latest_results WHERE fingerprint = $1",
            &[&agent.as_str()],
        )
        .await
        .unwrap();
    removal.commit().await.unwrap();
    let err = queued.await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent { .. }), "{err}");
    assert!(node.latest(None).await.is_empty());
    let stored: i64 = client
        .query_one("SELECT count(*) FROM results WHERE seq = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
    drop(client);
    driver.await.unwrap().unwrap();
}

/// Node A's ingest of seqs 6..=10 is in flight (its transaction holds the
/// agent's row and has stored them, uncommitted) when the agent, moved to
/// node B, sends 1..=5 and 8 again: B waits, then stores 1..=5 only and
/// acks 10, never less. Then A's next batch (11, 12) rolls back while B
/// waits with the same results: B stores them, nothing is lost, and the
/// ack covers only what is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_ingest_waiting_for_another_nodes_batch_neither_lowers_the_ack_nor_loses_a_result()
 {
    let (db, backend) = pg_database_node().await;
    let node_b = std::sync::Arc::new(Node::of(backend).await);
    let agent = fp(1);
    enroll(&node_b.backend, &agent, "web-1").await;
    let node_a = super::PgBackend::with_config(db.config.clone(), super::PgTls::Disable, 1)
        .await
        .unwrap();
    let mut client = node_a.client().await.unwrap();
    let ingest_b = |seqs: Vec<u64>| {
        let (node, agent) = (node_b.clone(), agent.clone());
        tokio::spawn(async move {
            let batch = seqs
                .into_iter()
                .map(|s| result(s, "load", CheckState::Critical))
                .collect();
            node.ingest(&agent, batch).await
        })
    };
    let a = hold_ingest(&mut client, &agent, 6..=10).await;
    let b = ingest_b(vec![1, 2, 3, 4, 5, 8]);
    wait_for_a_lock_wait(&db.config, None).await;
    a.commit().await.unwrap();
    let got = b.await.unwrap();
    assert_eq!(
        (got.acked_seq, seqs(&got.stored)),
        (10, vec![1, 2, 3, 4, 5])
    );
    assert_eq!(node_b.latest(None).await[0].seq, 10);
    let a = hold_ingest(&mut client, &agent, 11..=12).await;
    let b = ingest_b(vec![11, 12]);
    wait_for_a_lock_wait(&db.config, None).await;
    a.rollback().await.unwrap();
    let got = b.await.unwrap();
    assert_eq!((got.acked_seq, seqs(&got.stored)), (12, vec![11, 12]));
    let stored: Vec<i64> = client
        .query("SELECT seq FROM results ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, (1..=12).collect::<Vec<_>>());
}

/// Node A's ingest of `range` (check `load`, CRITICAL) of `agent` with
/// the area's statements (`postgres/results.rs`: the agent's lock,
/// `insert_result`, the ack's raise) on a connection of node A's pool,
/// left uncommitted.
async fn hold_ingest<'c>(
    client: &'c mut deadpool_postgres::Object,
    agent: &Fingerprint,
    range: std::ops::RangeInclusive<u64>,
) -> deadpool_postgres::Transaction<'c> {
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM agents WHERE fingerprint = $1 FOR UPDATE",
        &[&agent.as_str()],
    )
    .await
    .unwrap();
    for s in range.clone() {
        let r = result(s, "load", CheckState::Critical);
        assert!(
            super::postgres::results::insert_result(&tx, agent.as_str(), s as i64, &r, T0)
                .await
                .unwrap()
        );
    }
    tx.execute(
        "UPDATE agents SET acked_seq = GREATEST(acked_seq, $2) WHERE fingerprint = $1",
        &[&agent.as_str(), &(*range.end() as i64)],
    )
    .await
    .unwrap();
    tx
}

/// The points of `agent`'s series `load`/`load1` in `metrics`.
async fn load_points(metrics: &Store, agent: &Fingerprint) -> Vec<(i64, Option<f64>)> {
    let q = crate::store::metrics::SeriesQuery {
        agent: agent.clone(),
        check: "load".into(),
        metric: "load1".into(),
        from_ms: 0,
        to_ms: 100_000,
        step_ms: None,
        raw_since_ms: 0,
    };
    metrics
        .query_series(q)
        .await
        .unwrap()
        .map(|p| p.points.iter().map(|p| (p.ts_ms, p.value)).collect())
        .unwrap_or_default()
}

/// PostgreSQL fails a batch after its points were committed to the node's
/// SQLite (a trigger refuses the ack's raise): nothing of it is stored or
/// acked, and the resend stores it and writes the same points again, not
/// more (module comment of `backend/postgres/results.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_failing_after_its_points_is_not_acked_and_its_resend_writes_the_same_points()
 {
    let (db, backend) = pg_database_node().await;
    let node = Node::of(backend).await;
    let agent = fp(1);
    enroll(&node.backend, &agent, "web-1").await;
    let (client, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE OF acked_seq ON agents
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let batch = vec![
        result(1, "load", CheckState::Ok),
        result(2, "load", CheckState::Ok),
    ];
    let err = node
        .try_ingest(&agent, batch.clone(), IngestLimits::default(), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Postgres(_)), "{err}");
    assert!(node.latest(None).await.is_empty());
    let written = load_points(&node.metrics, &agent).await;
    assert_eq!(written, vec![(1_000, Some(1.0)), (2_000, Some(2.0))]);
    client
        .batch_execute("DROP TRIGGER refuse ON agents")
        .await
        .unwrap();
    let got = node.ingest(&agent, batch).await;
    assert_eq!((got.acked_seq, seqs(&got.stored)), (2, vec![1, 2]));
    assert_eq!(load_points(&node.metrics, &agent).await, written);
    drop(client);
    driver.await.unwrap().unwrap();
}
