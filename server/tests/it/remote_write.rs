//! remote_write forwarding into the real Prometheus (Debian's
//! `prometheus`, started per test with its remote_write receiver on a
//! loopback port and an empty scrape config): results, perfdata and
//! collector samples arrive under the names `metrics/remote_write/series.rs`
//! gives them, and while the receiver is down (and across a server restart)
//! everything waits in the disk queue and arrives once it is back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outrider_protocol::unix_now_ms as now_ms;
use outrider_protocol::{AgentMessage, MetricTag, SampleBatch, ServerMessage, capability};
use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::{Agent, ENROLLMENT_TOKEN, Server};
use crate::metrics::{perf, with_perf};

/// How long Prometheus may take to start or a value to become queryable.
const DEADLINE: Duration = Duration::from_secs(20);

/// A Prometheus child process, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on the port of `reservation` and waits until it is
    /// ready, holding the reservation until then. Fails at once, with
    /// Prometheus' log, if it exits first (say, it could not bind).
    async fn start(reservation: PortReservation) -> Prometheus {
        let port = reservation.port;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global: {}\nscrape_configs: []\n").unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg("--web.enable-remote-write-receiver")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (tests/deps installs it)");
        let mut prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.base());
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answer = client.get(&ready).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            let log_file = prometheus.log();
            let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited ({status}) before it was ready; its log:\n{}",
                    log()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within {DEADLINE:?}; its log:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Prometheus listens: the port is its own now.
        drop(reservation);
        prometheus
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self._dir.path().join("prometheus.log")
    }

    /// The value of instant query `query` when it returns exactly one
    /// series, else `None`.
    async fn scalar(&self, query: &str) -> Option<f64> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base()),
            &[("query", query)],
        )
        .unwrap();
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        let body: Value = serde_json::from_str(&text).ok()?;
        let result = body["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` evaluates to `want`.
    async fn wait_for(&self, query: &str, want: f64) {
        let mut last = None;
        let reached = tokio::time::timeout(DEADLINE, async {
            loop {
                last = self.scalar(query).await;
                if last == Some(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "{query} is {last:?}, not {want}, after {DEADLINE:?}; prometheus log:\n{}",
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port kept free for a Prometheus started later, for as long
/// as this lives.
///
/// Prometheus cannot be asked to bind port 0 and tell which port it got,
/// so the test picks the port. Binding a listener to port 0 and closing it
/// before Prometheus starts would leave a window in which any other test
/// (or an outgoing connection's ephemeral port) can take the port. Retrying
/// Prometheus on a new port when its bind fails does not work either where
/// the server is configured with the receiver's port before Prometheus
/// starts (the outage tests). So the port stays reserved until Prometheus
/// listens on it: a socket bound with SO_REUSEADDR but not listening keeps
/// Linux from handing the port out to binds to port 0 (how every other test
/// picks its port) and to outgoing connections' ephemeral ports, and
/// refuses binds without SO_REUSEADDR, while a SO_REUSEADDR socket asking
/// for this very port (Go's listeners set it, so Prometheus' does) may
/// still bind and listen on it. Connections to a reserved port are
/// refused, as to a stopped receiver.
struct PortReservation {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl PortReservation {
    fn new() -> PortReservation {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        PortReservation {
            _socket: socket,
            port,
        }
    }
}

/// Polls `check` every 50 ms until it gives a value, for at most
/// [`DEADLINE`].
async fn poll<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

/// The value of the `/metrics` line starting with `line_start`.
async fn exposed(server: &Server, line_start: &str) -> f64 {
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start:?} in {text}"))
}

fn queued_segments(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("remote_write"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .count()
        })
        .unwrap_or(0)
}

fn remote_write_to(port: u16) -> impl FnOnce(&mut outrider_server::ServerConfig) {
    move |c| {
        c.metrics.remote_write_url = Some(format!("http://127.0.0.1:{port}/api/v1/write"));
        c.metrics.remote_write_flush_interval_ms = 20;
    }
}

#[tokio::test]
async fn results_perfdata_and_samples_reach_prometheus() {
    let prometheus = Prometheus::start(PortReservation::new()).await;
    let server = Server::start_with(remote_write_to(prometheus.port)).await;
    let agent = Agent::new(61, "web-7");
    let (mut conn, answer) = agent
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), |h| {
            h.protocol_min = Some(2);
            h.protocol_max = Some(3);
            h.capabilities = vec![capability::METRIC_SAMPLES.into()];
        })
        .await;
    assert!(matches!(answer, ServerMessage::Welcome(_)), "{answer:?}");
    assert!(matches!(conn.recv().await, ServerMessage::Config(_)));
    let t0 = now_ms() - 60_000;
    let mut result = with_perf(
        1,
        "http.api",
        t0,
        vec![perf("time", 0.25, "s"), perf("size", 512.0, "B")],
    );
    result.state = outrider_protocol::CheckState::Warning;
    conn.send(&AgentMessage::Results {
        results: vec![result],
    })
    .await;
    assert!(matches!(conn.recv().await, ServerMessage::Ack { up_to: 1 }));
    let batch = SampleBatch {
        seq: 1,
        samples: vec![outrider_protocol::MetricSample {
            name: "api.requests".into(),
            tags: vec![MetricTag {
                key: "env".into(),
                value: "prod".into(),
            }],
            value: 42.0,
            kind: "counter".into(),
            unit: String::new(),
            timestamp_ms: t0 + 1_000,
        }],
    };
    conn.send(&AgentMessage::Samples(batch)).await;
    assert_eq!(conn.recv().await, ServerMessage::SamplesAck { up_to: 1 });

    let fp = agent.fp.as_str();
    // Values are queried at their own time: Prometheus keeps samples'
    // timestamps, and an instant query looks back five minutes.
    for (query, want) in [
        (
            format!(
                r#"outrider_perfdata{{agent="{fp}",hostname="web-7",check="http.api",label="time",uom="s"}}"#
            ),
            0.25,
        ),
        (
            format!(r#"outrider_perfdata{{agent="{fp}",check="http.api",label="size",uom="B"}}"#),
            512.0,
        ),
        (
            format!(r#"outrider_check_state{{agent="{fp}",hostname="web-7",check="http.api"}}"#),
            1.0,
        ),
        (
            format!(r#"api_requests{{agent="{fp}",hostname="web-7",env="prod"}}"#),
            42.0,
        ),
    ] {
        prometheus.wait_for(&query, want).await;
    }
    // Four samples sent in 2xx requests, nothing dropped or left queued.
    let sent = poll("sent counter", || async {
        let n = exposed(&server, "outrider_remote_write_sent_samples_total ").await;
        (n >= 4.0).then_some(n)
    })
    .await;
    assert_eq!(sent, 4.0);
    assert_eq!(
        exposed(&server, "outrider_remote_write_queued_samples ").await,
        0.0
    );
    for reason in ["overflow", "queue_full", "rejected", "corrupt"] {
        let line = format!("outrider_remote_write_dropped_samples_total{{reason=\"{reason}\"}} ");
        assert_eq!(exposed(&server, &line).await, 0.0, "{reason}");
    }
    assert!(
        exposed(
            &server,
            "outrider_remote_write_requests_total{status=\"2xx\"} "
        )
        .await
            >= 1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn samples_queued_while_the_receiver_is_down_all_arrive_after_a_restart() {
    // The receiver's port is known but nothing listens there yet.
    let reservation = PortReservation::new();
    let port = reservation.port;
    let server = Server::start_with(remote_write_to(port)).await;
    let agent = Agent::new(62, "db-3");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let results = 50;
    let t0 = now_ms() - 120_000;
    for seq in 1..=results {
        let r = with_perf(
            seq,
            "load",
            t0 + seq as i64 * 100,
            vec![perf("load1", seq as f64, ""), perf("load5", 1.0, "")],
        );
        assert_eq!(conn.send_results(vec![r]).await, seq);
    }
    // Three samples per result (state, load1, load5); all of them queued,
    // and retried against the closed port.
    let want = 3 * results;
    poll("queued on disk", || async {
        let queued = exposed(&server, "outrider_remote_write_queued_samples ").await;
        let retried = exposed(
            &server,
            "outrider_remote_write_retries_total{reason=\"transport\"} ",
        )
        .await;
        (queued == want as f64 && retried >= 1.0).then_some(())
    })
    .await;
    assert!(
        exposed(
            &server,
            "outrider_remote_write_requests_total{status=\"error\"} "
        )
        .await
            >= 1.0
    );
    drop(conn);
    // A restart in between: the queue is resent by the next run.
    let dir = server.stop_keeping_data().await;
    assert!(queued_segments(dir.path()) >= 1);
    let server = Server::start_in(dir, remote_write_to(port)).await;
    let prometheus = Prometheus::start(reservation).await;
    let fp = agent.fp.as_str();
    prometheus
        .wait_for(
            &format!(r#"sum(count_over_time({{agent="{fp}"}}[10m]))"#),
            want as f64,
        )
        .await;
    prometheus
        .wait_for(
            &format!(r#"sum_over_time(outrider_perfdata{{agent="{fp}",label="load1"}}[10m])"#),
            (1..=results).sum::<u64>() as f64,
        )
        .await;
    poll("queue emptied", || async {
        let queued = exposed(&server, "outrider_remote_write_queued_samples ").await;
        (queued == 0.0 && queued_segments(server.data_dir()) == 0).then_some(())
    })
    .await;
    assert_eq!(
        exposed(&server, "outrider_remote_write_sent_samples_total ").await,
        want as f64
    );
    server.stop().await;
}

#[tokio::test]
async fn the_batch_in_memory_at_shutdown_is_queued_not_lost() {
    // Nothing ever listens on this port (reserved until the test ends).
    let nobody = PortReservation::new();
    let port = nobody.port;
    // A flush interval longer than the test: only shutdown writes the batch.
    let slow = move |c: &mut outrider_server::ServerConfig| {
        remote_write_to(port)(c);
        c.metrics.remote_write_flush_interval_ms = 60_000;
    };
    let server = Server::start_with(slow).await;
    let agent = Agent::new(63, "cache-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let t0 = now_ms() - 10_000;
    for seq in 1..=5 {
        let r = with_perf(seq, "load", t0 + seq as i64, vec![perf("load1", 1.0, "")]);
        assert_eq!(conn.send_results(vec![r]).await, seq);
    }
    assert_eq!(
        exposed(&server, "outrider_remote_write_queued_samples ").await,
        0.0
    );
    drop(conn);
    let dir = server.stop_keeping_data().await;
    assert_eq!(queued_segments(dir.path()), 1);
    // The next run finds the ten samples (state and load1 of five results).
    let server = Server::start_in(dir, slow).await;
    assert_eq!(
        exposed(&server, "outrider_remote_write_queued_samples ").await,
        10.0
    );
    server.stop().await;
    drop(nobody);
}

/// One request as a scripted receiver saw it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// A loopback HTTP/1.1 receiver answering each request with the next
/// status of `script` (then 200), one connection per request; every
/// request is handed to the returned channel.
async fn scripted_receiver(
    script: Vec<(u16, &'static str)>,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            let (head, length) = loop {
                let Ok(n) = socket.read(&mut buf).await else {
                    break (None, 0);
                };
                if n == 0 {
                    break (None, 0);
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..end]).to_string();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    data.drain(..end + 4);
                    break (Some(head), length);
                }
            };
            let Some(head) = head else { continue };
            while data.len() < length {
                let Ok(n) = socket.read(&mut buf).await else {
                    break;
                };
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            let (status, extra) = script.next().unwrap_or((200, ""));
            let answer = if status == 400 {
                "out of order sample"
            } else {
                ""
            };
            let response = format!(
                "HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = tx.send(Seen { head, body: data });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn requests_carry_the_specs_headers_and_answers_decide_retry_or_drop() {
    use outrider_server::metrics::remote_write::wire;
    // 503 (retried after the least backoff, 100 ms: Retry-After: 0 is not
    // taken literally), then 400 (dropped), then 200.
    let (port, mut seen) = scripted_receiver(vec![(503, "Retry-After: 0\r\n"), (400, "")]).await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("rw.token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = Server::start_with(|c| {
        remote_write_to(port)(c);
        c.metrics.remote_write_bearer_token_file = Some(token_file.clone());
    })
    .await;
    let agent = Agent::new(64, "edge-2");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let t0 = now_ms() - 5_000;
    let first = with_perf(1, "load", t0, vec![perf("load1", 0.5, "")]);
    assert_eq!(conn.send_results(vec![first]).await, 1);
    let mut next = async || {
        tokio::time::timeout(DEADLINE, seen.recv())
            .await
            .expect("a request within the deadline")
            .unwrap()
    };
    let (a, retried) = (next().await, next().await);
    let head = a.head.to_ascii_lowercase();
    for header in [
        "post /api/v1/write http/1.1",
        "content-encoding: snappy",
        "content-type: application/x-protobuf",
        "x-prometheus-remote-write-version: 0.1.0",
        "user-agent: outrider-server/",
        "authorization: bearer s3cret",
    ] {
        assert!(head.contains(header), "{header:?} missing in {head}");
    }
    // The 503'd request is sent again as it was.
    assert_eq!(a.body, retried.body);
    let request = wire::decode(&a.body).expect("snappy block + WriteRequest");
    assert_eq!(request.timeseries.len(), 2);
    for series in &request.timeseries {
        let names: Vec<&str> = series.labels.iter().map(|l| l.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"__name__"));
        assert_eq!(series.samples[0].timestamp, t0);
    }
    // The 400 dropped that request; the next batch is a new one and is taken.
    let second = with_perf(2, "load", t0 + 1, vec![perf("load1", 0.7, "")]);
    assert_eq!(conn.send_results(vec![second]).await, 2);
    let b = next().await;
    assert_ne!(b.body, a.body);
    poll("counters", || async {
        let sent = exposed(&server, "outrider_remote_write_sent_samples_total ").await;
        (sent == 2.0).then_some(())
    })
    .await;
    for (line, want) in [
        (
            "outrider_remote_write_dropped_samples_total{reason=\"rejected\"} ",
            2.0,
        ),
        (
            "outrider_remote_write_retries_total{reason=\"receiver\"} ",
            1.0,
        ),
        ("outrider_remote_write_requests_total{status=\"5xx\"} ", 1.0),
        ("outrider_remote_write_requests_total{status=\"4xx\"} ", 1.0),
        ("outrider_remote_write_requests_total{status=\"2xx\"} ", 1.0),
        ("outrider_remote_write_queued_samples ", 0.0),
    ] {
        assert_eq!(exposed(&server, line).await, want, "{line}");
    }
    server.stop().await;
}

#[tokio::test]
async fn basic_auth_credentials_come_from_the_password_file() {
    let (port, mut seen) = scripted_receiver(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("rw.password");
    std::fs::write(&password_file, "pa55\n").unwrap();
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = Server::start_with(|c| {
        remote_write_to(port)(c);
        c.metrics.remote_write_basic_auth_user = Some("writer".into());
        c.metrics.remote_write_basic_auth_password_file = Some(password_file.clone());
    })
    .await;
    let agent = Agent::new(65, "edge-3");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let r = with_perf(1, "load", now_ms() - 1_000, vec![perf("load1", 1.0, "")]);
    assert_eq!(conn.send_results(vec![r]).await, 1);
    let request = tokio::time::timeout(DEADLINE, seen.recv())
        .await
        .expect("a request")
        .unwrap();
    // base64("writer:pa55")
    assert!(
        request
            .head
            .to_ascii_lowercase()
            .contains("authorization: basic d3jpdgvyonbhntu="),
        "{}",
        request.head
    );
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_url_or_token_keeps_the_queue_until_it_is_fixed() {
    // What a wrong token (401, 403), a wrong path (404, 405), a proxy
    // demanding its own login (407) or a redirect (302) answer: each is
    // retried, nothing is dropped, and once the receiver takes the request
    // it arrives as it was queued.
    let refusals = vec![
        (401, ""),
        (403, ""),
        (404, ""),
        (405, ""),
        (407, ""),
        (302, "Location: http://127.0.0.1:1/elsewhere\r\n"),
    ];
    let wrong = refusals.len();
    let (port, mut seen) = scripted_receiver(refusals).await;
    let server = Server::start_with(remote_write_to(port)).await;
    let agent = Agent::new(66, "edge-4");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let r = with_perf(1, "load", now_ms() - 1_000, vec![perf("load1", 1.0, "")]);
    assert_eq!(conn.send_results(vec![r]).await, 1);
    let mut bodies = Vec::new();
    for _ in 0..=wrong {
        let request = tokio::time::timeout(DEADLINE, seen.recv())
            .await
            .expect("a request within the deadline")
            .unwrap();
        bodies.push(request.body);
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "the same request each time"
    );
    poll("sent", || async {
        let sent = exposed(&server, "outrider_remote_write_sent_samples_total ").await;
        (sent == 2.0).then_some(())
    })
    .await;
    for (line, want) in [
        (
            "outrider_remote_write_retries_total{reason=\"config\"} ",
            wrong as f64,
        ),
        (
            "outrider_remote_write_dropped_samples_total{reason=\"rejected\"} ",
            0.0,
        ),
        ("outrider_remote_write_queued_samples ", 0.0),
    ] {
        assert_eq!(exposed(&server, line).await, want, "{line}");
    }
    server.stop().await;
}
