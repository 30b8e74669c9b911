//! The behaviour suite of the notify area ([`NotifyStore`],
//! `backend/notify.rs`), built like `backend/alert_tests.rs`: every test is
//! one generic function given two "nodes" on one shared store, and
//! `two_node_suite!` (`two_nodes.rs`) runs each against SQLite (one store
//! on a real file: one node, so both handles are that node's) and
//! PostgreSQL (two `PgBackend`s with their own pools on one fresh
//! database of the test binary's private cluster). Outbox rows are
//! inserted as the alerts area stores them (`alert_outbox`, the contract
//! between the two areas).
//!
//! `postgres_only` below goes step by step through what several nodes do
//! at once, holding locks in raw sessions as another node would and
//! observing the waits in `pg_stat_activity` (`wait_for_a_lock_wait`).

use std::collections::{BTreeMap, BTreeSet};

use outrider_protocol::api::{NewRoute, ReceiverConfig};

use super::Backend;
use super::notify::{
    AddReceiver, AddRoute, CLAIM_LEASE_MS, DueDelivery, MAX_PENDING_PER_RECEIVER, MAX_RECEIVERS,
    MAX_ROUTES, NotifyStore, RETENTION_MS, Routed, StoredReceiver,
};
use super::presence::NodeId;
use super::two_nodes::two_node_suite;

two_node_suite!(
    routing_delivers_once_per_receiver_and_resolves_follow_their_trigger,
    deliveries_go_in_order_and_end_sent_or_dead,
    deleting_a_receiver_dead_letters_its_queue_and_full_queues_overflow,
    receivers_and_routes_are_bounded_and_listed_by_name,
    old_finished_deliveries_and_routed_rows_are_pruned_pending_ones_kept,
    two_nodes_routing_at_once_route_each_row_once_in_order,
);

const T0: i64 = 1_800_000_000_000;

fn node(name: &str) -> NodeId {
    name.parse().unwrap()
}

fn hook(name: &str) -> StoredReceiver {
    StoredReceiver {
        name: name.into(),
        config: ReceiverConfig::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret: "0123456789abcdef".into(),
        },
        rate_per_sec: 10,
    }
}

/// Runs `sql` (no parameters) on the backend's own connection.
async fn exec(b: &Backend, sqlite: &'static str, postgres: &'static str) {
    match b {
        Backend::Sqlite(s) => s
            .store()
            .with_writer(move |c| c.execute_batch(sqlite))
            .await
            .unwrap()
            .unwrap(),
        Backend::Postgres(p) => p
            .client()
            .await
            .unwrap()
            .batch_execute(postgres)
            .await
            .unwrap(),
    }
}

