//! Enrollment tokens managed through the API, and session resumption.

use outrider_protocol::api::{CreatedEnrollmentToken, EnrollmentTokenInfo};
use outrider_protocol::{AgentMessage, CheckState, ServerMessage, Welcome};
use serde_json::json;

use crate::helpers::{Agent, Conn, ENROLLMENT_TOKEN, Server, result};

#[tokio::test]
async fn tokens_are_counted_revoked_and_listed_without_their_secret() {
    let server = Server::start().await;
    let created: CreatedEnrollmentToken = serde_json::from_value(
        server
            .admin(
                "POST",
                "/api/v1/tokens",
                Some(&json!({ "note": "rack 4", "uses": 1, "expires_in_secs": 3600 })),
            )
            .await,
    )
    .unwrap();
    assert_eq!(created.info.uses_left, Some(1));
    Agent::new(1, "a")
        .connect(&server, Some(&created.token))
        .await;
    let reason = Agent::new(2, "b")
        .refused(&server, Some(&created.token))
        .await;
    assert!(reason.contains("no uses left"), "{reason}");

    let open: CreatedEnrollmentToken = serde_json::from_value(
        server
            .admin("POST", "/api/v1/tokens", Some(&json!({})))
            .await,
    )
    .unwrap();
    server
        .admin("DELETE", &format!("/api/v1/tokens/{}", open.info.id), None)
        .await;
    let reason = Agent::new(3, "c").refused(&server, Some(&open.token)).await;
    assert!(reason.contains("revoked"), "{reason}");
    // The bootstrap token keeps working.
    Agent::new(4, "d")
        .connect(&server, Some(ENROLLMENT_TOKEN))
        .await;

    let listed = server.admin("GET", "/api/v1/tokens", None).await;
    assert!(
        !listed.to_string().contains(&created.token),
        "a secret was listed"
    );
    let listed: Vec<EnrollmentTokenInfo> = serde_json::from_value(listed).unwrap();
    let rack = listed.iter().find(|t| t.id == created.info.id).unwrap();
    assert_eq!(
        (rack.used, rack.uses_left, rack.note.as_str()),
        (1, Some(0), "rack 4")
    );
    assert!(
        listed
            .iter()
            .find(|t| t.id == open.info.id)
            .unwrap()
            .revoked_at_ms
            .is_some()
    );

    let auth = format!("Bearer {}", server.admin_token);
    for body in [
        json!({ "uses": 0 }),
        json!({ "expires_in_secs": 0 }),
        json!({ "usses": 3 }),
    ] {
        let (status, answer) = server
            .http("POST", "/api/v1/tokens", Some(&auth), Some(&body))
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, _) = server
        .http("DELETE", "/api/v1/tokens/nope", Some(&auth), None)
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

async fn welcome(
    server: &Server,
    agent: &Agent,
    resume: Option<&str>,
    version: u64,
) -> (Conn, Welcome) {
    let (conn, answer) = agent
        .try_connect_with(server, None, |hello| {
            hello.resume_token = resume.map(str::to_owned);
            hello.config_version = version;
        })
        .await;
    match answer {
        ServerMessage::Welcome(w) => (conn, w),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// The next message after welcome: a config, or `None` when the ack of a
/// probe batch comes first (nothing was sent).
async fn config_after_welcome(conn: &mut Conn, seq: u64) -> Option<u64> {
    conn.send(&AgentMessage::Results {
        results: vec![result(seq, "probe", CheckState::Ok, "probe")],
    })
    .await;
    match conn.recv().await {
        ServerMessage::Config(c) => {
            assert!(matches!(conn.recv().await, ServerMessage::Ack { .. }));
            Some(c.version)
        }
        ServerMessage::Ack { .. } => None,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_resumed_session_skips_an_unchanged_config() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (conn, answer) = agent.try_connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let ServerMessage::Welcome(first) = answer else {
        panic!("expected welcome, got {answer:?}")
    };
    assert!(!first.resumed);
    assert!(!first.resume_token.is_empty());
    assert_eq!(first.server_addrs, ["127.0.0.1"]);
    drop(conn);
    server
        .wait_presence(&agent.fp, outrider_protocol::api::Presence::Down)
        .await;

    // Right token, current version: resumed, no config resent.
    let (mut conn, second) = welcome(&server, &agent, Some(&first.resume_token), 1).await;
    assert!(second.resumed);
    assert_ne!(second.resume_token, first.resume_token);
    assert_eq!(config_after_welcome(&mut conn, 1).await, None);
    drop(conn);

    // A used token does not resume again; the config is sent.
    let (mut conn, third) = welcome(&server, &agent, Some(&first.resume_token), 1).await;
    assert!(!third.resumed);
    assert_eq!(config_after_welcome(&mut conn, 2).await, Some(1));
    drop(conn);

    // Resumed but running an older version: the config is sent.
    let (mut conn, fourth) = welcome(&server, &agent, Some(&third.resume_token), 0).await;
    assert!(fourth.resumed);
    assert_eq!(config_after_welcome(&mut conn, 3).await, Some(1));

    // Another agent cannot use this agent's token.
    let other = Agent::new(2, "web-2");
    let (_c, w) = other
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), |h| {
            h.resume_token = Some(fourth.resume_token.clone());
        })
        .await;
    assert!(
        matches!(w, ServerMessage::Welcome(Welcome { resumed: false, .. })),
        "{w:?}"
    );
    server.stop().await;
}
