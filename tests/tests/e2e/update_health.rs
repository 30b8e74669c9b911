//! Update health end to end, with the real stub, the real agent library and
//! the real server: a build whose stored blobs were corrupted is refused by
//! the stub, the refusal travels through the library to the server, and
//! within one nudge window the operator reads why in `outrider release
//! status` — without the agent ever checking for updates on its own.

use outrider_tests::{Keys, TestAgent, TestServer, agent_library, secs, wait_until};

/// The server's nudge window in this test: short, so "within one window"
/// is quick to wait for.
const NUDGE_WINDOW_SECS: &str = "2";

fn blob_names(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

#[test]
fn a_corrupted_blob_shows_as_agents_refusing_the_build_within_one_nudge_window() {
    let server = TestServer::start_args(&["--nudge-window-secs", NUDGE_WINDOW_SECS]);
    let keys = Keys::init();
    server.publish_as(&keys, "dev", &agent_library(), "1.0.0");
    // The stub's own update interval is an hour: only a nudge can make it
    // look at the next release within this test.
    let agent = TestAgent::start_with(&server, &keys, "dev", "update_interval_secs = 3600\n");
    wait_until("the agent connected on 1.0.0", secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected" && a["version"] == "1.0.0")
    });

    // 2.0.0 is the same library with a trailer (ELF ignores it): a distinct
    // build. The stub is frozen while it is published and its new blobs
    // (full build and delta) are corrupted, so it never sees good bytes.
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("liboutrider_agent.so");
    let mut bytes = std::fs::read(agent_library()).unwrap();
    bytes.extend_from_slice(b"outrider e2e update health 2.0.0\n");
    std::fs::write(&v2, bytes).unwrap();
    let blobs = server.data_dir().join("releases/blobs");
    let before = blob_names(&blobs);
    agent.proc.signal(libc::SIGSTOP);
    server.publish_as(&keys, "dev", &v2, "2.0.0");
    let mut corrupted = 0;
    for path in blob_names(&blobs) {
        if before.contains(&path) {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        corrupted += 1;
    }
    assert!(corrupted >= 1, "the publish stored new blobs");
    agent.proc.signal(libc::SIGCONT);

    let keys_dir = keys.dir.path().to_str().unwrap().to_owned();
    let status = wait_until("release status naming the refusal", secs(30), || {
        let out = server.cli(&["release", "status", "--channel", "dev", "--keys", &keys_dir]);
        (out.contains("1 agent refuses") && out.contains("hash mismatch")).then_some(out)
    });
    // Still on the good build, and the refusal names it as the one on disk.
    assert!(status.contains("1.0.0"), "{status}");
    assert_eq!(agent.state().unwrap()["current"]["version"], "1.0.0");
    let log = agent.proc.log();
    assert!(
        log.contains("hash mismatch"),
        "the stub logged the refusal:\n{log}"
    );
}
