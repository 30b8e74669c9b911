//! Config documents per agent: assignment by tags, pushes to the affected
//! agents only, plugins uploaded, served in chunks and deleted when unused.

use base64::Engine as _;
use outrider_protocol::api::{AgentInfo, PluginInfo, Presence};
use outrider_protocol::{AgentMessage, CheckState, PLUGIN_CHUNK_BYTES, PluginRef, ServerMessage};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{Agent, Conn, ENROLLMENT_TOKEN, Server, result};

/// Proves that nothing was queued for `conn` before now: the ack of a fresh
/// batch must be its next message.
async fn assert_nothing_pushed(conn: &mut Conn, seq: u64) {
    conn.send(&AgentMessage::Results {
        results: vec![result(seq, "probe", CheckState::Ok, "probe")],
    })
    .await;
    match conn.recv().await {
        ServerMessage::Ack { up_to } => assert_eq!(up_to, seq),
        other => panic!("expected only an ack, got {other:?}"),
    }
}

async fn expect_config(conn: &mut Conn) -> outrider_protocol::AgentConfig {
    match conn.recv().await {
        ServerMessage::Config(config) => config,
        other => panic!("expected a config push, got {other:?}"),
    }
}

#[tokio::test]
async fn a_check_reaches_only_the_agents_its_tags_select() {
    let server = Server::start().await;
    let web = Agent::new(1, "web-1").with_tags(&["web", "eu"]);
    let db = Agent::new(2, "db-1").with_tags(&["db"]);
    let (mut web_conn, _, web_config) = web.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let (mut db_conn, _, db_config) = db.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert_eq!(web_config.tags, ["eu", "web"]);
    assert_eq!(db_config.version, 1);

    let nginx = json!({ "command": ["/usr/lib/nagios/plugins/check_http", "-H", "localhost"],
                        "interval_secs": 30, "timeout_secs": 10, "tags": ["web"] });
    server
        .admin("PUT", "/api/v1/checks/nginx", Some(&nginx))
        .await;
    let pushed = expect_config(&mut web_conn).await;
    assert_eq!(pushed.version, 2);
    assert_eq!(pushed.checks.len(), 1);
    assert_eq!(pushed.checks[0].name, "nginx");
    assert_nothing_pushed(&mut db_conn, 1).await;

    // A server-assigned tag brings the check to the db agent, and only to it.
    let path = format!("/api/v1/agents/{}/tags", db.fp);
    let info: AgentInfo = serde_json::from_value(
        server
            .admin("PUT", &path, Some(&json!({ "tags": ["web"] })))
            .await,
    )
    .unwrap();
    assert_eq!(info.server_tags, ["web"]);
    assert_eq!(info.tags, ["db", "web"]);
    let pushed = expect_config(&mut db_conn).await;
    assert_eq!(pushed.version, 2);
    assert_eq!(pushed.tags, ["db", "web"]);
    assert_eq!(pushed.checks[0].name, "nginx");
    assert_nothing_pushed(&mut web_conn, 1).await;

    // The listing shows the selector; the agent's document is readable.
    let checks = server.admin("GET", "/api/v1/checks", None).await;
    assert_eq!(checks[0]["tags"], json!(["web"]));
    let doc = server
        .admin("GET", &format!("/api/v1/agents/{}/config", db.fp), None)
        .await;
    assert_eq!(doc["version"], 2);

    // Deleting the check reaches both.
    server.admin("DELETE", "/api/v1/checks/nginx", None).await;
    assert!(expect_config(&mut web_conn).await.checks.is_empty());
    assert!(expect_config(&mut db_conn).await.checks.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bad_tags_are_refused_with_a_sentence() {
    let server = Server::start().await;
    let auth = format!("Bearer {}", server.admin_token);
    let check = json!({ "command": ["/bin/true"], "interval_secs": 10, "timeout_secs": 5,
                        "tags": ["Not A Tag"] });
    let (status, body) = server
        .http("PUT", "/api/v1/checks/x", Some(&auth), Some(&check))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("Not A Tag"),
        "{body}"
    );
    // Tags of an unknown agent.
    let (status, body) = server
        .http(
            "PUT",
            "/api/v1/agents/0123456789abcdef0123/tags",
            Some(&auth),
            Some(&json!({ "tags": ["web"] })),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    server.stop().await;
}

/// Deterministic bytes that do not compress into a pattern.
pub(crate) fn plugin_bytes(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Uploads `bytes` as plugin `name` and returns what the server stored.
pub(crate) async fn upload_plugin(server: &Server, name: &str, bytes: &[u8]) -> PluginInfo {
    let auth = format!("Bearer {}", server.admin_token);
    let (status, body) = server
        .http_raw(
            "PUT",
            &format!("/api/v1/plugins/{name}"),
            Some(&auth),
            Some("application/octet-stream"),
            bytes,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

#[tokio::test]
async fn plugins_are_served_in_chunks_to_agents_that_use_them() {
    let server = Server::start().await;
    let auth = format!("Bearer {}", server.admin_token);
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;

    // A check cannot name a plugin the server does not have.
    let check = json!({ "command": ["plugin:check_big", "-w", "3"], "interval_secs": 60,
                        "timeout_secs": 10 });
    let (status, body) = server
        .http("PUT", "/api/v1/checks/big", Some(&auth), Some(&check))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("upload it first"),
        "{body}"
    );

    let bytes = plugin_bytes(PLUGIN_CHUNK_BYTES + 1000);
    let sha = hex::encode(Sha256::digest(&bytes));
    let info = upload_plugin(&server, "check_big", &bytes).await;
    assert_eq!(
        (info.sha256.as_str(), info.size),
        (sha.as_str(), bytes.len() as u64)
    );
    assert!(server.data_dir().join("plugins").join(&sha).is_file());
    // Nobody uses it yet: no push.
    assert_nothing_pushed(&mut conn, 1).await;

    server
        .admin("PUT", "/api/v1/checks/big", Some(&check))
        .await;
    let config = expect_config(&mut conn).await;
    assert_eq!(
        config.plugins,
        [PluginRef {
            name: "check_big".into(),
            sha256: sha.clone(),
            size: bytes.len() as u64
        }]
    );

    // The agent pulls the file chunk by chunk.
    let mut got = Vec::new();
    loop {
        conn.send(&AgentMessage::GetPlugin {
            sha256: sha.clone(),
            offset: got.len() as u64,
        })
        .await;
        match conn.recv().await {
            ServerMessage::PluginChunk {
                sha256,
                offset,
                total,
                data,
            } => {
                assert_eq!(
                    (sha256.as_str(), offset, total),
                    (sha.as_str(), got.len() as u64, bytes.len() as u64)
                );
                let data = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap();
                assert!(!data.is_empty() && data.len() <= PLUGIN_CHUNK_BYTES);
                got.extend_from_slice(&data);
                if got.len() as u64 == total {
                    break;
                }
            }
            other => panic!("expected a plugin chunk, got {other:?}"),
        }
    }
    assert_eq!(got, bytes);

    // A hash outside the agent's config is not served.
    let other = "cd".repeat(32);
    conn.send(&AgentMessage::GetPlugin {
        sha256: other.clone(),
        offset: 0,
    })
    .await;
    match conn.recv().await {
        ServerMessage::PluginMissing { sha256, reason } => {
            assert_eq!(sha256, other);
            assert!(reason.contains("configuration"), "{reason}");
        }
        other => panic!("expected plugin_missing, got {other:?}"),
    }

    // In use: cannot be deleted.
    let (status, body) = server
        .http("DELETE", "/api/v1/plugins/check_big", Some(&auth), None)
        .await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("big"), "{body}");
    server.admin("DELETE", "/api/v1/checks/big", None).await;
    assert!(expect_config(&mut conn).await.plugins.is_empty());
    server
        .admin("DELETE", "/api/v1/plugins/check_big", None)
        .await;
    assert_eq!(
        server.admin("GET", "/api/v1/plugins", None).await,
        json!([])
    );
    assert!(!server.data_dir().join("plugins").join(&sha).exists());
    server.stop().await;
}

#[tokio::test]
async fn an_agent_that_stops_reading_its_downloads_is_down() {
    // Keepalives far apart: only the bounded send can notice this agent.
    let server = Server::start_with(|c| {
        c.ping_interval_secs = 60;
        c.down_after_secs = 2;
    })
    .await;
    let agent = Agent::new(1, "hoarder");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let sha = upload_plugin(&server, "check_big", &plugin_bytes(PLUGIN_CHUNK_BYTES))
        .await
        .sha256;
    let check = json!({ "command": ["plugin:check_big"], "interval_secs": 60, "timeout_secs": 10 });
    server
        .admin("PUT", "/api/v1/checks/big", Some(&check))
        .await;
    expect_config(&mut conn).await;
    // Ask for far more than the socket buffers hold, then never read: the
    // server's session blocks in a send until its bound gives up.
    for _ in 0..200 {
        conn.send(&AgentMessage::GetPlugin {
            sha256: sha.clone(),
            offset: 0,
        })
        .await;
    }
    server.wait_presence(&agent.fp, Presence::Down).await;
    server.stop().await;
}
