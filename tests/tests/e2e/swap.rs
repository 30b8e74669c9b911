//! Hot swap, probation and rollback with the purpose-built test library
//! (stub/testlib). Each variant of `outrider-testlib` is a
//! distinct signed build whose behaviour is set by its file trailer.

use std::path::Path;

use outrider_tests::testlib::{heartbeats, testlib_variant};
use outrider_tests::{Keys, TestAgent, TestServer, secs, wait_until};
use serde_json::Value;

/// Test-library builds are small: publishing keeps making deltas, so the
/// stub's delta path is exercised end to end.
const DELTAS: u32 = 3;

/// Fast update checks and short windows, so each test takes seconds.
const FAST: &str = "update_interval_secs = 1\nprobation_secs = 3\nstop_timeout_secs = 2";

/// A server and signing keys, shared by the channels of one test.
pub(crate) struct Setup {
    pub(crate) server: TestServer,
    pub(crate) keys: Keys,
}

impl Setup {
    pub(crate) fn new() -> Setup {
        Setup {
            server: TestServer::start(),
            keys: Keys::init(),
        }
    }

    /// A channel whose first build is a healthy `v1`.
    pub(crate) fn channel(&self, name: &str) -> Fleet<'_> {
        let fleet = self.empty_channel(name);
        fleet.publish("healthy", "v1");
        fleet
    }

    /// A channel with nothing published yet.
    fn empty_channel(&self, name: &str) -> Fleet<'_> {
        Fleet {
            setup: self,
            libs: tempfile::tempdir().unwrap(),
            channel: name.to_owned(),
        }
    }
}

/// One channel of a [`Setup`] and the agents following it.
pub(crate) struct Fleet<'a> {
    pub(crate) setup: &'a Setup,
    libs: tempfile::TempDir,
    pub(crate) channel: String,
}

impl Fleet<'_> {
    /// Publishes a test-library variant as release `tag`; returns its sha256.
    pub(crate) fn publish(&self, behaviour: &str, tag: &str) -> String {
        let lib = testlib_variant(self.libs.path(), behaviour, tag);
        self.setup
            .server
            .publish_with(&self.setup.keys, &self.channel, &lib, tag, DELTAS)
    }

    pub(crate) fn agent(&self) -> TestAgent {
        self.agent_env(&[])
    }

    fn agent_env(&self, env: &[(&str, &str)]) -> TestAgent {
        TestAgent::start_env(
            &self.setup.server,
            &self.setup.keys,
            &self.channel,
            FAST,
            env,
        )
    }
}

pub(crate) fn current_version(agent: &TestAgent) -> Option<String> {
    agent.state()?["current"]["version"]
        .as_str()
        .map(str::to_owned)
}

/// Waits until `state.json` says `version` is current (passed probation).
pub(crate) fn wait_current(agent: &TestAgent, version: &str) -> Value {
    wait_until(&format!("{version} to be current"), secs(30), || {
        agent.state().filter(|s| s["current"]["version"] == version)
    })
}

fn bad_versions(state: &Value, shas: &[(&str, &str)]) -> Vec<String> {
    let bad: Vec<&str> = state["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sha256"].as_str().unwrap())
        .collect();
    shas.iter()
        .filter(|(_, sha)| bad.contains(sha))
        .map(|(v, _)| v.to_string())
        .collect()
}

pub(crate) fn data_dir(agent: &TestAgent) -> &Path {
    agent.prefix.path()
}

