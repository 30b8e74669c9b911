//! Protocol negotiation from the server's side: agents offering [2, 2]
//! (and agents from before negotiation) against a server of [2, 3], agents
//! of [2, 3] against a server of [2, 2], unknown agent messages, and the
//! real agent library against servers of each range (see `docs/protocol.md`).

use std::sync::Arc;
use std::time::Duration;

use outrider_protocol::api::Presence;
use outrider_protocol::{CheckState, ProtocolRange, ServerMessage, Welcome, capability};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Agent, Closed, ENROLLMENT_TOKEN, POLICY, STEP, Server, expect_rejection, result,
};
use crate::library::{self, LibraryAgent, agent_toml};

fn welcome_of(answer: ServerMessage) -> Welcome {
    match answer {
        ServerMessage::Welcome(w) => w,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn ranged(min: u32, max: u32) -> impl FnOnce(&mut outrider_protocol::Hello) {
    move |h| {
        h.protocol_min = Some(min);
        h.protocol_max = Some(max);
        h.capabilities = vec![capability::UPDATE_NUDGE.into(), "from_the_future".into()];
        h.stub_version = Some("0.2.0".into());
        h.channel = Some("beta".into());
    }
}

#[tokio::test]
async fn agents_before_negotiation_and_of_2_2_get_version_2_from_a_server_of_2_3() {
    let server = Server::start().await;
    // An agent from before negotiation: no range at all.
    let old = Agent::new(1, "old-1");
    let (_c1, answer) = old.try_connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let w = welcome_of(answer);
    assert_eq!(w.protocol_version, 2);
    // The server announces what it implements, whatever the agent speaks.
    assert!(w.capabilities.iter().any(|c| c == capability::UPDATE_NUDGE));
    // An agent offering [2, 2] explicitly.
    let narrow = Agent::new(2, "narrow-1");
    let (_c2, answer) = narrow
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), ranged(2, 2))
        .await;
    assert_eq!(welcome_of(answer).protocol_version, 2);
    assert_eq!(server.agent(&old.fp).await.protocol_version, Some(2));
    assert_eq!(server.agent(&narrow.fp).await.protocol_version, Some(2));
    server.stop().await;
}

#[tokio::test]
async fn agents_of_2_3_get_version_3_and_their_labels_are_recorded() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, answer) = agent
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), ranged(2, 3))
        .await;
    assert_eq!(welcome_of(answer).protocol_version, 3);
    assert!(matches!(conn.recv().await, ServerMessage::Config(_)));
    let info = server.agent(&agent.fp).await;
    assert_eq!(info.protocol_version, Some(3));
    assert_eq!(info.stub_version.as_deref(), Some("0.2.0"));
    assert_eq!(info.channel.as_deref(), Some("beta"));
    // One version everywhere: the published build version, not the crate's.
    assert_eq!(info.version, "1.2.3");
    assert_eq!(info.host_version(), "1.2.3");
    server.stop().await;
}

#[tokio::test]
async fn a_server_of_2_2_speaks_2_with_new_agents_and_refuses_3_only() {
    let server = Server::start_with(|c| {
        c.protocol_max = 2;
        c.capabilities.clear();
    })
    .await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, answer) = agent
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), ranged(2, 3))
        .await;
    let w = welcome_of(answer);
    assert_eq!((w.protocol_version, w.capabilities.len()), (2, 0));
    assert!(matches!(conn.recv().await, ServerMessage::Config(_)));
    assert_eq!(
        conn.send_results(vec![result(1, "load", CheckState::Ok, "fine")])
            .await,
        1
    );

    let future = Agent::new(2, "future-1");
    let (conn, answer) = future
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), ranged(3, 3))
        .await;
    let reason = expect_rejection(conn, answer).await;
    assert_eq!(
        reason,
        "protocol versions [3, 3] are not supported (server speaks [2, 2])"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_agent_messages_are_skipped_counted_and_the_session_goes_on() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    for _ in 0..2 {
        conn.send_raw(Message::text(r#"{"type":"telemetry_v9","cpu":[1,2]}"#))
            .await
            .unwrap();
    }
    // Unknown fields of a known message are ignored too.
    conn.send_raw(Message::text(
        r#"{"type":"results","results":[],"compressed":false}"#,
    ))
    .await
    .unwrap();
    assert!(matches!(conn.recv().await, ServerMessage::Ack { up_to: 0 }));
    assert_eq!(
        conn.send_results(vec![result(1, "load", CheckState::Ok, "fine")])
            .await,
        1
    );
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap();
    assert!(
        text.contains("\noutrider_unknown_agent_messages_total 2\n"),
        "{text}"
    );
    // A malformed message of a known type still ends the session.
    conn.send_raw(Message::text(r#"{"type":"results"}"#))
        .await
        .unwrap();
    assert_eq!(
        conn.closed().await,
        Closed::Frame(POLICY, "protocol violation".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn the_agent_library_pairs_with_servers_of_each_range() {
    // (agent range, server range, version both must settle on)
    let table = [
        ((2, 2), (2, 3), 2),
        ((2, 3), (2, 2), 2),
        ((2, 3), (2, 3), 3),
        ((2, 2), (2, 2), 2),
    ];
    for ((amin, amax), (smin, smax), want) in table {
        let server = Arc::new(
            Server::start_with(|c| {
                c.protocol_min = smin;
                c.protocol_max = smax;
            })
            .await,
        );
        let check = json!({ "command": ["/bin/true"], "interval_secs": 1, "timeout_secs": 5 });
        server
            .admin("PUT", "/api/v1/checks/alive", Some(&check))
            .await;
        let dir = tempfile::tempdir().unwrap();
        let toml = agent_toml(&server.addr.to_string(), "");
        let mut settings = library::settings(&toml, dir.path());
        settings.protocol = ProtocolRange::new(amin, amax).unwrap();
        let agent = LibraryAgent::start(settings);
        // Connected at the expected version, and results flow.
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let agents = server.agents().await;
            let stored = server.latest_results().await;
            if let Some(a) = agents.first()
                && a.presence == Presence::Connected
                && a.protocol_version == Some(want)
                && stored.iter().any(|r| r.check == "alive")
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent [{amin}, {amax}] vs server [{smin}, {smax}]: {agents:?}; logs {:?}",
                agent.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agent.stop(STEP).await;
        Arc::into_inner(server).unwrap().stop().await;
    }
}
