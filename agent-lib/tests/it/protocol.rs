//! Protocol versions and capabilities from the agent's side: what the
//! Hello offers, servers of either version, unknown server messages, and
//! update nudges (see `docs/protocol.md`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use outrider_agent::Health;
use outrider_protocol::{ProtocolRange, ServerMessage, Welcome, capability};

use crate::support::{Agent, AgentOptions, FakeServer, WAIT, check, config, script, sh};

fn welcome(version: u32, capabilities: &[&str]) -> Welcome {
    Welcome {
        fingerprint: "00".repeat(10).parse().unwrap(),
        acked_seq: 0,
        resume_token: String::new(),
        resumed: false,
        server_addrs: Vec::new(),
        protocol_version: version,
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
    }
}

/// Polls `cond` every 20 ms until it holds, for at most [`WAIT`].
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hello_offers_the_range_capabilities_stub_version_and_channel() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let options = AgentOptions {
        toml_extra: "channel = \"beta\"".into(),
        adjust: Some(|s| s.stub_version = Some("0.3.1".into())),
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(dir.path(), &server.url, options);
    let mut conn = server.accept().await;
    let hello = conn.handshake(0).await;
    // The floor, for servers that check equality.
    assert_eq!(hello.protocol_version, 2);
    assert_eq!(hello.offered(), Ok(ProtocolRange::SUPPORTED));
    assert!(
        hello
            .capabilities
            .iter()
            .any(|c| c == capability::UPDATE_NUDGE),
        "{:?}",
        hello.capabilities
    );
    assert_eq!(hello.stub_version.as_deref(), Some("0.3.1"));
    assert_eq!(hello.channel.as_deref(), Some("beta"));
    agent.stop_via(conn).await;
}

