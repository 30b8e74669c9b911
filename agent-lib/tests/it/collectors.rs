//! The collector supervisor with real processes: a crashing command is
//! restarted with growing delays and reported crash-looping; removal kills
//! the whole process group; one that crashes only after a healthy run
//! starts its backoff over; silence and data drive the verdict; a real
//! collectd sends Graphite lines to a loopback listener; a fragment collectd
//! refuses is reported CRITICAL and never replaces the config in use.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_agent::collectors::policy::RestartPolicy;
use outrider_agent::collectors::render::CONFIG_FILE;
use outrider_agent::collectors::{CollectorSpec, Report, Supervisor, SupervisorSettings};
use outrider_agent::policy::{AdhocScripts, LocalPolicy};
use outrider_agent::runner::RunOutcome;
use outrider_agent::{Health, HostHooks, Level};
use outrider_protocol::CheckState;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{assert_gone, process_gone, read_pid, script, sh};

/// Cap of each collector log file in these tests.
const LOG_CAP: u64 = 64 * 1024;

/// Longest wait for anything a real collectd does (start, validate, send).
const COLLECTD_WAIT: Duration = Duration::from_secs(30);

/// Results and logs of a supervisor under test.
struct Sink {
    results: mpsc::UnboundedSender<(String, RunOutcome)>,
    logs: Mutex<Vec<String>>,
}

impl Report for Sink {
    fn report(&self, check: &str, outcome: RunOutcome) {
        let _ = self.results.send((check.to_owned(), outcome));
    }
}

impl HostHooks for Sink {
    fn log(&self, _level: Level, message: &str) {
        self.logs.lock().unwrap().push(message.to_owned());
    }
    fn health(&self, _health: Health, _message: &str) {}
    fn request_update_check(&self) {}
}

struct Harness {
    supervisor: Supervisor,
    results: mpsc::UnboundedReceiver<(String, RunOutcome)>,
    seen: Vec<(String, RunOutcome)>,
}

impl Harness {
    /// A supervisor in `dir` on a millisecond time scale: restarts from
    /// 50 ms doubling, crash-looping at 5 exits within a minute.
    fn start(dir: &Path) -> Harness {
        Harness::start_with(dir, |_| {})
    }

    /// [`Harness::start`] with `adjust` applied to the restart policy.
    fn start_with(dir: &Path, adjust: impl FnOnce(&mut RestartPolicy)) -> Harness {
        // /bin/sh runs the test scripts; nothing else is allowed.
        let local = LocalPolicy::new(AdhocScripts::Refused, &["/bin/sh", "/usr/bin/sh"]).unwrap();
        let mut settings = SupervisorSettings::new(dir, local);
        settings.hostname = "test-host.example".into();
        settings.collectd = if Path::new("/usr/sbin/collectd").exists() {
            "/usr/sbin/collectd".into()
        } else {
            "collectd".into()
        };
        settings.restart = RestartPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
            healthy_after: Duration::from_secs(60),
            crash_loop_restarts: 5,
            crash_loop_window: Duration::from_secs(60),
            silent_intervals: 3,
        };
        adjust(&mut settings.restart);
        settings.kill_grace = Duration::from_millis(300);
        settings.tick = Duration::from_millis(20);
        settings.log_cap_bytes = LOG_CAP;
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Arc::new(Sink {
            results: tx,
            logs: Mutex::default(),
        });
        Harness {
            supervisor: Supervisor::new(settings, sink.clone(), sink, CancellationToken::new()),
            results: rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a result of `check` matching `wanted`.
    async fn result(
        &mut self,
        check: &str,
        within: Duration,
        wanted: impl Fn(&RunOutcome) -> bool,
    ) -> RunOutcome {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.results.recv()).await;
            let (name, outcome) = next
                .unwrap_or_else(|_| panic!("no matching result of {check}; saw {:#?}", self.seen))
                .expect("the supervisor holds the sender");
            self.seen.push((name.clone(), outcome.clone()));
            if name == check && wanted(&outcome) {
                return outcome;
            }
        }
    }
}

fn spec(json: serde_json::Value) -> CollectorSpec {
    serde_json::from_value(json).unwrap()
}

