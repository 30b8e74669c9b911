//! The enrollment lifecycle, attack by attack: an expired, revoked or
//! used-up token (the server's own bootstrap token included) enrolls no
//! one; a removed agent cannot come back with its old key; an agent cannot
//! select checks with tags its token does not allow. Agents already
//! enrolled keep working without a token throughout.

use std::time::Duration;

use outrider_protocol::CheckState;
use outrider_protocol::api::{CreatedEnrollmentToken, EnrollmentTokenInfo, Presence};
use outrider_server::ServerConfig;
use serde_json::{Value, json};

use crate::helpers::{Agent, ENROLLMENT_TOKEN, STEP, Server, expect_rejection, result};

async fn tokens(server: &Server) -> Vec<EnrollmentTokenInfo> {
    serde_json::from_value(server.admin("GET", "/api/v1/tokens", None).await).unwrap()
}

async fn bootstrap(server: &Server) -> EnrollmentTokenInfo {
    tokens(server)
        .await
        .into_iter()
        .find(|t| t.id == "bootstrap")
        .expect("the bootstrap token is listed")
}

async fn create(server: &Server, body: Value) -> CreatedEnrollmentToken {
    serde_json::from_value(server.admin("POST", "/api/v1/tokens", Some(&body)).await).unwrap()
}

