//! The notifier against real receivers on loopback: outbox rows written as
//! the alert driver writes them reach a webhook, Slack and PagerDuty
//! receiver with the semantics each expects, and failures are retried or
//! dead-lettered as the receiver's answer says.

use std::time::Duration;

use outrider_alerting::NotificationKind;
use serde_json::{Value, json};

use crate::helpers::Server;
use crate::notify_support::{Hook, Reply, expected_signature, insert_outbox, notification};

const SECRET: &str = "correct-horse-battery-staple";
const AGENT: &str = "0123456789abcdef0123";

fn db(server: &Server) -> std::path::PathBuf {
    server.data_dir().join("outrider.db")
}

async fn add_receiver(server: &Server, body: Value) -> Value {
    server.admin("POST", "/api/v1/receivers", Some(&body)).await
}

async fn webhook(server: &Server, hook: &Hook, name: &str) {
    add_receiver(
        server,
        json!({"name": name, "config": {"kind": "webhook", "url": hook.url("/hook"), "secret": SECRET}}),
    )
    .await;
}

#[tokio::test]
async fn webhook_gets_signed_json_carrying_the_notifications_and_an_idempotency_key() {
    let server = Server::start().await;
    let hook = Hook::start().await;
    webhook(&server, &hook, "ops").await;
    let firing = notification(AGENT, "disk", NotificationKind::Firing, 1);
    let key = insert_outbox(&db(&server), &["prod"], std::slice::from_ref(&firing));

    let got = hook.wait_for(1, Duration::from_secs(10)).await;
    let request = &got[0];
    assert_eq!(request.path, "/hook");
    assert_eq!(
        request.header("x-outrider-signature").unwrap(),
        expected_signature(SECRET, &request.body),
        "the signature is the HMAC-SHA256 of the exact body"
    );
    assert_ne!(
        request.header("x-outrider-signature").unwrap(),
        expected_signature("another-secret-entirely", &request.body)
    );
    let body = request.json();
    assert_eq!(body["batch_key"], key);
    assert_eq!(body["receiver"], "ops");
    assert_eq!(body["tags"], json!(["prod"]));
    assert_eq!(
        request.header("idempotency-key").unwrap(),
        body["idempotency_key"]
    );
    let n = &body["notifications"][0];
    assert_eq!(n["title"], firing.title);
    assert_eq!(n["status"], "CRITICAL");
    assert_eq!(n["summary"], "disk / is 97% full");
    assert_eq!(n["since"], "2026-12-04 07:19:43 UTC");
    assert_eq!(n["dedup_key"], format!("check/{AGENT}/disk"));

    // Sent once: the delivery is marked and nothing more arrives.
    wait_receiver_counts(&server, "ops", (0, 1, 0)).await;
    assert_eq!(hook.received().len(), 1);
    server.stop().await;
}

