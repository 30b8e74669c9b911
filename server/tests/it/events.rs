//! The live event stream: presence changes and stored results, pushed.

use outrider_protocol::api::{Event, Presence};
use outrider_protocol::{AgentMessage, CheckState, Fingerprint};

use crate::helpers::{Agent, ENROLLMENT_TOKEN, EventStream, Server, result};

/// The next presence change of `fp` on the stream.
async fn next_presence(events: &mut EventStream, fp: &Fingerprint) -> Presence {
    events
        .find(|e| match e {
            Event::Presence {
                agent, presence, ..
            } if agent == fp => Some(*presence),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn presence_changes_and_results_are_pushed_to_subscribers() {
    let server = Server::start().await;
    let mut events = server.events().await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let fp = agent.fp.clone();
    let presence = next_presence(&mut events, &fp).await;
    assert_eq!(presence, Presence::Connected);

    conn.send_results(vec![result(5, "load", CheckState::Critical, "load 42")])
        .await;
    let stored = events
        .find(|e| match e {
            Event::Result { agent, result } if agent == &fp => Some(result.clone()),
            _ => None,
        })
        .await;
    assert_eq!((stored.seq, stored.summary.as_str()), (5, "load 42"));

    conn.send(&AgentMessage::Goodbye {
        reason: "shutdown".into(),
    })
    .await;
    let presence = next_presence(&mut events, &fp).await;
    assert_eq!(presence, Presence::Deregistered);
    // The open stream does not hold up shutdown.
    server.stop().await;
}

#[tokio::test]
async fn the_event_stream_needs_the_admin_token() {
    let server = Server::start().await;
    let (status, body) = server.http("GET", "/api/v1/events", None, None).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string(), "{body}");
    server.stop().await;
}