/// Inserts an outbox row as the alerts area stores it, at `T0`.
async fn outbox(b: &Backend, batch_key: &str, tags: &[&str], severity: &str) {
    let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
    let notifications = format!(r#"[{{"title":"{batch_key} is {severity}"}}]"#);
    let (key, severity) = (batch_key.to_owned(), severity.to_owned());
    match b {
        Backend::Sqlite(s) => {
            let tags = serde_json::to_string(&tags).unwrap();
            s.store()
                .with_writer(move |c| {
                    c.execute(
                        "INSERT INTO alert_outbox (batch_key, group_key, tags, severity, notifications, created_at_ms)
                         VALUES (?1, 'site/x', ?2, ?3, ?4, ?5)",
                        rusqlite::params![key, tags, severity, notifications, T0],
                    )
                })
                .await
                .unwrap()
                .unwrap();
        }
        Backend::Postgres(p) => {
            p.client()
                .await
                .unwrap()
                .execute(
                    "INSERT INTO alert_outbox (batch_key, group_key, tags, severity, notifications, created_at_ms)
                     VALUES ($1, 'site/x', $2, $3, $4, $5)",
                    &[&key, &tags, &severity, &notifications, &T0],
                )
                .await
                .unwrap();
        }
    }
}

/// Every delivery as `(batch_key, receiver, state)`, by id.
async fn deliveries(b: &Backend) -> Vec<(String, String, String)> {
    const SQL: &str = "SELECT batch_key, receiver, state FROM notify_deliveries ORDER BY id";
    match b {
        Backend::Sqlite(s) => s
            .store()
            .with_writer(|c| {
                let mut stmt = c.prepare(SQL)?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await
            .unwrap()
            .unwrap(),
        Backend::Postgres(p) => p
            .client()
            .await
            .unwrap()
            .query(SQL, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    }
}

/// How many outbox rows are stored.
async fn outbox_rows(b: &Backend) -> i64 {
    const SQL: &str = "SELECT COUNT(*) FROM alert_outbox";
    match b {
        Backend::Sqlite(s) => s
            .store()
            .with_writer(|c| c.query_row(SQL, [], |r| r.get(0)))
            .await
            .unwrap()
            .unwrap(),
        Backend::Postgres(p) => p
            .client()
            .await
            .unwrap()
            .query_one(SQL, &[])
            .await
            .unwrap()
            .get(0),
    }
}

fn row(key: &str, receiver: &str, state: &str) -> (String, String, String) {
    (key.into(), receiver.into(), state.into())
}

fn route(receiver: &str, tags: &[&str], severities: &[&str]) -> NewRoute {
    NewRoute {
        receiver: receiver.into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        severities: severities.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The head of `receiver`'s queue as `node` is handed it at `now`.
async fn head(b: &Backend, n: &str, receiver: &str, now: i64) -> DueDelivery {
    b.next_delivery(&node(n), receiver, now)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{receiver}'s queue is empty"))
}

async fn routing_delivers_once_per_receiver_and_resolves_follow_their_trigger(
    a: Backend,
    b: Backend,
) {
    // No receiver: the row is routed to nobody, and reported.
    outbox(&a, "check/ab/x@1#1", &["db"], "warning").await;
    let routed = b.route_outbox(T0).await.unwrap();
    assert_eq!(routed.rows, 1);
    assert_eq!(routed.unrouted, vec!["check/ab/x@1#1".to_owned()]);
    assert!(deliveries(&a).await.is_empty());

    assert_eq!(
        a.add_receiver(hook("all"), T0).await.unwrap(),
        AddReceiver::Added
    );
    assert_eq!(
        b.add_receiver(hook("all"), T0).await.unwrap(),
        AddReceiver::Exists,
        "a second add of one name, from the other node"
    );
    assert_eq!(
        b.add_receiver(hook("pager"), T0).await.unwrap(),
        AddReceiver::Added
    );
    let AddRoute::Added(info) = a
        .add_route(route("pager", &["db"], &["critical"]), T0 + 1)
        .await
        .unwrap()
    else {
        panic!("the route was not added");
    };
    assert_eq!(b.routes().await.unwrap(), [info]);
    assert_eq!(
        b.add_route(route("nobody", &[], &[]), T0).await.unwrap(),
        AddRoute::NoReceiver
    );

    outbox(&a, "check/ab/disk@5#1", &["db"], "critical").await;
    outbox(&a, "check/ab/load@6#1", &["db"], "warning").await;
    outbox(&a, "check/ab/disk@5#2", &["db"], "ok").await;
    let routed = b.route_outbox(T0 + 2).await.unwrap();
    assert_eq!(routed.rows, 3);
    assert_eq!(
        routed.receivers,
        BTreeSet::from(["all".to_owned(), "pager".to_owned()])
    );
    assert_eq!(
        deliveries(&a).await,
        vec![
            row("check/ab/disk@5#1", "all", "pending"),
            row("check/ab/disk@5#1", "pager", "pending"),
            row("check/ab/load@6#1", "all", "pending"),
            // The resolve ('ok') follows the trigger to the pager.
            row("check/ab/disk@5#2", "all", "pending"),
            row("check/ab/disk@5#2", "pager", "pending"),
        ]
    );
    // Routed rows are not routed again, from either node.
    assert_eq!(a.route_outbox(T0 + 3).await.unwrap(), Routed::default());
    assert_eq!(b.route_outbox(T0 + 3).await.unwrap(), Routed::default());
    assert_eq!(deliveries(&b).await.len(), 5);
    // What the pager's worker is handed carries the row.
    let due = head(&b, "b", "pager", T0 + 3).await;
    assert_eq!(due.batch_key, "check/ab/disk@5#1");
    let content = due.content.unwrap();
    assert_eq!(
        (
            content.group.as_str(),
            content.tags.as_str(),
            content.severity.as_str()
        ),
        ("site/x", r#"["db"]"#, "critical")
    );
    assert!(content.notifications.contains("disk@5#1 is critical"));

    assert!(a.delete_route(2_000_000).await.is_ok_and(|d| !d));
    let id = b.routes().await.unwrap()[0].id;
    assert!(a.delete_route(id).await.unwrap());
    assert!(b.routes().await.unwrap().is_empty());
}

async fn deliveries_go_in_order_and_end_sent_or_dead(a: Backend, b: Backend) {
    a.add_receiver(hook("ops"), T0).await.unwrap();
    outbox(&a, "agent/ab@1#1", &[], "critical").await;
    outbox(&a, "agent/ab@1#2", &[], "ok").await;
    a.route_outbox(T0).await.unwrap();

    let first = head(&a, "a", "ops", T0).await;
    assert_eq!(first.batch_key, "agent/ab@1#1");
    let claim = first.claim.expect("due and unclaimed: claimed");
    assert!(
        a.mark_retry(first.id, claim, T0 + 500, "HTTP 503")
            .await
            .unwrap()
    );
    // Still the head, not due yet: handed out to wait for, from either
    // node, and the later delivery not instead (a resolve never overtakes
    // its trigger).
    for n in [&a, &b] {
        let waiting = head(n, "x", "ops", T0 + 499).await;
        assert_eq!(
            (
                waiting.id,
                waiting.attempts,
                waiting.next_attempt_ms,
                waiting.claim
            ),
            (first.id, 1, T0 + 500, None)
        );
    }
    let again = head(&b, "b", "ops", T0 + 500).await;
    assert_eq!(again.id, first.id);
    let claim = again.claim.expect("due: claimed");
    assert!(b.mark_sent(first.id, claim, T0 + 600).await.unwrap());
    let second = head(&a, "a", "ops", T0 + 600).await;
    assert_eq!(second.batch_key, "agent/ab@1#2");
    assert!(
        a.mark_dead(second.id, second.claim.unwrap(), "HTTP 400: bad", T0 + 700)
            .await
            .unwrap()
    );
    assert!(
        b.next_delivery(&node("b"), "ops", T0 + 800)
            .await
            .unwrap()
            .is_none()
    );
    // A late mark of a finished delivery changes nothing.
    assert!(
        !a.mark_retry(second.id, second.claim.unwrap(), T0 + 900, "late")
            .await
            .unwrap()
    );
    assert!(
        !b.mark_sent(second.id, second.claim.unwrap(), T0 + 900)
            .await
            .unwrap()
    );

    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].receiver.as_str(),
            dead[0].batch_key.as_str(),
            dead[0].group.as_str(),
            dead[0].error.as_str(),
            dead[0].attempts,
            dead[0].failed_at_ms
        ),
        (
            "ops",
            "agent/ab@1#2",
            "site/x",
            "HTTP 400: bad",
            1,
            T0 + 700
        )
    );
    assert_eq!(dead[0].titles, ["agent/ab@1#2 is ok"]);
    let info = a.receivers(|_| "somewhere".into()).await.unwrap();
    assert_eq!(
        (
            info[0].name.as_str(),
            info[0].kind.as_str(),
            info[0].target.as_str(),
            info[0].pending,
            info[0].sent,
            info[0].dead
        ),
        ("ops", "webhook", "somewhere", 0, 1, 1)
    );
    // The error kept is bounded.
    outbox(&a, "agent/ab@2#1", &[], "critical").await;
    a.route_outbox(T0 + 1_000).await.unwrap();
    let third = head(&b, "b", "ops", T0 + 1_000).await;
    let long = "x".repeat(10_000);
    assert!(
        b.mark_dead(third.id, third.claim.unwrap(), &long, T0 + 1_001)
            .await
            .unwrap()
    );
    assert_eq!(a.dead_letters(1).await.unwrap()[0].error.len(), 512);
}

async fn deleting_a_receiver_dead_letters_its_queue_and_full_queues_overflow(
    a: Backend,
    b: Backend,
) {
    a.add_receiver(hook("ops"), T0).await.unwrap();
    outbox(&a, "agent/ab@1#1", &[], "critical").await;
    a.route_outbox(T0).await.unwrap();
    assert!(b.delete_receiver("ops", T0 + 20).await.unwrap());
    assert!(!a.delete_receiver("ops", T0 + 20).await.unwrap());
    assert_eq!(
        deliveries(&a).await,
        vec![row("agent/ab@1#1", "ops", "dead")]
    );
    assert_eq!(
        b.dead_letters(10).await.unwrap()[0].error,
        "receiver deleted"
    );
    assert!(
        a.next_delivery(&node("a"), "ops", T0 + 30)
            .await
            .unwrap()
            .is_none()
    );

    let mut mail = hook("mail");
    mail.config = ReceiverConfig::Email {
        host: "127.0.0.1".into(),
        port: None,
        tls: outrider_protocol::api::SmtpTls::None,
        username: None,
        password: Some("hunter2".into()),
        from: "a@b.c".into(),
        to: vec!["d@e.f".into()],
        ca_pem: None,
    };
    a.add_receiver(mail.clone(), T0).await.unwrap();
    // A full queue (MAX_PENDING_PER_RECEIVER pending).
    assert_eq!(MAX_PENDING_PER_RECEIVER, 10_000);
    exec(
        &b,
        "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 10000)
         INSERT INTO notify_deliveries (outbox_id, batch_key, receiver, state, next_attempt_ms, created_at_ms)
         SELECT v, 'filler#' || v, 'mail', 'pending', 0, 0 FROM n",
        "INSERT INTO notify_deliveries (outbox_id, batch_key, receiver, state, next_attempt_ms, created_at_ms)
         SELECT v, 'filler#' || v, 'mail', 'pending', 0, 0 FROM generate_series(1, 10000) AS v",
    )
    .await;
    outbox(&a, "agent/ab@2#1", &[], "critical").await;
    let routed = b.route_outbox(T0 + 30).await.unwrap();
    assert!(routed.receivers.is_empty(), "{routed:?}");
    let dead = a.dead_letters(1).await.unwrap();
    assert_eq!(dead[0].batch_key, "agent/ab@2#1");
    assert!(dead[0].error.starts_with("queue full"), "{}", dead[0].error);
    // The stored config keeps its secret for sending.
    let stored = b.stored_receivers().await.unwrap();
    assert_eq!(stored[0].config, mail.config);
    assert_eq!(stored[0].rate_per_sec, 10);
}

async fn receivers_and_routes_are_bounded_and_listed_by_name(a: Backend, b: Backend) {
    for i in 0..MAX_RECEIVERS {
        // Upper and lower case: byte order puts "R…" before "r…".
        let name = if i % 2 == 0 {
            format!("r{i:03}")
        } else {
            format!("R{i:03}")
        };
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            node.add_receiver(hook(&name), T0).await.unwrap(),
            AddReceiver::Added
        );
    }
    assert_eq!(
        a.add_receiver(hook("one-more"), T0).await.unwrap(),
        AddReceiver::Full
    );
    let names: Vec<String> = b
        .stored_receivers()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "byte order");
    assert_eq!(names[0], "R001");
    let listed: Vec<String> = a
        .receivers(|_| String::new())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, names);

    assert_eq!(MAX_ROUTES, 1_000);
    exec(
        &a,
        "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 1000)
         INSERT INTO notify_routes (receiver, tags, severities, created_at_ms)
         SELECT 'r000', '[]', '[]', 0 FROM n",
        "INSERT INTO notify_routes (receiver, tags, severities, created_at_ms)
         SELECT 'r000', '{}', '{}', 0 FROM generate_series(1, 1000)",
    )
    .await;
    assert_eq!(
        b.add_route(route("r002", &[], &[]), T0).await.unwrap(),
        AddRoute::Full
    );
    // Deleting a receiver deletes its routes.
    assert!(b.delete_receiver("r000", T0).await.unwrap());
    assert!(b.routes().await.unwrap().is_empty());
    assert!(matches!(
        a.add_route(route("r002", &["db"], &[]), T0).await.unwrap(),
        AddRoute::Added(_)
    ));
}

async fn old_finished_deliveries_and_routed_rows_are_pruned_pending_ones_kept(
    a: Backend,
    b: Backend,
) {
    // A row nobody gets: routed, then pruned (the outbox stays bounded).
    outbox(&a, "agent/ab@0#1", &[], "critical").await;
    a.route_outbox(T0).await.unwrap();
    a.add_receiver(hook("ops"), T0).await.unwrap();
    outbox(&a, "agent/ab@1#1", &[], "critical").await;
    outbox(&a, "agent/ab@1#2", &[], "ok").await;
    assert_eq!(b.route_outbox(T0).await.unwrap().rows, 2);
    // Not routed: never pruned.
    outbox(&a, "agent/ab@9#1", &[], "critical").await;
    let first = head(&b, "b", "ops", T0).await;
    assert!(
        b.mark_sent(first.id, first.claim.unwrap(), T0)
            .await
            .unwrap()
    );
    // Within the retention nothing goes.
    assert_eq!(a.prune_notifications(T0 + RETENTION_MS).await.unwrap(), 0);
    let later = T0 + RETENTION_MS + 1;
    // The sent delivery, its row, the row nobody got, and the memory of
    // the incident `agent/ab@1` told to ops.
    assert_eq!(a.prune_notifications(later).await.unwrap(), 4);
    assert_eq!(b.prune_notifications(later).await.unwrap(), 0, "idempotent");
    assert_eq!(
        deliveries(&a).await,
        vec![row("agent/ab@1#2", "ops", "pending")]
    );
    // The pending delivery's row and the unrouted row are kept.
    assert_eq!(outbox_rows(&b).await, 2);
    let pending = head(&b, "b", "ops", later).await;
    assert!(
        pending.content.is_some(),
        "the pending delivery's row is kept"
    );
}

async fn two_nodes_routing_at_once_route_each_row_once_in_order(a: Backend, b: Backend) {
    a.add_receiver(hook("ops"), T0).await.unwrap();
    b.add_receiver(hook("db"), T0).await.unwrap();
    b.add_route(route("db", &["db"], &[]), T0).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..250 {
        let key = format!("agent/ab@{i}#1");
        let tags: &[&str] = if i % 3 == 0 { &["db"] } else { &[] };
        outbox(&a, &key, tags, "critical").await;
        keys.push(key);
    }
    // Four routers at once, two per node, each until nothing is left.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4 {
        let n = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let mut rows = 0;
            loop {
                let routed = n.route_outbox(T0).await.unwrap();
                if routed.rows == 0 {
                    return rows;
                }
                rows += routed.rows;
            }
        });
    }
    let mut rows = 0;
    while let Some(r) = tasks.join_next().await {
        rows += r.unwrap();
    }
    assert_eq!(rows, 250, "each row routed once");
    // Each receiver's queue (by delivery id) is in outbox order.
    let mut queues: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, receiver, state) in deliveries(&b).await {
        assert_eq!(state, "pending");
        queues.entry(receiver).or_default().push(key);
    }
    assert_eq!(queues["ops"], keys);
    let db: Vec<String> = keys.iter().step_by(3).cloned().collect();
    assert_eq!(queues["db"], db);
}

