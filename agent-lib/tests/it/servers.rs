//! Several server URLs (`server_url` + `extra_server_urls`): a dead node is
//! skipped, the node that worked is remembered in `connection.json` and
//! dialed first after a restart, and a session lost to a node going away
//! continues on another — against real sockets on loopback.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use outrider_agent::config::{ServerEndpoint, server_endpoint};
use outrider_agent::connection::endpoints::{dial_order, dial_seed};
use outrider_agent::connection::saved::SavedConnection;

use outrider_protocol::{CheckState, ServerMessage};

use crate::support::{
    Agent, AgentOptions, FakeServer, RESOLVER_FAILURE, TestResolver, WAIT, fast_timing,
};

/// A loopback address nothing listens on (bound, then closed), on
/// 127.0.0.4, which no other test binds: a concurrent test's server cannot
/// take the port over before this test binds it again.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.4:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts an agent whose agent.toml names `urls` (the first as
/// `server_url`, the rest as `extra_server_urls`).
fn start(dir: &Path, urls: &[&str]) -> Agent {
    let extra: Vec<String> = urls[1..].iter().map(|u| format!("\"{u}\"")).collect();
    let options = AgentOptions {
        toml_extra: format!("extra_server_urls = [{}]", extra.join(", ")),
        timing: Some(fast_timing()),
        ..AgentOptions::default()
    };
    Agent::start_with(dir, urls[0], options)
}

/// Waits until `<dir>/connection.json` remembers `url` as the endpoint
/// last welcomed at.
async fn wait_remembered(dir: &Path, url: &str) {
    let endpoints: Vec<ServerEndpoint> = vec![server_endpoint(url).unwrap()];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let saved = SavedConnection::load(dir, &endpoints);
        if matches!(&saved, Ok(s) if s.remembered(&endpoints) == Some(0)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection.json does not remember {url}: {saved:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_dead_url_is_skipped_the_live_one_remembered_and_a_moved_server_followed() {
    let dir = tempfile::tempdir().unwrap();
    let other = closed_port();
    let other_url = format!("http://{other}");
    let live = FakeServer::start().await;

    // 1. [closed port, live server]: whatever the shuffle, it registers
    //    with the live one and remembers it on disk.
    let agent = start(dir.path(), &[&other_url, &live.url]);
    let mut conn = live.accept().await;
    let hello = conn.handshake(0).await;
    wait_remembered(dir.path(), &live.url).await;
    // The stub's copy, for its update downloads.
    let line = std::fs::read_to_string(dir.path().join("last_server_url")).unwrap();
    assert_eq!(line, format!("{}\n", live.url));
    agent.stop_via(conn).await;

    // 2. Restart with a listener on the other URL that never answers, the
    //    list arranged so that this agent's shuffle puts it first: only the
    //    remembered URL keeps the agent from dialing it. A connection it
    //    opened would wait in the listener's backlog (the kernel completes
    //    the TCP handshake without an accept), so an empty backlog proves
    //    the first and only attempt went to the remembered server.
    let silent = TcpListener::bind(other).unwrap();
    let seed = dial_seed(&hello.fingerprint.to_string());
    let urls = if dial_order(2, seed, None)[0] == 0 {
        [other_url.as_str(), live.url.as_str()]
    } else {
        [live.url.as_str(), other_url.as_str()]
    };
    let agent = start(dir.path(), &urls);
    let mut conn = live.accept().await;
    conn.handshake(0).await;
    silent.set_nonblocking(true).unwrap();
    match silent.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the agent dialed the unremembered URL first: {other:?}"),
    }

    // 3. The live server goes away and another comes up on the other URL:
    //    the agent reconnects there and remembers it instead.
    drop(silent);
    drop(conn);
    drop(live);
    let moved = FakeServer::start_at(other).await;
    let mut conn = moved.accept().await;
    conn.handshake(0).await;
    wait_remembered(dir.path(), &other_url).await;
    agent.wait_log(&format!("connected to ws://{other}")).await;
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn a_name_with_several_addresses_is_tried_address_by_address_and_survives_broken_dns() {
    const HOST: &str = "nodes.outrider.test";
    let dir = tempfile::tempdir().unwrap();
    // The name's first address has nothing on the port (127.0.0.5, which no
    // other test binds), its second is the server (127.0.0.6).
    let server = FakeServer::start_at("127.0.0.6:0".parse().unwrap()).await;
    let port = server.port();
    let named = format!("http://{HOST}:{port}");
    let dead = format!("http://{}", closed_port());
    let resolver = TestResolver::answering(&["127.0.0.5", "127.0.0.6"]);
    let agent = Agent::start_with(
        dir.path(),
        &named,
        AgentOptions {
            toml_extra: format!("allow_plain_ws = true\nextra_server_urls = [\"{dead}\"]"),
            resolver: Some(resolver.clone()),
            timing: Some(fast_timing()),
            ..AgentOptions::default()
        },
    );
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    agent
        .wait_log(&format!(
            "connected to ws://{HOST}:{port}/v1/agent/ws at 127.0.0.6:{port}"
        ))
        .await;
    wait_remembered(dir.path(), &named).await;

    // DNS breaks and the session drops: the other URL is dead, and the
    // name's host is reached through the address remembered for it.
    resolver.set_broken(true);
    drop(conn);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    let dns = conn.recv_result_of("outrider.dns").await;
    assert_eq!(dns.state, CheckState::Critical, "{}", dns.summary);
    for part in [HOST, RESOLVER_FAILURE, "127.0.0.6"] {
        assert!(dns.summary.contains(part), "{}", dns.summary);
    }
    conn.send(ServerMessage::Ack { up_to: dns.seq }).await;
    agent.stop_via(conn).await;
}