/// Waits until receiver `name` shows (pending, sent, dead).
async fn wait_receiver_counts(server: &Server, name: &str, expected: (u64, u64, u64)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = server.admin("GET", "/api/v1/receivers", None).await;
        let r = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .expect("receiver listed")
            .clone();
        let counts = (
            r["pending"].as_u64().unwrap(),
            r["sent"].as_u64().unwrap(),
            r["dead"].as_u64().unwrap(),
        );
        if counts == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "receiver {name}: {counts:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn retry_after_is_honoured_5xx_backs_off_and_4xx_is_dead_lettered_in_order() {
    let server = Server::start().await;
    let hook = Hook::start().await;
    hook.script(&[
        Reply::RetryAfter(429, "2"),
        Reply::Status(500),
        Reply::Status(200),
        Reply::Status(400),
    ]);
    webhook(&server, &hook, "ops").await;
    let firing = notification(AGENT, "disk", NotificationKind::Firing, 1);
    let first = insert_outbox(&db(&server), &[], &[firing]);
    let other = notification(AGENT, "load", NotificationKind::Firing, 1);
    let second = insert_outbox(&db(&server), &[], &[other]);

    let got = hook.wait_for(4, Duration::from_secs(20)).await;
    let keys: Vec<String> = got
        .iter()
        .map(|r| r.json()["batch_key"].as_str().unwrap().to_owned())
        .collect();
    // In order: the second waits until the first is accepted.
    assert_eq!(
        keys,
        [first.clone(), first.clone(), first.clone(), second.clone()]
    );
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert!(
        ids[0] == ids[1] && ids[1] == ids[2],
        "every attempt carries one key: {ids:?}"
    );
    assert_ne!(ids[2], ids[3]);
    let after_429 = got[1].at - got[0].at;
    assert!(
        after_429 >= Duration::from_millis(1_950),
        "Retry-After: 2 honoured, retried after {after_429:?}"
    );
    // The second failure backs off 1-2 s (attempt 1 of 1 s doubling, equal jitter).
    let after_500 = got[2].at - got[1].at;
    assert!(
        after_500 >= Duration::from_millis(950),
        "backoff after 500: {after_500:?}"
    );

    wait_receiver_counts(&server, "ops", (0, 1, 1)).await;
    let dead = server.admin("GET", "/api/v1/dead-letters", None).await;
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead[0]["batch_key"], second);
    assert_eq!(dead[0]["receiver"], "ops");
    assert_eq!(
        dead[0]["titles"],
        json!([format!("load CRITICAL on {AGENT}")])
    );
    assert!(
        dead[0]["error"].as_str().unwrap().starts_with("HTTP 400"),
        "{dead}"
    );
    // Nothing retries a dead letter.
    assert_eq!(hook.received().len(), 4);
    server.stop().await;
}

#[tokio::test]
async fn slack_gets_one_message_per_second_with_text_and_blocks() {
    let server = Server::start().await;
    let hook = Hook::start().await;
    add_receiver(
        &server,
        json!({"name": "chat", "config": {"kind": "slack", "url": hook.url("/services/T/B/X")}}),
    )
    .await;
    for check in ["a", "b", "c", "d"] {
        insert_outbox(
            &db(&server),
            &[],
            &[notification(AGENT, check, NotificationKind::Firing, 1)],
        );
    }
    let got = hook.wait_for(4, Duration::from_secs(20)).await;
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(1),
            "Slack allows 1 message/s; gap {gap:?}"
        );
    }
    let body = got[0].json();
    assert_eq!(body["text"], format!("[CRITICAL] a CRITICAL on {AGENT}"));
    let block = body["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(block.contains("Since: 2026-12-04 07:19:43 UTC"), "{block}");
    server.stop().await;
}