/// Every update event the test library took through `take_update_events`
/// (ABI 1.1), in order.
pub(crate) fn taken_events(agent: &TestAgent) -> Vec<Value> {
    let text =
        std::fs::read_to_string(data_dir(agent).join("testlib-events.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Vec<Value>>(l).ok())
        .flatten()
        .collect()
}

/// Waits until the library took an event of `kind` about `version`.
pub(crate) fn wait_taken(agent: &TestAgent, kind: &str, version: &str) -> Value {
    wait_until(&format!("a {kind} event for {version}"), secs(30), || {
        taken_events(agent)
            .into_iter()
            .find(|e| e["kind"] == kind && e["version"] == version)
    })
}

#[test]
fn healthy_swap_hands_over_state_keeps_the_pid_and_unloads_the_old_copy() {
    let setup = Setup::new();
    let fleet = setup.channel("swap");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    let pid = agent.pid();
    let threads_before = agent.threads();

    fleet.publish("healthy", "v2");
    let state = wait_current(&agent, "v2");
    assert_eq!(state["previous"]["version"], "v1");
    assert_eq!(agent.pid(), pid, "no restart: same process");
    // The state blob went from v1 to v2 (v1 handed back 0+1).
    agent
        .proc
        .wait_for_log("testlib v2 started with state 1", secs(5));
    // The old copy left the address space; no thread was left behind.
    let maps = agent.maps();
    assert!(!maps.contains("agent.v1."), "v1 still mapped:\n{maps}");
    assert!(maps.contains("agent.v2."), "v2 mapped");
    assert_eq!(agent.threads(), threads_before, "thread count unchanged");
    // Collection went on across the swap: v1 then v2 heartbeats without a long gap.
    let beats = heartbeats(data_dir(&agent));
    let first_v2 = beats
        .iter()
        .position(|(_, tag)| tag == "v2")
        .expect("v2 heartbeats");
    assert!(
        first_v2 > 0 && beats[first_v2 - 1].1 == "v1",
        "v1 ran right before v2"
    );
    let gap = beats[first_v2].0 - beats[first_v2 - 1].0;
    assert!(gap < 2_000, "collection gap of {gap} ms across the swap");
}

#[test]
fn failing_builds_are_rolled_back_and_never_retried() {
    for (behaviour, reason) in [
        ("panic", "exited during probation"),
        ("fail-start", "exited during probation"),
        ("silent", "no health report within 3 s"),
    ] {
        let setup = Setup::new();
        let fleet = setup.channel(&format!("bad-{behaviour}"));
        let agent = fleet.agent();
        wait_current(&agent, "v1");
        let v2 = fleet.publish(behaviour, "v2");
        let state = wait_until(&format!("{behaviour} build marked bad"), secs(30), || {
            agent
                .state()
                .filter(|s| !s["bad"].as_array().unwrap().is_empty())
        });
        assert_eq!(bad_versions(&state, &[("v2", &v2)]), ["v2"], "{behaviour}");
        assert!(
            state["bad"][0]["reason"].as_str().unwrap().contains(reason),
            "{behaviour}: {state}"
        );
        assert_eq!(
            state["current"]["version"], "v1",
            "{behaviour}: still on v1"
        );
        // The outcome reaches the library that runs next, structured.
        let rolled = wait_taken(&agent, "rolled_back", "v2");
        assert_eq!(rolled["to_version"], "v1", "{rolled}");
        assert!(
            rolled["reason"].as_str().unwrap().contains(reason),
            "{rolled}"
        );
        assert_eq!(rolled["build_sha256"], v2.as_str());
        let failed = wait_taken(&agent, "probation_failed", "v2");
        assert!(
            failed["id"].as_u64() < rolled["id"].as_u64(),
            "{failed} {rolled}"
        );
        // v1 runs again, with the state blob, and v2 is not tried again.
        // (`silent` handed back state 2 when stopped; the others nothing, so v1's 1 is reused.)
        let expected_state = if behaviour == "silent" { 2 } else { 1 };
        agent.proc.wait_for_log(
            &format!("testlib v1 started with state {expected_state}"),
            secs(10),
        );
        std::thread::sleep(secs(3));
        let tries = agent.proc.log().matches("testlib v2 started").count();
        assert_eq!(tries, 1, "{behaviour}: tried once only");
        assert_eq!(current_version(&agent).as_deref(), Some("v1"));
    }
}

#[test]
fn a_build_that_crashes_the_process_is_rolled_back_at_the_next_start() {
    let setup = Setup::new();
    let fleet = setup.channel("abort");
    let mut agent = fleet.agent();
    wait_current(&agent, "v1");
    let v2 = fleet.publish("abort", "v2");
    assert_eq!(
        agent.proc.wait_exit(secs(30)),
        None,
        "the process was killed by SIGABRT"
    );
    assert_eq!(
        agent.state().unwrap()["pending"]["build"]["version"],
        "v2",
        "the crash is on record"
    );

    // The service manager starts the stub again.
    let agent = TestAgent::restart(agent);
    agent
        .proc
        .wait_for_log("the process crashed during probation", secs(10));
    // Wait for the recovery's own write (the state before it also says v1).
    let state = wait_until("v2 marked bad after the restart", secs(30), || {
        agent
            .state()
            .filter(|s| !s["bad"].as_array().unwrap().is_empty() && s["current"]["version"] == "v1")
    });
    agent.proc.wait_for_log("testlib v1 started", secs(10));
    assert_eq!(bad_versions(&state, &[("v2", &v2)]), ["v2"]);
    assert!(state["pending"].is_null());
    std::thread::sleep(secs(3));
    assert!(
        !agent.proc.log().contains("testlib v2 started"),
        "never retried under the same manifest"
    );
}

#[test]
fn a_new_manifest_may_offer_a_bad_build_again_and_a_fixed_one_goes_through() {
    let setup = Setup::new();
    let fleet = setup.channel("retry");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    fleet.publish("panic", "v2");
    wait_until("v2 marked bad", secs(30), || {
        agent
            .state()
            .filter(|s| !s["bad"].as_array().unwrap().is_empty())
    });
    fleet.publish("healthy", "v3");
    let state = wait_current(&agent, "v3");
    assert_eq!(state["previous"]["version"], "v1");
}

#[test]
fn a_build_that_will_not_stop_is_replaced_through_a_reexec_with_the_same_pid() {
    for (behaviour, cause) in [("stuck", "Timeout"), ("leak-thread", "left 1 thread")] {
        let setup = Setup::new();
        let fleet = setup.channel(&format!("reexec-{behaviour}"));
        let agent = fleet.agent();
        wait_current(&agent, "v1");
        let pid = agent.pid();
        fleet.publish(behaviour, "v2");
        wait_current(&agent, "v2");
        fleet.publish("healthy", "v3");
        let state = wait_current(&agent, "v3");
        assert_eq!(state["previous"]["version"], "v2", "{behaviour}");
        assert_eq!(agent.pid(), pid, "{behaviour}: re-exec keeps the PID");
        let log = agent.proc.log();
        assert!(
            log.contains("re-executing the stub in place"),
            "{behaviour}: {log}"
        );
        assert!(log.contains(cause), "{behaviour}: the reason is logged");
        assert!(
            !agent.maps().contains("agent.v2."),
            "{behaviour}: v2 is gone after the re-exec"
        );
        agent.proc.signal(libc::SIGTERM);
    }
}

#[test]
fn every_crash_point_of_a_swap_leaves_a_verified_build_to_run() {
    let steps = [
        "install-before-rename",
        "swap-pending-written",
        "swap-new-loaded",
        "swap-old-stopped",
        "swap-new-started",
        "swap-old-unloaded",
        "probation-passed",
    ];
    let setup = Setup::new();
    for (i, step) in steps.iter().enumerate() {
        let fleet = setup.channel(&format!("crash-{i}"));
        // The install step is reached for v1 too: crash on its second visit (v2).
        let at = if *step == "install-before-rename" {
            format!("{step}#2")
        } else {
            step.to_string()
        };
        let mut agent = fleet.agent_env(&[("OUTRIDER_STUB_CRASH_AT", &at)]);
        wait_current(&agent, "v1");
        let v2 = fleet.publish("healthy", "v2");
        assert_eq!(
            agent.proc.wait_exit(secs(30)),
            None,
            "{step}: killed by SIGABRT"
        );

        // Half-written builds the crash left behind, by identity: the
        // restarted stub may at once start a fresh download of v2 under the
        // same name, and only the crash's own directories must be gone. The
        // file system may give the fresh directory the freed inode number, so
        // the identity is the inode with its birth time (which, unlike the
        // change time, writing into the directory does not move).
        let versions = agent.prefix.path().join("versions");
        let inode = |name: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(versions.join(name))
                .ok()
                .map(|m| (m.ino(), m.created().ok()))
        };
        let crashed_tmp: Vec<_> = agent
            .installed_versions()
            .into_iter()
            .filter(|v| v.starts_with(".tmp"))
            .map(|v| {
                let ino = inode(&v);
                (v, ino)
            })
            .collect();
        let agent = TestAgent::restart(agent);
        let state = wait_until(
            &format!("{step}: a build passes probation"),
            secs(30),
            || {
                agent
                    .state()
                    .filter(|s| s["current"].is_object() && s["pending"].is_null())
            },
        );
        let version = state["current"]["version"].as_str().unwrap().to_owned();
        agent
            .proc
            .wait_for_log(&format!("testlib {version} started"), secs(10));
        // Whatever runs is an intact, verified build.
        let sha = state["current"]["sha256"].as_str().unwrap();
        let lib = agent
            .prefix
            .path()
            .join("versions")
            .join(sha)
            .join("liboutrider_agent.so");
        assert_eq!(
            outrider_tests::sha256_file(&lib),
            sha,
            "{step}: running an intact build"
        );
        let leftovers: Vec<&String> = crashed_tmp
            .iter()
            .filter(|(name, ino)| inode(name) == *ino)
            .map(|(name, _)| name)
            .collect();
        assert!(
            leftovers.is_empty(),
            "{step}: half-written builds cleaned: {leftovers:?}"
        );
        if *step == "probation-passed" || *step == "install-before-rename" {
            // v2 had passed (or never started): it ends up current.
            wait_current(&agent, "v2");
        } else {
            assert_eq!(
                version, "v1",
                "{step}: v2 was on probation when the process died"
            );
            assert_eq!(bad_versions(&state, &[("v2", &v2)]), ["v2"], "{step}");
        }
    }
}

#[test]
fn a_second_stub_on_the_same_prefix_is_refused() {
    let setup = Setup::new();
    let fleet = setup.channel("single");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    let out = std::process::Command::new(outrider_tests::bin_dir().join("outrider-agent"))
        .arg("--prefix")
        .arg(agent.prefix.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another outrider-agent is running"), "{err}");
    assert!(
        agent.run_copies().iter().any(|c| c.contains(".so")),
        "the first stub's copy was not cleaned"
    );
}

#[test]
fn sighup_rereads_agent_toml() {
    let setup = Setup::new();
    let fleet = setup.channel("hup-a");
    setup.empty_channel("hup-b").publish("healthy", "b1");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    let toml = std::fs::read_to_string(agent.prefix.path().join("etc/agent.toml")).unwrap();
    agent.write_agent_toml(&toml.replace("channel = \"hup-a\"", "channel = \"hup-b\""));
    agent.proc.signal(libc::SIGHUP);
    wait_current(&agent, "b1");
    assert!(agent.proc.log().contains("SIGHUP: configuration reloaded"));
}

#[test]
fn a_library_before_abi_1_1_gets_the_rollback_in_its_host_json_once() {
    let setup = Setup::new();
    let fleet = setup.empty_channel("report-legacy");
    fleet.publish("legacy", "old-1");
    let agent = fleet.agent();
    wait_current(&agent, "old-1");
    fleet.publish("panic", "bad-2");
    agent.proc.wait_for_log(
        "testlib old-1 host events [\"rolled back from bad-2 to old-1: exited during probation\"]",
        secs(30),
    );
    // Handed over once: the healthy library reports it, the queue empties.
    wait_until("events handed over", secs(10), || {
        agent
            .state()
            .filter(|s| s["update_events"] == serde_json::json!([]))
    });
    assert!(
        taken_events(&agent).is_empty(),
        "a 1.0 library never calls take_update_events"
    );
}

#[test]
fn a_library_of_abi_1_1_takes_structured_events_and_never_gets_them_twice() {
    let setup = Setup::new();
    let fleet = setup.channel("report-events");
    let agent = fleet.agent();
    let v1_installed = wait_taken(&agent, "installed", "v1");
    wait_taken(&agent, "probation_passed", "v1");
    fleet.publish("panic", "bad-2");
    let rolled = wait_taken(&agent, "rolled_back", "bad-2");
    assert_eq!(rolled["to_version"], "v1");
    // Not in the host JSON as well: one way only.
    let log = agent.proc.log();
    assert!(!log.contains("host events [\""), "{log}");
    wait_until("events handed over", secs(10), || {
        agent
            .state()
            .filter(|s| s["update_events"] == serde_json::json!([]))
    });
    // Ids only grow, and no event is taken twice.
    let ids: Vec<u64> = taken_events(&agent)
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ids[0], v1_installed["id"].as_u64().unwrap());
    let state = agent.state().unwrap();
    assert!(state["next_event_id"].as_u64().unwrap() > *ids.last().unwrap());
}

#[test]
fn the_stub_updates_itself_from_a_signed_artifact_and_keeps_its_pid() {
    let setup = Setup::new();
    let fleet = setup.channel("stub-update");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    let pid = agent.pid();
    let old_sha = outrider_tests::sha256_file(&agent.stub_binary());
    let dir = tempfile::tempdir().unwrap();
    let publish_stub = |trailer: &str| {
        let path = dir.path().join(format!("outrider-agent-{trailer}"));
        let mut bytes = std::fs::read(agent.stub_binary()).unwrap();
        bytes.extend_from_slice(format!("\n# stub build {trailer}\n").as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let keys = setup.keys.dir.path().to_string_lossy().into_owned();
        let path_arg = path.to_string_lossy().into_owned();
        setup.server.cli(&[
            "release",
            "publish-stub",
            "--channel",
            "stub-update",
            "--keys",
            &keys,
            &path_arg,
        ]);
        outrider_tests::sha256_file(&path)
    };

    // A stub artifact tampered with in the server's store is refused. The
    // stub is frozen while the artifact is published and tampered with:
    // otherwise it may fetch the genuine blob first, or resume (Range) a
    // download past the flipped byte, and rightly install a build whose
    // hash matches.
    agent.proc.signal(libc::SIGSTOP);
    let bad_sha = publish_stub("tampered");
    let blobs = setup.server.data_dir().join("releases/blobs");
    // The newest zstd blob: the uncompressed stub (named by `bad_sha`, for
    // install.sh) is uploaded too, and stubs never download it.
    let newest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != bad_sha)
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .unwrap()
        .path();
    let mut blob = std::fs::read(&newest).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x10;
    std::fs::write(&newest, blob).unwrap();
    agent.proc.signal(libc::SIGCONT);
    agent
        .proc
        .wait_for_log(&format!("stub self-update to {bad_sha} failed"), secs(30));
    agent.proc.wait_for_log("hash mismatch", secs(5));
    assert_eq!(
        outrider_tests::sha256_file(&agent.stub_binary()),
        old_sha,
        "binary unchanged"
    );

    // A good one replaces the binary and the process re-execs into it.
    let new_sha = publish_stub("good");
    agent.proc.wait_for_log("re-executing into it", secs(30));
    agent
        .proc
        .wait_for_log("continuing after a re-exec", secs(30));
    // Once its generation is healthy, the trial stub takes the canonical
    // path, keeping the previous binary beside it.
    wait_until("the binary to be replaced", secs(30), || {
        (outrider_tests::sha256_file(&agent.stub_binary()) == new_sha).then_some(())
    });
    let prev = agent.stub_binary().with_file_name("outrider-agent.prev");
    assert_eq!(outrider_tests::sha256_file(&prev), old_sha, "kept");
    let updated = wait_until("a stub_updated event", secs(30), || {
        taken_events(&agent)
            .into_iter()
            .find(|e| e["kind"] == "stub_updated")
    });
    assert_eq!(updated["build_sha256"], new_sha.as_str());
    assert_eq!(agent.pid(), pid, "same process");
    // The library came back with the state it handed over.
    agent
        .proc
        .wait_for_log("testlib v1 started with state 1", secs(10));
    std::thread::sleep(secs(3));
    assert_eq!(
        agent.proc.log().matches("re-executing into it").count(),
        1,
        "updated once, no loop"
    );
}

#[test]
fn a_library_that_stays_mapped_is_shed_by_a_reexec_after_probation() {
    let setup = Setup::new();
    let fleet = setup.channel("pinned");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    let pid = agent.pid();
    fleet.publish("pin", "v2");
    wait_current(&agent, "v2");
    fleet.publish("healthy", "v3");
    wait_current(&agent, "v3");
    // v2 could not be unmapped; once v3 passed probation the stub re-execed.
    agent
        .proc
        .wait_for_log("still mapped after unloading", secs(10));
    agent
        .proc
        .wait_for_log("an old library stayed mapped", secs(10));
    agent
        .proc
        .wait_for_log("continuing after a re-exec", secs(20));
    wait_until("v2 gone from the address space", secs(20), || {
        (!agent.maps().contains("agent.v2.")).then_some(())
    });
    assert_eq!(agent.pid(), pid, "same process");
    agent
        .proc
        .wait_for_log("testlib v3 started with state 2", secs(10));
}

#[test]
fn a_first_install_that_cannot_report_health_keeps_running() {
    let setup = Setup::new();
    let fleet = setup.empty_channel("first-silent");
    fleet.publish("silent", "s1");
    let agent = fleet.agent();
    // Nothing to roll back to: past the probation window it is kept, not marked bad.
    let state = wait_current(&agent, "s1");
    assert_eq!(state["bad"], serde_json::json!([]));
    agent
        .proc
        .wait_for_log("nothing to roll back to, keeping it", secs(5));
    assert_eq!(
        agent.proc.log().matches("testlib s1 started").count(),
        1,
        "still the first run"
    );
}

#[test]
fn a_clean_stop_during_probation_is_not_mistaken_for_a_crash() {
    let setup = Setup::new();
    let fleet = setup.channel("stop-probation");
    let mut agent = fleet.agent();
    wait_current(&agent, "v1");
    // v2 never reports health: stop the stub while it is on probation.
    fleet.publish("silent", "v2");
    wait_until("v2 on probation", secs(30), || {
        agent
            .state()
            .filter(|s| s["pending"]["build"]["version"] == "v2")
    });
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait_exit(secs(30)), Some(0));
    let state = agent.state().unwrap();
    assert!(
        state["pending"].is_null(),
        "a clean stop clears the probation marker: {state}"
    );
    assert_eq!(state["bad"], serde_json::json!([]), "and does not blame v2");
    // The next start runs v1 without a "crashed during probation" verdict.
    let agent = TestAgent::restart(agent);
    agent.proc.wait_for_log("testlib v1 started", secs(30));
    assert!(!agent.proc.log().contains("crashed during probation"));
}

