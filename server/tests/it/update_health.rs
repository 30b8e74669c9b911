//! Update health: the stub's update outcomes arrive on `outrider.update`
//! results, are stored per agent (real SQLite) and summarised per channel by
//! `GET /api/v1/update-health`.

use outrider_protocol::api::{BuildCount, FailureGroup, UpdateHealth};
use outrider_protocol::{CheckResult, CheckState, UpdateEvent, unix_now_ms};

use crate::helpers::{Agent, Conn, ENROLLMENT_TOKEN, Server, result};

const OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const MISMATCH: &str = "hash mismatch: expected 2222…, got 9f3c…";

/// Connects agent `seed` on `channel`, reporting that it runs `build`.
async fn connect(server: &Server, seed: u8, channel: &str, build: (&str, &str)) -> Conn {
    let (channel, (version, sha)) = (channel.to_owned(), build);
    let agent = Agent::new(seed, &format!("host-{seed}"));
    let (mut conn, _) = agent
        .try_connect_with(server, Some(ENROLLMENT_TOKEN), |h| {
            h.protocol_min = Some(2);
            h.protocol_max = Some(3);
            h.channel = Some(channel);
            h.build_version = Some(version.into());
            h.build_sha256 = Some(sha.into());
        })
        .await;
    conn.recv().await; // the config
    conn
}

fn event(id: u64, kind: &str, version: &str, sha: &str, reason: &str) -> UpdateEvent {
    UpdateEvent {
        id,
        kind: kind.into(),
        at_unix_ms: unix_now_ms() - 60_000,
        build_sha256: Some(sha.into()),
        version: Some(version.into()),
        to_sha256: None,
        to_version: None,
        reason: reason.into(),
    }
}

fn reported(seq: u64, event: UpdateEvent) -> CheckResult {
    CheckResult {
        update_event: Some(Box::new(event)),
        ..result(
            seq,
            "outrider.update",
            CheckState::Warning,
            "an update event",
        )
    }
}

async fn health(server: &Server) -> UpdateHealth {
    serde_json::from_value(server.admin("GET", "/api/v1/update-health", None).await).unwrap()
}

#[tokio::test]
async fn refusals_are_grouped_by_reason_per_channel() {
    let server = Server::start().await;
    // Three stable agents on 1.3.0 refuse 1.4.0 with the same error; one
    // sends its report twice (a resend after a lost ack): counted once.
    for seed in 1..=3 {
        let mut conn = connect(&server, seed, "stable", ("1.3.0", OLD)).await;
        let refusal = reported(1, event(7, "refused", "1.4.0", NEW, MISMATCH));
        assert_eq!(conn.send_results(vec![refusal.clone()]).await, 1);
        if seed == 1 {
            assert_eq!(conn.send_results(vec![refusal]).await, 1);
        }
    }
    // A fourth refused it once, then took it: not failing any more.
    let mut conn = connect(&server, 4, "stable", ("1.4.0", NEW)).await;
    let batch = vec![
        reported(1, event(3, "refused", "1.4.0", NEW, "connection reset")),
        reported(2, event(4, "installed", "1.4.0", NEW, "")),
    ];
    assert_eq!(conn.send_results(batch).await, 2);
    // A beta agent rolled back from 1.4.0 (and an old rollback outside 24 h).
    let mut conn = connect(&server, 5, "beta", ("1.3.0", OLD)).await;
    let mut old = event(1, "rolled_back", "1.2.0", OLD, "crash");
    old.at_unix_ms -= 2 * 86_400_000;
    let batch = vec![
        reported(1, old),
        reported(2, event(2, "rolled_back", "1.4.0", NEW, "health FAILED")),
    ];
    assert_eq!(conn.send_results(batch).await, 2);

    let health = health(&server).await;
    let names: Vec<&str> = health.channels.iter().map(|c| c.channel.as_str()).collect();
    assert_eq!(names, ["beta", "stable"]);
    let stable = &health.channels[1];
    assert_eq!(
        stable.builds,
        [
            BuildCount {
                version: "1.3.0".into(),
                build_sha256: Some(OLD.into()),
                agents: 3
            },
            BuildCount {
                version: "1.4.0".into(),
                build_sha256: Some(NEW.into()),
                agents: 1
            },
        ]
    );
    assert_eq!(
        stable.failing,
        [FailureGroup {
            version: Some("1.4.0".into()),
            build_sha256: Some(NEW.into()),
            kind: "refused".into(),
            reason: MISMATCH.into(),
            agents: 3,
        }]
    );
    assert_eq!(
        stable.failing[0].describe(),
        format!("3 agents refuse 1.4.0: {MISMATCH}")
    );
    assert_eq!(stable.rollbacks_24h, 0);
    let beta = &health.channels[0];
    assert_eq!(beta.rollbacks_24h, 1);
    assert_eq!(
        beta.failing
            .iter()
            .map(FailureGroup::describe)
            .collect::<Vec<_>>(),
        ["1 agent rolled back from 1.4.0: health FAILED"]
    );
    // The readable result is stored like any other.
    let latest = server.latest_results().await;
    assert!(latest.iter().any(|r| r.check == "outrider.update"));
    server.stop().await;
}
