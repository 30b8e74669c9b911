//! The whole agent against a real websocket peer speaking the protocol.

use outrider_agent::{Health, StateBlob};
use outrider_protocol::{AgentConfig, CheckState, PerfData, PluginRef, ServerMessage};

use crate::support::{Agent, FakeServer, check, config, script, sh};

const DISK: &str = "echo 'DISK WARNING - 91% used | used=91%;80;90;0;100'\necho 'on /var'\nexit 1";

#[tokio::test]
async fn registers_runs_a_check_reports_and_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let disk = script(dir.path(), "disk.sh", DISK);
    let server = FakeServer::start().await;
    let mut agent = Agent::start(dir.path(), &server.url, None);

    let mut conn = server.accept().await;
    let hello = conn.handshake(0).await;
    assert_eq!(hello.enrollment_token.as_deref(), Some("tok-123"));
    assert_eq!(
        (hello.os.as_str(), hello.arch.as_str()),
        (std::env::consts::OS, std::env::consts::ARCH)
    );
    assert_eq!(hello.last_seq, 0);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));

    conn.send(config(1, vec![check("disk", sh(&disk))])).await;
    assert_eq!(
        agent.wait_health(Health::Ok).await,
        "connected and scheduling"
    );

    let results = conn.recv_results().await;
    let r = &results[0];
    assert_eq!(
        (r.seq, r.check.as_str(), r.state),
        (1, "disk", CheckState::Warning)
    );
    assert_eq!(r.summary, "DISK WARNING - 91% used");
    assert_eq!(r.long_output, "on /var");
    assert_eq!(
        r.perfdata,
        [PerfData {
            label: "used".into(),
            value: 91.0,
            uom: "%".into(),
            warn: Some("80".into()),
            crit: Some("90".into()),
            min: Some(0.0),
            max: Some(100.0),
        }]
    );
    conn.send(ServerMessage::Ack { up_to: r.seq }).await;

    agent.request_stop();
    assert_eq!(conn.expect_goodbye().await, "agent stopping");
    let blob = agent.join().await;
    assert!(
        blob.unacked.iter().all(|u| u.seq > 1),
        "acked result kept: {:?}",
        blob.unacked
    );
    assert!(blob.next_seq >= 2);
    assert_eq!(
        blob.config.expect("config handed over").checks[0].name,
        "disk"
    );
}

#[tokio::test]
async fn unacked_results_survive_a_reconnect_and_a_cold_counter_continues_above_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let disk = script(dir.path(), "disk.sh", DISK);
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);

    // The server already stored 41 results of this identity in an earlier life.
    let mut conn = server.accept().await;
    conn.handshake(41).await;
    conn.send(config(1, vec![check("disk", sh(&disk))])).await;
    let first = conn.recv_results().await[0].clone();
    assert_eq!(first.seq, 42);
    drop(conn); // No ack: the connection just dies.

    let mut conn = server.accept().await;
    let hello = conn.handshake(41).await;
    assert!(hello.last_seq >= 42);
    assert_eq!(
        conn.recv_results().await[0],
        first,
        "the un-acked result is resent unchanged"
    );
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn state_blob_hands_unacked_results_and_config_to_the_next_generation() {
    let dir = tempfile::tempdir().unwrap();
    let disk = script(dir.path(), "disk.sh", DISK);
    let server = FakeServer::start().await;

    let old = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    conn.send(config(1, vec![check("disk", sh(&disk))])).await;
    let sent = conn.recv_results().await;
    let blob = old.stop_via(conn).await;
    assert!(blob.unacked.len() >= sent.len());
    assert_eq!(blob.unacked[0], sent[0]);

    // The new generation resends them first and keeps the numbering.
    let new = Agent::start(dir.path(), &server.url, Some(&blob));
    let mut conn = server.accept().await;
    let hello = conn.handshake(0).await;
    assert_eq!(hello.last_seq, blob.next_seq - 1);
    let resent = conn.recv_results().await;
    assert_eq!(resent[0], blob.unacked[0]);
    new.stop_via(conn).await;
}

#[tokio::test]
async fn a_rejected_agent_reports_why_and_still_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let mut agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.send(ServerMessage::Challenge {
        nonce: "00".repeat(32),
    })
    .await;
    let _hello = conn.recv().await;
    conn.send(ServerMessage::Rejected {
        reason: "unknown enrollment token".into(),
    })
    .await;
    let why = agent.wait_health(Health::Degraded).await;
    assert!(why.contains("unknown enrollment token"), "{why}");
    // Now in a long backoff; stopping must not wait for it.
    agent.request_stop();
    agent.join().await;
}

#[tokio::test]
async fn an_unreachable_server_is_logged_and_retried_until_stop() {
    let dir = tempfile::tempdir().unwrap();
    // A freed port on 127.0.0.3, which no other test binds: a concurrent
    // test's server cannot take it over while this agent keeps dialing it.
    let port = std::net::TcpListener::bind("127.0.0.3:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Agent::start(dir.path(), &format!("http://127.0.0.3:{port}"), None);
    let why = agent.wait_health(Health::Degraded).await;
    assert!(why.contains("cannot reach server"), "{why}");
    assert!(agent.hooks.logged("retrying in"));
    agent.request_stop();
    let blob = agent.join().await;
    assert!(blob.unacked.is_empty());
}

#[tokio::test]
async fn a_carried_config_that_fails_validation_is_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    // A plugin "hash" that is a path: it must never reach the file system.
    let mut carried = AgentConfig {
        version: 7,
        checks: vec![check("p", vec!["plugin:evil".into()])],
        ..AgentConfig::default()
    };
    carried.plugins.push(PluginRef {
        name: "evil".into(),
        sha256: "../../escape".into(),
        size: 1,
    });
    let blob = StateBlob {
        config: Some(carried),
        ..StateBlob::default()
    };
    let agent = Agent::start(dir.path(), &server.url, Some(&blob));
    let mut conn = server.accept().await;
    let hello = conn.handshake(0).await;
    assert_eq!(
        hello.config_version, 0,
        "the server is asked for its config"
    );
    let line = agent
        .wait_log("previous generation's config version 7 is invalid")
        .await;
    assert!(line.contains("sha256"), "{line}");
    let handed = agent.stop_via(conn).await;
    assert!(handed.config.is_none());
    assert!(!dir.path().join("escape.tmp").exists());
}
