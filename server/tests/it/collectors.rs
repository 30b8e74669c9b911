//! Collectors from the server's side: definitions through the admin API,
//! assigned by tags, carried in `config` only to agents announcing the
//! `collectors` capability, and the real agent library starting, refusing
//! (its own `[policy]`), stopping and — after a restart without the
//! server — still running them (see `docs/protocol.md`).

use std::path::Path;
use std::time::Duration;

use outrider_protocol::{CheckState, CollectorEntry, ServerMessage, capability};
use serde_json::{Value, json};

use crate::helpers::{Agent, ENROLLMENT_TOKEN, STEP, Server, result};
use crate::library::{self, LibraryAgent, agent_toml};

fn names(entries: &[CollectorEntry]) -> Vec<&str> {
    entries.iter().filter_map(CollectorEntry::name).collect()
}

fn app(tags: &[&str]) -> Value {
    json!({
        "collector": {"name": "app", "kind": "command", "argv": ["/usr/bin/sleep", "600"]},
        "tags": tags,
    })
}

#[tokio::test]
async fn definitions_are_validated_listed_and_removed() {
    let server = Server::start().await;
    let auth = format!("Bearer {}", server.admin_token);
    let put = |path: &'static str, body: Value| {
        let (server, auth) = (&server, auth.clone());
        async move { server.http("PUT", path, Some(&auth), Some(&body)).await }
    };
    // (path, body, status, piece of the error)
    let refused = [
        (
            "/api/v1/collectors/other",
            app(&[]),
            "names collector \"other\"",
        ),
        (
            "/api/v1/collectors/a.b",
            json!({"collector": {"name": "a.b", "kind": "command", "argv": ["/x"]}}),
            "name",
        ),
        (
            "/api/v1/collectors/app",
            json!({"collector": {"name": "app", "kind": "command", "argv": ["/x"], "raw_config": "x"}}),
            "raw_config",
        ),
        (
            "/api/v1/collectors/app",
            json!({"collector": {"name": "app", "kind": "command"}}),
            "argv",
        ),
        (
            "/api/v1/collectors/app",
            json!({"collector": {"name": "app", "kind": "command", "argv": ["/x"], "user": "root"}}),
            "unknown field",
        ),
    ];
    for (path, body, want) in refused {
        let (status, answer) = put(path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "{body}: {error:?} lacks {want:?}");
    }
    let (status, answer) = put("/api/v1/collectors/app", app(&["web"])).await;
    assert_eq!(
        (status, &answer["changed"]),
        (200, &json!(true)),
        "{answer}"
    );
    let (_, answer) = put("/api/v1/collectors/app", app(&["web"])).await;
    assert_eq!(answer["changed"], json!(false));
    let listed = server.admin("GET", "/api/v1/collectors", None).await;
    assert_eq!(listed[0]["collector"]["name"], "app");
    assert_eq!(listed[0]["tags"], json!(["web"]));
    server.admin("DELETE", "/api/v1/collectors/app", None).await;
    let (status, _) = server
        .http("DELETE", "/api/v1/collectors/app", Some(&auth), None)
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn only_agents_announcing_collectors_receive_them_and_may_report_them() {
    let server = Server::start().await;
    server
        .admin("PUT", "/api/v1/collectors/app", Some(&app(&["web"])))
        .await;
    let announce = |h: &mut outrider_protocol::Hello| {
        h.protocol_min = Some(2);
        h.protocol_max = Some(3);
        h.capabilities = vec![capability::COLLECTORS.into()];
    };
    // A new agent with the tag gets the collector.
    let new = Agent::new(1, "web-1").with_tags(&["web"]);
    let (mut conn, answer) = new
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), announce)
        .await;
    assert!(matches!(answer, ServerMessage::Welcome(_)));
    let ServerMessage::Config(config) = conn.recv().await else {
        panic!("expected a config")
    };
    assert_eq!(names(&config.collectors), ["app"]);
    // Its collector's results are stored.
    let check = "outrider.collector.app";
    assert_eq!(
        conn.send_results(vec![result(1, check, CheckState::Ok, "running")])
            .await,
        1
    );
    assert!(
        server
            .latest_results()
            .await
            .iter()
            .any(|r| r.check == check && r.agent == new.fp),
        "the collector's result is stored"
    );
    // An old agent with the same tag (no capability, protocol 2) never
    // sees the field, and a new agent without the tag gets no collector.
    let old = Agent::new(2, "web-2").with_tags(&["web"]);
    let (_old_conn, _, old_config) = old.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    assert!(old_config.collectors.is_empty());
    let untagged = Agent::new(3, "db-1");
    let (mut conn3, answer) = untagged
        .try_connect_with(&server, Some(ENROLLMENT_TOKEN), announce)
        .await;
    assert!(matches!(answer, ServerMessage::Welcome(_)));
    let ServerMessage::Config(config) = conn3.recv().await else {
        panic!("expected a config")
    };
    assert!(config.collectors.is_empty());
    // Removing it pushes a config without it to the agent that ran it.
    server.admin("DELETE", "/api/v1/collectors/app", None).await;
    let ServerMessage::Config(config) = conn.recv().await else {
        panic!("expected a config push")
    };
    assert!(config.collectors.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_resumed_session_of_a_library_taking_collectors_gets_them() {
    let server = Server::start().await;
    server
        .admin("PUT", "/api/v1/collectors/app", Some(&app(&[])))
        .await;
    // The old library: protocol 2, no capability; its config lacks them.
    let agent = Agent::new(1, "web-1");
    let (conn, answer) = agent.try_connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let ServerMessage::Welcome(welcome) = answer else {
        panic!("expected a welcome")
    };
    let mut conn = conn;
    let ServerMessage::Config(config) = conn.recv().await else {
        panic!("expected a config")
    };
    assert!(config.collectors.is_empty());
    drop(conn);
    // Swapped to a library that takes collectors, resuming with the same
    // config version: the config comes again, with them.
    let (mut conn, answer) = agent
        .try_connect_with(&server, None, |h| {
            h.protocol_min = Some(2);
            h.protocol_max = Some(3);
            h.capabilities = vec![capability::COLLECTORS.into()];
            h.resume_token = Some(welcome.resume_token.clone());
            h.config_version = config.version;
        })
        .await;
    let ServerMessage::Welcome(resumed) = answer else {
        panic!("expected a welcome")
    };
    assert!(resumed.resumed);
    let ServerMessage::Config(again) = conn.recv().await else {
        panic!("expected the config again")
    };
    assert_eq!(
        (again.version, names(&again.collectors)),
        (config.version, vec!["app"])
    );
    server.stop().await;
}

/// Starts the real agent library, tagged `web`, allowed `/usr/bin` and `/bin`.
fn start_agent(server_addr: &str, dir: &Path) -> LibraryAgent {
    let toml = agent_toml(
        server_addr,
        "tags = [\"web\"]\n[policy]\nallowed_commands = [\"/usr/bin\", \"/bin\"]\n",
    );
    LibraryAgent::start(library::settings(&toml, dir))
}

/// The pid the collector script wrote, once it is alive.
async fn running_pid(pidfile: &Path, not: Option<i32>) -> i32 {
    let deadline = tokio::time::Instant::now() + STEP * 2;
    loop {
        if let Ok(text) = std::fs::read_to_string(pidfile)
            && let Ok(pid) = text.trim().parse::<i32>()
            && Some(pid) != not
            && alive(pid)
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

async fn wait_gone(pid: i32) {
    let deadline = tokio::time::Instant::now() + STEP * 3;
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_result(server: &Server, check: &str, state: CheckState, summary: &str) {
    let deadline = tokio::time::Instant::now() + STEP * 2;
    loop {
        let results = server.latest_results().await;
        if results
            .iter()
            .any(|r| r.check == check && r.state == state && r.summary.contains(summary))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {state:?} result of {check} containing {summary:?}: {results:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_agent_library_runs_refuses_stops_and_remembers_collectors() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("collector.pid");
    let script = format!("echo $$ > {}; exec sleep 600", pidfile.display());
    let body = json!({
        "collector": {"name": "app", "kind": "command", "argv": ["/bin/sh", "-c", script]},
        "tags": ["web"],
    });
    server
        .admin("PUT", "/api/v1/collectors/app", Some(&body))
        .await;
    // A raw collectd fragment: refused by the host's default policy, and
    // reported as such; collectd is never asked.
    let raw = json!({
        "collector": {"name": "sys", "kind": "collectd", "raw_config": "LoadPlugin exec\n"},
    });
    server
        .admin("PUT", "/api/v1/collectors/sys", Some(&raw))
        .await;
    let agent = start_agent(&server.addr.to_string(), dir.path());
    let pid = running_pid(&pidfile, None).await;
    wait_result(&server, "outrider.collector.app", CheckState::Ok, "").await;
    wait_result(
        &server,
        "outrider.collector.sys",
        CheckState::Critical,
        "allow_raw_collector_config = false",
    )
    .await;
    assert!(
        !dir.path().join("collectors/sys/collectd.conf").exists(),
        "a refused collector gets no config"
    );

    // Stopped with the agent; started again from the saved set while the
    // server is away.
    agent.stop(STEP * 3).await;
    wait_gone(pid).await;
    let data = server.stop_keeping_data().await;
    let agent = start_agent("127.0.0.1:9", dir.path());
    let pid = running_pid(&pidfile, Some(pid)).await;
    agent.stop(STEP * 3).await;
    wait_gone(pid).await;

    // An older server (no `collectors` offered, its config has none): the
    // saved set keeps running after its config is applied.
    let old = Server::start_in(data, |c| c.capabilities.clear()).await;
    let agent = start_agent(&old.addr.to_string(), dir.path());
    let pid = running_pid(&pidfile, Some(pid)).await;
    let check = json!({ "command": ["/bin/true"], "interval_secs": 1, "timeout_secs": 5 });
    old.admin("PUT", "/api/v1/checks/alive", Some(&check)).await;
    // A result of the check proves the agent applied that server's config.
    wait_result(&old, "alive", CheckState::Ok, "").await;
    assert!(alive(pid), "the saved collector still runs");
    agent.stop(STEP * 3).await;
    wait_gone(pid).await;
    let data = old.stop_keeping_data().await;

    // Back with today's server: removing the collector stops it.
    let server = Server::start_in(data, |_| {}).await;
    let agent = start_agent(&server.addr.to_string(), dir.path());
    let pid = running_pid(&pidfile, Some(pid)).await;
    server.admin("DELETE", "/api/v1/collectors/app", None).await;
    wait_gone(pid).await;
    agent.stop(STEP * 3).await;
    server.stop().await;
}