#[tokio::test]
async fn pagerduty_triggers_and_resolves_by_dedup_key_at_most_two_events_a_second() {
    let server = Server::start().await;
    let hook = Hook::start().await;
    add_receiver(
        &server,
        json!({"name": "pager", "config": {"kind": "pagerduty", "routing_key": "R0UT1NG", "url": hook.url("/v2/enqueue")}}),
    )
    .await;
    let db = db(&server);
    // One message of two notifications is two events.
    insert_outbox(
        &db,
        &[],
        &[
            notification(AGENT, "disk", NotificationKind::Firing, 1),
            notification(AGENT, "load", NotificationKind::Firing, 1),
        ],
    );
    insert_outbox(
        &db,
        &[],
        &[notification(AGENT, "disk", NotificationKind::Resolved, 2)],
    );
    let got = hook.wait_for(3, Duration::from_secs(20)).await;
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event_action"].as_str().unwrap().to_owned(),
                e["dedup_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let disk = format!("check/{AGENT}/disk");
    let load = format!("check/{AGENT}/load");
    assert_eq!(
        seen,
        [
            ("trigger".to_owned(), disk.clone()),
            ("trigger".to_owned(), load),
            ("resolve".to_owned(), disk)
        ]
    );
    assert!(events.iter().all(|e| e["routing_key"] == "R0UT1NG"));
    assert_eq!(events[0]["payload"]["severity"], "critical");
    assert_eq!(events[0]["payload"]["source"], AGENT);
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(500),
            "PagerDuty ≤ 2 events/s; gap {gap:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn routes_pick_receivers_by_tag_and_severity_and_resolves_follow() {
    let server = Server::start().await;
    let everything = Hook::start().await;
    let db_pager = Hook::start().await;
    webhook(&server, &everything, "all").await;
    webhook(&server, &db_pager, "db").await;
    let route = server
        .admin(
            "POST",
            "/api/v1/routes",
            Some(&json!({"receiver": "db", "tags": ["db"], "severities": ["critical"]})),
        )
        .await;
    assert_eq!(route["receiver"], "db");
    let db = db(&server);
    insert_outbox(
        &db,
        &["web"],
        &[notification(AGENT, "http", NotificationKind::Firing, 1)],
    );
    let trigger = insert_outbox(
        &db,
        &["db", "prod"],
        &[notification(AGENT, "disk", NotificationKind::Firing, 1)],
    );
    let resolve = insert_outbox(
        &db,
        &["db", "prod"],
        &[notification(AGENT, "disk", NotificationKind::Resolved, 2)],
    );
    everything.wait_for(3, Duration::from_secs(10)).await;
    let got = db_pager.wait_for(2, Duration::from_secs(10)).await;
    let keys: Vec<&str> = got
        .iter()
        .map(|r| r.body.as_ref())
        .map(|b| std::str::from_utf8(b).unwrap())
        .collect();
    assert!(
        keys[0].contains(&trigger) && keys[1].contains(&resolve),
        "{keys:?}"
    );
    wait_receiver_counts(&server, "db", (0, 2, 0)).await;
    assert_eq!(
        db_pager.received().len(),
        2,
        "the web row is not the db pager's"
    );
    server.stop().await;
}

#[tokio::test]
async fn receiver_api_checks_input_tests_delivery_and_never_shows_secrets() {
    let server = Server::start().await;
    let hook = Hook::start().await;
    let auth = format!("Bearer {}", server.admin_token);
    let post = |path: &'static str, body: Value| {
        let auth = auth.clone();
        let server = &server;
        async move { server.http("POST", path, Some(&auth), Some(&body)).await }
    };
    let bad = [
        (
            json!({"name": "x", "config": {"kind": "webhook", "url": "http://example.com/", "secret": SECRET}}),
            "plain http is allowed only to a loopback",
        ),
        (
            json!({"name": "x", "config": {"kind": "webhook", "url": hook.url("/"), "secret": "short"}}),
            "secret",
        ),
        (
            json!({"name": "x", "config": {"kind": "carrier-pigeon"}}),
            "request body",
        ),
        (
            json!({"name": "x", "config": {"kind": "slack", "url": hook.url("/")}, "rate_per_sec": 5}),
            "rate_per_sec",
        ),
        (
            json!({"name": "x", "config": {"kind": "email", "host": "smtp.example.com", "tls": "none", "from": "a@b.c", "to": ["d@e.f"]}}),
            "loopback",
        ),
        (
            json!({"name": "x", "config": {"kind": "email", "host": "smtp.example.com", "from": "a@b.c", "to": ["nope"]}}),
            "not an email address",
        ),
        (
            json!({"name": "Bad Name", "config": {"kind": "slack", "url": hook.url("/")}}),
            "name",
        ),
    ];
    for (body, needle) in bad {
        let (status, answer) = post("/api/v1/receivers", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    let added = add_receiver(
        &server,
        json!({"name": "ops", "config": {"kind": "webhook", "url": hook.url("/hook?token=URLSECRET"), "secret": SECRET}, "rate_per_sec": 20}),
    )
    .await;
    assert_eq!(added["kind"], "webhook");
    assert_eq!(added["rate_per_sec"], 20);
    assert_eq!(added["target"], format!("http://{}/…", hook.addr));
    let (status, _) = post(
        "/api/v1/receivers",
        json!({"name": "ops", "config": {"kind": "slack", "url": hook.url("/")}}),
    )
    .await;
    assert_eq!(status, 409);
    let list = server
        .admin("GET", "/api/v1/receivers", None)
        .await
        .to_string();
    assert!(
        !list.contains(SECRET) && !list.contains("URLSECRET"),
        "{list}"
    );

    let tested = server
        .admin("POST", "/api/v1/receivers/ops/test", None)
        .await;
    assert_eq!(tested, json!({"receiver": "ops", "delivered": true}));
    let got = hook.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].header("x-outrider-signature").unwrap(),
        expected_signature(SECRET, &got[0].body)
    );
    hook.script(&[Reply::Status(403)]);
    let tested = server
        .admin("POST", "/api/v1/receivers/ops/test", None)
        .await;
    assert_eq!(tested["delivered"], false);
    assert!(
        tested["error"].as_str().unwrap().contains("HTTP 403"),
        "{tested}"
    );

    let (status, answer) = post("/api/v1/routes", json!({"receiver": "nobody"})).await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = post(
        "/api/v1/routes",
        json!({"receiver": "ops", "severities": ["fatal"]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("severity \"fatal\""),
        "{answer}"
    );
    let route = server
        .admin(
            "POST",
            "/api/v1/routes",
            Some(&json!({"receiver": "ops", "tags": ["web", "db", "db"]})),
        )
        .await;
    assert_eq!(route["tags"], json!(["db", "web"]), "tags are normalised");
    let routes = server.admin("GET", "/api/v1/routes", None).await;
    assert_eq!(routes.as_array().unwrap().len(), 1);
    let id = route["id"].as_i64().unwrap();
    server
        .admin("DELETE", &format!("/api/v1/routes/{id}"), None)
        .await;
    let (status, _) = server
        .http("DELETE", &format!("/api/v1/routes/{id}"), Some(&auth), None)
        .await;
    assert_eq!(status, 404);

    // A Slack URL is the secret: an error never repeats it.
    add_receiver(
        &server,
        json!({"name": "chat", "config": {"kind": "slack", "url": "http://127.0.0.1:1/services/T0/B0/SLACKSECRET"}}),
    )
    .await;
    let tested = server
        .admin("POST", "/api/v1/receivers/chat/test", None)
        .await;
    assert_eq!(tested["delivered"], false);
    let error = tested["error"].as_str().unwrap();
    assert!(!error.contains("SLACKSECRET"), "{error}");

    server.admin("DELETE", "/api/v1/receivers/ops", None).await;
    let (status, answer) = server
        .http("POST", "/api/v1/receivers/ops/test", Some(&auth), None)
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, _) = server.http("GET", "/api/v1/receivers", None, None).await;
    assert_eq!(status, 401);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_slow_receiver_and_the_message_stays_queued() {
    let server = Server::start().await;
    let hook = Hook::start().await;
    hook.script(&[Reply::Hold]);
    webhook(&server, &hook, "ops").await;
    let key = insert_outbox(
        &db(&server),
        &[],
        &[notification(AGENT, "disk", NotificationKind::Firing, 1)],
    );
    hook.wait_for(1, Duration::from_secs(10)).await;
    // Fails the test unless the server exits within 10 s: the request the
    // receiver holds (for ever) must not keep it.
    let data = server.stop_keeping_data().await;
    let state: String = rusqlite::Connection::open(data.path().join("outrider.db"))
        .unwrap()
        .query_row(
            "SELECT state FROM notify_deliveries WHERE batch_key = ?1",
            [&key],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "pending", "sent again by the next server");
    hook.release();
}
