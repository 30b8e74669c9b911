//! The false-alarm suite, end to end: the real server, stubs and agent
//! library on loopback, with the alerting timers scaled down through
//! `--alerting-config` (and the server's keepalives through its flags).
//! Decisions are counted in the outbox (`GET /api/v1/alerts/history`),
//! before any receiver: what is not there is never sent.
//!
//! "No notification" is proved against a witness: a real problem started
//! no earlier than the harmless event, whose notification therefore comes
//! after the one a false alarm would have made.

mod dns;
mod swaps;

use std::path::Path;
use std::time::{Duration, Instant};

use outrider_tests::{Keys, TestAgent, TestServer, agent_library, script, secs, wait_until};
use serde_json::{Value, json};

/// `down_for` in this suite: longer than the freeze and the reconnects it
/// must tolerate, short enough for a test.
const DOWN_FOR_MS: u64 = 8_000;
/// The server declares a silent agent lost after this (`--down-after-secs`).
const DOWN_AFTER_SECS: u64 = 2;

/// Starts a server whose alerting runs on the suite's short timers.
fn server(dir: &Path) -> TestServer {
    let settings = dir.join("alerting.json");
    let config = json!({
        "down_for_ms": DOWN_FOR_MS,
        // Reconnects after a server restart back off up to ~8 s.
        "restart_grace_extra_ms": 10_000,
        "group": {"group_wait_ms": 300, "group_interval_ms": 1_000, "repeat_interval_ms": 3_600_000}
    });
    std::fs::write(&settings, config.to_string()).unwrap();
    let down_after = DOWN_AFTER_SECS.to_string();
    TestServer::start_args(&[
        "--alerting-config",
        settings.to_str().unwrap(),
        "--alert-tick-ms",
        "50",
        "--ping-interval-secs",
        "1",
        "--down-after-secs",
        &down_after,
    ])
}

/// An agent announcing `tag` (how the test tells agents apart).
fn agent(server: &TestServer, keys: &Keys, tag: &str) -> TestAgent {
    TestAgent::start_with(server, keys, "dev", &format!("tags = [\"{tag}\"]"))
}

/// The fingerprint of the agent tagged `tag`, once connected.
fn connected(server: &TestServer, tag: &str) -> String {
    let row = wait_until(&format!("agent {tag} connected"), secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| {
                a["tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!(tag)))
            })
            .filter(|a| a["presence"] == "connected")
    });
    row["fingerprint"].as_str().unwrap().to_owned()
}

/// The outbox, oldest first.
fn history(server: &TestServer) -> Vec<Value> {
    let mut rows = server
        .api_get("alerts/history?limit=1000")
        .as_array()
        .unwrap()
        .clone();
    rows.reverse();
    rows
}

