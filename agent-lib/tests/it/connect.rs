//! Connecting: TLS, plain-ws policy, resume tokens, keepalives and the DNS
//! fallback chain — against real sockets on loopback.

use std::time::Duration;

use outrider_agent::{AgentError, AgentSettings, ConnectionTiming, Health};
use outrider_protocol::{CheckResult, CheckState, ServerMessage, Welcome};

use crate::support::{
    Agent, AgentOptions, FakeServer, RESOLVER_FAILURE, ServerConn, TestCert, TestResolver, check,
    config, fast_timing, script, sh,
};

const HOST: &str = "mon.outrider.test";

fn welcome(resume_token: &str, server_addrs: &[&str]) -> Welcome {
    Welcome {
        fingerprint: "00".repeat(10).parse().unwrap(),
        acked_seq: 0,
        resume_token: resume_token.into(),
        resumed: false,
        server_addrs: server_addrs.iter().map(|s| s.to_string()).collect(),
        protocol_version: 2,
        capabilities: Vec::new(),
    }
}

/// Expects the CRITICAL `outrider.dns` result, its summary naming every
/// one of `parts`.
async fn expect_dns_broken(conn: &mut ServerConn, parts: &[&str]) -> CheckResult {
    let dns = conn.recv_result_of("outrider.dns").await;
    assert_eq!(dns.state, CheckState::Critical, "{}", dns.summary);
    for part in parts {
        assert!(
            dns.summary.contains(part),
            "{part:?} missing: {}",
            dns.summary
        );
    }
    dns
}

#[tokio::test]
async fn wss_to_a_private_ca_runs_a_whole_session() {
    let dir = tempfile::tempdir().unwrap();
    let ok = script(dir.path(), "ok.sh", "echo 'OK over TLS'");
    let cert = TestCert::new(HOST);
    let server = FakeServer::start_tls("127.0.0.1:0", HOST, &cert).await;
    let mut agent = Agent::start_with(
        dir.path(),
        &server.url,
        AgentOptions {
            toml_extra: cert.trust_line(dir.path()),
            resolver: Some(TestResolver::new("127.0.0.1")),
            ..AgentOptions::default()
        },
    );
    let mut conn = server.accept().await;
    let hello = conn.handshake(0).await;
    assert_eq!(hello.tags, ["test"]);
    conn.send(config(1, vec![check("ok", sh(&ok))])).await;
    agent.wait_health(Health::Ok).await;
    let r = conn.recv_result_of("ok").await;
    assert_eq!(
        (r.state, r.summary.as_str()),
        (CheckState::Ok, "OK over TLS")
    );
    agent.request_stop();
    assert_eq!(conn.expect_goodbye().await, "agent stopping");
    agent.join().await;
}

#[tokio::test]
async fn a_certificate_for_another_name_or_an_untrusted_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Trusted issuer, wrong name.
    let cert = TestCert::new("other.outrider.test");
    let server = FakeServer::start_tls("127.0.0.1:0", HOST, &cert).await;
    let mut agent = Agent::start_with(
        dir.path(),
        &server.url,
        AgentOptions {
            toml_extra: cert.trust_line(dir.path()),
            resolver: Some(TestResolver::new("127.0.0.1")),
            ..AgentOptions::default()
        },
    );
    server.accept_failing_tls().await;
    let why = agent.wait_health(Health::Degraded).await;
    assert!(
        why.contains("not valid for name \"mon.outrider.test\""),
        "{why}"
    );
    agent.request_stop();
    agent.join().await;

    // Right name, issuer not trusted (no tls_ca_file).
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new(HOST);
    let server = FakeServer::start_tls("127.0.0.1:0", HOST, &cert).await;
    let mut agent = Agent::start_with(
        dir.path(),
        &server.url,
        AgentOptions {
            resolver: Some(TestResolver::new("127.0.0.1")),
            ..AgentOptions::default()
        },
    );
    server.accept_failing_tls().await;
    let why = agent.wait_health(Health::Degraded).await;
    assert!(why.contains("invalid peer certificate"), "{why}");
    agent.request_stop();
    agent.join().await;
}

