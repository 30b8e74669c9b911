//! The agent websocket: enrollment, key pinning, ingest, presence, bad input.

use ed25519_dalek::Signer;
use outrider_protocol::api::Presence;
use outrider_protocol::{
    AgentConfig, AgentMessage, CheckState, Hello, MAX_MESSAGE_BYTES, auth_message,
};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Agent, Closed, Conn, ENROLLMENT_TOKEN, POLICY, Server, expect_rejection, result,
};

#[tokio::test]
async fn enrollment_needs_the_right_token() {
    let server = Server::start().await;

    let good = Agent::new(1, "web-1");
    let (_conn, acked_seq, config) = good.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert_eq!(acked_seq, 0);
    // The first document of a new agent: version 1, nothing to run.
    assert_eq!(
        config,
        AgentConfig {
            version: 1,
            ..AgentConfig::default()
        }
    );

    for (seed, token) in [(2, Some("wrong")), (3, None)] {
        let reason = Agent::new(seed, "intruder").refused(&server, token).await;
        assert!(
            reason.contains("enrollment token"),
            "token {token:?}: reason {reason:?}"
        );
    }

    let agents = server.agents().await;
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0].fingerprint, good.fp);
    assert_eq!(agents[0].hostname, "web-1");
    assert_eq!(agents[0].presence, Presence::Connected);
    server.stop().await;
}

/// Sends `hello` on a fresh connection and returns the rejection reason.
async fn rejection(server: &Server, make_hello: impl FnOnce(&str) -> Hello) -> String {
    let (mut conn, nonce) = Conn::open(server).await;
    conn.send(&AgentMessage::Hello(make_hello(&nonce))).await;
    let answer = conn.recv().await;
    expect_rejection(conn, answer).await
}

