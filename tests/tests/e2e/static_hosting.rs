//! The update repository exported as static files and served by a plain
//! static file server; the stub updates from it.

use outrider_tests::{Keys, StaticServer, TestAgent, TestServer, agent_library, secs, wait_until};

#[test]
fn stub_installs_the_build_from_an_exported_static_repository() {
    let server = TestServer::start();
    let keys = Keys::init();
    let sha = server.publish(&keys, "dev", &agent_library());

    let export = tempfile::tempdir().unwrap();
    let keys_dir = keys.dir.path().to_string_lossy().into_owned();
    server.cli(&[
        "release",
        "export",
        "--keys",
        &keys_dir,
        &export.path().to_string_lossy(),
    ]);
    let cdn = StaticServer::serve(export.path(), server.dir.path().join("static.log"));

    // Checks and presence still go to the server; updates come from the CDN.
    let agent = TestAgent::start_with(
        &server,
        &keys,
        "dev",
        &format!("update_url = \"{}\"", cdn.url),
    );
    agent
        .proc
        .wait_for_log("agent library loaded and running", secs(60));
    wait_until("the build passes probation", secs(60), || {
        agent
            .state()
            .filter(|s| s["current"]["sha256"] == sha.as_str())
    });
    let log = cdn.proc.log();
    assert!(
        log.contains("GET /v1/updates/channels/dev/manifest.json"),
        "manifest came from the CDN:\n{log}"
    );
    assert!(
        log.contains("GET /v1/updates/blobs/"),
        "build came from the CDN:\n{log}"
    );
    let row = wait_until("agent connected", secs(30), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected")
    });
    assert_eq!(row["build_sha256"], sha.as_str());
}