#[tokio::test]
async fn a_crashing_command_restarts_with_growing_delays_and_is_reported_crash_looping() {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let crash = script(
        dir.path(),
        "crash.sh",
        &format!("date +%s%N >> {}\nexit 3", starts.display()),
    );
    let mut h = Harness::start(&dir.path().join("data"));
    let summary = h
        .supervisor
        .reconcile(vec![spec(
            serde_json::json!({"name": "crashy", "kind": "command", "argv": sh(&crash)}),
        )])
        .await;
    assert_eq!(summary.started, ["crashy"]);

    let down = h
        .result("outrider.collector.crashy", COLLECTD_WAIT, |o| {
            o.state == CheckState::Warning
        })
        .await;
    assert_eq!(
        down.summary,
        "COLLECTOR WARNING - crashy exited with code 3; restarting with backoff"
    );
    let looping = h
        .result("outrider.collector.crashy", COLLECTD_WAIT, |o| {
            o.state == CheckState::Critical
        })
        .await;
    assert!(
        looping
            .summary
            .starts_with("COLLECTOR CRITICAL - crashy is crash-looping: 5 restarts within 1m"),
        "{}",
        looping.summary
    );

    // Five starts so far; each wait at least half its doubling ceiling
    // (50, 100, 200, 400 ms), so the waits grow.
    let stamps: Vec<u128> = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(stamps.len() >= 5, "{stamps:?}");
    let gaps_ms: Vec<u128> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    for (i, ceiling) in [50u128, 100, 200, 400].into_iter().enumerate() {
        assert!(gaps_ms[i] >= ceiling / 2, "gap {i} of {gaps_ms:?}");
    }
    assert!(gaps_ms[3] > gaps_ms[0], "{gaps_ms:?}");

    let summary = h.supervisor.reconcile(vec![]).await;
    assert_eq!(summary.stopped, ["crashy"]);
    h.supervisor.shutdown().await;
}

#[tokio::test]
async fn a_collector_crashing_after_a_healthy_run_starts_its_backoff_over_yet_is_crash_looping() {
    // Each run lasts 300 ms, longer than `healthy_after` (150 ms), then
    // exits 3. Without the reset the waits would be at least 100, 200, 400
    // and 800 ms (half of a ceiling doubling from 200 ms); with it each
    // ceiling is the base again, 200 ms.
    let dir = tempfile::tempdir().unwrap();
    let (starts, ends) = (dir.path().join("starts"), dir.path().join("ends"));
    let crash = script(
        dir.path(),
        "late-crash.sh",
        &format!(
            "date +%s%N >> {}\nsleep 0.3\ndate +%s%N >> {}\nexit 3",
            starts.display(),
            ends.display()
        ),
    );
    let mut h = Harness::start_with(&dir.path().join("data"), |p| {
        p.base = Duration::from_millis(200);
        p.cap = Duration::from_secs(10);
        p.healthy_after = Duration::from_millis(150);
    });
    h.supervisor
        .reconcile(vec![spec(
            serde_json::json!({"name": "late", "kind": "command", "argv": sh(&crash)}),
        )])
        .await;
    // Never given up on: five exits within the window are crash-looping,
    // however long each run lasted.
    let looping = h
        .result("outrider.collector.late", COLLECTD_WAIT, |o| {
            o.state == CheckState::Critical
        })
        .await;
    assert!(
        looping
            .summary
            .contains("late is crash-looping: 5 restarts"),
        "{}",
        looping.summary
    );
    let stamps = |path: &Path| -> Vec<u128> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let (starts, ends) = (stamps(&starts), stamps(&ends));
    // The wait from each exit to the next start.
    let waits_ms: Vec<u128> = ends
        .iter()
        .zip(&starts[1..])
        .map(|(end, next)| (next - end) / 1_000_000)
        .collect();
    assert!(waits_ms.len() >= 4, "{starts:?} {ends:?}");
    assert!(waits_ms.iter().all(|&w| w >= 100), "{waits_ms:?}");
    assert!(waits_ms[3] < 800, "the backoff was not reset: {waits_ms:?}");
    h.supervisor.shutdown().await;
}