/// `(subject key, kind)` of every notification decided so far.
fn decided(server: &TestServer) -> Vec<(String, String)> {
    history(server)
        .iter()
        .flat_map(|r| r["notifications"].as_array().unwrap().clone())
        .map(|n| {
            (
                subject_key(&n["subject"]),
                n["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn subject_key(subject: &Value) -> String {
    let (kind, fields) = subject.as_object().unwrap().iter().next().unwrap();
    match kind.as_str() {
        "check" => format!(
            "check/{}/{}",
            fields["agent"].as_str().unwrap(),
            fields["name"].as_str().unwrap()
        ),
        _ => format!(
            "{kind}/{}",
            fields
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
        ),
    }
}

/// Waits until `n` notifications were decided; returns them.
fn wait_decided(server: &TestServer, n: usize, timeout: Duration) -> Vec<(String, String)> {
    wait_until(&format!("{n} notifications decided"), timeout, || {
        let d = decided(server);
        (d.len() >= n).then_some(d)
    })
}

#[test]
fn clean_shutdown_and_server_restart_page_nobody_and_a_killed_agent_pages_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let mut leaving = agent(&server, &keys, "leaving");
    let _staying = agent(&server, &keys, "staying");
    let killed = agent(&server, &keys, "killed");
    connected(&server, "leaving");
    let staying_fp = connected(&server, "staying");
    let killed_fp = connected(&server, "killed");

    // A clean shutdown: the agent says Goodbye.
    leaving.proc.signal(libc::SIGTERM);
    assert_eq!(leaving.proc.wait_exit(secs(30)), Some(0));
    // The server crashes and comes back; the others reconnect.
    server.restart();
    wait_until("both agents reconnected", secs(60), || {
        let agents = server.agents();
        let up = |fp: &str| {
            agents
                .iter()
                .any(|a| a["fingerprint"] == fp && a["presence"] == "connected")
        };
        (up(&staying_fp) && up(&killed_fp)).then_some(())
    });
    // A real outage, started after both harmless events.
    killed.proc.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let d = wait_decided(&server, 1, secs(60));
    assert!(
        killed_at.elapsed() >= Duration::from_millis(DOWN_FOR_MS),
        "paged {:?} after the kill, before down_for",
        killed_at.elapsed()
    );
    assert_eq!(d, [(format!("agent/{killed_fp}"), "firing".to_owned())]);

    // It comes back: exactly one resolve, and still nothing else.
    let _back = TestAgent::restart(killed);
    let d = wait_decided(&server, 2, secs(60));
    assert_eq!(
        d,
        [
            (format!("agent/{killed_fp}"), "firing".to_owned()),
            (format!("agent/{killed_fp}"), "resolved".to_owned()),
        ]
    );
    let open = server.api_get("alerts");
    assert_eq!(open, json!([]), "nothing left open");
}

#[test]
fn an_agent_frozen_shorter_than_down_for_pages_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let frozen = agent(&server, &keys, "frozen");
    let witness = agent(&server, &keys, "witness");
    let frozen_fp = connected(&server, "frozen");
    let witness_fp = connected(&server, "witness");

    frozen.proc.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // The server loses the frozen agent within down_after plus one ping;
    // the witness is killed after that, so its page comes later than the
    // frozen agent's would.
    wait_until("the frozen agent is lost", secs(10), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["fingerprint"] == frozen_fp.as_str() && a["presence"] == "down")
    });
    witness.proc.signal(libc::SIGKILL);
    // Frozen for 4 s in all (scaled down from 30 s against a 2 min down_for).
    std::thread::sleep(Duration::from_secs(4).saturating_sub(stopped.elapsed()));
    frozen.proc.signal(libc::SIGCONT);
    connected(&server, "frozen");

    let d = wait_decided(&server, 1, secs(60));
    assert_eq!(d, [(format!("agent/{witness_fp}"), "firing".to_owned())]);
}

/// Exit 2 (CRITICAL) while `flag` exists, else 0.
fn flag_check(dir: &Path, flag: &Path) -> String {
    let body = format!(
        "if [ -e '{}' ]; then echo 'DISK CRITICAL - / is full'; exit 2; fi\necho 'DISK OK'; exit 0",
        flag.display()
    );
    script(dir, "check_flag", &body)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_check_critical_three_times_pages_once_then_resolves_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let keys = Keys::init();
    let flag = dir.path().join("broken");
    let check = flag_check(dir.path(), &flag);
    server.add_check("disk", 1, &[&check]);
    server.publish(&keys, "dev", &agent_library());
    let _agent = agent(&server, &keys, "db");
    let fp = connected(&server, "db");
    wait_until("a first OK result", secs(60), || {
        server
            .latest_results()
            .into_iter()
            .find(|r| r["check"] == "disk" && r["state"] == "OK")
    });

    std::fs::write(&flag, "").unwrap();
    let d = wait_decided(&server, 1, secs(60));
    let key = format!("check/{fp}/disk");
    assert_eq!(d, [(key.clone(), "firing".to_owned())]);
    let row = &history(&server)[0];
    assert_eq!(row["severity"], "critical");
    assert_eq!(
        row["notifications"][0]["summary"],
        "DISK CRITICAL - / is full"
    );
    // The latest result says since when the check is CRITICAL.
    let latest = server
        .latest_results()
        .into_iter()
        .find(|r| r["check"] == "disk")
        .unwrap();
    assert_eq!(latest["state"], "CRITICAL");
    assert!(
        latest["state_since_ms"].as_i64().unwrap() <= latest["started_at_ms"].as_i64().unwrap()
    );

    std::fs::remove_file(&flag).unwrap();
    let d = wait_decided(&server, 2, secs(60));
    assert_eq!(
        d,
        [
            (key.clone(), "firing".to_owned()),
            (key, "resolved".to_owned())
        ]
    );
    assert!(server.cli(&["alerts"]).contains("no open alerts"));
}

