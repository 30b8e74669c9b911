//! The one thin path through every part: install, register, report, swap.

use outrider_tests::{Keys, TestAgent, TestServer, agent_library, script, secs, wait_until};
use serde_json::Value;

/// A plugin with a WARNING state, a quoted label with a space, a unit, and
/// every threshold field, so the test sees the whole path of perfdata.
const DEMO_PLUGIN: &str = r#"echo "QUEUE WARNING - 17 jobs waiting|queue=17;10;20;0;100 'wait time'=0.25s;1;2"
exit 1"#;

fn find_result(server: &TestServer, check: &str) -> Option<Value> {
    server
        .latest_results()
        .into_iter()
        .find(|r| r["check"] == check)
}

#[test]
fn published_build_registers_reports_and_deregisters_on_sigterm() {
    let server = TestServer::start();
    let keys = Keys::init();
    let plugins = tempfile::tempdir().unwrap();
    let plugin = script(plugins.path(), "check_queue", DEMO_PLUGIN);
    server.add_check("queue", 1, &[plugin.to_str().unwrap()]);
    let sha = server.publish(&keys, "dev", &agent_library());

    let mut agent = TestAgent::start(&server, &keys, "dev");

    // The stub verified, installed and loaded exactly the published build.
    agent
        .proc
        .wait_for_log("agent library loaded and running", secs(60));
    wait_until("the build passes probation", secs(60), || {
        agent
            .state()
            .filter(|s| s["current"]["sha256"] == sha.as_str())
    });
    assert_eq!(agent.installed_versions(), vec![sha.clone()]);
    let copies = agent.run_copies();
    assert_eq!(copies.len(), 1, "one loaded copy in run/: {copies:?}");
    assert!(
        copies[0].starts_with("agent.") && copies[0].ends_with(".1.so"),
        "{copies:?}"
    );
    assert!(
        agent.proc.log().contains(&sha),
        "the stub logs the sha256 it loaded"
    );
    // The same log also goes to a daily-rolled file in the log directory.
    let log_dir = agent.prefix.path().join("log");
    let file = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outrider-agent")
        })
        .expect("a rolled log file");
    let text = std::fs::read_to_string(file.path()).unwrap();
    assert!(text.contains("agent library loaded and running"), "{text}");
    assert!(!text.contains('\u{1b}'), "no terminal colours in the file");

    // The agent registered with its fingerprint and labels.
    let row = wait_until("agent connected", secs(30), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected")
    });
    let fingerprint = row["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 20);
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(row["hostname"], gethostname());
    assert_eq!(row["os"], std::env::consts::OS);
    assert_eq!(row["agent_version"], "0.1.0");
    assert_eq!(
        row["build_sha256"],
        sha.as_str(),
        "the agent reports the build its stub loaded"
    );
    let identity = agent.prefix.path().join("etc/identity.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&identity).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "identity key is private");

    // The check ran on the agent's schedule and its result reached SQLite.
    let result = wait_until("queue result", secs(30), || find_result(&server, "queue"));
    assert_eq!(result["state"], "WARNING");
    assert_eq!(result["summary"], "QUEUE WARNING - 17 jobs waiting");
    assert_eq!(result["agent"], fingerprint.as_str());
    let perf = result["perfdata"].as_array().unwrap();
    assert_eq!(perf.len(), 2, "{perf:?}");
    assert_eq!(perf[0]["label"], "queue");
    assert_eq!(perf[0]["value"], 17.0);
    assert_eq!(perf[0]["warn"], "10");
    assert_eq!(perf[0]["crit"], "20");
    assert_eq!(perf[0]["min"], 0.0);
    assert_eq!(perf[0]["max"], 100.0);
    assert_eq!(perf[1]["label"], "wait time");
    assert_eq!(perf[1]["value"], 0.25);
    assert_eq!(perf[1]["uom"], "s");
    // It keeps running on its 1 s schedule.
    let first_seq = result["seq"].as_u64().unwrap();
    wait_until("a later run", secs(10), || {
        find_result(&server, "queue").filter(|r| r["seq"].as_u64().unwrap() > first_seq)
    });

    // The CLI shows both.
    let agents = server.cli(&["agents"]);
    assert!(
        agents.contains(&fingerprint) && agents.contains("connected"),
        "{agents}"
    );
    let checks = server.cli(&["checks"]);
    assert!(
        checks.contains("queue") && checks.contains("WARNING") && checks.contains("queue=17"),
        "{checks}"
    );
    // Other rows (the stub's `outrider.update` events) may come first.
    let json: Value = serde_json::from_str(&server.cli(&["--json", "checks"])).unwrap();
    let queue = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == "queue")
        .unwrap_or_else(|| panic!("no queue row: {json}"));
    assert_eq!(queue["perfdata"][1]["label"], "wait time");

    // SIGTERM: clean stop, exit 0, goodbye → deregistered (not down).
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(
        agent.proc.wait_exit(secs(30)),
        Some(0),
        "stub log:\n{}",
        agent.proc.log()
    );
    let row = wait_until("agent deregistered", secs(10), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] != "connected")
    });
    assert_eq!(row["presence"], "deregistered");
    assert!(
        agent.run_copies().is_empty(),
        "the loaded copy was unloaded and removed"
    );
    assert!(
        agent
            .proc
            .log()
            .contains("agent library stopped and unloaded")
    );
    assert!(server.cli(&["agents"]).contains("deregistered"));
}

#[test]
fn killed_agent_is_down_not_deregistered() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let mut agent = TestAgent::start(&server, &keys, "dev");
    wait_until("agent connected", secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected")
    });
    agent.proc.signal(libc::SIGKILL);
    assert_eq!(agent.proc.wait_exit(secs(10)), None, "killed by a signal");
    let row = wait_until("agent no longer connected", secs(20), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] != "connected")
    });
    assert_eq!(
        row["presence"], "down",
        "a vanished agent is an alarm, not a goodbye"
    );
}

#[test]
fn identity_survives_restart_and_reconnects_without_enrollment() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let mut agent = TestAgent::start(&server, &keys, "dev");
    let first = wait_until("agent connected", secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected")
    });
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait_exit(secs(30)), Some(0));

    // Same prefix, no enrollment token this time: the pinned key suffices.
    let toml = agent.prefix.path().join("etc/agent.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let without_token: String = text
        .lines()
        .filter(|l| !l.starts_with("enrollment_token"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&toml, without_token).unwrap();
    let restarted = TestAgent::restart(agent);
    restarted
        .proc
        .wait_for_log("agent library loaded and running", secs(60));
    let again = wait_until("agent connected again", secs(30), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected")
    });
    assert_eq!(again["fingerprint"], first["fingerprint"]);
    assert_eq!(server.agents().len(), 1, "still one agent");
}

fn gethostname() -> String {
    let out = std::process::Command::new("hostname")
        .output()
        .expect("run hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
