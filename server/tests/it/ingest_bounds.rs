//! One agent must not grow the server without bound: each test performs
//! an attack through a real agent websocket against the real server (real
//! SQLite, real sockets) and checks what was stored, acked and counted.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use outrider_protocol::api::ResultInfo;
use outrider_protocol::{CheckState, PerfData, unix_now_ms as now_ms};
use outrider_server::config::ResultNames;
use serde_json::json;
use tokio::io::BufReader;
use tokio::net::TcpListener;

use crate::helpers::{Agent, ENROLLMENT_TOKEN, STEP, Server, result};
use crate::metrics::{find, parse_exposition, perf, read_lines, with_perf};

/// A server enforcing the name rule, with checks `names` configured for
/// every agent (before any agent connects, so no config push interleaves
/// with the acks the tests read).
async fn server_with_checks(
    names: &[&str],
    configure: impl FnOnce(&mut outrider_server::ServerConfig),
) -> Server {
    let server = Server::start_with(|c| {
        c.result_names = ResultNames::Configured;
        configure(c);
    })
    .await;
    for name in names {
        let body = json!({ "command": ["/bin/true"], "interval_secs": 60, "timeout_secs": 5 });
        server
            .admin("PUT", &format!("/api/v1/checks/{name}"), Some(&body))
            .await;
    }
    server
}

async fn metrics(server: &Server) -> Vec<crate::metrics::Sample> {
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "{body}");
    parse_exposition(body.as_str().unwrap())
}

fn counter(samples: &[crate::metrics::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("{name} {labels:?} missing"))
        .value
}

fn latest<'a>(all: &'a [ResultInfo], check: &str) -> Option<&'a ResultInfo> {
    all.iter().find(|r| r.check == check)
}