/// A rolling upgrade swaps every agent's library twice while each has a
/// notified incident open: the swaps (each a Goodbye and a reconnect)
/// neither resolve nor re-open anything, and no agent is called down.
/// The incidents' real resolves, after the upgrade, are the witness.
#[test]
fn a_rolling_upgrade_during_open_incidents_pages_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let keys = Keys::init();
    let flag = dir.path().join("broken");
    std::fs::write(&flag, "").unwrap();
    let check = flag_check(dir.path(), &flag);
    server.add_check("disk", 1, &[&check]);
    let v1 = server.publish_as(&keys, "dev", &agent_library(), "real-1");
    let tags = ["web-a", "web-b", "web-c"];
    let agents: Vec<TestAgent> = tags
        .iter()
        .map(|tag| {
            TestAgent::start_with(
                &server,
                &keys,
                "dev",
                &format!("tags = [\"{tag}\"]\nupdate_interval_secs = 1\nprobation_secs = 2"),
            )
        })
        .collect();
    let fps: Vec<String> = tags.iter().map(|t| connected(&server, t)).collect();
    let running = |sha: &str| {
        wait_until(&format!("every agent runs {sha}"), secs(120), || {
            agents
                .iter()
                .all(|a| a.state().is_some_and(|s| s["current"]["sha256"] == sha))
                .then_some(())
        })
    };
    running(&v1);
    let firing = wait_decided(&server, 3, secs(60));
    let mut want: Vec<(String, String)> = fps
        .iter()
        .map(|fp| (format!("check/{fp}/disk"), "firing".to_owned()))
        .collect();
    let mut got = firing.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    let libs = tempfile::tempdir().unwrap();
    for version in ["real-2", "real-3"] {
        let lib = libs.path().join(format!("{version}.so"));
        let mut bytes = std::fs::read(agent_library()).unwrap();
        bytes.extend_from_slice(format!("\n# {version}\n").as_bytes());
        std::fs::write(&lib, bytes).unwrap();
        let sha = server.publish_as(&keys, "dev", &lib, version);
        running(&sha);
        for tag in tags {
            connected(&server, tag);
        }
    }

    std::fs::remove_file(&flag).unwrap();
    let d = wait_decided(&server, 6, secs(60));
    let (fired, resolved) = d.split_at(3);
    assert_eq!(fired, firing.as_slice(), "nothing between the firings");
    let mut resolved = resolved.to_vec();
    resolved.sort();
    let mut want: Vec<(String, String)> = fps
        .iter()
        .map(|fp| (format!("check/{fp}/disk"), "resolved".to_owned()))
        .collect();
    want.sort();
    assert_eq!(resolved, want, "{d:#?}");
    for row in &history(&server)[3..] {
        assert_eq!(row["notifications"][0]["resolve_cause"], "recovered");
    }
}

/// The server is SIGKILLed again and again while an incident opens and
/// closes: every decision is committed with the engine state it came from,
/// so the incident is notified exactly once and resolved exactly once.
#[test]
fn a_server_killed_during_an_incident_neither_loses_nor_repeats_a_notification() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server(dir.path());
    let keys = Keys::init();
    let flag = dir.path().join("broken");
    let check = flag_check(dir.path(), &flag);
    server.add_check("disk", 1, &[&check]);
    server.publish(&keys, "dev", &agent_library());
    let _agent = agent(&server, &keys, "db");
    let fp = connected(&server, "db");
    let key = format!("check/{fp}/disk");

    // Crashes while the gate counts and the group waits.
    std::fs::write(&flag, "").unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        server.restart();
    }
    assert_eq!(
        wait_decided(&server, 1, secs(60)),
        [(key.clone(), "firing".to_owned())]
    );
    // A crash right after the decision, then during the recovery.
    server.restart();
    connected(&server, "db");
    std::fs::remove_file(&flag).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    server.restart();
    let d = wait_decided(&server, 2, secs(60));
    assert_eq!(
        d,
        [
            (key.clone(), "firing".to_owned()),
            (key, "resolved".to_owned())
        ]
    );
    let rows = history(&server);
    let started = |r: &Value| r["notifications"][0]["incident_started_ms"].clone();
    assert_eq!(started(&rows[0]), started(&rows[1]), "one incident");
    assert_eq!(rows[1]["notifications"][0]["seq"], 2);
}
