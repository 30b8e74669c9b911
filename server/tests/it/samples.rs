//! Metric samples on the wire (`AgentMessage::Samples` behind
//! `metric_samples`): stored once as series of check `outrider.samples`,
//! bad samples counted and skipped without losing the rest, and the real
//! agent library sending its spooled samples only to a server that takes
//! them, keeping them spooled otherwise (see `docs/protocol.md`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outrider_agent::HostHooks;
use outrider_agent::outbox::Outbox;
use outrider_agent::spool::{MetricSample, SpoolLimits};
use outrider_protocol::api::Presence;
use outrider_protocol::{AgentMessage, MetricTag, SampleBatch, ServerMessage, capability};
use serde_json::{Value, json};

use crate::helpers::{Agent, ENROLLMENT_TOKEN, STEP, Server};
use crate::library::{self, LibraryAgent, agent_toml};

fn sample(name: &str, value: f64) -> MetricSample {
    MetricSample {
        name: name.into(),
        tags: vec![],
        value,
        kind: "gauge".into(),
        unit: String::new(),
        timestamp_ms: protocol_now() - 1000,
    }
}

fn protocol_now() -> i64 {
    outrider_protocol::unix_now_ms()
}

/// The value of one line of the `/metrics` exposition.
async fn exposed(server: &Server, line_start: &str) -> u64 {
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start:?} in {text}"))
}

async fn sample_series(server: &Server) -> Vec<Value> {
    let series = server
        .admin("GET", "/api/v1/series?check=outrider.samples", None)
        .await;
    series.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn batches_are_stored_once_and_bad_samples_are_counted_and_skipped() {
    let server = Server::start().await;
    let agent = Agent::new(1, "web-1");
    let (mut conn, answer) = agent
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), |h| {
            h.protocol_min = Some(2);
            h.protocol_max = Some(3);
            h.capabilities = vec![capability::METRIC_SAMPLES.into()];
        })
        .await;
    let ServerMessage::Welcome(welcome) = answer else {
        panic!("expected a welcome")
    };
    assert!(
        welcome
            .capabilities
            .iter()
            .any(|c| c == capability::METRIC_SAMPLES)
    );
    assert!(matches!(conn.recv().await, ServerMessage::Config(_)));
    let mut tagged = sample("api.requests", 7.0);
    tagged.tags = vec![MetricTag {
        key: "env".into(),
        value: "prod".into(),
    }];
    let batch = SampleBatch {
        seq: 1,
        samples: vec![
            sample("api.latency", 12.5),
            sample("", 1.0),
            sample(&"x".repeat(200), 1.0),
            sample("bad\nname", 1.0),
            tagged,
        ],
    };
    for _ in 0..2 {
        // The second is a resend after a lost ack: acknowledged, not stored.
        conn.send(&AgentMessage::Samples(batch.clone())).await;
        assert_eq!(conn.recv().await, ServerMessage::SamplesAck { up_to: 1 });
    }
    assert_eq!(
        exposed(&server, "outrider_ingested_metric_samples_total ").await,
        2
    );
    for (reason, n) in [
        ("empty", 2),
        ("too_long", 2),
        ("bad_characters", 2),
        ("not_finite", 0),
    ] {
        let line = format!("outrider_refused_metric_samples_total{{reason=\"{reason}\"}} ");
        // Refusals are counted per delivery: the resend counts again.
        assert_eq!(exposed(&server, &line).await, n, "{reason}");
    }
    let mut metrics: Vec<String> = sample_series(&server)
        .await
        .iter()
        .map(|s| s["metric"].as_str().unwrap().to_owned())
        .collect();
    metrics.sort();
    assert_eq!(metrics, ["api.latency", "api.requests;env=prod"]);
    let path = format!(
        "/api/v1/series/query?agent={}&check=outrider.samples&metric=api.latency",
        agent.fp
    );
    let points = server.admin("GET", &path, None).await;
    assert_eq!(points["points"][0]["value"], json!(12.5), "{points}");
    // A result may not claim the samples' check.
    let refused = crate::helpers::result(
        1,
        "outrider.samples",
        outrider_protocol::CheckState::Ok,
        "x",
    );
    assert_eq!(conn.send_results(vec![refused]).await, 1);
    assert!(
        server
            .latest_results()
            .await
            .iter()
            .all(|r| r.check != "outrider.samples")
    );
    server.stop().await;
}

/// Un-acked sample batches in the agent's spool (the agent is stopped).
fn spooled_batches(data_dir: &Path) -> u64 {
    let hooks: Arc<dyn HostHooks> = Arc::new(library::QuietHost::default());
    let outbox =
        Outbox::open(&data_dir.join("spool"), None, SpoolLimits::default(), hooks).unwrap();
    outbox.samples_len()
}

