//! Metric ingest, the series API, the Prometheus exposition and Graphite
//! forwarding, driven through a real agent websocket and real HTTP.

use std::collections::HashMap;
use std::time::Duration;

use outrider_protocol::{CheckResult, CheckState, PerfData};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

use crate::helpers::{Agent, ENROLLMENT_TOKEN, STEP, Server, result};

const HOUR_MS: i64 = 3_600_000;

pub(crate) fn perf(label: &str, value: f64, uom: &str) -> PerfData {
    PerfData {
        label: label.into(),
        value,
        uom: uom.into(),
        warn: None,
        crit: None,
        min: None,
        max: None,
    }
}

pub(crate) fn with_perf(
    seq: u64,
    check: &str,
    started_at_ms: i64,
    perfdata: Vec<PerfData>,
) -> CheckResult {
    CheckResult {
        started_at_ms,
        perfdata,
        unknown_perfdata: Vec::new(),
        ..result(seq, check, CheckState::Ok, "ok")
    }
}

use outrider_protocol::unix_now_ms as now_ms;

#[tokio::test]
async fn back_dated_perfdata_is_stored_once_and_queryable() {
    let server = Server::start().await;
    let agent = Agent::new(41, "db-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let now = now_ms();
    // An agent back from a three-hour outage delivers its spool.
    let batch = vec![
        with_perf(1, "disk", now - 3 * HOUR_MS, vec![perf("used", 10.0, "%")]),
        with_perf(2, "disk", now - 2 * HOUR_MS, vec![perf("used", 20.0, "%")]),
        with_perf(3, "disk", now - 1_000, vec![perf("used", 30.0, "%")]),
    ];
    assert_eq!(conn.send_results(batch.clone()).await, 3);
    // The ack was lost: the same batch again changes nothing.
    assert_eq!(conn.send_results(batch).await, 3);

    let fp = agent.fp.as_str();
    let series = server
        .admin("GET", &format!("/api/v1/series?agent={fp}"), None)
        .await;
    assert_eq!(
        series,
        serde_json::json!([{ "agent": fp, "check": "disk", "metric": "used", "uom": "%" }])
    );
    let base = format!("/api/v1/series/query?agent={fp}&check=disk&metric=used");
    let raw = server
        .admin(
            "GET",
            &format!("{base}&from_ms={}", now - 4 * HOUR_MS),
            None,
        )
        .await;
    assert_eq!(raw["resolution"], "raw");
    let points: Vec<(i64, f64)> = raw["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["ts_ms"].as_i64().unwrap(), p["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        points,
        [
            (now - 3 * HOUR_MS, 10.0),
            (now - 2 * HOUR_MS, 20.0),
            (now - 1_000, 30.0)
        ]
    );
    // Hour buckets over the same range.
    let hourly = server
        .admin(
            "GET",
            &format!("{base}&from_ms={}&step_secs=3600", now - 4 * HOUR_MS),
            None,
        )
        .await;
    assert_eq!(hourly["resolution"], "aggregated");
    assert_eq!(hourly["step_secs"], 3600);
    let counts: u64 = hourly["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counts, 3);
    server.stop().await;
}

#[tokio::test]
async fn series_api_answers_bad_requests_with_a_named_problem() {
    let server = Server::start().await;
    let auth = format!("Bearer {}", server.admin_token);
    let fp = "0123456789abcdef0123";
    let cases = [
        (
            "/api/v1/series/query?check=disk&metric=used",
            400,
            "agent parameter is required",
        ),
        (
            &format!("/api/v1/series/query?agent={fp}&check=disk&metric=used&from_ms=abc") as &str,
            400,
            "from_ms must be an integer",
        ),
        (
            &format!("/api/v1/series/query?agent={fp}&check=disk&metric=used&from_ms=5&to_ms=5"),
            400,
            "must be before to_ms",
        ),
        (
            &format!("/api/v1/series/query?agent={fp}&check=disk&metric=used&step_secs=-1"),
            400,
            "step_secs must be between",
        ),
        ("/api/v1/series?agent=xyz", 400, "agent:"),
        ("/api/v1/series?host=a", 400, "unknown parameter host"),
        (
            &format!("/api/v1/series/query?agent={fp}&check=disk&metric=used"),
            404,
            "no series",
        ),
    ];
    for (path, status, needle) in cases {
        let (got, body) = server.http("GET", path, Some(&auth), None).await;
        assert_eq!(got, status, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{path}: {error:?} lacks {needle:?}");
    }
    let (status, _) = server.http("GET", "/api/v1/series", None, None).await;
    assert_eq!(status, 401);
    server.stop().await;
}

/// One sample of the text exposition format, decoded.
#[derive(Debug, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// A strict parser of the text format 0.0.4: every sample belongs to a
/// family announced by `# HELP` and `# TYPE` before its first sample, a
/// family's samples are contiguous, label values are unescaped, and a
/// series appears once.
pub(crate) fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut help = HashMap::new();
    let mut types = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has a name and text");
            assert!(
                help.insert(name.to_owned(), doc.to_owned()).is_none(),
                "second HELP for {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and kind");
            assert!(["gauge", "counter"].contains(&kind), "type {kind}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "second TYPE for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let name_end = line.find(['{', ' ']).expect("sample has a value");
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        assert!(
            types.contains_key(name) && help.contains_key(name),
            "{name} not announced"
        );
        if current.as_deref() != Some(name) {
            assert!(
                !finished.contains(&name.to_owned()),
                "{name} samples are not contiguous"
            );
            if let Some(prev) = current.replace(name.to_owned()) {
                finished.push(prev);
            }
        }
        let mut labels = HashMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                // key="value"
                let start = chars.peek().expect("label or }").0;
                if body[start..].starts_with('}') {
                    end = start + 1;
                    break;
                }
                let eq = body[start..].find('=').expect("label has =") + start;
                let key = body[start..eq].to_owned();
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "label {key:?}"
                );
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                assert_eq!(
                    chars.next().map(|(_, c)| c),
                    Some('"'),
                    "label value is quoted"
                );
                let mut value = String::new();
                loop {
                    match chars.next().expect("label value ends").1 {
                        '\\' => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline in a label value"),
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.insert(key.clone(), value).is_none(),
                    "label {key} twice"
                );
                match chars.next().expect("after label").1 {
                    ',' => continue,
                    '}' => {
                        end = chars.peek().map_or(body.len(), |(i, _)| *i);
                        break;
                    }
                    other => panic!("unexpected {other:?} after a label"),
                }
            }
            rest = &body[end..];
        }
        let value_text = rest.strip_prefix(' ').expect("space before the value");
        assert!(
            !value_text.contains(' '),
            "no timestamps expected: {line:?}"
        );
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value {v:?}")),
        };
        let sample = Sample {
            name: name.to_owned(),
            labels,
            value,
        };
        assert!(
            !samples
                .iter()
                .any(|s| s.name == sample.name && s.labels == sample.labels),
            "duplicate series {line:?}"
        );
        samples.push(sample);
    }
    samples
}