#[test]
fn plain_ws_to_a_host_that_is_not_loopback_is_a_config_error() {
    let err =
        AgentSettings::new("server_url = \"http://mon.example:8470\"", "/c", "/d").unwrap_err();
    assert!(matches!(err, AgentError::PlainWsRefused { .. }), "{err}");
    assert!(err.is_config());
    let allowed = "server_url = \"http://mon.example:8470\"\nallow_plain_ws = true";
    assert!(AgentSettings::new(allowed, "/c", "/d").is_ok());
}

#[tokio::test]
async fn reconnects_present_the_resume_token_and_the_running_config_version() {
    let dir = tempfile::tempdir().unwrap();
    let ok = script(dir.path(), "ok.sh", "echo OK");
    let server = FakeServer::start().await;
    let mut agent = Agent::start(dir.path(), &server.url, None);

    let mut conn = server.accept().await;
    let first = conn.handshake_with(welcome("resume-1", &[])).await;
    assert_eq!(
        (first.resume_token.as_deref(), first.config_version),
        (None, 0)
    );
    conn.send(config(7, vec![check("ok", sh(&ok))])).await;
    agent.wait_health(Health::Ok).await;
    drop(conn);

    let mut conn = server.accept().await;
    let second = conn.handshake_with(welcome("resume-2", &[])).await;
    assert_eq!(second.resume_token.as_deref(), Some("resume-1"));
    assert_eq!(second.config_version, 7);
    let blob = agent.stop_via(conn).await;
    let carried = blob.connection.clone().expect("connection section");
    assert_eq!(carried.resume_token.as_deref(), Some("resume-2"));

    // The next generation presents the newest token and, resumed with an
    // unchanged config (no Config frame), still reports healthy.
    let mut next = Agent::start(dir.path(), &server.url, Some(&blob));
    let mut conn = server.accept().await;
    let third = conn
        .handshake_with(Welcome {
            resumed: true,
            ..welcome("resume-3", &[])
        })
        .await;
    assert_eq!(third.resume_token.as_deref(), Some("resume-2"));
    assert_eq!(third.config_version, 7);
    next.wait_health(Health::Ok).await;
    next.stop_via(conn).await;
}

#[tokio::test]
async fn keepalive_pings_keep_a_session_and_silence_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let agent = Agent::start_with(
        dir.path(),
        &server.url,
        AgentOptions {
            timing: Some(ConnectionTiming {
                keepalive_interval: Duration::from_millis(200),
                keepalive_timeout: Duration::from_millis(1500),
                ..ConnectionTiming::default()
            }),
            ..AgentOptions::default()
        },
    );
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    // Answering pings (reading answers them) for longer than the silence
    // limit keeps the session.
    let pings = conn.answer_pings_for(Duration::from_millis(2500)).await;
    assert!(pings >= 5, "only {pings} pings");
    // Now the server goes silent: the agent gives up on it and reconnects.
    let mut again = server.accept().await;
    again.handshake(0).await;
    agent.request_stop();
    again.expect_goodbye().await;
    let hooks = agent.hooks.clone();
    agent.join().await;
    assert!(
        hooks.logged("the server sent nothing for"),
        "{:?}",
        hooks.logs
    );
    drop(conn);
}

/// Waits until the agent has processed the Welcome (health OK after a config).
async fn settle(agent: &mut Agent, conn: &mut crate::support::ServerConn) {
    conn.send(config(1, Vec::new())).await;
    agent.wait_health(Health::Ok).await;
}

