//! The stub gives back the pages the idle agent does not touch (30 s after
//! probation and after each update check; stub/src/memory.rs) and the real
//! agent library keeps working on the pages it faults back in: checks
//! report, run-now answers, and a hot swap goes through with the same pid.

use outrider_tests::{Keys, TestAgent, TestServer, agent_library, script, secs, wait_until};
use serde_json::Value;

const RELEASED: &str = "idle pages given back";

/// `name=<number>` from a log line.
fn field(line: &str, name: &str) -> u64 {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 1;
    line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {line}"))
}

fn run_now(server: &TestServer, fingerprint: &str) -> Value {
    let out = server.cli(&["--json", "run", fingerprint, "ok"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn idle_pages_are_given_back_and_the_agent_keeps_reporting_and_swapping() {
    let server = TestServer::start();
    let keys = Keys::init();
    let plugins = tempfile::tempdir().unwrap();
    let plugin = script(plugins.path(), "check_ok", "echo 'OK - fine|v=1'\nexit 0");
    server.add_check("ok", 1, &[plugin.to_str().unwrap()]);
    let libs = tempfile::tempdir().unwrap();
    let v1 = libs.path().join("v1.so");
    std::fs::copy(agent_library(), &v1).unwrap();
    server.publish_as(&keys, "dev", &v1, "v1");

    let agent = TestAgent::start_with(
        &server,
        &keys,
        "dev",
        "update_interval_secs = 1\nprobation_secs = 3",
    );
    let pid = agent.pid();
    wait_until("v1 to pass probation", secs(60), || {
        agent.state().filter(|s| s["current"]["version"] == "v1")
    });
    agent.proc.wait_for_log(RELEASED, secs(90));
    let log = agent.proc.log();
    let line = log.lines().find(|l| l.contains(RELEASED)).unwrap();
    // The stub's binary and the library's copy, code and read-only data.
    assert!(field(line, "mappings") >= 2, "{line}");
    assert!(field(line, "file_kib") > 0, "{line}");
    let released_at = log.lines().filter(|l| l.contains(RELEASED)).count();

    // After the release: the library still runs checks, answers run-now
    // and reports over its connection.
    let fingerprint = wait_until("the agent to be connected", secs(30), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected")
            .and_then(|a| a["fingerprint"].as_str().map(str::to_owned))
    });
    let run = run_now(&server, &fingerprint);
    assert_eq!(run["result"]["state"], "OK", "{run}");

    // A hot swap after pages were given back: the stub loads, starts and
    // hands over to a new copy, same pid, and the new one reports too.
    let v2 = libs.path().join("v2.so");
    let mut bytes = std::fs::read(agent_library()).unwrap();
    bytes.extend_from_slice(b"\nidle-pages test build v2\n");
    std::fs::write(&v2, bytes).unwrap();
    server.publish_as(&keys, "dev", &v2, "v2");
    wait_until("v2 to pass probation", secs(60), || {
        agent.state().filter(|s| s["current"]["version"] == "v2")
    });
    assert_eq!(agent.pid(), pid, "swapped in place");
    let run = run_now(&server, &fingerprint);
    assert_eq!(run["result"]["state"], "OK", "{run}");
    // Given back again later (the next settle), and still answering.
    wait_until("the next release", secs(90), || {
        (agent
            .proc
            .log()
            .lines()
            .filter(|l| l.contains(RELEASED))
            .count()
            > released_at)
            .then_some(())
    });
    let run = run_now(&server, &fingerprint);
    assert_eq!(run["result"]["state"], "OK", "{run}");
}
