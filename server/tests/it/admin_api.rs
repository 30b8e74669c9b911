//! The admin REST API: authentication and config push to connected agents.

use outrider_protocol::{AgentMessage, CheckSpec, CheckState, ServerMessage};
use serde_json::{Value, json};

use crate::helpers::{Agent, ENROLLMENT_TOKEN, Server, result};

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let server = Server::start().await;
    let check = json!({ "command": ["/bin/true"], "interval_secs": 10, "timeout_secs": 5 });
    let wrong = format!("Bearer {}x", server.admin_token);
    let cases = [
        ("GET", "/api/v1/agents", None, None),
        ("GET", "/api/v1/results/latest", Some(wrong.as_str()), None),
        ("PUT", "/api/v1/checks/load", None, Some(&check)),
        (
            "PUT",
            "/api/v1/checks/load",
            Some(wrong.as_str()),
            Some(&check),
        ),
        (
            "PUT",
            "/api/v1/checks/load",
            Some(ENROLLMENT_TOKEN),
            Some(&check),
        ),
    ];
    for (method, path, auth, body) in cases {
        let (status, json) = server.http(method, path, auth, body).await;
        assert_eq!(status, 401, "{method} {path} with {auth:?}: {json}");
        let error = json["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty(),
            "{method} {path}: body {json} has no error sentence"
        );
    }
    // None of the refused PUTs created the check.
    assert_eq!(server.admin("GET", "/api/v1/checks", None).await, json!([]));
    assert_eq!(server.admin("GET", "/api/v1/agents", None).await, json!([]));
    server.stop().await;
}

async fn put_check(server: &Server, name: &str, interval_secs: u32) -> Value {
    let body = json!({ "command": ["/usr/lib/nagios/plugins/check_load", "-w", "5"],
                       "interval_secs": interval_secs, "timeout_secs": 5 });
    server
        .admin("PUT", &format!("/api/v1/checks/{name}"), Some(&body))
        .await
}

#[tokio::test]
async fn changed_checks_are_pushed_to_connected_agents_and_noops_are_not() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, config) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert_eq!(config.version, 1);

    let spec = CheckSpec {
        name: "load".into(),
        command: vec![
            "/usr/lib/nagios/plugins/check_load".into(),
            "-w".into(),
            "5".into(),
        ],
        interval_secs: 10,
        timeout_secs: 5,
    };
    assert_eq!(
        put_check(&server, "load", 10).await,
        json!({ "check": "load", "changed": true })
    );
    match conn.recv().await {
        ServerMessage::Config(config) => {
            assert_eq!(config.version, 2);
            assert_eq!(config.checks, vec![spec.clone()]);
        }
        other => panic!("expected a config push, got {other:?}"),
    }

    // The identical definition again: same version, nothing pushed. The ack
    // of a later batch must be the next message the agent sees.
    assert_eq!(
        put_check(&server, "load", 10).await,
        json!({ "check": "load", "changed": false })
    );
    conn.send(&AgentMessage::Results {
        results: vec![result(1, "load", CheckState::Ok, "fine")],
    })
    .await;
    assert_eq!(conn.recv().await, ServerMessage::Ack { up_to: 1 });

    // A real change is pushed again.
    assert_eq!(
        put_check(&server, "load", 20).await,
        json!({ "check": "load", "changed": true })
    );
    match conn.recv().await {
        ServerMessage::Config(config) => {
            assert_eq!(config.version, 3);
            assert_eq!(
                config.checks,
                vec![CheckSpec {
                    interval_secs: 20,
                    ..spec
                }]
            );
        }
        other => panic!("expected a config push, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_not_401() {
    let server = Server::start().await;
    let good = format!("Bearer {}", server.admin_token);
    for path in [
        "/v1/updates/nothing-here",
        "/api/v1/no-such-route",
        "/favicon.ico",
    ] {
        for auth in [None, Some(good.as_str())] {
            let (status, _) = server.http("GET", path, auth, None).await;
            assert_eq!(status, 404, "GET {path} with {auth:?}");
        }
    }
    // Public update routes never need the admin token.
    let (status, _) = server
        .http("GET", "/v1/updates/roots/2.json", None, None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn path_traversal_in_update_routes_is_refused() {
    let server = Server::start().await;
    // Something worth stealing next to the release store.
    let secret = std::fs::read_to_string(server.data_dir().join("admin.token")).unwrap();
    for path in [
        "/v1/updates/blobs/..%2F..%2Fadmin.token",
        "/v1/updates/blobs/../../admin.token",
        "/v1/updates/channels/..%2F..%2Fadmin.token/manifest.json",
        "/v1/updates/channels/..%2Fx/manifest.json",
        "/v1/updates/roots/..%2F..%2Fadmin.token",
        "/v1/updates/blobs/%2e%2e%2f%2e%2e%2fadmin.token",
    ] {
        let (status, body) = server.http("GET", path, None, None).await;
        assert!(
            matches!(status, 400 | 404),
            "GET {path} answered {status}: {body}"
        );
        assert!(
            !body.to_string().contains(secret.trim()),
            "GET {path} leaked the token"
        );
    }
}
