//! Denial of service with the real binaries: an agent turned away because
//! every agent slot is taken (after its hello was authenticated) keeps its
//! enrollment, retries with its backoff and gets in once a slot frees
//! (docs/security.md, "Denial of service").

use outrider_tests::{Keys, TestAgent, TestServer, agent_library, secs, wait_until};

fn connected(server: &TestServer) -> Vec<String> {
    server
        .agents()
        .into_iter()
        .filter(|a| a["presence"] == "connected")
        .filter_map(|a| a["fingerprint"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn an_agent_over_the_cap_retries_and_gets_in_when_a_slot_frees() {
    let server = TestServer::start_args(&["--max-agent-connections", "1"]);
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());

    let first = TestAgent::start(&server, &keys, "dev");
    let first_fp = wait_until("the first agent connected", secs(60), || {
        connected(&server).into_iter().next()
    });
    let second = TestAgent::start(&server, &keys, "dev");
    server
        .proc
        .wait_for_log("--max-agent-connections reached", secs(60));
    assert_eq!(connected(&server), vec![first_fp.clone()]);

    // The first leaves; the second, never rejected, comes in on its own.
    first.proc.signal(libc::SIGTERM);
    let second_fp = wait_until("the second agent connected", secs(60), || {
        connected(&server).into_iter().find(|fp| *fp != first_fp)
    });
    assert_ne!(second_fp, first_fp);
    assert!(
        !second.proc.log().to_lowercase().contains("rejected"),
        "the refused agent was told it is rejected: {}",
        second.proc.log()
    );
}
