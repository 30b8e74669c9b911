//! The enrollment token's life with the real stub and server: gone from
//! `agent.toml` after the first welcome (every other byte kept), not needed
//! for any reconnect, and not enough to come back after `outrider agents
//! remove` — only a new token in `agent.toml` is.

use outrider_tests::{
    ENROLLMENT_TOKEN, Keys, LISTENERS_OFF, TestAgent, TestServer, agent_library, secs, test_policy,
    wait_until,
};

fn connected(server: &TestServer) -> Option<serde_json::Value> {
    server
        .agents()
        .into_iter()
        .find(|a| a["presence"] == "connected")
}

#[test]
fn the_token_leaves_agent_toml_after_the_first_welcome_and_removal_needs_a_new_one() {
    let mut server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let head = format!(
        "# Managed by hand: keep this comment.\nserver_url = \"{}\"\n{LISTENERS_OFF}\n",
        server.url
    );
    let tail = format!(
        "channel = \"dev\"   # the update channel\n\n[policy]\n# local limits\nallowed_commands = {}\n",
        // The inline table's list, as a plain array here.
        test_policy()
            .trim_start_matches("{ allowed_commands = ")
            .trim_end_matches(" }")
    );
    let toml = format!("{head}enrollment_token = \"{ENROLLMENT_TOKEN}\"\n{tail}");
    let mut agent = TestAgent::start_toml(&keys, &toml, &[]);
    let path = agent.prefix.path().join("etc/agent.toml");
    let first = wait_until("agent connected", secs(60), || connected(&server));
    let fp = first["fingerprint"].as_str().unwrap().to_owned();

    // Removed after the first welcome; every other byte as it was.
    let spent = format!("{head}{tail}");
    wait_until("token removed from agent.toml", secs(30), || {
        (std::fs::read_to_string(&path).unwrap() == spent).then_some(())
    });
    agent
        .proc
        .wait_for_log("the enrollment token was removed from agent.toml", secs(10));

    // The agent keeps reconnecting without it: a server restart...
    server.restart();
    wait_until("agent back after a server restart", secs(60), || {
        connected(&server)
    });
    // ...and an agent restart, which reads the token-less file.
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait_exit(secs(30)), Some(0));
    let agent = TestAgent::restart(agent);
    agent
        .proc
        .wait_for_log("agent library loaded and running", secs(60));
    // Its own log, not the server's presence: the stopped process's
    // session may still count as connected for a moment.
    agent.proc.wait_for_log("connected to ws://", secs(60));
    let again = wait_until("agent back after its restart", secs(60), || {
        connected(&server)
    });
    assert_eq!(again["fingerprint"], fp.as_str());

    // Removed by the operator: cut off, and the old key alone does not
    // bring it back, though the token it enrolled with is still valid.
    let out = server.cli(&["agents", "remove", &fp]);
    assert!(out.contains("removed"), "{out}");
    agent
        .proc
        .wait_for_log("this agent was removed from the server", secs(30));
    agent
        .proc
        .wait_for_log("has no unused enrollment token", secs(30));
    assert!(server.agents().is_empty(), "{:?}", server.agents());

    // A new token in agent.toml and a restart: enrolled again, same key,
    // and the new token is spent and removed in turn.
    let created: serde_json::Value =
        serde_json::from_str(&server.cli(&["--json", "tokens", "create", "--max-uses", "1"]))
            .unwrap();
    let token = created["token"].as_str().unwrap();
    let mut agent = agent;
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait_exit(secs(30)), Some(0));
    std::fs::write(
        &path,
        format!("{head}enrollment_token = \"{token}\"\n{tail}"),
    )
    .unwrap();
    let agent = TestAgent::restart(agent);
    let back = wait_until("agent enrolled again", secs(60), || connected(&server));
    assert_eq!(back["fingerprint"], fp.as_str());
    assert_eq!(back["enrollment_token"], created["id"]);
    wait_until("new token removed from agent.toml", secs(30), || {
        (std::fs::read_to_string(&path).unwrap() == spent).then_some(())
    });
    drop(agent);
}
