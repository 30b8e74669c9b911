//! Run-now and ad-hoc scripts routed to a connected agent by correlation id.

use std::sync::Arc;

use outrider_protocol::{AgentMessage, CheckState, ServerMessage};
use serde_json::json;

use crate::helpers::{
    Agent, Conn, ENROLLMENT_TOKEN, Server, define_load_check, result, run_in_background,
};

async fn next_rpc(conn: &mut Conn) -> ServerMessage {
    match conn.recv().await {
        msg @ (ServerMessage::RunCheck { .. } | ServerMessage::RunScript { .. }) => msg,
        other => panic!("expected an RPC, got {other:?}"),
    }
}

#[tokio::test]
async fn run_now_returns_the_agents_answer_to_that_call() {
    let server = Arc::new(Server::start().await);
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    define_load_check(&server, &mut conn).await;

    let call = run_in_background(&server, agent.fp.as_str(), json!({ "check": "load" }));
    let ServerMessage::RunCheck { id, check } = next_rpc(&mut conn).await else {
        unreachable!()
    };
    assert_eq!(check, "load");
    // An answer to an id nobody asked for is ignored, not fatal.
    conn.send(&AgentMessage::RpcResult {
        id: "not-a-call".into(),
        result: Some(result(0, "load", CheckState::Ok, "stray")),
        error: None,
    })
    .await;
    conn.send(&AgentMessage::RpcResult {
        id: id.clone(),
        result: Some(result(0, "load", CheckState::Warning, "load 7.2")),
        error: None,
    })
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["result"]["summary"], "load 7.2");
    assert_eq!(body["result"]["state"], "WARNING");
    // RPC runs are not spooled results: nothing stored.
    assert!(server.latest_results().await.is_empty());

    // The agent reports that it could not run the check.
    let call = run_in_background(&server, agent.fp.as_str(), json!({ "check": "load" }));
    let ServerMessage::RunCheck { id, .. } = next_rpc(&mut conn).await else {
        unreachable!()
    };
    conn.send(&AgentMessage::RpcResult {
        id,
        result: None,
        error: Some("the runner is full".into()),
    })
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the runner is full")
    );

    // Still the same healthy session.
    assert_eq!(
        conn.send_results(vec![result(1, "load", CheckState::Ok, "ok")])
            .await,
        1
    );
    drop(conn);
    server
        .wait_presence(&agent.fp, outrider_protocol::api::Presence::Down)
        .await;
    let (status, body) = run_in_background(&server, agent.fp.as_str(), json!({ "check": "load" }))
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not connected"),
        "{body}"
    );
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn ad_hoc_scripts_need_the_agents_permission() {
    let server = Arc::new(Server::start().await);
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, config) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert!(!config.allow_adhoc, "ad-hoc scripts are off by default");
    let script =
        json!({ "script": "#!/bin/sh\necho hi\n", "interpreter": "sh", "timeout_secs": 5 });

    let (status, body) = run_in_background(&server, agent.fp.as_str(), script.clone())
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("allow-adhoc"),
        "{body}"
    );

    let path = format!("/api/v1/agents/{}/allow-adhoc", agent.fp);
    let info = server
        .admin("PUT", &path, Some(&json!({ "allow_adhoc": true })))
        .await;
    assert_eq!(info["allow_adhoc"], true);
    match conn.recv().await {
        ServerMessage::Config(config) => assert!(config.allow_adhoc),
        other => panic!("expected a config push, got {other:?}"),
    }

    let call = run_in_background(&server, agent.fp.as_str(), script);
    let ServerMessage::RunScript {
        id,
        script,
        interpreter,
        timeout_secs,
    } = next_rpc(&mut conn).await
    else {
        unreachable!()
    };
    assert_eq!(
        (script.as_str(), interpreter.as_deref(), timeout_secs),
        ("#!/bin/sh\necho hi\n", Some("sh"), 5)
    );
    conn.send(&AgentMessage::RpcResult {
        id,
        result: Some(result(0, "adhoc", CheckState::Ok, "hi")),
        error: None,
    })
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["summary"], "hi");
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn bad_run_requests_are_refused_before_reaching_the_agent() {
    let server = Arc::new(Server::start().await);
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let fp = agent.fp.as_str();
    let cases = [
        (fp, json!({}), 400, "exactly one"),
        (
            fp,
            json!({ "check": "a", "script": "b" }),
            400,
            "exactly one",
        ),
        (fp, json!({ "check": "nope" }), 400, "no check named"),
        (fp, json!({ "check": "a", "extra": 1 }), 400, "extra"),
        (fp, json!({ "script": "x".repeat(70_000) }), 400, "exceeds"),
        (
            fp,
            json!({ "script": "echo", "timeout_secs": 0 }),
            400,
            "timeout_secs",
        ),
        ("zz", json!({ "check": "a" }), 400, "zz"),
        (
            "0123456789abcdef0123",
            json!({ "check": "a" }),
            404,
            "no agent",
        ),
    ];
    for (fp, body, want, words) in cases {
        let (status, answer) = run_in_background(&server, fp, body.clone()).await.unwrap();
        assert_eq!(status, want, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{body}: {error:?} lacks {words:?}");
    }
    // None of them reached the agent.
    assert_eq!(
        conn.send_results(vec![result(1, "x", CheckState::Ok, "x")])
            .await,
        1
    );
    Arc::into_inner(server).unwrap().stop().await;
}
