//! The loopback metric listeners with real sockets and a real spool:
//! StatsD datagrams and Graphite lines (CRLF, tags, a bad line) become
//! spooled samples with their counts; connections past the bound are
//! refused and counted; a Graphite line keeps its collector from being
//! silent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_agent::collectors::policy::{RestartPolicy, Verdict};
use outrider_agent::collectors::{CollectorSpec, Report, Supervisor, SupervisorSettings};
use outrider_agent::config::listeners::ListenerSettings;
use outrider_agent::listeners::Listeners;
use outrider_agent::outbox::{Outbox, SharedOutbox};
use outrider_agent::policy::{AdhocScripts, LocalPolicy};
use outrider_agent::runner::RunOutcome;
use outrider_agent::spool::{Kind, MetricSample, Payload, Spool, SpoolLimits};
use outrider_agent::{Health, HostHooks, Level};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Sink {
    logs: Mutex<Vec<String>>,
}

impl HostHooks for Sink {
    fn log(&self, _level: Level, message: &str) {
        self.logs.lock().unwrap().push(message.to_owned());
    }
    fn health(&self, _health: Health, _message: &str) {}
    fn request_update_check(&self) {}
}

impl Report for Sink {
    fn report(&self, _check: &str, _outcome: RunOutcome) {}
}

fn free_addr() -> SocketAddr {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr,
        Err(_) => free_addr(),
    }
}

fn outbox(dir: &Path, hooks: Arc<Sink>) -> Arc<SharedOutbox> {
    let outbox = Outbox::open(&dir.join("spool"), None, SpoolLimits::default(), hooks).unwrap();
    Arc::new(SharedOutbox::new(outbox))
}

fn spooled(dir: &Path) -> Vec<MetricSample> {
    let spool = Spool::open(
        &dir.join("spool").join("metrics"),
        Kind::Samples,
        SpoolLimits::default(),
        Arc::new(Sink::default()),
    )
    .unwrap();
    let mut all = Vec::new();
    spool.read_from(None, |payload, _| {
        if let Payload::Samples(batch) = payload {
            all.extend(batch.samples);
        }
        true
    });
    all
}