#[test]
fn a_swap_during_a_server_outage_longer_than_probation_is_not_rolled_back() {
    let setup = Setup::new();
    let fleet = setup.channel("outage");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    // v2 runs and schedules but cannot reach its server: health DEGRADED.
    let v2 = fleet.publish("degraded", "v2");
    agent
        .proc
        .wait_for_log("testlib v2: server unreachable", secs(30));
    // Three probation windows (3 s each) go by: an outage is inconclusive.
    std::thread::sleep(secs(9));
    let state = agent.state().unwrap();
    assert_eq!(state["bad"], serde_json::json!([]), "{state}");
    assert_eq!(state["pending"]["build"]["sha256"], v2.as_str(), "{state}");
    assert_eq!(state["current"]["version"], "v1", "not accepted either");
    let log = agent.proc.log();
    assert!(!log.contains("rolled back"), "{log}");
    assert_eq!(
        log.matches("testlib v2 started").count(),
        1,
        "never restarted"
    );
    // The server comes back: v2 reports OK, passes and says so.
    std::fs::write(data_dir(&agent).join("testlib-server-up"), "").unwrap();
    wait_current(&agent, "v2");
    let passed = wait_taken(&agent, "probation_passed", "v2");
    assert_eq!(passed["build_sha256"], v2.as_str());
}