#[tokio::test]
async fn results_for_names_the_agent_is_not_configured_for_are_acked_but_not_stored() {
    let server = server_with_checks(&["load", "old"], |_| {}).await;
    let agent = Agent::new(61, "noisy-1");
    let (mut conn, _, config) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert_eq!(config.checks.len(), 2);
    let long = "a".repeat(65);
    let batch = vec![
        result(1, "load", CheckState::Ok, "configured"),
        result(
            2,
            "outrider.dns",
            CheckState::Warning,
            "the agent's own report",
        ),
        result(3, "stray", CheckState::Ok, "not configured"),
        result(
            4,
            "outrider.series_limit",
            CheckState::Ok,
            "forged server report",
        ),
        result(5, "Bad Name", CheckState::Ok, "bad characters"),
        result(6, &long, CheckState::Ok, "too long"),
        result(7, "outrider.made-up", CheckState::Ok, "no such report"),
    ];
    // The highest seq is refused: the ack still covers it, so the agent's
    // spool lets it go instead of resending it forever.
    assert_eq!(conn.send_results(batch).await, 7);
    let all = server.latest_results().await;
    let mut names: Vec<_> = all.iter().map(|r| r.check.as_str()).collect();
    names.sort();
    assert_eq!(names, ["load", "outrider.dns"]);

    // A check removed a moment ago is still accepted (the agent may not
    // have its new config yet), a never-configured one is not.
    server.admin("DELETE", "/api/v1/checks/old", None).await;
    match conn.recv().await {
        outrider_protocol::ServerMessage::Config(c) => assert_eq!(c.checks.len(), 1),
        other => panic!("expected the new config, got {other:?}"),
    }
    let batch = vec![
        result(8, "old", CheckState::Critical, "removed just now"),
        result(9, "stray", CheckState::Ok, "still not configured"),
    ];
    assert_eq!(conn.send_results(batch).await, 9);
    let all = server.latest_results().await;
    assert_eq!(latest(&all, "old").map(|r| r.seq), Some(8));
    assert!(latest(&all, "stray").is_none());

    let samples = metrics(&server).await;
    let refused = |reason: &str| {
        counter(
            &samples,
            "outrider_refused_results_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refused("not_configured"), 3.0);
    assert_eq!(refused("reserved"), 1.0);
    assert_eq!(refused("bad_characters"), 1.0);
    assert_eq!(refused("too_long"), 1.0);
    assert_eq!(refused("empty"), 0.0);
    assert_eq!(
        counter(&samples, "outrider_ingested_results_total", &[]),
        3.0
    );
    server.stop().await;
}

#[tokio::test]
async fn ten_thousand_distinct_series_stop_at_the_limit_with_a_warning_result() {
    let server = server_with_checks(&["load"], |_| {}).await;
    let agent = Agent::new(62, "noisy-2");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let limit = outrider_server::store::DEFAULT_MAX_SERIES_PER_AGENT;
    let now = now_ms();
    // 10,000 distinct labels, 500 per result, 4 results per batch.
    let mut seq = 0;
    for batch in 0..5 {
        let results = (0..4)
            .map(|r| {
                seq += 1;
                let base = (batch * 4 + r) * 500;
                let perfdata = (base..base + 500)
                    .map(|i| perf(&format!("m{i}"), 1.0, ""))
                    .collect();
                with_perf(seq, "load", now + seq as i64, perfdata)
            })
            .collect();
        assert_eq!(conn.send_results(results).await, seq);
    }
    let series = server
        .admin("GET", &format!("/api/v1/series?agent={}", agent.fp), None)
        .await;
    assert_eq!(series.as_array().unwrap().len(), limit);
    let all = server.latest_results().await;
    let report = latest(&all, "outrider.series_limit").expect("a series-limit result");
    assert_eq!(report.state, CheckState::Warning);
    let dropped = 10_000 - limit;
    // One report per minute at most: the first batch over the limit is
    // reported at once, the rest are counted for the next report.
    assert!(
        report.summary.starts_with("2000 perfdata samples dropped: this agent has reached the server's limit of 2000 series"),
        "{}",
        report.summary
    );
    // The stored result keeps only the samples stored.
    assert_eq!(latest(&all, "load").unwrap().perfdata.len(), 0);
    let samples = metrics(&server).await;
    assert_eq!(
        counter(&samples, "outrider_series_limit_dropped_samples_total", &[]),
        dropped as f64
    );
    assert_eq!(
        counter(&samples, "outrider_ingested_samples_total", &[]),
        limit as f64
    );
    // Known series keep taking samples.
    seq += 1;
    conn.send_results(vec![with_perf(
        seq,
        "load",
        now + seq as i64,
        vec![perf("m0", 2.0, "")],
    )])
    .await;
    let all = server.latest_results().await;
    assert_eq!(latest(&all, "load").unwrap().perfdata[0].value, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn future_dated_results_neither_stall_retention_nor_outlive_it() {
    let server = server_with_checks(&["load", "disk"], |c| {
        c.metrics.retention_interval_secs = 1;
        c.metrics.results_retention_days = 1;
    })
    .await;
    let agent = Agent::new(63, "clock-ahead");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    // A hundred years ahead; more than one retention step's worth, the
    // kept latest results first in sequence order.
    let future = now_ms() + 100 * 365 * 86_400_000;
    let total = 2 * 2_000 + 300;
    let mut seq = 0;
    while seq < total {
        let results = (0..500.min(total - seq))
            .map(|_| {
                seq += 1;
                let check = if seq % 2 == 0 { "load" } else { "disk" };
                with_perf(
                    seq as u64,
                    check,
                    future + seq as i64,
                    vec![perf("v", 1.0, "")],
                )
            })
            .collect();
        assert_eq!(conn.send_results(results).await, seq as u64);
    }
    // Stored no later than ten minutes ahead of the server's clock.
    let all = server.latest_results().await;
    let limit = now_ms() + outrider_server::store::MAX_FUTURE_MS;
    assert!(all.iter().all(|r| r.started_at_ms <= limit), "{all:?}");
    let samples = metrics(&server).await;
    assert_eq!(
        counter(&samples, "outrider_future_results_clamped_total", &[]),
        total as f64
    );

    // Two days pass for these rows (the store is a real SQLite file; the
    // server keeps running): retention must delete all but each check's
    // latest result.
    let db = rusqlite::Connection::open(server.data_dir().join("outrider.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE results SET received_at_ms = received_at_ms - 2 * 86400000",
        [],
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: i64 = db
            .query_row("SELECT COUNT(*) FROM results", [], |r| r.get(0))
            .unwrap();
        if left == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} results left after 20 s of retention passes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = server.latest_results().await;
    assert_eq!(all.len(), 2);
    assert_eq!(latest(&all, "load").unwrap().seq, total as u64);
    server.stop().await;
}

#[tokio::test]
async fn a_huge_metric_name_is_not_forwarded_to_graphite() {
    let carbon = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let carbon_addr = carbon.local_addr().unwrap().to_string();
    let server = server_with_checks(&["web"], |c| {
        c.metrics.graphite_addr = Some(carbon_addr);
    })
    .await;
    let agent = Agent::new(64, "noisy-4");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let (socket, _) = tokio::time::timeout(STEP, carbon.accept())
        .await
        .expect("the server connects to carbon")
        .unwrap();
    let mut reader = BufReader::new(socket);
    let huge = PerfData {
        label: "x".repeat(100_000),
        ..perf("", 1.0, "")
    };
    conn.send_results(vec![with_perf(
        1,
        "web",
        1_700_000_000_000,
        vec![huge, perf("time", 0.5, "s")],
    )])
    .await;
    conn.send_results(vec![with_perf(
        2,
        "web",
        1_700_000_001_000,
        vec![perf("time", 0.7, "s")],
    )])
    .await;
    let fp = agent.fp.as_str();
    // The over-long line is dropped; the lines before and after arrive.
    assert_eq!(
        read_lines(&mut reader, 2).await,
        [
            format!("outrider.{fp}.web.time 0.5 1700000000\n"),
            format!("outrider.{fp}.web.time 0.7 1700000001\n"),
        ]
    );
    let samples = metrics(&server).await;
    assert_eq!(
        counter(&samples, "outrider_graphite_oversized_lines_total", &[]),
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_need_a_token_when_the_server_listens_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_bound("0.0.0.0:0", dir, |c| c.insecure_plain_http = true).await;
    // Connected through loopback, but the server listens on every
    // interface: without a configured token nobody may scrape.
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("--metrics-token-file"), "{body}");
    let (status, _) = server
        .http(
            "GET",
            "/metrics",
            Some(&format!("Bearer {}", server.admin_token)),
            None,
        )
        .await;
    assert_eq!(status, 401, "the admin token is not the metrics token");
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("metrics.token");
    std::fs::write(&token, "scrape-me\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start_bound("0.0.0.0:0", dir, |c| {
        c.insecure_plain_http = true;
        c.metrics.metrics_token_file = Some(token);
    })
    .await;
    let (status, _) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 401);
    let (status, body) = server
        .http("GET", "/metrics", Some("Bearer scrape-me"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;

    // On loopback without a token, /metrics stays open.
    let server = Server::start().await;
    assert!(!metrics(&server).await.is_empty());
    server.stop().await;
}