/// An agent narrowed to [2, 2] offers exactly that (how tests play an
/// agent from before negotiation against a new server).
#[tokio::test]
async fn an_agent_of_2_2_offers_only_2() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let options = AgentOptions {
        adjust: Some(|s| {
            s.protocol = ProtocolRange::new(2, 2).unwrap();
            s.capabilities.clear();
        }),
        ..AgentOptions::default()
    };
    let mut agent = Agent::start_with(dir.path(), &server.url, options);
    let mut conn = server.accept().await;
    let hello = conn.handshake_with(welcome(2, &[])).await;
    assert_eq!(hello.offered(), Ok(ProtocolRange::new(2, 2).unwrap()));
    assert!(hello.capabilities.is_empty());
    conn.send(config(1, vec![])).await;
    agent.wait_health(Health::Ok).await;
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn unknown_server_messages_are_skipped_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let ok = script(dir.path(), "ok.sh", "echo fine");
    let server = FakeServer::start().await;
    let mut agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake_with(welcome(3, capability::ALL)).await;
    conn.send_text(r#"{"type":"future_thing","payload":{"x":1}}"#)
        .await;
    conn.send_text(r#"{"type":"future_thing"}"#).await;
    // A known message with an unknown field is taken as usual.
    conn.send_text(r#"{"type":"config","version":1,"checks":[],"future_field":[1,2]}"#)
        .await;
    agent.wait_health(Health::Ok).await;
    // Later messages still work: a config with a check yields its result.
    conn.send(config(2, vec![check("ok", sh(&ok))])).await;
    let result = conn.recv_result_of("ok").await;
    assert_eq!(result.summary, "fine");
    let line = agent.wait_log("unknown type \"future_thing\"").await;
    assert!(line.contains("1 unknown messages so far"), "{line}");
    let logged = agent
        .hooks
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains("future_thing"))
        .count();
    assert_eq!(logged, 1, "logged once per type");
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn check_update_asks_the_host_for_an_update_check() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake_with(welcome(3, capability::ALL)).await;
    assert_eq!(agent.hooks.update_checks.load(Ordering::SeqCst), 0);
    let nudge = ServerMessage::CheckUpdate {
        reason: "release promote on stable".into(),
    };
    conn.send(nudge).await;
    let hooks = agent.hooks.clone();
    eventually("the host was asked for an update check", || {
        hooks.update_checks.load(Ordering::SeqCst) == 1
    })
    .await;
    agent.wait_log("release promote on stable").await;
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn a_welcome_outside_the_offered_range_ends_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake_with(welcome(9, &[])).await;
    agent
        .wait_log("the server chose protocol version 9, outside the offered [2, 3]")
        .await;
    drop(conn);
    agent.request_stop();
    agent.join().await;
}

/// The `outrider.update` results the server receives, in order, until
/// `count` arrived (acking each batch).
async fn update_results(
    conn: &mut crate::support::ServerConn,
    count: usize,
) -> Vec<outrider_protocol::CheckResult> {
    let mut found = Vec::new();
    while found.len() < count {
        let results = conn.recv_results().await;
        let up_to = results.last().map_or(0, |r| r.seq);
        found.extend(results.into_iter().filter(|r| r.check == "outrider.update"));
        conn.send(ServerMessage::Ack { up_to }).await;
    }
    found
}

#[tokio::test]
async fn the_stubs_update_events_reach_the_server_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let refused = br#"[{"id":7,"kind":"refused","at_unix_ms":1764820000000,
        "build_sha256":"ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12",
        "version":"1.4.0","reason":"hash mismatch: expected ab12, got 9f3c"}]"#;
    let options = AgentOptions {
        adjust: Some(|s| s.update_events_poll = Duration::from_millis(50)),
        update_events: vec![
            refused.to_vec(),
            // Not JSON: one warning, dropped, the agent goes on.
            b"{garbage".to_vec(),
            // Handed over again (a stub that crashed before forgetting it)
            // with a newer one of a kind this build does not know.
            [
                &refused[..refused.len() - 1],
                br#",{"id":8,"kind":"teleported","at_unix_ms":1}]"#,
            ]
            .concat(),
        ],
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(dir.path(), &server.url, options);
    let mut conn = server.accept().await;
    conn.handshake_with(welcome(3, capability::ALL)).await;
    let found = update_results(&mut conn, 2).await;
    let first = &found[0];
    assert_eq!(
        first.summary,
        "refused 1.4.0 (ab12ab12ab12): hash mismatch: expected ab12, got 9f3c"
    );
    assert_eq!(first.state, outrider_protocol::CheckState::Warning);
    assert_eq!(first.started_at_ms, 1_764_820_000_000);
    let event = first.update_event.as_ref().unwrap();
    assert_eq!((event.id, event.kind.as_str()), (7, "refused"));
    assert_eq!(found[1].update_event.as_ref().unwrap().kind, "teleported");
    agent.wait_log("not a JSON array of events").await;
    // Id 7 came twice but was reported once; the state blob remembers 8.
    let blob = agent.stop_via(conn).await;
    assert_eq!(blob.update_events_seen, 8);
    assert_eq!(found.len(), 2, "{found:?}");

    // The next generation gets id 7 and 8 again: nothing new is queued.
    let options = AgentOptions {
        state_in: Some(blob),
        adjust: Some(|s| s.update_events_poll = Duration::from_millis(50)),
        update_events: vec![
            [
                &refused[..refused.len() - 1],
                br#",{"id":8,"kind":"teleported","at_unix_ms":1}]"#,
            ]
            .concat(),
        ],
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(dir.path(), &server.url, options);
    let mut conn = server.accept().await;
    conn.handshake_with(welcome(3, capability::ALL)).await;
    conn.send(config(1, vec![])).await;
    let hooks = agent.hooks.clone();
    eventually("the events were taken", || {
        hooks.update_events.lock().unwrap().is_empty()
    })
    .await;
    let blob = agent.stop_via(conn).await;
    assert!(
        blob.unacked.iter().all(|r| r.check != "outrider.update"),
        "{:?}",
        blob.unacked
    );
    assert_eq!(blob.update_events_seen, 8);
}
