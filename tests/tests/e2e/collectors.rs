//! Collectors through the real binaries: `outrider collectors add` on the
//! server, the stub's agent library starting the collector on a tagged
//! host (its result reaches the server), `outrider collectors remove`
//! stopping its whole process group (see `agent-lib/src/collectors/
//! assigned.rs` and `docs/protocol.md`); and metric samples from a real
//! collectd and from a StatsD datagram travelling the agent's listeners
//! (`agent-lib/src/listeners.rs`), spool and `samples` messages into the
//! server's series.

use std::path::Path;

use outrider_tests::{
    Keys, TestAgent, TestServer, agent_library, free_loopback_port, secs, wait_until,
};
use serde_json::Value;

/// Pids of live (not zombie) processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces and ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
        {
            out.push(pid);
        }
    }
    out
}

/// Process group of `pid` (field 5 of `/proc/<pid>/stat`).
fn group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Pid of a live collectd whose command line names a file under `dir`
/// (the agent renders its config under its own data directory).
fn collectd_under(dir: &Path) -> Option<i32> {
    let dir = dir.to_string_lossy();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_collectd = args.first()?.rsplit('/').next() == Some("collectd");
            let ours = args.iter().any(|a| a.starts_with(&*dir));
            (is_collectd && ours && !group_members(group_of(pid)?).is_empty()).then_some(pid)
        })
}

/// Kills process group `.0` when dropped, so a failing test (whose agent
/// is killed without stopping its collectors) leaves no collectd behind.
struct KillGroupOnDrop(i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if !group_members(self.0).is_empty() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .status();
        }
    }
}

/// The labels of the server's metric-sample series (`name;k=v`).
fn sample_series(server: &TestServer) -> Vec<String> {
    server
        .api_get("series?check=outrider.samples")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["metric"].as_str().map(str::to_owned))
        .collect()
}

/// The raw points of metric-sample series `label` of agent `fp`.
fn sample_points(server: &TestServer, fp: &str, label: &str) -> Vec<f64> {
    let label = label.replace(';', "%3B").replace('=', "%3D");
    let answer: Value = server.api_get(&format!(
        "series/query?agent={fp}&check=outrider.samples&metric={label}"
    ));
    answer["points"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .collect()
}

/// The latest result of check `check`, if any.
fn latest(server: &TestServer, check: &str) -> Option<Value> {
    server
        .latest_results()
        .into_iter()
        .find(|r| r["check"] == check)
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_command_collector_is_started_by_tag_and_its_group_stopped_on_remove() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("collector.pid");
    // A collector that forks a child, so the group has two members.
    let script = format!(
        "echo $$ > {}; sleep 600 & exec sleep 601",
        pidfile.display()
    );
    server.cli(&[
        "collectors",
        "add",
        "app",
        "--kind",
        "command",
        "--tags",
        "web",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let listed = server.cli(&["collectors", "list"]);
    assert!(listed.contains("app") && listed.contains("web"), "{listed}");

    let _agent = TestAgent::start_with(&server, &keys, "dev", "tags = [\"web\"]");
    let ok = wait_until("the collector reports OK", secs(90), || {
        server
            .latest_results()
            .into_iter()
            .find(|r| r["check"] == "outrider.collector.app" && r["state"] == "OK")
    });
    assert!(ok["summary"].is_string(), "{ok}");
    let pgid = wait_until("the collector wrote its pid", secs(30), || {
        read_pid(&pidfile)
    });
    let members = wait_until("the collector's group runs", secs(30), || {
        let m = group_members(pgid);
        (m.len() >= 2).then_some(m)
    });
    assert!(members.contains(&pgid), "{members:?}");

    server.cli(&["collectors", "remove", "app"]);
    wait_until("the collector's whole group is gone", secs(30), || {
        group_members(pgid).is_empty().then_some(())
    });
    assert!(
        server
            .cli(&["collectors", "list"])
            .contains("no collectors")
    );
}

/// collectd → the agent's Graphite listener and a StatsD datagram → the
/// agent's StatsD listener; both aggregated, spooled and sent as `samples`
/// to the server, which stores them as series of `outrider.samples`. The
/// listeners run on a kernel-chosen port (the harness keeps them off
/// everywhere else), which the collector definition names as its
/// `graphite_port`.
#[test]
fn collectd_and_statsd_samples_reach_the_server_through_the_agents_listeners() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let port = free_loopback_port();
    let port_arg = port.to_string();
    server.cli(&[
        "collectors",
        "add",
        "sys",
        "--kind",
        "collectd",
        "--interval-secs",
        "1",
        "--plugins",
        "load,memory",
        "--graphite-port",
        &port_arg,
        "--tags",
        "metrics",
    ]);
    let listeners = format!(
        "{{ statsd = \"127.0.0.1:{port}\", graphite = \"127.0.0.1:{port}\", flush_secs = 1 }}"
    );
    let agent =
        TestAgent::start_listening(&server, &keys, "dev", &listeners, "tags = [\"metrics\"]");

    wait_until("the collector reports OK", secs(90), || {
        latest(&server, "outrider.collector.sys").filter(|r| r["state"] == "OK")
    });
    let collectd = wait_until("collectd runs", secs(30), || {
        collectd_under(agent.prefix.path())
    });
    let pgid = group_of(collectd).expect("collectd's process group");
    let _guard = KillGroupOnDrop(pgid);

    // collectd's lines: `sys.<host>.load.…` and `sys.<host>.memory.…`.
    let collected = wait_until("collectd's samples on the server", secs(60), || {
        let labels = sample_series(&server);
        let of = |plugin: &str| {
            labels
                .iter()
                .any(|l| l.starts_with("sys.") && l.contains(&format!(".{plugin}.")))
        };
        (of("load") && of("memory")).then_some(labels)
    });
    let fp = server.agents()[0]["fingerprint"]
        .as_str()
        .expect("the agent's fingerprint")
        .to_owned();
    let memory = collected
        .iter()
        .find(|l| l.starts_with("sys.") && l.contains(".memory."))
        .expect("a memory series");
    assert!(
        sample_points(&server, &fp, memory).iter().any(|v| *v > 0.0),
        "collectd's memory values are stored: {memory}"
    );

    // One StatsD datagram, tagged: one counter sample of exactly 3.
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sender
        .send_to(b"e2e.hits:3|c|#env:e2e", ("127.0.0.1", port))
        .unwrap();
    let label = "e2e.hits;env=e2e";
    let points = wait_until("the StatsD sample on the server", secs(60), || {
        // The query answers 404 for a series not stored yet.
        sample_series(&server)
            .iter()
            .any(|l| l == label)
            .then(|| sample_points(&server, &fp, label))
    });
    assert_eq!(points, [3.0], "one datagram, one counter sample: {label}");

    // Five intervals of data stored: collectd has run longer than the 3
    // intervals after which a collector without data turns WARNING
    // ("silent"), so an OK "is running" now means its lines were seen.
    wait_until("five intervals of collectd's data", secs(60), || {
        (sample_points(&server, &fp, memory).len() >= 5).then_some(())
    });
    let result = latest(&server, "outrider.collector.sys").expect("the collector's result");
    assert_eq!(result["state"], "OK", "{result}");
    assert!(
        result["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("is running"),
        "{result}"
    );
    assert!(
        latest(&server, "outrider.listeners").is_none_or(|r| r["state"] == "OK"),
        "the listeners bound their port"
    );

    server.cli(&["collectors", "remove", "sys"]);
    wait_until("collectd's whole group is gone", secs(30), || {
        group_members(pgid).is_empty().then_some(())
    });
}
