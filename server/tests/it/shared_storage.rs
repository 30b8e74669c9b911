//! Two server nodes sharing one PostgreSQL database (`--database`):
//! release artefacts and plugin files live in it, so what one node took
//! the other serves, and neither keeps them in its data directory
//! (docs/architecture.md, "Release artefacts across nodes").

use std::time::{Duration, Instant};

use base64::Engine as _;
use outrider_protocol::{AgentMessage, PLUGIN_CHUNK_BYTES, PluginRef, ServerMessage};
use outrider_server::ServerConfig;
use outrider_signing::sha256;
use serde_json::{Value, json};

use crate::config_push::{plugin_bytes, upload_plugin};
use crate::helpers::{Agent, Conn, ENROLLMENT_TOKEN, Server};
use crate::nudges::{Releases, connect, expect_nudge, put_manifest};

/// A fresh database on this test binary's private PostgreSQL.
async fn database() -> outrider_pgtest::TestDb {
    outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap()
}

/// A node on `db`, configured by `configure`.
async fn node(db: &outrider_pgtest::TestDb, configure: impl FnOnce(&mut ServerConfig)) -> Server {
    let conninfo = db.conninfo();
    Server::start_with(move |c| {
        c.cluster.database = Some(conninfo);
        // Alerting does not run across nodes yet: refused without this.
        c.no_alerting = true;
        configure(c);
    })
    .await
}

/// `len` ASCII letters that do not repeat in a short period (the test's
/// HTTP client reads bodies as text).
fn text_blob(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b'a' + (x % 26) as u8
        })
        .collect()
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    server.http_raw("GET", path, None, None, b"").await
}

async fn put_blob(server: &Server, blob: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {}", server.admin_token);
    server
        .http_raw(
            "PUT",
            &format!("/api/v1/releases/blobs/{}", sha256(blob)),
            Some(&auth),
            Some("application/octet-stream"),
            blob,
        )
        .await
}

/// Neither a release directory nor a plugin directory in `server`'s data
/// directory: what it stored went to the database.
fn nothing_on_disk(server: &Server) {
    for dir in ["releases", "plugins"] {
        let path = server.data_dir().join(dir);
        assert!(!path.exists(), "{} exists", path.display());
    }
}

/// The next message is the answer to a request sent now: nothing (no
/// nudge) was queued for this agent before it. The request is one a node
/// answers from memory (results are not stored across nodes yet).
async fn expect_no_nudge(conn: &mut Conn) {
    let unknown = "cd".repeat(32);
    conn.send(&AgentMessage::GetPlugin {
        sha256: unknown.clone(),
        offset: 0,
    })
    .await;
    match conn.recv().await {
        ServerMessage::PluginMissing { sha256, .. } => assert_eq!(sha256, unknown),
        other => panic!("expected only plugin_missing, got {other:?}"),
    }
}