/// Waits until the wall clock passes `at_ms` (a token's expiry).
async fn wait_past(at_ms: i64) {
    let deadline = tokio::time::Instant::now() + STEP;
    while outrider_protocol::unix_now_ms() <= at_ms {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clock never passed {at_ms}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_bootstrap_token_expires_and_a_restart_does_not_renew_it() {
    let one_second = |c: &mut ServerConfig| c.enrollment_token_expires_in_secs = 1;
    let server = Server::start_with(one_second).await;
    let early = Agent::new(1, "early");
    drop(early.connect(&server, Some(ENROLLMENT_TOKEN)).await);
    let row = bootstrap(&server).await;
    let expires = row.expires_at_ms.expect("the bootstrap token expires");
    assert!(expires - row.created_at_ms <= 1000, "{row:?}");

    wait_past(expires).await;
    let reason = Agent::new(2, "late")
        .refused(&server, Some(ENROLLMENT_TOKEN))
        .await;
    assert!(reason.contains("bootstrap expired"), "{reason}");
    assert_eq!(bootstrap(&server).await.refused, 1);
    // An agent enrolled before keeps working without any token.
    drop(early.connect(&server, None).await);

    // Same secret, a longer setting: the stored expiry stands.
    let server = server
        .restart(|c| c.enrollment_token_expires_in_secs = 3600)
        .await;
    let reason = Agent::new(2, "late")
        .refused(&server, Some(ENROLLMENT_TOKEN))
        .await;
    assert!(reason.contains("expired"), "{reason}");
    // A new secret starts a new lifetime.
    let server = server
        .restart(|c| c.enrollment_token = Some("fresh-bootstrap".into()))
        .await;
    drop(
        Agent::new(2, "late")
            .connect(&server, Some("fresh-bootstrap"))
            .await,
    );
    let reason = Agent::new(3, "old-secret")
        .refused(&server, Some(ENROLLMENT_TOKEN))
        .await;
    assert!(reason.contains("not valid"), "{reason}");
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_or_used_up_bootstrap_token_stays_refused_after_a_restart() {
    let server = Server::start_with(|c| c.enrollment_token_max_uses = Some(1)).await;
    assert_eq!(bootstrap(&server).await.uses_left, Some(1));
    drop(
        Agent::new(1, "first")
            .connect(&server, Some(ENROLLMENT_TOKEN))
            .await,
    );
    let reason = Agent::new(2, "second")
        .refused(&server, Some(ENROLLMENT_TOKEN))
        .await;
    assert!(reason.contains("no uses left"), "{reason}");

    let server = server.restart(|c| c.enrollment_token_max_uses = None).await;
    let reason = Agent::new(2, "second")
        .refused(&server, Some(ENROLLMENT_TOKEN))
        .await;
    assert!(reason.contains("no uses left"), "{reason}");

    let server = server
        .restart(|c| c.enrollment_token = Some("another".into()))
        .await;
    server
        .admin("DELETE", "/api/v1/tokens/bootstrap", None)
        .await;
    let server = server
        .restart(|c| c.enrollment_token = Some("another".into()))
        .await;
    let reason = Agent::new(3, "third")
        .refused(&server, Some("another"))
        .await;
    assert!(reason.contains("bootstrap was revoked"), "{reason}");
    // The agent enrolled first never needed the token again.
    drop(Agent::new(1, "first").connect(&server, None).await);
    server.stop().await;
}

#[tokio::test]
async fn created_tokens_always_expire_and_refuse_after_expiry() {
    let server = Server::start().await;
    let default = create(&server, json!({ "note": "no expiry asked" })).await;
    let lifetime = default.info.expires_at_ms.unwrap() - default.info.created_at_ms;
    assert_eq!(lifetime, 86_400_000, "default lifetime is a day");

    let short = create(&server, json!({ "expires_in_secs": 1 })).await;
    wait_past(short.info.expires_at_ms.unwrap()).await;
    let reason = Agent::new(1, "late")
        .refused(&server, Some(&short.token))
        .await;
    assert!(reason.contains("expired"), "{reason}");
    let listed = tokens(&server).await;
    let row = listed.iter().find(|t| t.id == short.info.id).unwrap();
    assert_eq!((row.used, row.refused), (0, 1));

    let auth = format!("Bearer {}", server.admin_token);
    for body in [
        json!({ "expires_in_secs": 366 * 86_400 }),
        json!({ "allowed_tags": ["Not A Tag"] }),
    ] {
        let (status, answer) = server
            .http("POST", "/api/v1/tokens", Some(&auth), Some(&body))
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_removed_agent_is_cut_off_and_needs_a_new_token() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert_eq!(
        conn.send_results(vec![result(5, "load", CheckState::Ok, "fine")])
            .await,
        5
    );

    let answer = server
        .admin("DELETE", &format!("/api/v1/agents/{}", agent.fp), None)
        .await;
    assert_eq!(answer["was_connected"], true);
    // The live session is told why and closed.
    let told = conn.recv().await;
    let reason = expect_rejection(conn, told).await;
    assert!(reason.contains("removed"), "{reason}");
    assert!(server.agents().await.is_empty());
    assert!(server.latest_results().await.is_empty());

    // Its old key proves nothing any more.
    let reason = agent.refused(&server, None).await;
    assert!(reason.contains("no enrollment token"), "{reason}");
    // Removing it again: it is unknown.
    let auth = format!("Bearer {}", server.admin_token);
    let (status, _) = server
        .http(
            "DELETE",
            &format!("/api/v1/agents/{}", agent.fp),
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // With a valid token it enrolls again, continuing above its results.
    let token = create(&server, json!({ "uses": 1 })).await;
    let (_conn, acked, _) = agent.connect(&server, Some(&token.token)).await;
    assert_eq!(acked, 5);
    let info = server.agent(&agent.fp).await;
    assert_eq!(
        info.enrollment_token.as_deref(),
        Some(token.info.id.as_str())
    );
    assert_eq!(info.presence, Presence::Connected);
    server.stop().await;
}

#[tokio::test]
async fn a_removed_agent_does_not_alert() {
    let server = Server::start_with(|c| {
        c.alert_tick_ms = 20;
        c.alerting.down_for_ms = 300;
        c.alerting.restart_grace_extra_ms = 0;
        c.alerting.group.group_wait_ms = 50;
        c.alerting.group.group_interval_ms = 50;
    })
    .await;
    let removed = Agent::new(1, "removed");
    let witness = Agent::new(2, "witness");
    let (removed_conn, _, _) = removed.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let (witness_conn, _, _) = witness.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    server
        .admin("DELETE", &format!("/api/v1/agents/{}", removed.fp), None)
        .await;
    // Both connections end now; only the witness may be down.
    drop(removed_conn);
    drop(witness_conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = server
            .admin("GET", "/api/v1/alerts/history?limit=100", None)
            .await;
        if !rows.as_array().unwrap().is_empty() {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the witness never went down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = rows.to_string();
    assert!(text.contains(witness.fp.as_str()), "{text}");
    assert!(!text.contains(removed.fp.as_str()), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn tags_outside_the_tokens_allow_list_select_no_checks() {
    let server = Server::start().await;
    for (name, tags) in [("web-check", json!(["web"])), ("db-check", json!(["db"]))] {
        server
            .admin(
                "PUT",
                &format!("/api/v1/checks/{name}"),
                Some(&json!({ "command": ["/bin/true"], "interval_secs": 60, "timeout_secs": 5, "tags": tags })),
            )
            .await;
    }
    let token = create(&server, json!({ "allowed_tags": ["web", "web"] })).await;
    assert_eq!(token.info.allowed_tags, Some(vec!["web".to_owned()]));

    // The escalation: a web host declares "db" to get the db checks.
    let agent = Agent::new(1, "web-1").with_tags(&["web", "db"]);
    let (conn, _, config) = agent.connect(&server, Some(&token.token)).await;
    let checks: Vec<&str> = config.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(checks, ["web-check"]);
    let info = server.agent(&agent.fp).await;
    assert_eq!(info.tags, ["web"]);
    assert_eq!(info.refused_tags, ["db"]);
    assert_eq!(info.allowed_tags, Some(vec!["web".to_owned()]));
    drop(conn);
    server.wait_presence(&agent.fp, Presence::Down).await;

    // The allow-list stays with the agent on reconnects without a token.
    let db_only = Agent::new(1, "web-1").with_tags(&["db"]);
    let (_conn, _, config) = db_only.connect(&server, None).await;
    assert!(config.checks.is_empty(), "{:?}", config.checks);
    assert_eq!(server.agent(&agent.fp).await.refused_tags, ["db"]);

    // The bootstrap token allows any tag.
    let free = Agent::new(2, "db-1").with_tags(&["db"]);
    let (_c, _, config) = free.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert_eq!(config.checks.len(), 1);
    assert_eq!(config.checks[0].name, "db-check");
    assert_eq!(server.agent(&free.fp).await.allowed_tags, None);

    server.stop().await;
}

/// Reads one sample of `outrider_refused_enrollments_total` from `/metrics`
/// (open without a token: the test server binds loopback).
async fn refused_enrollments(server: &Server, reason: &str) -> u64 {
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "{body}");
    let prefix = format!("outrider_refused_enrollments_total{{reason=\"{reason}\"}} ");
    let text = body.as_str().expect("text body");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn every_refused_enrollment_is_counted_by_reason_on_metrics() {
    let server = Server::start().await;
    let once = create(&server, json!({ "uses": 1 })).await;
    drop(
        Agent::new(1, "first")
            .connect(&server, Some(&once.token))
            .await,
    );
    let revoked = create(&server, json!({})).await;
    server
        .admin(
            "DELETE",
            &format!("/api/v1/tokens/{}", revoked.info.id),
            None,
        )
        .await;
    let short = create(&server, json!({ "expires_in_secs": 1 })).await;
    wait_past(short.info.expires_at_ms.unwrap()).await;

    for (n, token, reason) in [
        (2, None, "missing"),
        (3, Some("not-a-token"), "unknown"),
        (4, Some(revoked.token.as_str()), "revoked"),
        (5, Some(short.token.as_str()), "expired"),
        (6, Some(once.token.as_str()), "used_up"),
    ] {
        assert_eq!(refused_enrollments(&server, reason).await, 0, "{reason}");
        Agent::new(n, "knocking").refused(&server, token).await;
        assert_eq!(refused_enrollments(&server, reason).await, 1, "{reason}");
    }
    server.stop().await;
}
