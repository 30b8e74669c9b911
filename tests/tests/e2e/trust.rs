//! Trust lifetime: a root that has expired (here: a clock far ahead, which
//! makes it look so) never stops the installed, verified build; updates are
//! refused with their exact error, which reaches the running library.

use outrider_tests::{TestAgent, secs, wait_until};

use crate::swap::{Setup, data_dir, taken_events, wait_current};

/// A hundred years, in seconds: past any root expiry `keys init` writes.
const CENTURY_SECS: &str = "3155760000";

#[test]
fn a_root_that_looks_expired_never_stops_the_installed_build() {
    let setup = Setup::new();
    let fleet = setup.channel("skew");
    let mut agent = fleet.agent();
    wait_current(&agent, "v1");
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait_exit(secs(10)), Some(0));
    std::fs::remove_file(data_dir(&agent).join("testlib-events.log")).unwrap();

    let agent = TestAgent::restart_env(agent, &[("OUTRIDER_STUB_CLOCK_SKEW_SECS", CENTURY_SECS)]);
    agent.proc.wait_for_log("testlib v1 started", secs(10));
    let refused = wait_until("a refused event", secs(30), || {
        taken_events(&agent)
            .into_iter()
            .find(|e| e["kind"] == "refused")
    });
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("update root refused") && reason.contains("root expired"),
        "{reason}"
    );
    // A new build is not taken under it, and the refusal is reported once.
    fleet.publish("healthy", "v2");
    std::thread::sleep(secs(3));
    let log = agent.proc.log();
    assert!(!log.contains("testlib v2 started"), "{log}");
    assert_eq!(agent.state().unwrap()["current"]["version"], "v1");
    let refusals = taken_events(&agent)
        .iter()
        .filter(|e| e["kind"] == "refused")
        .count();
    assert_eq!(refusals, 1, "checks every second, one report");
}
