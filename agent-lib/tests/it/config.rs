//! Server configs: applied by diff, bad ones refused, plugins fetched over
//! the session and verified before anything is installed.

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use outrider_agent::Health;
use outrider_protocol::{
    AgentConfig, AgentMessage, CheckResult, CheckSpec, CheckState, PluginRef, ServerMessage,
};
use sha2::{Digest, Sha256};

use std::time::Duration;

use outrider_agent::ConnectionTiming;

use crate::support::{Agent, AgentOptions, FakeServer, ServerConn, check, script, sh};

fn plugin(name: &str, body: &[u8]) -> PluginRef {
    PluginRef {
        name: name.into(),
        sha256: hex::encode(Sha256::digest(body)),
        size: body.len() as u64,
    }
}

fn plugin_check(name: &str, plugin: &str) -> CheckSpec {
    check(name, vec![format!("plugin:{plugin}")])
}

/// Waits for a result of `check` whose summary contains `needle` (a run
/// may race a concurrent fork of the test binary and fail to exec once).
async fn expect_result(conn: &mut ServerConn, check: &str, needle: &str) -> CheckResult {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = conn.recv_result_of(check).await;
        if r.summary.contains(needle) {
            return r;
        }
        seen.push(r.summary);
    }
    panic!("no {check} result saying {needle:?}: {seen:?}");
}

fn config(version: u64, checks: Vec<CheckSpec>, plugins: Vec<PluginRef>) -> ServerMessage {
    ServerMessage::Config(AgentConfig {
        version,
        checks,
        plugins,
        ..AgentConfig::default()
    })
}

/// Expects a `GetPlugin` for `sha256` at `offset`.
async fn expect_get(conn: &mut ServerConn, sha256: &str, offset: u64) {
    match conn.recv_skipping_results().await {
        AgentMessage::GetPlugin {
            sha256: got,
            offset: at,
        } => assert_eq!((got.as_str(), at), (sha256, offset)),
        other => panic!("expected GetPlugin, got {other:?}"),
    }
}

async fn send_chunk(conn: &mut ServerConn, p: &PluginRef, offset: u64, bytes: &[u8]) {
    conn.send(ServerMessage::PluginChunk {
        sha256: p.sha256.clone(),
        offset,
        total: p.size,
        data: base64::engine::general_purpose::STANDARD.encode(bytes),
    })
    .await;
}

