//! Probation judged on the agent itself: the real agent library swapped in
//! while its server is down reports health DEGRADED, which is inconclusive —
//! the build is not rolled back however long the outage lasts past
//! `probation_secs`, and it passes once the server is back. Updates come
//! from a static mirror, so the stub can fetch the build during the outage.

use std::path::Path;

use outrider_tests::{Keys, StaticServer, TestAgent, TestServer, agent_library, secs, wait_until};

/// Exports the server's repository into `dir`.
fn export(server: &TestServer, keys: &Keys, dir: &Path) {
    let keys_dir = keys.dir.path().to_string_lossy().into_owned();
    server.cli(&[
        "release",
        "export",
        "--keys",
        &keys_dir,
        &dir.to_string_lossy(),
    ]);
}

/// Copies the tree `from` over `to`, the channel manifests last, so a
/// reader of `to` never sees a manifest naming a blob not there yet.
fn copy_over(from: &Path, to: &Path) {
    let mut files = Vec::new();
    let mut dirs = vec![from.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort_by_key(|p| p.to_string_lossy().contains("/channels/"));
    for file in files {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

#[test]
fn a_real_build_swapped_in_during_a_server_outage_is_not_rolled_back() {
    let mut server = TestServer::start();
    let keys = Keys::init();
    let v1 = server.publish_as(&keys, "dev", &agent_library(), "real-1");
    let mirror = tempfile::tempdir().unwrap();
    export(&server, &keys, mirror.path());
    let cdn = StaticServer::serve(mirror.path(), server.dir.path().join("static.log"));
    let agent = TestAgent::start_with(
        &server,
        &keys,
        "dev",
        &format!(
            "update_url = \"{}\"\nupdate_interval_secs = 1\nprobation_secs = 3",
            cdn.url
        ),
    );
    wait_until("real-1 passes probation", secs(60), || {
        agent
            .state()
            .filter(|s| s["current"]["sha256"] == v1.as_str())
    });

    // A second build (the same library with trailing bytes: another hash),
    // published and exported while the server is up, reaches the mirror
    // only once the server is down.
    let libs = tempfile::tempdir().unwrap();
    let lib2 = libs.path().join("liboutrider_agent.so");
    let mut bytes = std::fs::read(agent_library()).unwrap();
    bytes.extend_from_slice(b"\n# outage build 2\n");
    std::fs::write(&lib2, bytes).unwrap();
    let v2 = server.publish_as(&keys, "dev", &lib2, "real-2");
    let staged = tempfile::tempdir().unwrap();
    export(&server, &keys, staged.path());
    server.kill();
    copy_over(staged.path(), mirror.path());

    agent.proc.wait_for_log("cannot reach server", secs(60));
    wait_until("real-2 running on probation", secs(60), || {
        agent
            .state()
            .filter(|s| s["pending"]["build"]["sha256"] == v2.as_str())
    });
    // Three probation windows of outage: inconclusive, nothing rolled back.
    std::thread::sleep(secs(9));
    let state = agent.state().unwrap();
    assert_eq!(state["bad"], serde_json::json!([]), "{state}");
    assert_eq!(state["pending"]["build"]["sha256"], v2.as_str(), "{state}");
    let log = agent.proc.log();
    assert!(!log.contains("rolled back"), "{log}");

    // The server returns: real-2 connects, passes probation and reports.
    server.restart();
    wait_until("real-2 passes probation", secs(60), || {
        agent
            .state()
            .filter(|s| s["current"]["sha256"] == v2.as_str())
    });
    let row = wait_until("the agent reports on real-2", secs(60), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected" && a["build_sha256"] == v2.as_str())
    });
    assert_eq!(row["build_sha256"], v2.as_str());
}
