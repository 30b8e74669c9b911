//! A tampered build or manifest in the server's store is refused by the
//! stub, which loads nothing.

use base64::Engine;
use outrider_tests::{Keys, TestAgent, TestServer, agent_library, secs};

/// Asserts the stub refused and stopped cleanly without loading anything.
fn assert_nothing_loaded(mut agent: TestAgent) {
    let log = agent.proc.log();
    assert!(
        !log.contains("agent library loaded"),
        "nothing may be loaded:\n{log}"
    );
    assert!(
        agent
            .installed_versions()
            .iter()
            .all(|v| v.starts_with(".tmp")),
        "nothing installed: {:?}",
        agent.installed_versions()
    );
    assert!(
        agent.run_copies().is_empty(),
        "no loaded copy: {:?}",
        agent.run_copies()
    );
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait_exit(secs(10)), Some(0));
}

#[test]
fn tampered_build_is_refused_with_a_hash_mismatch() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());

    // Flip one byte in the middle of the only blob in the store.
    let blobs = server.data_dir().join("releases/blobs");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .expect("one blob");
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();

    let agent = TestAgent::start(&server, &keys, "dev");
    agent
        .proc
        .wait_for_log("hash mismatch for compressed build", secs(30));
    // The refusal is queued, with the exact error, for the first library
    // that runs to report (none can here: it stays in state.json).
    let refused = outrider_tests::wait_until("a refused event", secs(10), || {
        agent.state().and_then(|s| {
            s["update_events"]
                .as_array()?
                .iter()
                .find(|e| e["kind"] == "refused")
                .cloned()
        })
    });
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("hash mismatch for compressed build: expected sha256"),
        "{reason}"
    );
    assert!(refused["build_sha256"].is_string(), "{refused}");
    assert!(
        server.agents().is_empty(),
        "no agent ran, so none registered"
    );
    assert_nothing_loaded(agent);
}

#[test]
fn tampered_manifest_is_refused_with_a_bad_signature() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());

    // Change one byte of the signed payload of the stored manifest, keeping
    // the signatures: a byte-level tamper by whoever controls the store.
    let db = rusqlite::Connection::open(server.data_dir().join("releases/releases.db")).unwrap();
    let envelope: Vec<u8> = db
        .query_row(
            "SELECT envelope FROM manifests WHERE channel = 'dev' ORDER BY sequence DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut payload = b64.decode(json["payload"].as_str().unwrap()).unwrap();
    let pos = payload
        .windows(10)
        .position(|w| w == b"\"sequence\"")
        .expect("sequence field")
        + 11;
    let digit = payload[pos..]
        .iter_mut()
        .find(|b| b.is_ascii_digit())
        .expect("a sequence digit");
    *digit = if *digit == b'9' { b'8' } else { *digit + 1 };
    json["payload"] = b64.encode(&payload).into();
    db.execute(
        "UPDATE manifests SET envelope = ?1 WHERE channel = 'dev'",
        [serde_json::to_vec(&json).unwrap()],
    )
    .unwrap();

    let agent = TestAgent::start(&server, &keys, "dev");
    agent.proc.wait_for_log("manifest refused", secs(30));
    agent.proc.wait_for_log("does not verify", secs(5));
    assert_nothing_loaded(agent);
}

#[test]
fn a_tampered_update_is_refused_and_the_running_library_is_told_exactly_why() {
    use crate::swap::{Setup, taken_events, wait_current};
    let setup = Setup::new();
    let fleet = setup.channel("tamper-events");
    let agent = fleet.agent();
    wait_current(&agent, "v1");
    // Frozen while v2 is published and its blobs (full build and deltas)
    // are tampered with, so it never sees the genuine bytes.
    agent.proc.signal(libc::SIGSTOP);
    let blobs = setup.server.data_dir().join("releases/blobs");
    let before: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let v2 = fleet.publish("healthy", "v2");
    for entry in std::fs::read_dir(&blobs).unwrap().flatten() {
        let path = entry.path();
        if before.contains(&path) || path.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    }
    agent.proc.signal(libc::SIGCONT);
    let refused = outrider_tests::wait_until("v1 told of the refusal", secs(30), || {
        taken_events(&agent)
            .into_iter()
            .find(|e| e["kind"] == "refused")
    });
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("hash mismatch for compressed build: expected sha256"),
        "{reason}"
    );
    // v1 keeps running; v2 never ran.
    std::thread::sleep(secs(2));
    assert_eq!(agent.state().unwrap()["current"]["version"], "v1");
    assert!(!agent.proc.log().contains("testlib v2 started"));
    assert!(
        !agent.installed_versions().contains(&v2),
        "nothing installed"
    );
}