#[tokio::test]
async fn silence_warns_data_clears_it_and_removal_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, child) = (dir.path().join("leader.pid"), dir.path().join("child.pid"));
    // Ignores SIGTERM (and so does its child, which inherits that), so
    // stopping has to go on to SIGKILL for the whole group.
    let stubborn = script(
        dir.path(),
        "stubborn.sh",
        &format!(
            "trap '' TERM\nsleep 300 &\necho $! > {}\necho $$ > {}\nwait",
            child.display(),
            leader.display()
        ),
    );
    let mut h = Harness::start(&dir.path().join("data"));
    h.supervisor
        .reconcile(vec![spec(serde_json::json!({
            "name": "quiet", "kind": "command", "argv": sh(&stubborn), "interval_secs": 1
        }))])
        .await;
    let check = "outrider.collector.quiet";
    h.result(check, COLLECTD_WAIT, |o| {
        o.summary.ends_with("quiet is running")
    })
    .await;
    // Three intervals without data.
    let silent = h
        .result(check, COLLECTD_WAIT, |o| o.state == CheckState::Warning)
        .await;
    assert_eq!(
        silent.summary,
        "COLLECTOR WARNING - quiet is running but sent no data for 3s (3 x its 1s interval)"
    );
    // The listener's handle, used from another task.
    let signal = h.supervisor.data_signal();
    let fed = tokio::spawn(async move { signal.seen("quiet", tokio::time::Instant::now()) });
    assert!(fed.await.unwrap());
    assert!(!h.supervisor.data_seen("other", tokio::time::Instant::now()));
    h.result(check, COLLECTD_WAIT, |o| o.state == CheckState::Ok)
        .await;

    let deadline = tokio::time::Instant::now() + COLLECTD_WAIT;
    while !(leader.exists() && child.exists()) {
        assert!(tokio::time::Instant::now() < deadline, "no pid files");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (leader_pid, child_pid) = (read_pid(&leader), read_pid(&child));
    assert_eq!(h.supervisor.pid("quiet"), Some(leader_pid));
    assert!(!process_gone(child_pid));

    let summary = h.supervisor.reconcile(vec![]).await;
    assert_eq!(summary.stopped, ["quiet"]);
    // reconcile returned after the leader was killed and reaped.
    assert!(process_gone(leader_pid));
    assert_gone(child_pid).await;
    assert_eq!(h.supervisor.pid("quiet"), None);
    h.supervisor.shutdown().await;
}

/// A collectd definition sending to `port`, with an optional raw fragment.
fn collectd_spec(port: u16, raw: Option<&str>) -> CollectorSpec {
    let mut json = serde_json::json!({
        "name": "system", "kind": "collectd", "interval_secs": 1, "graphite_port": port,
        "plugins": [{"plugin": "cpu"}, {"plugin": "load"}, {"plugin": "memory"}]
    });
    if let Some(raw) = raw {
        json["raw_config"] = raw.into();
    }
    spec(json)
}

/// Accepts every connection on `listener` and forwards each line sent.
async fn graphite_lines(listener: TcpListener, lines: mpsc::UnboundedSender<String>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
                if lines.send(std::mem::take(&mut line)).is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test]
async fn a_real_collectd_sends_graphite_lines_to_the_agents_listener() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let accepting = tokio::spawn(graphite_lines(listener, tx));
    let mut h = Harness::start(&dir.path().join("data"));
    h.supervisor
        .reconcile(vec![collectd_spec(port, None)])
        .await;
    h.result("outrider.collector.system", COLLECTD_WAIT, |o| {
        o.summary.ends_with("system is running")
    })
    .await;

    // `<collector>.<host, dots escaped>.cpu-<n>.<type>-<instance> <value> <time>\r\n`
    let now = outrider_protocol::unix_now_ms() / 1000;
    let deadline = tokio::time::Instant::now() + COLLECTD_WAIT;
    let mut cpu_lines = 0;
    while cpu_lines < 3 {
        let line = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("collectd sent no cpu line in time")
            .unwrap();
        let fields: Vec<&str> = line.strip_suffix("\r\n").expect(&line).split(' ').collect();
        assert_eq!(fields.len(), 3, "{line:?}");
        assert!(
            fields[0].starts_with("system.test-host_example."),
            "{line:?}"
        );
        let _: f64 = fields[1].parse().expect(&line);
        let at: i64 = fields[2].parse().expect(&line);
        assert!((at - now).abs() < 120, "{line:?}");
        if fields[0].starts_with("system.test-host_example.cpu-") {
            cpu_lines += 1;
        }
    }
    assert!(
        h.supervisor
            .data_seen("system", tokio::time::Instant::now())
    );
    // collectd's own log went to its capped stderr file.
    let log =
        std::fs::read_to_string(dir.path().join("data/collectors/system/stderr.log")).unwrap();
    assert!(
        log.contains("plugin \"write_graphite\" successfully loaded"),
        "{log}"
    );
    let pid = h.supervisor.pid("system").expect("collectd runs");
    h.supervisor.reconcile(vec![]).await;
    assert!(process_gone(pid));
    accepting.abort();
    let _ = accepting.await;
}