fn value(samples: &[MetricSample], name: &str) -> Option<f64> {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    (!found.is_empty()).then(|| found.iter().sum())
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn statsd_and_graphite_lines_become_spooled_samples_with_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Arc::new(Sink::default());
    let outbox = outbox(dir.path(), hooks.clone());
    let settings = ListenerSettings {
        statsd: Some(free_addr()),
        graphite: Some(free_addr()),
        // Longer than the test: everything is flushed by `stop`.
        flush: Duration::from_secs(3600),
        max_series: 100,
        max_connections: 1,
    };
    let listeners = Listeners::start(
        &settings,
        None,
        hooks.clone(),
        outbox.clone(),
        Default::default(),
        CancellationToken::new(),
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let statsd = settings.statsd.unwrap();
    for datagram in [
        &b"api.hits:1|c|@0.5\napi.hits:3|c|#env:prod"[..],
        b"queue.depth:10|g\nqueue.depth:-3|g",
        b"api.latency:10|ms\napi.latency:30|ms",
        b"users:alice|s\nusers:bob|s\nusers:alice|s",
        b"not a statsd line",
    ] {
        udp.send_to(datagram, statsd).unwrap();
    }
    let mut graphite = tokio::net::TcpStream::connect(settings.graphite.unwrap())
        .await
        .unwrap();
    graphite
        .write_all(b"web1.cpu.user 4.5 1733300000\r\nweb1.disk;mount=/ 7 1733300000\r\nbad line\n")
        .await
        .unwrap();
    // A second connection is past `max_connections` (1): closed, counted.
    let _refused = tokio::net::TcpStream::connect(settings.graphite.unwrap())
        .await
        .unwrap();
    eventually("every line read", || {
        let c = listeners.counts();
        c.statsd_datagrams == 5 && c.graphite_lines == 2 && c.graphite_connections_refused == 1
    })
    .await;
    drop(graphite);
    listeners.stop().await;
    drop(outbox);

    let samples = spooled(dir.path());
    // 1 at a 0.5 sample rate counts 2; the tagged series is its own.
    let hits: Vec<_> = samples.iter().filter(|s| s.name == "api.hits").collect();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(hits.iter().any(|s| s.value == 2.0 && s.tags.is_empty()));
    assert!(
        hits.iter()
            .any(|s| s.value == 3.0 && s.tags[0].key == "env")
    );
    assert_eq!(value(&samples, "queue.depth"), Some(7.0));
    assert_eq!(value(&samples, "api.latency.upper"), Some(30.0));
    assert_eq!(value(&samples, "api.latency.mean"), Some(20.0));
    assert_eq!(value(&samples, "users"), Some(2.0));
    let cpu = samples.iter().find(|s| s.name == "web1.cpu.user").unwrap();
    assert_eq!(
        (cpu.value, cpu.timestamp_ms, cpu.kind.as_str()),
        (4.5, 1_733_300_000_000, "graphite")
    );
    let disk = samples.iter().find(|s| s.name == "web1.disk").unwrap();
    assert_eq!(
        (disk.tags[0].key.as_str(), disk.tags[0].value.as_str()),
        ("mount", "/")
    );
    // The counts, as the agent's own samples.
    let own = |n: &str| value(&samples, &format!("outrider.listener.{n}"));
    assert_eq!(own("statsd.datagrams"), Some(5.0));
    assert_eq!(own("statsd.received"), Some(9.0));
    assert_eq!(own("statsd.parse_errors"), Some(1.0));
    assert_eq!(own("graphite.received"), Some(2.0));
    assert_eq!(own("graphite.parse_errors"), Some(1.0));
    assert_eq!(own("graphite.connections_refused"), Some(1.0));
    assert_eq!(own("dropped"), Some(0.0));
    let logs = hooks.logs.lock().unwrap();
    assert!(
        logs.iter().any(|l| l.contains("refused lines")),
        "parse errors are logged: {logs:?}"
    );
}

#[tokio::test]
async fn a_graphite_line_keeps_its_collector_from_being_silent() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Arc::new(Sink::default());
    let local = LocalPolicy::new(AdhocScripts::Refused, &["/bin", "/usr/bin"]).unwrap();
    let mut settings = SupervisorSettings::new(dir.path(), local);
    settings.restart = RestartPolicy {
        silent_intervals: 3,
        ..RestartPolicy::default()
    };
    settings.tick = Duration::from_millis(20);
    let mut supervisor = Supervisor::new(
        settings,
        hooks.clone(),
        hooks.clone(),
        CancellationToken::new(),
    );
    let spec: CollectorSpec = serde_json::from_value(serde_json::json!({
        "name": "quiet", "kind": "command", "argv": ["/bin/sleep", "1000"], "interval_secs": 1
    }))
    .unwrap();
    supervisor.reconcile(vec![spec]).await;
    let silent = |s: &Supervisor| {
        matches!(
            s.verdict("quiet", tokio::time::Instant::now()),
            Some(Verdict::Silent { .. })
        )
    };
    eventually("silent after three quiet intervals", || silent(&supervisor)).await;

    let listeners = Listeners::start(
        &ListenerSettings {
            graphite: Some(free_addr()),
            ..ListenerSettings::off()
        },
        None,
        hooks.clone(),
        outbox(dir.path(), hooks.clone()),
        supervisor.data_signal(),
        CancellationToken::new(),
    );
    let mut stream = tokio::net::TcpStream::connect(listeners.graphite.unwrap())
        .await
        .unwrap();
    // Someone else's line does not count for it.
    stream.write_all(b"other.load 1 -1\n").await.unwrap();
    eventually("the line read", || listeners.counts().graphite_lines == 1).await;
    assert!(silent(&supervisor));
    stream
        .write_all(b"quiet.load.shortterm 0.5 -1\r\n")
        .await
        .unwrap();
    eventually("running again", || {
        supervisor.verdict("quiet", tokio::time::Instant::now()) == Some(Verdict::Running)
    })
    .await;
    listeners.stop().await;
    supervisor.shutdown().await;
}
