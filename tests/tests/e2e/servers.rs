//! Several server URLs (`server_url` + `extra_server_urls`) with the real
//! stub, library and server: a dead `server_url` neither keeps the stub from
//! fetching its build nor the library from registering, and when the server
//! moves to the other URL the agent follows it.

use outrider_tests::{
    ENROLLMENT_TOKEN, Keys, LISTENERS_OFF, TestAgent, TestServer, agent_library,
    free_loopback_port, secs, test_policy, wait_until,
};

#[test]
fn a_dead_server_url_is_skipped_and_the_server_followed_to_its_other_url() {
    let mut server = TestServer::start();
    let keys = Keys::init();
    let sha = server.publish(&keys, "dev", &agent_library());
    // Nothing listens here yet: the first URL is down.
    let other_port = free_loopback_port();
    let other = format!("http://127.0.0.1:{other_port}");
    let toml = format!(
        "server_url = \"{other}\"\nextra_server_urls = [\"{}\"]\n\
         enrollment_token = \"{ENROLLMENT_TOKEN}\"\nchannel = \"dev\"\n{LISTENERS_OFF}\n\
         policy = {}\n",
        server.url,
        test_policy()
    );
    let agent = TestAgent::start_toml(&keys, &toml, &[]);

    // The stub fetched the build from the other node, and the library
    // registered there and wrote it down for the stub.
    wait_until(
        "the agent connected with the published build",
        secs(60),
        || {
            server
                .agents()
                .into_iter()
                .find(|a| a["presence"] == "connected" && a["build_sha256"] == sha.as_str())
        },
    );
    let last = agent.prefix.path().join("last_server_url");
    let remembered = |url: &str| {
        std::fs::read_to_string(&last)
            .ok()
            .filter(|line| line.trim() == url)
    };
    wait_until("last_server_url names the live node", secs(30), || {
        remembered(&server.url)
    });

    // The server comes up on the first URL instead (same data): the agent
    // reconnects there, and only a Welcome from it rewrites the file.
    server.restart_at(&format!("127.0.0.1:{other_port}"));
    assert_eq!(server.url, other);
    wait_until("last_server_url names the moved server", secs(60), || {
        remembered(&other)
    });
    wait_until("the agent connected again", secs(30), || {
        server
            .agents()
            .into_iter()
            .find(|a| a["presence"] == "connected")
    });
    let log = agent.proc.log();
    assert!(
        log.contains(&format!(
            "connected to ws://127.0.0.1:{other_port}/v1/agent/ws"
        )),
        "{log}"
    );
}
