//! Update nudges: a new manifest of a channel (what publish, promote,
//! rollout, pause and rollback all store) makes the server send
//! `check_update` to the connected agents of that channel that announced
//! the `update_nudge` capability, and to no one else.

use outrider_protocol::{AgentMessage, CheckState, ServerMessage, capability};
use outrider_signing::{
    Artifact, KeyPair, KeyRole, ReleaseManifest, Target, make_manifest, make_root, now_unix, sha256,
};

use crate::helpers::{Agent, Conn, ENROLLMENT_TOKEN, Server, result};

const DAY: u64 = 86_400;

/// A release repository on the server: a root and a blob uploaded, and
/// the release key that signs manifests.
pub(crate) struct Releases {
    release: KeyPair,
}

impl Releases {
    pub(crate) async fn start(server: &Server) -> Releases {
        let root = KeyPair::generate(KeyRole::Root).unwrap();
        let release = KeyPair::generate(KeyRole::Release).unwrap();
        let now = now_unix();
        let root_json = make_root(&[&root], &[(&release, now + DAY)], 1, 1, now + 10 * DAY)
            .unwrap()
            .to_bytes();
        let auth = format!("Bearer {}", server.admin_token);
        let (status, body) = server
            .http_raw(
                "PUT",
                "/api/v1/releases/root",
                Some(&auth),
                None,
                &root_json,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = server
            .http_raw(
                "PUT",
                &format!("/api/v1/releases/blobs/{}", sha256(b"blob")),
                Some(&auth),
                Some("application/octet-stream"),
                b"blob",
            )
            .await;
        assert_eq!(status, 200, "{body}");
        Releases { release }
    }

    /// Stores a manifest of `channel` at `sequence` through the admin API;
    /// returns the bytes stored.
    pub(crate) async fn publish(&self, server: &Server, channel: &str, sequence: u64) -> Vec<u8> {
        let target = Target::full(
            format!("1.0.{sequence}"),
            1,
            Artifact {
                sha256: sha256(b"library"),
                size: 7,
                zstd_sha256: sha256(b"blob"),
                zstd_size: 4,
            },
        );
        let manifest = ReleaseManifest::new(
            channel.parse().unwrap(),
            sequence,
            now_unix() + DAY,
            [("x86_64-linux".to_owned(), target)].into(),
        );
        let bytes = make_manifest(&manifest, &[&self.release])
            .unwrap()
            .to_bytes();
        put_manifest(server, channel, &bytes).await;
        bytes
    }
}

/// Uploads the manifest `bytes` of `channel` through the admin API.
pub(crate) async fn put_manifest(server: &Server, channel: &str, bytes: &[u8]) {
    let auth = format!("Bearer {}", server.admin_token);
    let path = format!("/api/v1/releases/channels/{channel}/manifest");
    let (status, body) = server
        .http_raw("PUT", &path, Some(&auth), None, bytes)
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Connects `agent` offering `[2, max]`, `update_nudge` and `channel`.
pub(crate) async fn connect(server: &Server, agent: &Agent, max: u32, channel: &str) -> Conn {
    let channel = channel.to_owned();
    let (mut conn, answer) = agent
        .try_connect_with(server, Some(ENROLLMENT_TOKEN), |h| {
            h.protocol_min = Some(2);
            h.protocol_max = Some(max);
            h.capabilities = vec![capability::UPDATE_NUDGE.into()];
            h.channel = Some(channel);
        })
        .await;
    assert!(matches!(answer, ServerMessage::Welcome(_)), "{answer:?}");
    assert!(matches!(conn.recv().await, ServerMessage::Config(_)));
    conn
}

pub(crate) async fn expect_nudge(conn: &mut Conn) -> String {
    match conn.recv().await {
        ServerMessage::CheckUpdate { reason } => reason,
        other => panic!("expected check_update, got {other:?}"),
    }
}

/// The next message after a results batch is its ack: nothing else
/// (no nudge) was queued for this agent.
async fn expect_no_nudge(conn: &mut Conn, seq: u64) {
    conn.send(&AgentMessage::Results {
        results: vec![result(seq, "load", CheckState::Ok, "fine")],
    })
    .await;
    match conn.recv().await {
        ServerMessage::Ack { up_to } => assert_eq!(up_to, seq),
        other => panic!("expected only an ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_release_nudges_the_capable_agents_of_its_channel_only() {
    // A zero window nudges everyone at once, so when the first agent has
    // its nudge every other one has been decided.
    let server = Server::start_with(|c| c.nudge_window_secs = 0).await;
    let releases = Releases::start(&server).await;
    let mut beta = connect(&server, &Agent::new(1, "beta-1"), 3, "beta").await;
    let mut stable = connect(&server, &Agent::new(2, "stable-1"), 3, "stable").await;
    // Announces the capability but speaks only 2: no capabilities agreed.
    let mut old = connect(&server, &Agent::new(3, "old-1"), 2, "beta").await;

    releases.publish(&server, "beta", 1).await;
    let reason = expect_nudge(&mut beta).await;
    assert!(!reason.is_empty());
    expect_no_nudge(&mut stable, 1).await;
    expect_no_nudge(&mut old, 1).await;

    // Every later release of the channel (promote, rollout, pause and
    // rollback each store one) nudges again.
    releases.publish(&server, "beta", 2).await;
    expect_nudge(&mut beta).await;
    releases.publish(&server, "stable", 1).await;
    expect_nudge(&mut stable).await;
    expect_no_nudge(&mut beta, 1).await;
    server.stop().await;
}
