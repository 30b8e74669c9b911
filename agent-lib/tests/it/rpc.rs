//! Remote runs: answered with their correlation id, concurrent with the
//! session, ad-hoc scripts only when the config allows them.

use outrider_protocol::{
    AgentConfig, AgentMessage, CheckResult, CheckSpec, CheckState, ServerMessage,
};

use crate::support::{Agent, FakeServer, ServerConn, check, script, sh};

fn config(version: u64, checks: Vec<CheckSpec>, allow_adhoc: bool) -> ServerMessage {
    ServerMessage::Config(AgentConfig {
        version,
        checks,
        allow_adhoc,
        ..AgentConfig::default()
    })
}

/// The next `RpcResult`: `(id, result, error)`.
async fn rpc_answer(conn: &mut ServerConn) -> (String, Option<CheckResult>, Option<String>) {
    match conn.recv_skipping_results().await {
        AgentMessage::RpcResult { id, result, error } => (id, result, error),
        other => panic!("expected an RpcResult, got {other:?}"),
    }
}

fn run_script(id: &str, script: &str, timeout_secs: u32) -> ServerMessage {
    ServerMessage::RunScript {
        id: id.into(),
        script: script.into(),
        interpreter: None,
        timeout_secs,
    }
}

#[tokio::test]
async fn run_check_and_run_script_answer_with_the_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let now = script(dir.path(), "now.sh", "echo 'OK ran now|x=1'");
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    // Scheduled hourly: only the RPC makes it run now.
    let hourly = CheckSpec {
        interval_secs: 3600,
        ..check("now", sh(&now))
    };
    conn.send(config(1, vec![hourly.clone()], false)).await;
    agent.wait_log("applied config version 1").await;

    conn.send(ServerMessage::RunCheck {
        id: "c-1".into(),
        check: "now".into(),
    })
    .await;
    let (id, result, error) = rpc_answer(&mut conn).await;
    assert_eq!((id.as_str(), error), ("c-1", None));
    let r = result.expect("a result");
    assert_eq!(
        (r.seq, r.check.as_str(), r.state),
        (0, "now", CheckState::Ok)
    );
    assert_eq!(r.summary, "OK ran now");

    conn.send(ServerMessage::RunCheck {
        id: "c-2".into(),
        check: "nope".into(),
    })
    .await;
    let (id, result, error) = rpc_answer(&mut conn).await;
    assert_eq!((id.as_str(), result), ("c-2", None));
    assert!(error.unwrap().contains("unknown check \"nope\""));

    conn.send(run_script("s-1", "echo hi", 5)).await;
    let (id, result, error) = rpc_answer(&mut conn).await;
    assert_eq!((id.as_str(), result), ("s-1", None));
    assert_eq!(
        error.as_deref(),
        Some("ad-hoc scripts are not allowed for this agent")
    );

    // Allowed now. A slow script does not hold up a quick check: answers
    // come back as runs finish, each with its own id.
    conn.send(config(2, vec![hourly], true)).await;
    agent.wait_log("applied config version 2").await;
    conn.send(run_script(
        "s-slow",
        "sleep 2; echo 'WARNING slow'; exit 1",
        10,
    ))
    .await;
    conn.send(ServerMessage::RunCheck {
        id: "c-3".into(),
        check: "now".into(),
    })
    .await;
    let (first, ..) = rpc_answer(&mut conn).await;
    assert_eq!(first, "c-3");
    let (id, result, _) = rpc_answer(&mut conn).await;
    let r = result.expect("the script's result");
    assert_eq!(
        (id.as_str(), r.state, r.seq),
        ("s-slow", CheckState::Warning, 0)
    );
    assert_eq!(r.summary, "WARNING slow");

    // A timeout is honoured.
    conn.send(run_script("s-hang", "sleep 60", 1)).await;
    let (id, result, _) = rpc_answer(&mut conn).await;
    let r = result.expect("a timed-out result");
    assert_eq!((id.as_str(), r.state), ("s-hang", CheckState::Unknown));
    assert!(r.summary.contains("timed out after 1s"), "{}", r.summary);

    let scripts: Vec<_> = std::fs::read_dir(dir.path().join("rpc")).unwrap().collect();
    assert!(scripts.is_empty(), "scripts removed after their runs");
    agent.stop_via(conn).await;
}

#[tokio::test]
async fn stopping_kills_a_running_remote_script() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let server = FakeServer::start().await;
    let agent = Agent::start(dir.path(), &server.url, None);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    conn.send(config(1, vec![], true)).await;
    agent.wait_log("applied config version 1").await;
    let body = format!("echo $$ > {}; exec sleep 600", pid_file.display());
    conn.send(run_script("s-1", &body, 600)).await;
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "script never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pid = crate::support::read_pid(&pid_file);
    agent.stop_via(conn).await;
    crate::support::assert_gone(pid).await;
}

/// The attack a stolen admin token allows: a check and an ad-hoc script
/// running a shell command. On a host with the default policy neither runs.
#[tokio::test]
async fn default_host_policy_refuses_a_shell_check_and_adhoc_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    let touch = format!("touch {}", pwned.display());
    let server = FakeServer::start().await;
    let options = crate::support::AgentOptions {
        policy: Some("{}".into()),
        ..crate::support::AgentOptions::default()
    };
    let agent = Agent::start_with(dir.path(), &server.url, options);
    let mut conn = server.accept().await;
    conn.handshake(0).await;
    let attack = CheckSpec {
        interval_secs: 1,
        ..check("attack", vec!["/bin/sh".into(), "-c".into(), touch.clone()])
    };
    conn.send(config(1, vec![attack], true)).await;
    agent.wait_log("applied config version 1").await;

    // Scheduled: an UNKNOWN result saying why, nothing run.
    let r = conn.recv_result_of("attack").await;
    assert_eq!(r.state, CheckState::Unknown);
    assert!(
        r.summary
            .starts_with("refused by local policy: \"/bin/sh\"")
            && r.summary
                .ends_with("is outside agent.toml [policy] allowed_commands"),
        "{}",
        r.summary
    );
    // Run now: the same.
    conn.send(ServerMessage::RunCheck {
        id: "c-1".into(),
        check: "attack".into(),
    })
    .await;
    let (id, result, error) = rpc_answer(&mut conn).await;
    assert_eq!((id.as_str(), error), ("c-1", None));
    let r = result.expect("a result");
    assert_eq!(r.state, CheckState::Unknown);
    assert!(
        r.summary.starts_with("refused by local policy"),
        "{}",
        r.summary
    );
    // Ad-hoc, although the server's config allows it.
    conn.send(run_script("s-1", &touch, 5)).await;
    let (id, result, error) = rpc_answer(&mut conn).await;
    assert_eq!((id.as_str(), result), ("s-1", None));
    let error = error.expect("an error");
    assert!(
        error.starts_with("refused by local policy") && error.contains("allow_adhoc"),
        "{error}"
    );
    agent.stop_via(conn).await;
    assert!(!pwned.exists(), "the shell never ran");
}