#[tokio::test]
async fn plugins_are_fetched_chunk_by_chunk_verified_installed_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("plugins");
    let server = FakeServer::start().await;
    let mut agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;

    // A good plugin in two chunks: installed 0755 under its hash, then the
    // config applies.
    let body = b"#!/bin/sh\necho 'OK from a plugin'\n";
    let good = plugin("hello", body);
    conn.send(config(
        1,
        vec![plugin_check("hi", "hello")],
        vec![good.clone()],
    ))
    .await;
    expect_get(&mut conn, &good.sha256, 0).await;
    send_chunk(&mut conn, &good, 0, &body[..10]).await;
    expect_get(&mut conn, &good.sha256, 10).await;
    send_chunk(&mut conn, &good, 10, &body[10..]).await;
    agent.wait_health(Health::Ok).await;
    agent.wait_log("applied config version 1").await;
    let installed = cache.join(&good.sha256);
    assert_eq!(std::fs::read(&installed).unwrap(), body);
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // The installed file is what the check runs.
    let r = expect_result(&mut conn, "hi", "OK from a plugin").await;
    assert_eq!(r.state, CheckState::Ok);

    // A tampered chunk: the hash does not match, nothing is installed, the
    // config still applies (its check reports the plugin missing), and the
    // plugin no longer referenced is removed.
    let tampered = plugin("tampered", b"#!/bin/sh\necho OK\n");
    conn.send(config(
        2,
        vec![plugin_check("t", "tampered")],
        vec![tampered.clone()],
    ))
    .await;
    expect_get(&mut conn, &tampered.sha256, 0).await;
    send_chunk(&mut conn, &tampered, 0, b"#!/bin/sh\necho NO\n").await;
    let line = agent.wait_log("downloading plugin tampered failed").await;
    assert!(line.contains("hash to"), "{line}");
    agent.wait_log("applied config version 2").await;
    assert!(!cache.join(&tampered.sha256).exists());
    let r = expect_result(&mut conn, "t", "not downloaded").await;
    assert_eq!(r.state, CheckState::Unknown);
    assert!(!installed.exists(), "unreferenced plugin removed");

    // More bytes than declared: refused before anything is written past
    // the declared size.
    let small = plugin("small", b"1234");
    conn.send(config(
        3,
        vec![plugin_check("s", "small")],
        vec![small.clone()],
    ))
    .await;
    expect_get(&mut conn, &small.sha256, 0).await;
    send_chunk(&mut conn, &small, 0, b"12345").await;
    let line = agent.wait_log("downloading plugin small failed").await;
    assert!(line.contains("more than the declared 4 bytes"), "{line}");
    agent.wait_log("applied config version 3").await;

    // The server lacks the file.
    let gone = plugin("gone", b"x");
    conn.send(config(
        4,
        vec![plugin_check("g", "gone")],
        vec![gone.clone()],
    ))
    .await;
    expect_get(&mut conn, &gone.sha256, 0).await;
    conn.send(ServerMessage::PluginMissing {
        sha256: gone.sha256.clone(),
        reason: "deleted by an operator".into(),
    })
    .await;
    agent.wait_log("deleted by an operator").await;
    agent.wait_log("applied config version 4").await;

    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "nothing installed: {leftovers:?}");
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn a_config_is_applied_by_diff_and_a_bad_one_is_refused_while_the_old_runs() {
    let dir = tempfile::tempdir().unwrap();
    let a = script(dir.path(), "a.sh", "echo 'OK a'");
    let b = script(dir.path(), "b.sh", "echo 'OK b'");
    let c = script(dir.path(), "c.sh", "echo 'OK c'");
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;

    let checks = |names: &[(&str, &std::path::Path)]| -> Vec<CheckSpec> {
        names.iter().map(|(n, p)| check(n, sh(p))).collect()
    };
    conn.send(config(1, checks(&[("a", &a), ("b", &b)]), vec![]))
        .await;
    agent
        .wait_log(r#"applied config version 1: started ["a", "b"], restarted [], stopped [], unchanged 0"#)
        .await;
    conn.send(config(2, checks(&[("a", &a), ("c", &c)]), vec![]))
        .await;
    agent
        .wait_log(
            r#"applied config version 2: started ["c"], restarted [], stopped ["b"], unchanged 1"#,
        )
        .await;

    // Version 3 names a check twice: refused as a whole, naming why.
    conn.send(config(3, checks(&[("a", &a), ("a", &c)]), vec![]))
        .await;
    let line = agent.wait_log("refusing config version 3").await;
    assert!(line.contains("\"a\" appears twice"), "{line}");
    assert!(line.contains("version 2) stays"), "{line}");
    // Version 2 keeps running.
    let r = conn.recv_result_of("c").await;
    assert_eq!(r.summary, "OK c");
    let blob = agent.stop_via(conn).await;
    assert_eq!(blob.config.expect("config handed over").version, 2);
}

/// Starts an agent whose failed plugin downloads may be retried after
/// `plugin_retry` (the first backoff ceiling), connected to a new server.
async fn agent_with_plugin_retry(
    dir: &std::path::Path,
    plugin_retry: Duration,
) -> (FakeServer, Agent, ServerConn) {
    let server = FakeServer::start().await;
    let timing = ConnectionTiming {
        plugin_retry,
        plugin_retry_cap: plugin_retry,
        ..ConnectionTiming::default()
    };
    let options = AgentOptions {
        timing: Some(timing),
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(dir, &server.url, options);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    (server, agent, conn)
}

/// Sends config `version` needing `plugin`, and answers its download with
/// `PluginMissing`.
async fn config_with_missing_plugin(conn: &mut ServerConn, version: u64, plugin: &PluginRef) {
    conn.send(config(
        version,
        vec![plugin_check("l", &plugin.name)],
        vec![plugin.clone()],
    ))
    .await;
    expect_get(conn, &plugin.sha256, 0).await;
    conn.send(ServerMessage::PluginMissing {
        sha256: plugin.sha256.clone(),
        reason: "still uploading".into(),
    })
    .await;
}

#[tokio::test]
async fn a_plugin_that_failed_to_download_is_fetched_again_on_the_next_session() {
    let dir = tempfile::tempdir().unwrap();
    let (server, agent, mut conn) =
        agent_with_plugin_retry(dir.path(), Duration::from_millis(1)).await;
    let body = b"#!/bin/sh\necho 'OK late'\n";
    let late = plugin("late", body);
    config_with_missing_plugin(&mut conn, 1, &late).await;
    agent.wait_log("applied config version 1").await;
    drop(conn);

    // Its backoff has expired: the new session asks again without waiting
    // for a new config.
    let mut conn = server.accept().await;
    let hello = conn.handshake(0).await;
    assert_eq!(hello.config_version, 1);
    expect_get(&mut conn, &late.sha256, 0).await;
    send_chunk(&mut conn, &late, 0, body).await;
    agent.wait_log("plugin late installed").await;
    let r = expect_result(&mut conn, "l", "OK late").await;
    assert_eq!(r.state, CheckState::Ok);
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn a_plugin_that_keeps_failing_waits_for_its_backoff_across_configs_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (server, agent, mut conn) =
        agent_with_plugin_retry(dir.path(), Duration::from_secs(3600)).await;
    let broken = plugin("late", b"#!/bin/sh\necho 'OK late'\n");
    config_with_missing_plugin(&mut conn, 1, &broken).await;
    let line = agent.wait_log("downloading plugin late failed").await;
    assert!(line.contains("next attempt in"), "{line}");
    agent.wait_log("applied config version 1").await;
    drop(conn);

    // A new session and a new config naming the same file: no GetPlugin
    // (the session would stall on it); the config applies at once.
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    conn.send(config(
        2,
        vec![plugin_check("l", &broken.name)],
        vec![broken.clone()],
    ))
    .await;
    agent.wait_log("applied config version 2").await;
    agent
        .wait_log("plugin late failed to download recently")
        .await;
    agent.request_stop();
    // Panics on any message but results before the goodbye: no GetPlugin.
    conn.expect_goodbye().await;
    agent.join().await;
}

#[tokio::test]
async fn a_new_config_during_a_download_it_still_needs_continues_that_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    let body = b"#!/bin/sh\necho 'OK shared'\n";
    let shared = plugin("shared", body);
    conn.send(config(
        1,
        vec![plugin_check("a", "shared")],
        vec![shared.clone()],
    ))
    .await;
    expect_get(&mut conn, &shared.sha256, 0).await;
    send_chunk(&mut conn, &shared, 0, &body[..5]).await;
    expect_get(&mut conn, &shared.sha256, 5).await;
    // Version 2 arrives while the agent waits for the bytes from offset 5.
    conn.send(config(
        2,
        vec![plugin_check("a", "shared"), plugin_check("b", "shared")],
        vec![shared.clone()],
    ))
    .await;
    agent.wait_log("config version 2 replaces version 1").await;
    send_chunk(&mut conn, &shared, 5, &body[5..]).await;
    agent.wait_log("plugin shared installed").await;
    agent.wait_log("applied config version 2").await;
    let r = expect_result(&mut conn, "b", "OK shared").await;
    assert_eq!(r.state, CheckState::Ok);
    agent.stop_via(conn).await;
}

/// A plugin changed in the cache after it was downloaded (same size, so
/// only its hash tells) is refused, removed and fetched again — never run.
#[tokio::test]
async fn a_plugin_modified_in_the_cache_is_refused_and_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("plugins");
    let ran = dir.path().join("tampered-ran");
    let server = FakeServer::start().await;
    let mut agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    let body = format!("#!/bin/sh\necho 'OK original'\n#{}\n", "-".repeat(300));
    let body = body.as_bytes();
    let good = plugin("hello", body);
    conn.send(config(
        1,
        vec![plugin_check("hi", "hello")],
        vec![good.clone()],
    ))
    .await;
    expect_get(&mut conn, &good.sha256, 0).await;
    send_chunk(&mut conn, &good, 0, body).await;
    agent.wait_health(Health::Ok).await;
    expect_result(&mut conn, "hi", "OK original").await;

    // Someone rewrites the cached file in place, keeping its size.
    let evil = format!("#!/bin/sh\ntouch {}\n#", ran.display());
    let evil = format!("{evil:-<width$}", width = body.len());
    assert_eq!(evil.len(), body.len());
    let installed = cache.join(&good.sha256);
    std::fs::write(&installed, &evil).unwrap();
    let r = expect_result(&mut conn, "hi", "modified after download").await;
    assert_eq!(r.state, CheckState::Unknown);
    // Fetched again at once, and the original runs again.
    expect_get(&mut conn, &good.sha256, 0).await;
    send_chunk(&mut conn, &good, 0, body).await;
    expect_result(&mut conn, "hi", "OK original").await;
    assert_eq!(std::fs::read(&installed).unwrap(), body);
    assert!(!ran.exists(), "the modified plugin never ran");
    agent.stop_via(conn).await;
}