#[tokio::test]
async fn a_release_published_through_one_node_is_served_by_the_other() {
    let db = database().await;
    let a = node(&db, |c| c.nudge_window_secs = 0).await;
    // B's total cap leaves room for A's blobs plus 10 bytes.
    let big = text_blob(2 * (1 << 20) + 12_345);
    let cap = (big.len() + b"blob".len() + 10) as u64;
    let b = node(&db, |c| c.release_blobs_max_total_bytes = Some(cap)).await;

    // Root and blob through A, an agent of channel dev on A.
    let releases = Releases::start(&a).await;
    let mut agent = connect(&a, &Agent::new(1, "web-1"), 3, "dev").await;
    let manifest = releases.publish(&a, "dev", 1).await;
    // The manifest hook runs on the node that stored the manifest...
    let reason = expect_nudge(&mut agent).await;
    assert!(!reason.is_empty());
    // ...once: the same bytes again store nothing and nudge no one.
    put_manifest(&a, "dev", &manifest).await;
    expect_no_nudge(&mut agent).await;

    // B serves the same root, manifest and blob.
    for path in [
        "/v1/updates/root.json",
        "/v1/updates/roots/1.json",
        "/v1/updates/channels/dev/manifest.json",
    ] {
        let (status_a, body_a) = get(&a, path).await;
        let (status_b, body_b) = get(&b, path).await;
        assert_eq!(
            (status_a, status_b),
            (200, 200),
            "{path}: {body_a} {body_b}"
        );
        assert_eq!(body_a, body_b, "{path}");
    }
    let (status, body) = get(&b, &format!("/v1/updates/blobs/{}", sha256(b"blob"))).await;
    assert_eq!((status, body), (200, json!("blob")));
    let (status, listed) = b
        .http(
            "GET",
            "/api/v1/releases/channels",
            Some(&format!("Bearer {}", b.admin_token)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed[0]["channel"], "dev", "{listed}");
    assert_eq!(listed[0]["sequence"], 1, "{listed}");

    // A blob of several stored chunks, uploaded through A, read from B.
    let (status, body) = put_blob(&a, &big).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&b, &format!("/v1/updates/blobs/{}", sha256(&big))).await;
    assert_eq!(status, 200);
    assert!(
        body.as_str().is_some_and(|s| s.as_bytes() == big),
        "B served other bytes"
    );

    // B's total cap counts what A stored: 11 more bytes are refused.
    let (status, body) = put_blob(&b, &text_blob(11)).await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("total cap of {cap} bytes")),
        "{body}"
    );
    let (status, body) = put_blob(&b, &text_blob(10)).await;
    assert_eq!(status, 200, "{body}");

    nothing_on_disk(&a);
    nothing_on_disk(&b);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_plugin_uploaded_on_one_node_is_served_by_the_other() {
    let db = database().await;
    let a = node(&db, |_| {}).await;
    let b = node(&db, |_| {}).await;

    let bytes = plugin_bytes(PLUGIN_CHUNK_BYTES + 1000);
    let info = upload_plugin(&a, "check_big", &bytes).await;
    let check = json!({ "command": ["plugin:check_big", "-w", "3"], "interval_secs": 60,
                        "timeout_secs": 10 });
    a.admin("PUT", "/api/v1/checks/big", Some(&check)).await;

    // An agent of B gets the check and pulls the file from B.
    let (mut conn, _, config) = Agent::new(1, "web-1")
        .connect(&b, Some(ENROLLMENT_TOKEN))
        .await;
    assert_eq!(
        config.plugins,
        [PluginRef {
            name: "check_big".into(),
            sha256: info.sha256.clone(),
            size: bytes.len() as u64
        }]
    );
    let mut got = Vec::new();
    loop {
        conn.send(&AgentMessage::GetPlugin {
            sha256: info.sha256.clone(),
            offset: got.len() as u64,
        })
        .await;
        match conn.recv().await {
            ServerMessage::PluginChunk {
                offset,
                total,
                data,
                ..
            } => {
                assert_eq!((offset, total), (got.len() as u64, bytes.len() as u64));
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

    nothing_on_disk(&a);
    nothing_on_disk(&b);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unreferenced_release_blobs_are_collected_on_a_shared_database() {
    let db = database().await;
    let gc_every_second = |c: &mut ServerConfig| {
        c.release_gc_interval_secs = 1;
        c.release_gc_grace_secs = 0;
    };
    let a = node(&db, gc_every_second).await;
    let b = node(&db, gc_every_second).await;
    let blob = text_blob(100);
    let (status, body) = put_blob(&a, &blob).await;
    assert_eq!(status, 200, "{body}");

    // Whichever node leads the collection deletes it, for both.
    let path = format!("/v1/updates/blobs/{}", sha256(&blob));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status_a, _) = get(&a, &path).await;
        let (status_b, _) = get(&b, &path).await;
        if (status_a, status_b) == (404, 404) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unreferenced blob is still served after 30 s ({status_a}, {status_b})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop().await;
    b.stop().await;
}