#[tokio::test]
async fn broken_dns_falls_back_to_the_last_good_ip_verifies_tls_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new(HOST);
    let server = FakeServer::start_tls("127.0.0.1:0", HOST, &cert).await;
    let resolver = TestResolver::new("127.0.0.1");
    let options = || AgentOptions {
        toml_extra: cert.trust_line(dir.path()),
        resolver: Some(resolver.clone()),
        timing: Some(fast_timing()),
        ..AgentOptions::default()
    };
    let mut agent = Agent::start_with(dir.path(), &server.url, options());
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    settle(&mut agent, &mut conn).await;

    // The resolver breaks; the agent dials the last good IP, and TLS still
    // verifies the certificate for the host name.
    resolver.set_broken(true);
    drop(conn);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    let dns = expect_dns_broken(
        &mut conn,
        &[HOST, RESOLVER_FAILURE, "127.0.0.1", "last good IP"],
    )
    .await;
    conn.send(ServerMessage::Ack { up_to: dns.seq }).await;

    // The resolver recovers: one OK result.
    resolver.set_broken(false);
    drop(conn);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    let dns = conn.recv_result_of("outrider.dns").await;
    assert_eq!(dns.state, CheckState::Ok, "{}", dns.summary);
    // Acked, so the next start below cannot pass on a resent old result.
    conn.send(ServerMessage::Ack { up_to: dns.seq }).await;
    let blob = agent.stop_via(conn).await;
    let memory = blob.connection.expect("connection section");
    assert_eq!(
        memory.saved.last_good_ip,
        Some("127.0.0.1".parse().unwrap())
    );
    assert!(!memory.dns_broken);

    // A cold start (no state blob) with a resolver that never answers
    // gives up on it after dns_timeout and still finds the server through
    // <data_dir>/connection.json.
    resolver.set_hanging(true);
    let agent = Agent::start_with(dir.path(), &server.url, options());
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    expect_dns_broken(&mut conn, &["no answer within 1000 ms"]).await;
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn with_the_last_good_ip_gone_the_addresses_the_server_listed_are_tried() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new(HOST);
    // 127.0.0.3: an address no other test binds, so the port freed below
    // cannot be taken over by a concurrent test's server.
    // Same port on another loopback address: the server's second node.
    let (first, second) = FakeServer::start_tls_pair("127.0.0.3", "127.0.0.2", HOST, &cert).await;
    let resolver = TestResolver::new("127.0.0.3");
    let mut agent = Agent::start_with(
        dir.path(),
        &first.url,
        AgentOptions {
            toml_extra: cert.trust_line(dir.path()),
            resolver: Some(resolver.clone()),
            timing: Some(fast_timing()),
            ..AgentOptions::default()
        },
    );
    let mut conn = first.accept().await;
    conn.handshake_with(welcome("", &["127.0.0.2"])).await;
    settle(&mut agent, &mut conn).await;

    resolver.set_broken(true);
    drop(conn);
    drop(first); // The last good IP now refuses connections.
    let mut conn = second.accept().await;
    conn.handshake(0).await;
    expect_dns_broken(&mut conn, &["127.0.0.2", "server listed"]).await;
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn the_enrollment_token_goes_until_welcomed_and_again_after_a_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let timing = ConnectionTiming {
        rejected_retry: Duration::from_millis(100),
        ..fast_timing()
    };
    let options = || AgentOptions {
        timing: Some(timing),
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(dir.path(), &server.url, options());
    let mut conn = server.accept().await;
    let first = conn.handshake(0).await;
    assert_eq!(first.enrollment_token.as_deref(), Some("tok-123"));
    drop(conn);

    // Welcomed once: later Hellos prove possession of the same key (the
    // fake server verifies the signature over its nonce) without the token.
    let mut conn = server.accept().await;
    let second = conn.handshake(0).await;
    assert_eq!(second.enrollment_token, None);
    assert_eq!(
        (&second.fingerprint, &second.public_key),
        (&first.fingerprint, &first.public_key)
    );
    assert_ne!(second.signature, "", "signed proof on every Hello");
    agent.stop_via(conn).await;

    // A restart without a state blob remembers the enrollment on disk; a
    // rejection (say the server lost its database) brings the token back.
    let agent = Agent::start_with(dir.path(), &server.url, options());
    let mut conn = server.accept().await;
    conn.send(ServerMessage::Challenge {
        nonce: "11".repeat(32),
    })
    .await;
    let outrider_protocol::AgentMessage::Hello(third) = conn.recv().await else {
        panic!("expected hello")
    };
    assert_eq!(third.enrollment_token, None);
    conn.send(ServerMessage::Rejected {
        reason: "unknown agent; enrollment token required".into(),
    })
    .await;
    drop(conn);
    let mut conn = server.accept().await;
    let fourth = conn.handshake(0).await;
    assert_eq!(fourth.enrollment_token.as_deref(), Some("tok-123"));
    agent.stop_via(conn).await;
}