/// Runs the real agent library against `server` until it is connected,
/// then `until` holds, then stops it.
async fn run_agent_until(server: &Server, dir: &Path, until: impl AsyncFn() -> bool) {
    let toml = agent_toml(&server.addr.to_string(), "");
    let agent = LibraryAgent::start(library::settings(&toml, dir));
    let deadline = tokio::time::Instant::now() + STEP * 2;
    loop {
        let connected = server
            .agents()
            .await
            .first()
            .is_some_and(|a| a.presence == Presence::Connected);
        if connected && until().await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached; agent logs {:?}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop(STEP).await;
}

#[tokio::test]
async fn the_agent_library_sends_spooled_samples_only_to_a_server_that_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What a listener does: push samples into the agent's outbox.
        let hooks: Arc<dyn HostHooks> = Arc::new(library::QuietHost::default());
        let mut outbox = Outbox::open(
            &dir.path().join("spool"),
            None,
            SpoolLimits::default(),
            hooks,
        )
        .unwrap();
        let pushed = outbox
            .push_samples(
                vec![sample("app.requests", 3.0), sample("app.errors", 0.0)],
                protocol_now(),
            )
            .unwrap();
        assert_eq!(pushed, 1);
        outbox.handover();
    }
    // An older server (no capability offered): the agent connects and
    // sends nothing; the batch stays spooled.
    let old = Server::start_with(|c| c.capabilities.clear()).await;
    let check = json!({ "command": ["/bin/true"], "interval_secs": 1, "timeout_secs": 5 });
    old.admin("PUT", "/api/v1/checks/alive", Some(&check)).await;
    run_agent_until(&old, dir.path(), async || {
        old.latest_results()
            .await
            .iter()
            .any(|r| r.check == "alive")
    })
    .await;
    assert_eq!(
        exposed(&old, "outrider_ingested_metric_samples_total ").await,
        0
    );
    assert!(sample_series(&old).await.is_empty());
    let data = old.stop_keeping_data().await;
    assert_eq!(
        spooled_batches(dir.path()),
        1,
        "kept for a server that takes them"
    );

    // The same server upgraded (it offers the capability): sent, stored,
    // acknowledged and deleted.
    let server = Server::start_in(data, |_| {}).await;
    run_agent_until(&server, dir.path(), async || {
        sample_series(&server).await.len() == 2
    })
    .await;
    assert_eq!(
        exposed(&server, "outrider_ingested_metric_samples_total ").await,
        2
    );
    server.stop().await;
    assert_eq!(
        spooled_batches(dir.path()),
        0,
        "acknowledged batches are deleted"
    );
}

#[tokio::test]
async fn stored_samples_are_copied_to_graphite_once() {
    let carbon = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let carbon_addr = carbon.local_addr().unwrap().to_string();
    let server = Server::start_with(|c| {
        c.metrics.graphite_addr = Some(carbon_addr);
        c.metrics.graphite_prefix = "test.outrider".into();
    })
    .await;
    let agent = Agent::new(2, "app-1");
    let (mut conn, answer) = agent
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), |h| {
            h.protocol_min = Some(2);
            h.protocol_max = Some(3);
            h.capabilities = vec![capability::METRIC_SAMPLES.into()];
        })
        .await;
    assert!(matches!(answer, ServerMessage::Welcome(_)));
    assert!(matches!(conn.recv().await, ServerMessage::Config(_)));
    let (socket, _) = tokio::time::timeout(STEP, carbon.accept())
        .await
        .expect("the server connects to carbon")
        .unwrap();
    let mut reader = tokio::io::BufReader::new(socket);
    let mut tagged = sample("app.requests", 7.0);
    tagged.timestamp_ms = 1_700_000_000_000;
    tagged.tags = vec![MetricTag {
        key: "env".into(),
        value: "prod".into(),
    }];
    let batch = |seq: u64| SampleBatch {
        seq,
        samples: vec![MetricSample {
            value: 6.0 + seq as f64,
            ..tagged.clone()
        }],
    };
    for seq in [1, 1, 2] {
        conn.send(&AgentMessage::Samples(batch(seq))).await;
        assert_eq!(conn.recv().await, ServerMessage::SamplesAck { up_to: seq });
    }
    let fp = agent.fp.as_str();
    let line = |v: u32| {
        format!("test.outrider.{fp}.outrider_samples.app.requests;env=prod {v} 1700000000\n")
    };
    // Batch 1 once (its resend is not copied), then batch 2.
    assert_eq!(
        crate::metrics::read_lines(&mut reader, 2).await,
        [line(7), line(8)]
    );
    server.stop().await;
}
