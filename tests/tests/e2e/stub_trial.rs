//! Stub self-update that cannot brick a fleet (`stub/src/stub_update.rs`):
//! purpose-built bad stubs (`stub/testlib/src/bin/bad_stub.rs`) are refused by their self-test or
//! reverted after their trial starts, the known-good binary stays at the
//! service's path, and the reason reaches the running library as a
//! `stub_refused` event.

use std::path::Path;

use outrider_tests::{TestAgent, secs, sha256_file, wait_until};
use serde_json::Value;

use crate::swap::{Fleet, Setup, taken_events, wait_current};

/// Publishes a copy of `outrider-bad-stub` with the trailer for `behaviour`
/// as the stub of the fleet's channel; returns its sha256.
fn publish_stub(fleet: &Fleet<'_>, dir: &Path, behaviour: &str) -> String {
    let mut bytes = std::fs::read(outrider_tests::bin_dir().join("outrider-bad-stub"))
        .expect("outrider-bad-stub is built with the workspace");
    bytes.extend_from_slice(format!("\n#OUTRIDER-BADSTUB:{behaviour}\n").as_bytes());
    let path = dir.join(behaviour);
    std::fs::write(&path, bytes).unwrap();
    let keys = fleet.setup.keys.dir.path().to_string_lossy().into_owned();
    fleet.setup.server.cli(&[
        "release",
        "publish-stub",
        "--channel",
        &fleet.channel,
        "--keys",
        &keys,
        &path.to_string_lossy(),
    ]);
    sha256_file(&path)
}

/// Waits until the library took a `stub_refused` event for `sha`.
fn wait_stub_refused(agent: &TestAgent, sha: &str, timeout_secs: u64) -> Value {
    wait_until(
        &format!("stub_refused for {sha}"),
        secs(timeout_secs),
        || {
            taken_events(agent)
                .into_iter()
                .find(|e| e["kind"] == "stub_refused" && e["build_sha256"] == sha)
        },
    )
}

#[test]
fn stubs_that_fail_their_self_test_are_refused_and_never_retried() {
    let setup = Setup::new();
    let fleet = setup.channel("stub-self-test");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    let canonical = sha256_file(&agent.stub_binary());
    let dir = tempfile::tempdir().unwrap();
    let mut refused = Vec::new();
    for (name, reason) in [
        ("exit-1", "self-test exited with status 1"),
        ("segv", "self-test was killed by signal 11"),
        ("hang", "self-test did not finish within 10 s"),
        ("wrong-abi", "the new stub speaks ABI 2, this one 1"),
    ] {
        let sha = publish_stub(&fleet, dir.path(), name);
        refused.push(sha.clone());
        let event = wait_stub_refused(&agent, &sha, 40);
        assert_eq!(event["reason"], reason, "{name}: {event}");
        assert_eq!(sha256_file(&agent.stub_binary()), canonical, "{name}");
        let state = agent.state().unwrap();
        assert!(state["stub_trial"].is_null(), "{name}: {state}");
        assert!(
            state["stub_bad"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["sha256"] == sha.as_str() && b["reason"] == reason),
            "{name}: {state}"
        );
    }
    // Never retried under the same manifest: one refusal per stub, while
    // update checks go on every second.
    std::thread::sleep(secs(3));
    let log = agent.proc.log();
    for sha in refused {
        let tries = log
            .matches(&format!("stub self-update to {sha} failed"))
            .count();
        assert_eq!(tries, 1, "{sha}: refused once, never retried");
    }
    assert!(
        !agent
            .stub_binary()
            .with_file_name("outrider-agent.new")
            .exists()
    );
    assert_eq!(agent.state().unwrap()["current"]["version"], "v1");
}

#[test]
fn a_new_stub_that_crash_loops_after_start_is_reverted_to_the_kept_binary() {
    let setup = Setup::new();
    let fleet = setup.channel("stub-crash-loop");
    let mut agent = fleet.agent();
    wait_current(&agent, "v1");
    let canonical = sha256_file(&agent.stub_binary());
    let dir = tempfile::tempdir().unwrap();
    let sha = publish_stub(&fleet, dir.path(), "crash-loop");
    // Each start of the trial dies; the service manager (here: the test)
    // starts the canonical binary again, which relaunches the trial until
    // it has used its three starts.
    for start in 1..=3 {
        assert_eq!(
            agent.proc.wait_exit(secs(40)),
            None,
            "trial start {start} dies by SIGSEGV"
        );
        let state = agent.state().unwrap();
        assert_eq!(state["stub_trial"]["starts"], start, "{state}");
        assert_eq!(
            sha256_file(&agent.stub_binary()),
            canonical,
            "kept at its path"
        );
        agent = TestAgent::restart(agent);
    }
    let event = wait_stub_refused(&agent, &sha, 30);
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains("did not reach a healthy agent in 3 starts"),
        "{event}"
    );
    let state = agent.state().unwrap();
    assert!(state["stub_trial"].is_null(), "{state}");
    assert!(
        !agent
            .stub_binary()
            .with_file_name("outrider-agent.new")
            .exists()
    );
    // The old stub runs the agent again and does not try that stub again.
    agent.proc.wait_for_log("testlib v1 started", secs(10));
    std::thread::sleep(secs(3));
    assert!(agent.proc.is_running());
    assert!(!agent.proc.log().contains("passed its self-test"));
}