pub(crate) fn find<'a>(
    samples: &'a [Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
    })
}

#[tokio::test]
async fn prometheus_exposition_parses_and_escapes_labels() {
    let server = Server::start().await;
    let nasty = "web \"1\"\\\nprod";
    let agent = Agent::new(42, nasty);
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let now = now_ms();
    conn.send_results(vec![
        with_perf(1, "load", now - 10_000, vec![perf("load1", 0.5, "")]),
        CheckResult {
            state: CheckState::Critical,
            ..with_perf(
                2,
                "disk",
                now,
                vec![
                    perf("/ \"root\"", 91.5, "%"),
                    perf("inodes", 1.0, ""),
                    perf("inodes", 2.0, ""),
                ],
            )
        },
        with_perf(3, "load", now, vec![perf("load1", 1.25, "")]),
    ])
    .await;
    let other = Agent::new(43, "gone");
    let (mut gone, _, _) = other.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    gone.send(&outrider_protocol::AgentMessage::Goodbye {
        reason: "teardown".into(),
    })
    .await;
    server
        .wait_presence(&other.fp, outrider_protocol::api::Presence::Deregistered)
        .await;

    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("text body");
    let samples = parse_exposition(text);
    let fp = agent.fp.as_str();
    let up = |fp: &str| find(&samples, "outrider_agent_up", &[("agent", fp)]).map(|s| s.value);
    assert_eq!(up(fp), Some(1.0));
    assert_eq!(up(other.fp.as_str()), Some(0.0));
    let state = find(
        &samples,
        "outrider_check_state",
        &[("agent", fp), ("check", "disk")],
    )
    .unwrap();
    assert_eq!(state.value, 2.0);
    assert_eq!(state.labels["hostname"], nasty);
    let load = find(
        &samples,
        "outrider_check_state",
        &[("agent", fp), ("check", "load")],
    )
    .unwrap();
    assert_eq!(load.value, 0.0);
    let perf_value = |check: &str, label: &str| {
        find(
            &samples,
            "outrider_perfdata",
            &[("agent", fp), ("check", check), ("label", label)],
        )
        .map(|s| (s.value, s.labels["uom"].clone()))
    };
    // The latest run's value, not the first.
    assert_eq!(perf_value("load", "load1"), Some((1.25, String::new())));
    assert_eq!(
        perf_value("disk", "/ \"root\""),
        Some((91.5, "%".to_owned()))
    );
    assert_eq!(perf_value("disk", "inodes"), Some((2.0, String::new())));
    assert_eq!(
        find(&samples, "outrider_ingested_samples_total", &[]).map(|s| s.value),
        Some(5.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_token_is_required_when_configured() {
    let server = Server::start_with(|c| c.metrics.metrics_token = Some("scrape-me".into())).await;
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = server
        .http("GET", "/metrics", Some("Bearer wrong"), None)
        .await;
    assert_eq!(status, 401);
    let (status, body) = server
        .http("GET", "/metrics", Some("Bearer scrape-me"), None)
        .await;
    assert_eq!(status, 200);
    assert!(parse_exposition(body.as_str().unwrap()).len() >= 3);
    server.stop().await;
}

/// Reads `n` lines from the accepted carbon connection.
pub(crate) async fn read_lines(
    reader: &mut BufReader<tokio::net::TcpStream>,
    n: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        tokio::time::timeout(STEP, reader.read_line(&mut line))
            .await
            .expect("graphite line within 5 s")
            .unwrap();
        lines.push(line);
    }
    lines
}

#[tokio::test]
async fn perfdata_is_forwarded_to_graphite_and_survives_a_reconnect() {
    let carbon = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let carbon_addr = carbon.local_addr().unwrap().to_string();
    let server = Server::start_with(|c| {
        c.metrics.graphite_addr = Some(carbon_addr);
        c.metrics.graphite_prefix = "test.outrider".into();
    })
    .await;
    let agent = Agent::new(44, "app-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let (socket, _) = tokio::time::timeout(STEP, carbon.accept())
        .await
        .expect("the server connects to carbon")
        .unwrap();
    let mut reader = BufReader::new(socket);
    let back_dated = 1_700_000_000_000;
    conn.send_results(vec![with_perf(
        1,
        "http.api",
        back_dated,
        vec![perf("time", 0.25, "s"), perf("size", 512.0, "B")],
    )])
    .await;
    let fp = agent.fp.as_str();
    assert_eq!(
        read_lines(&mut reader, 2).await,
        [
            format!("test.outrider.{fp}.http_api.time 0.25 1700000000\n"),
            format!("test.outrider.{fp}.http_api.size 512 1700000000\n"),
        ]
    );
    // The resent batch is not forwarded twice: the next line is seq 2's.
    conn.send_results(vec![with_perf(
        1,
        "http.api",
        back_dated,
        vec![perf("time", 0.25, "s")],
    )])
    .await;
    conn.send_results(vec![with_perf(
        2,
        "load",
        back_dated,
        vec![perf("load1", 2.0, "")],
    )])
    .await;
    assert_eq!(
        read_lines(&mut reader, 1).await,
        [format!("test.outrider.{fp}.load.load1 2 1700000000\n")]
    );

    // Carbon restarts. Plaintext carbon has no acks, so the first write into
    // the dead socket may vanish; the sender notices on a later write,
    // reconnects and goes on. Keep producing until a line arrives.
    drop(reader);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seq = 2;
    let line = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect to carbon within 10 s"
        );
        seq += 1;
        conn.send_results(vec![with_perf(
            seq,
            "load",
            back_dated,
            vec![perf("load1", seq as f64, "")],
        )])
        .await;
        if let Ok(accepted) =
            tokio::time::timeout(Duration::from_millis(200), carbon.accept()).await
        {
            let mut reader = BufReader::new(accepted.unwrap().0);
            break read_lines(&mut reader, 1).await.remove(0);
        }
    };
    let value: u64 = line
        .strip_prefix(&format!("test.outrider.{fp}.load.load1 "))
        .and_then(|rest| rest.strip_suffix(" 1700000000\n"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!((3..=seq).contains(&value), "{line:?}");
    let _: Value = server.admin("GET", "/api/v1/agents", None).await;
    server.stop().await;
}

/// A perfdata value printed as `U` arrives in `unknown_perfdata` and stays an
/// explicit unknown sample: `null` in the raw series, left out of buckets,
/// `NaN` in `/metrics`, listed with the latest result; retention drops it
/// with the raw points.
#[tokio::test]
async fn undetermined_perfdata_is_an_explicit_unknown_sample() {
    let server = Server::start().await;
    let agent = Agent::new(44, "pinger");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let now = now_ms();
    let unknown = |label: &str, uom: &str| outrider_protocol::UnknownPerfData {
        label: label.into(),
        uom: uom.into(),
        warn: Some("100".into()),
        crit: None,
        min: None,
        max: None,
    };
    let batch = vec![
        with_perf(1, "ping", now - 2_000, vec![perf("rta", 4.0, "ms")]),
        CheckResult {
            state: CheckState::Critical,
            unknown_perfdata: vec![unknown("rta", "ms"), unknown("jitter", "")],
            ..with_perf(2, "ping", now - 1_000, vec![perf("pl", 100.0, "%")])
        },
    ];
    assert_eq!(conn.send_results(batch).await, 2);

    let fp = agent.fp.as_str();
    let base = format!("/api/v1/series/query?agent={fp}&check=ping&metric=rta");
    let raw = server
        .admin("GET", &format!("{base}&from_ms={}", now - HOUR_MS), None)
        .await;
    assert_eq!(raw["resolution"], "raw");
    assert_eq!(
        raw["points"],
        serde_json::json!([
            {"ts_ms": now - 2_000, "value": 4.0},
            {"ts_ms": now - 1_000, "value": null},
        ])
    );
    let bucket = server
        .admin(
            "GET",
            &format!("{base}&from_ms={}&step_secs=3600", now - HOUR_MS),
            None,
        )
        .await;
    let counts: Vec<(f64, u64)> = bucket["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["value"].as_f64().unwrap(), p["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, [(4.0, 1)], "an unknown is not a zero");

    let latest = server
        .admin("GET", &format!("/api/v1/results/latest?agent={fp}"), None)
        .await;
    let labels: Vec<&str> = latest[0]["unknown_perfdata"]
        .as_array()
        .unwrap_or_else(|| panic!("{latest}"))
        .iter()
        .map(|u| u["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["rta", "jitter"]);
    assert_eq!(latest[0]["unknown_perfdata"][0]["uom"], "ms");

    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let samples = parse_exposition(body.as_str().unwrap());
    let value = |label: &str| {
        find(
            &samples,
            "outrider_perfdata",
            &[("agent", fp), ("check", "ping"), ("label", label)],
        )
        .map(|s| s.value)
    };
    assert!(value("rta").unwrap().is_nan());
    assert!(value("jitter").unwrap().is_nan());
    assert_eq!(value("pl"), Some(100.0));
    server.stop().await;
}