#[tokio::test]
async fn pinned_fingerprint_cannot_be_claimed_without_its_key() {
    let server = Server::start().await;
    let owner = Agent::new(1, "web-1");
    let (mut owner_conn, _, _) = owner.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let before = server.agent(&owner.fp).await;
    let thief = Agent::new(9, "evil");

    // The owner's fingerprint, the thief's key, a valid signature by that key.
    let reason = rejection(&server, |nonce| Hello {
        fingerprint: owner.fp.clone(),
        signature: hex::encode(thief.key.sign(&auth_message(nonce, &owner.fp)).to_bytes()),
        ..thief.hello(nonce, Some(ENROLLMENT_TOKEN))
    })
    .await;
    assert!(
        reason.contains("does not match the public key"),
        "{reason:?}"
    );

    // The owner's fingerprint and public key, a signature replayed from another nonce.
    let reason = rejection(&server, |_nonce| Hello {
        hostname: "evil".into(),
        ..owner.hello(&"00".repeat(32), Some(ENROLLMENT_TOKEN))
    })
    .await;
    assert_eq!(reason, "signature does not prove possession of the key");

    assert_eq!(
        server.agents().await,
        vec![before],
        "a refused hello changed the agent table"
    );
    // The owner's session was neither replaced nor disturbed.
    assert_eq!(
        owner_conn
            .send_results(vec![result(1, "load", CheckState::Ok, "fine")])
            .await,
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn results_are_acked_deduplicated_and_remembered_across_sessions() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;

    let batch = vec![
        result(1, "load", CheckState::Ok, "load 1"),
        result(2, "disk", CheckState::Warning, "disk 2"),
        result(3, "load", CheckState::Critical, "load 3"),
    ];
    assert_eq!(conn.send_results(batch.clone()).await, 3);
    // A resend after a lost ack is acked again and stored once: the changed
    // summary of seq 3 must not overwrite the stored one.
    let mut resent = batch;
    resent[2].summary = "load 3 (resent)".into();
    assert_eq!(conn.send_results(resent).await, 3);

    let latest = server.latest_results().await;
    let rows: Vec<_> = latest
        .iter()
        .map(|r| (r.check.as_str(), r.seq, r.state, r.summary.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("disk", 2, CheckState::Warning, "disk 2"),
            ("load", 3, CheckState::Critical, "load 3")
        ]
    );
    assert!(
        latest
            .iter()
            .all(|r| r.agent == agent.fp && r.hostname == "web-1")
    );

    conn.send(&AgentMessage::Goodbye {
        reason: "restart".into(),
    })
    .await;
    conn.closed().await;
    // A pinned agent needs no enrollment token.
    let (_conn, acked_seq, _) = agent.connect(&server, None).await;
    assert_eq!(acked_seq, 3);
    server.stop().await;
}

#[tokio::test]
async fn goodbye_deregisters_and_a_lost_connection_is_down() {
    let server = Server::start().await;
    let polite = Agent::new(1, "polite");
    let rude = Agent::new(2, "rude");
    let (mut polite_conn, _, _) = polite.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let (rude_conn, _, _) = rude.connect(&server, Some(ENROLLMENT_TOKEN)).await;

    polite_conn
        .send(&AgentMessage::Goodbye {
            reason: "shutting down".into(),
        })
        .await;
    assert_eq!(
        polite_conn.closed().await,
        Closed::Frame(1000, "bye".into())
    );
    // Presence is written before the close frame is sent.
    assert_eq!(
        server.agent(&polite.fp).await.presence,
        Presence::Deregistered
    );

    drop(rude_conn);
    server.wait_presence(&rude.fp, Presence::Down).await;
    assert_eq!(
        server.agent(&polite.fp).await.presence,
        Presence::Deregistered
    );
    server.stop().await;
}

#[tokio::test]
async fn a_second_session_replaces_the_first_without_marking_it_down() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (mut first, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let since = server.agent(&agent.fp).await.presence_since_ms;

    let (mut second, _, _) = agent.connect(&server, None).await;
    assert_eq!(
        first.closed().await,
        Closed::Frame(POLICY, "replaced by a newer session".into())
    );
    let info = server.agent(&agent.fp).await;
    assert_eq!(info.presence, Presence::Connected);
    assert_eq!(
        info.presence_since_ms, since,
        "the replacement looked like a reconnect"
    );
    assert_eq!(
        second
            .send_results(vec![result(1, "load", CheckState::Ok, "fine")])
            .await,
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_frames_close_only_their_own_connection() {
    let server = Server::start().await;
    let healthy = Agent::new(1, "healthy");
    let (mut healthy_conn, _, _) = healthy.connect(&server, Some(ENROLLMENT_TOKEN)).await;

    let beyond_i64 = AgentMessage::Results {
        results: vec![result(u64::MAX, "load", CheckState::Ok, "")],
    };
    let bad_frames = [
        (2, Message::text("{\"type\": \"results\", \"results\": [")),
        (3, Message::binary(b"\x00\x01".to_vec())),
        (5, Message::text(beyond_i64.encode())),
    ];
    for (seed, frame) in bad_frames {
        let bad = Agent::new(seed, "bad");
        let (mut conn, _, _) = bad.connect(&server, Some(ENROLLMENT_TOKEN)).await;
        conn.send_raw(frame).await.unwrap();
        assert_eq!(
            conn.closed().await,
            Closed::Frame(POLICY, "protocol violation".into())
        );
        assert_eq!(server.agent(&bad.fp).await.presence, Presence::Down);
    }

    // A well-formed batch one byte over the limit: it would be acked if the
    // limit were not enforced, so the connection must end without an ack.
    let big = Agent::new(4, "big");
    let (mut conn, _, _) = big.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let mut oversized = result(1, "load", CheckState::Ok, "");
    let empty_len = AgentMessage::Results {
        results: vec![oversized.clone()],
    }
    .encode()
    .len();
    oversized.summary = "x".repeat(MAX_MESSAGE_BYTES + 1 - empty_len);
    let frame = AgentMessage::Results {
        results: vec![oversized],
    }
    .encode();
    assert_eq!(frame.len(), MAX_MESSAGE_BYTES + 1);
    // The server may reset the connection while the frame is still being
    // written, so a failed send is fine; any ack makes `closed` panic.
    let _ = conn.send_raw(Message::text(frame)).await;
    let _ = conn.closed().await;
    server.wait_presence(&big.fp, Presence::Down).await;

    let seq = healthy_conn
        .send_results(vec![result(7, "load", CheckState::Ok, "fine")])
        .await;
    assert_eq!(seq, 7);
    assert_eq!(
        server.agent(&healthy.fp).await.presence,
        Presence::Connected
    );
    server.stop().await;
}

#[tokio::test]
async fn an_agent_that_stops_answering_keepalives_is_down() {
    let server = Server::start_with(|c| {
        c.ping_interval_secs = 1;
        c.down_after_secs = 2;
    })
    .await;
    let agent = Agent::new(1, "frozen");
    // Connected, then never reads again: its pongs stop, its socket stays open.
    let (_conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert_eq!(server.agent(&agent.fp).await.presence, Presence::Connected);
    server.wait_presence(&agent.fp, Presence::Down).await;
    server.stop().await;
}

/// A label PostgreSQL could not store (a NUL character) is refused by
/// name at the hello, on every backend, and nothing is stored.
#[tokio::test]
async fn a_hello_with_a_nul_in_a_label_is_refused_naming_the_field() {
    let server = Server::start().await;
    let reason = Agent::new(9, "web\0evil")
        .refused(&server, Some(ENROLLMENT_TOKEN))
        .await;
    assert!(
        reason.contains("hostname holds a NUL character"),
        "{reason}"
    );
    assert!(server.agents().await.is_empty());
    server.stop().await;
}