#[tokio::test]
async fn a_fragment_collectd_refuses_is_critical_and_the_previous_config_stays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Nobody listens on this port: collectd logs send errors, nothing more.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut h = Harness::start(&data);
    let check = "outrider.collector.system";
    h.supervisor
        .reconcile(vec![collectd_spec(port, None)])
        .await;
    h.result(check, COLLECTD_WAIT, |o| {
        o.summary.ends_with("system is running")
    })
    .await;
    let config = data.join("collectors/system").join(CONFIG_FILE);
    let working = std::fs::read_to_string(&config).unwrap();
    let pid = h.supervisor.pid("system").expect("collectd runs");

    let summary = h
        .supervisor
        .reconcile(vec![collectd_spec(
            port,
            Some("LoadPlugin no_such_plugin_xyz\n"),
        )])
        .await;
    assert_eq!(summary.updated, ["system"]);
    let refused = h
        .result(check, COLLECTD_WAIT, |o| o.state == CheckState::Critical)
        .await;
    assert_eq!(
        refused.summary,
        "COLLECTOR CRITICAL - system: its new configuration was refused; the previous \
         configuration stays in use"
    );
    assert!(
        refused
            .long_output
            .contains("Could not find plugin \"no_such_plugin_xyz\""),
        "{}",
        refused.long_output
    );
    assert!(
        refused.long_output.contains("exited with code 1"),
        "{}",
        refused.long_output
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), working);
    assert!(!data.join("collectors/system/collectd.conf.new").exists());
    assert_eq!(
        h.supervisor.pid("system"),
        Some(pid),
        "the old collectd keeps running"
    );
    assert!(!process_gone(pid));

    h.supervisor.shutdown().await;
    assert!(process_gone(pid));
}

#[tokio::test]
async fn a_command_outside_the_hosts_policy_is_refused_and_never_started() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut h = Harness::start(&dir.path().join("data"));
    h.supervisor
        .reconcile(vec![spec(serde_json::json!({
            "name": "sneaky", "kind": "command",
            "argv": ["/usr/bin/touch", marker.to_str().unwrap()]
        }))])
        .await;
    let refused = h
        .result("outrider.collector.sneaky", COLLECTD_WAIT, |o| {
            o.state == CheckState::Critical
        })
        .await;
    assert_eq!(
        refused.summary,
        "COLLECTOR CRITICAL - sneaky: its new configuration was refused; the collector is not \
         running"
    );
    assert!(
        refused
            .long_output
            .starts_with("refused by local policy: \"/usr/bin/touch\""),
        "{}",
        refused.long_output
    );
    assert_eq!(h.supervisor.pid("sneaky"), None);
    h.supervisor.shutdown().await;
    assert!(!marker.exists());
}

#[tokio::test]
async fn a_chatty_collectors_log_is_copied_aside_and_truncated_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let chatty = script(
        dir.path(),
        "chatty.sh",
        "while :; do echo 'a line from a chatty collector'; done",
    );
    let mut h = Harness::start(&dir.path().join("data"));
    h.supervisor
        .reconcile(vec![spec(
            serde_json::json!({"name": "chatty", "kind": "command", "argv": sh(&chatty)}),
        )])
        .await;
    let logs = dir.path().join("data/collectors/chatty");
    let rotated = logs.join("stdout.log.1");
    let deadline = tokio::time::Instant::now() + COLLECTD_WAIT;
    while !rotated.exists() {
        assert!(tokio::time::Instant::now() < deadline, "never trimmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = h.supervisor.pid("chatty").expect("still running");
    h.supervisor.reconcile(vec![]).await;
    assert!(process_gone(pid));
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.len() as u64 > LOG_CAP, "copied only once over the cap");
    assert!(
        old.starts_with("a line from a chatty collector\n"),
        "{}",
        &old[..80]
    );
    h.supervisor.shutdown().await;
}
