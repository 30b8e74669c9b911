//! Collector processes handed from one generation of `run_agent` to the
//! next when the host says an adopting generation follows (ABI 1.2
//! `stop_intent`), and stopped by a final stop. Each generation is stopped
//! right after it adopted: with the collector tasks on the agent's stop
//! token (as they were), a task that saw the stop before the hand-over
//! decision stopped its process, which this test catches in most runs.

use std::time::Duration;

use outrider_agent::StateBlob;

use crate::support::{Agent, AgentOptions, assert_gone, process_gone, read_pid};

#[tokio::test]
async fn a_collector_runs_on_through_ten_generations_and_stops_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{dead}");
    let pid_file = dir.path().join("collector.pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pid_file.display());
    // A definition handed over without a process: the first generation
    // starts it, as after a swap whose collector was down.
    let seed = serde_json::json!({"version": 1, "next_seq": 1, "collectors": [{"spec": {
        "name": "keeper", "kind": "command", "argv": ["/bin/sh", "-c", script]}}]});
    let mut state = StateBlob::decode(seed.to_string().as_bytes())
        .unwrap()
        .unwrap();
    let options = |state: &StateBlob, hands_over: bool| AgentOptions {
        state_in: Some(state.clone()),
        hands_over,
        ..AgentOptions::default()
    };

    let mut agent = Agent::start_with(dir.path(), &url, options(&state, true));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = read_pid(&pid_file);
    let mut first = None;
    for generation in 1..=10 {
        // Stopped at once, as a swap right after a start would.
        agent.request_stop();
        state = agent.join().await;
        let process = state
            .collectors
            .first()
            .and_then(|c| c.process.clone())
            .unwrap_or_else(|| panic!("generation {generation} handed no process"));
        let seen = (process.pid, process.start_time);
        assert_eq!(*first.get_or_insert(seen), seen, "generation {generation}");
        assert_eq!(process.pid, pid);
        assert!(!process_gone(pid), "generation {generation} stopped it");
        // The last one is told its stop is final.
        agent = Agent::start_with(dir.path(), &url, options(&state, generation < 10));
        agent.wait_log("adopted its running process").await;
    }
    agent.request_stop();
    let last = agent.join().await;
    assert!(last.collectors.is_empty(), "{:?}", last.collectors);
    assert_gone(pid).await;
}