/// Step by step on PostgreSQL: what several nodes routing and delivering
/// at once meet, with the lock of the other node held in a raw session.
mod postgres_only {
    use std::time::Duration;

    use super::super::notify::{RECEIVERS_LOCK, ROUTING_LOCK, Take, take};
    use super::super::two_nodes::{pg_database_node, pg_node, wait_for_a_lock_wait};
    use super::*;

    /// A raw session on the test's database, its driver running.
    async fn raw(config: &tokio_postgres::Config) -> tokio_postgres::Client {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// Runs `call` while `config`'s database has a session in a raw
    /// transaction: `Some(out)` when it finished without waiting for a
    /// lock, `None` when it waited (of `wait_event`); the caller then
    /// commits and awaits the handle.
    async fn finishes_or_waits<T: Send + 'static>(
        config: &tokio_postgres::Config,
        wait_event: Option<&str>,
        call: &mut tokio::task::JoinHandle<T>,
    ) -> Option<T> {
        tokio::select! {
            out = call => Some(out.unwrap()),
            () = wait_for_a_lock_wait(config, wait_event) => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_head_another_node_is_claiming_is_neither_handed_out_nor_skipped() {
        let (db, b) = pg_database_node().await;
        b.add_receiver(hook("ops"), T0).await.unwrap();
        outbox(&b, "agent/ab@1#1", &[], "critical").await;
        outbox(&b, "agent/ab@1#2", &[], "ok").await;
        b.route_outbox(T0).await.unwrap();
        // Node A claims the head: locked, claimed, not committed yet.
        let mut a = raw(&db.config).await;
        let tx = a.transaction().await.unwrap();
        let id: i64 = tx
            .query_one(
                "SELECT id FROM notify_deliveries WHERE receiver = 'ops' AND state = 'pending'
                 ORDER BY id LIMIT 1 FOR UPDATE",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        tx.execute(
            "UPDATE notify_deliveries SET claim = claim + 1, claimed_by = 'a', claim_until_ms = $2
             WHERE id = $1",
            &[&id, &(T0 + CLAIM_LEASE_MS)],
        )
        .await
        .unwrap();
        let node_b = b.clone();
        let mut call =
            tokio::spawn(async move { node_b.next_delivery(&node("b"), "ops", T0).await.unwrap() });
        let got = finishes_or_waits(&db.config, None, &mut call).await;
        tx.commit().await.unwrap();
        let got = match got {
            Some(got) => got,
            None => call.await.unwrap(),
        };
        // Neither the head A is claiming nor the delivery behind it.
        assert!(
            got.as_ref().is_none_or(|d| d.claim.is_none()),
            "node B claimed {got:?} while node A was claiming the head"
        );
        // A's claim committed: B waits for its end, then takes over.
        let wait = head(&b, "b", "ops", T0 + 1).await;
        assert_eq!(
            (wait.id, wait.claim, wait.next_attempt_ms),
            (id, None, T0 + CLAIM_LEASE_MS)
        );
        let taken = head(&b, "b", "ops", T0 + CLAIM_LEASE_MS).await;
        assert_eq!((taken.id, taken.claim), (id, Some(2)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_that_ran_out_is_taken_over_and_the_old_claims_marks_change_nothing() {
        let db = outrider_pgtest::Cluster::shared()
            .unwrap_or_else(|e| panic!("{e}"))
            .database()
            .await
            .unwrap();
        let (a, b) = (pg_node(&db.config).await, pg_node(&db.config).await);
        a.add_receiver(hook("ops"), T0).await.unwrap();
        outbox(&a, "agent/ab@1#1", &[], "critical").await;
        a.route_outbox(T0).await.unwrap();
        let by_a = head(&a, "a", "ops", T0).await;
        let claim_a = by_a.claim.expect("claimed by A");
        // A dies mid-send. Until its claim runs out B only waits.
        let wait = head(&b, "b", "ops", T0 + CLAIM_LEASE_MS - 1).await;
        assert_eq!(
            (wait.claim, wait.next_attempt_ms),
            (None, T0 + CLAIM_LEASE_MS)
        );
        let by_b = head(&b, "b", "ops", T0 + CLAIM_LEASE_MS).await;
        let claim_b = by_b.claim.expect("taken over by B");
        assert_ne!(claim_a, claim_b);
        // A comes back late: none of its marks lands.
        assert!(
            !a.mark_sent(by_a.id, claim_a, T0 + CLAIM_LEASE_MS + 1)
                .await
                .unwrap()
        );
        assert!(
            !a.mark_retry(by_a.id, claim_a, T0 + 1, "late")
                .await
                .unwrap()
        );
        assert!(!a.mark_dead(by_a.id, claim_a, "late", T0).await.unwrap());
        let again = head(&a, "a", "ops", T0 + CLAIM_LEASE_MS + 2).await;
        assert_eq!(again.claim, None, "B's claim runs");
        assert!(
            b.mark_sent(by_b.id, claim_b, T0 + CLAIM_LEASE_MS + 3)
                .await
                .unwrap()
        );
        assert_eq!(
            deliveries(&a).await,
            vec![row("agent/ab@1#1", "ops", "sent")]
        );
        let attempts: i32 = raw(&db.config)
            .await
            .query_one("SELECT attempts FROM notify_deliveries", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(attempts, 1, "only B's mark counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_routing_waits_for_another_nodes_routing_and_routes_its_rows_no_more() {
        let (db, b) = pg_database_node().await;
        b.add_receiver(hook("ops"), T0).await.unwrap();
        outbox(&b, "agent/ab@1#1", &[], "critical").await;
        outbox(&b, "agent/ab@2#1", &[], "critical").await;
        // Node A routes the first row: under the routing lock, not
        // committed yet.
        let mut a = raw(&db.config).await;
        let tx = a.transaction().await.unwrap();
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROUTING_LOCK])
            .await
            .unwrap();
        tx.batch_execute(
            "INSERT INTO notify_deliveries (outbox_id, batch_key, receiver, state, next_attempt_ms, created_at_ms)
             SELECT id, batch_key, 'ops', 'pending', 0, 0 FROM alert_outbox WHERE batch_key = 'agent/ab@1#1';
             UPDATE alert_outbox SET routed_at_ms = 0 WHERE batch_key = 'agent/ab@1#1'",
        )
        .await
        .unwrap();
        let node_b = b.clone();
        let mut call = tokio::spawn(async move { node_b.route_outbox(T0).await.unwrap() });
        let early = finishes_or_waits(&db.config, Some("advisory"), &mut call).await;
        assert!(early.is_none(), "node B routed without waiting: {early:?}");
        tx.commit().await.unwrap();
        let routed = call.await.unwrap();
        assert_eq!(routed.rows, 1, "only the row A did not route");
        assert_eq!(
            deliveries(&b).await,
            vec![
                row("agent/ab@1#1", "ops", "pending"),
                row("agent/ab@2#1", "ops", "pending")
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_routing_meeting_a_receivers_deletion_leaves_nothing_pending_for_it() {
        let (db, b) = pg_database_node().await;
        b.add_receiver(hook("ops"), T0).await.unwrap();
        outbox(&b, "agent/ab@1#1", &[], "critical").await;
        // Node A deletes the receiver and dead-letters its pending
        // deliveries, as `delete_receiver` does: not committed yet.
        let mut a = raw(&db.config).await;
        let tx = a.transaction().await.unwrap();
        tx.batch_execute(
            "DELETE FROM notify_receivers WHERE name = 'ops';
             UPDATE notify_deliveries SET state = 'dead', done_at_ms = 0
             WHERE receiver = 'ops' AND state = 'pending'",
        )
        .await
        .unwrap();
        let node_b = b.clone();
        let mut call = tokio::spawn(async move { node_b.route_outbox(T0).await.unwrap() });
        let early = finishes_or_waits(&db.config, None, &mut call).await;
        tx.commit().await.unwrap();
        let routed = match early {
            Some(r) => r,
            None => call.await.unwrap(),
        };
        assert_eq!(routed.rows, 1);
        assert!(
            deliveries(&b).await.iter().all(|(_, _, s)| s != "pending"),
            "a pending delivery for a deleted receiver: {:?}",
            deliveries(&b).await
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receiver_changes_take_turns_so_the_bound_holds_and_no_route_outlives_its_receiver() {
        let (db, b) = pg_database_node().await;
        for i in 0..MAX_RECEIVERS - 1 {
            b.add_receiver(hook(&format!("r{i}")), T0).await.unwrap();
        }
        // Node A adds the last receiver there is room for: not committed.
        let mut a = raw(&db.config).await;
        let tx = a.transaction().await.unwrap();
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECEIVERS_LOCK])
            .await
            .unwrap();
        tx.execute(
            "INSERT INTO notify_receivers (name, kind, config, rate_per_sec, created_at_ms)
             VALUES ('last', 'webhook', '{}', 1, 0)",
            &[],
        )
        .await
        .unwrap();
        let node_b = b.clone();
        let mut call =
            tokio::spawn(async move { node_b.add_receiver(hook("over"), T0).await.unwrap() });
        let early = finishes_or_waits(&db.config, Some("advisory"), &mut call).await;
        assert!(early.is_none(), "node B added without waiting: {early:?}");
        tx.commit().await.unwrap();
        assert_eq!(call.await.unwrap(), AddReceiver::Full);
        let count: i64 = a
            .query_one("SELECT count(*) FROM notify_receivers", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, MAX_RECEIVERS);

        // Node A deletes a receiver while B adds a route to it.
        let tx = a.transaction().await.unwrap();
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECEIVERS_LOCK])
            .await
            .unwrap();
        tx.execute("DELETE FROM notify_receivers WHERE name = 'r0'", &[])
            .await
            .unwrap();
        let node_b = b.clone();
        let mut call = tokio::spawn(async move {
            node_b
                .add_route(route("r0", &["db"], &[]), T0)
                .await
                .unwrap()
        });
        let early = finishes_or_waits(&db.config, Some("advisory"), &mut call).await;
        assert!(
            early.is_none(),
            "node B added a route without waiting: {early:?}"
        );
        tx.commit().await.unwrap();
        assert_eq!(call.await.unwrap(), AddRoute::NoReceiver);
        assert!(b.routes().await.unwrap().is_empty());
    }

    /// Workers on two nodes, two per node, hand a receiver's queue round:
    /// every delivery is claimed once and marked sent once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_on_two_nodes_send_each_delivery_once_in_order() {
        let db = outrider_pgtest::Cluster::shared()
            .unwrap_or_else(|e| panic!("{e}"))
            .database()
            .await
            .unwrap();
        let (a, b) = (pg_node(&db.config).await, pg_node(&db.config).await);
        a.add_receiver(hook("ops"), T0).await.unwrap();
        let mut keys = Vec::new();
        for i in 0..60 {
            let key = format!("agent/ab@{i}#1");
            outbox(&a, &key, &[], "critical").await;
            keys.push(key);
        }
        while a.route_outbox(T0).await.unwrap().rows > 0 {}
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..4 {
            let (n, name) = if w % 2 == 0 {
                (a.clone(), "a")
            } else {
                (b.clone(), "b")
            };
            let sent = sent.clone();
            tasks.spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the queue did not drain"
                    );
                    let Some(due) = n.next_delivery(&node(name), "ops", T0).await.unwrap() else {
                        // Empty, or the head being claimed or marked by
                        // another worker right now.
                        let left = deliveries(&n).await.iter().any(|(_, _, s)| s == "pending");
                        if !left {
                            return;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    };
                    let Some(claim) = due.claim else {
                        // Another worker's claim: it marks it soon.
                        tokio::task::yield_now().await;
                        continue;
                    };
                    // "Sending": recorded before the mark, as a receiver
                    // sees it.
                    sent.lock().unwrap().push(due.batch_key.clone());
                    assert!(n.mark_sent(due.id, claim, T0).await.unwrap());
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(*sent.lock().unwrap(), keys, "each once, in order");
    }

    #[test]
    fn the_lease_is_what_a_waiting_node_is_told() {
        assert_eq!(
            take(0, Some(T0 + CLAIM_LEASE_MS), T0),
            Take::WaitUntil(T0 + CLAIM_LEASE_MS)
        );
    }
}