/// The removal attack from the agent's side: once welcomed with a token,
/// this process (and its next generation, which the stub hands the same
/// agent.toml text) never presents that token again, even after the server
/// forgot the agent; and the token line leaves the file on disk.
#[tokio::test]
async fn a_spent_token_is_removed_from_agent_toml_and_never_presented_again() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = "server_url = \"http://127.0.0.1:1\"\n# keep me\nenrollment_token = \"tok-123\"\n\n[policy]\nallow_adhoc = false\n";
    let toml_path = dir.path().join("agent.toml");
    std::fs::write(&toml_path, on_disk).unwrap();
    let server = FakeServer::start().await;
    let options = |state_in| AgentOptions {
        state_in,
        timing: Some(ConnectionTiming {
            rejected_retry: Duration::from_millis(50),
            ..fast_timing()
        }),
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(dir.path(), &server.url, options(None));
    let mut conn = server.accept().await;
    let first = conn.handshake(0).await;
    assert_eq!(first.enrollment_token.as_deref(), Some("tok-123"));
    agent
        .wait_log("the enrollment token was removed from agent.toml")
        .await;
    assert_eq!(
        std::fs::read_to_string(&toml_path).unwrap(),
        "server_url = \"http://127.0.0.1:1\"\n# keep me\n\n[policy]\nallow_adhoc = false\n"
    );

    // Removed by the operator: told mid-session. The next Hello has no
    // token (the one in memory is spent), and the log says what to do.
    conn.send(ServerMessage::Rejected {
        reason: "this agent was removed from the server".into(),
    })
    .await;
    drop(conn);
    let mut conn = server.accept().await;
    let again = conn.handshake(0).await;
    assert_eq!(again.enrollment_token, None);
    agent.wait_log("has no unused enrollment token").await;
    let blob = agent.stop_via(conn).await;

    // The next generation (hot swap: same text, carried state), refused
    // again, neither: the spent token travels in the state blob.
    let next = Agent::start_with(dir.path(), &server.url, options(Some(blob)));
    let mut conn = server.accept().await;
    conn.send(ServerMessage::Challenge {
        nonce: "33".repeat(32),
    })
    .await;
    let outrider_protocol::AgentMessage::Hello(hello) = conn.recv().await else {
        panic!("expected hello")
    };
    assert_eq!(hello.enrollment_token, None);
    conn.send(ServerMessage::Rejected {
        reason: "unknown agent and no enrollment token".into(),
    })
    .await;
    drop(conn);
    let mut conn = server.accept().await;
    let swapped = conn.handshake(0).await;
    assert_eq!(swapped.enrollment_token, None);
    next.stop_via(conn).await;
}

#[tokio::test]
async fn a_stop_during_the_handshake_still_ends_with_a_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.send(ServerMessage::Challenge {
        nonce: "22".repeat(32),
    })
    .await;
    let outrider_protocol::AgentMessage::Hello(hello) = conn.recv().await else {
        panic!("expected hello")
    };
    // The stop arrives after the Hello went out, before the Welcome: the
    // server may already count the agent connected, so it must not vanish.
    agent.request_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(ServerMessage::Welcome(Welcome {
        fingerprint: hello.fingerprint,
        ..welcome("", &[])
    }))
    .await;
    assert_eq!(conn.expect_goodbye().await, "agent stopping");
    agent.join().await;
}
