//! Collectors through the real binaries: `outrider collectors add` on the
//! server, the stub's agent library starting the collector on a tagged
//! host (its result reaches the server), `outrider collectors remove`
//! stopping its whole process group (see `agent-lib/src/collectors/
//! assigned.rs` and `docs/protocol.md`).

use std::path::Path;

use outrider_tests::{Keys, TestAgent, TestServer, agent_library, secs, wait_until};

/// Pids of live (not zombie) processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces and ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
        {
            out.push(pid);
        }
    }
    out
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_command_collector_is_started_by_tag_and_its_group_stopped_on_remove() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("collector.pid");
    // A collector that forks a child, so the group has two members.
    let script = format!(
        "echo $$ > {}; sleep 600 & exec sleep 601",
        pidfile.display()
    );
    server.cli(&[
        "collectors",
        "add",
        "app",
        "--kind",
        "command",
        "--tags",
        "web",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let listed = server.cli(&["collectors", "list"]);
    assert!(listed.contains("app") && listed.contains("web"), "{listed}");

    let _agent = TestAgent::start_with(&server, &keys, "dev", "tags = [\"web\"]");
    let ok = wait_until("the collector reports OK", secs(90), || {
        server
            .latest_results()
            .into_iter()
            .find(|r| r["check"] == "outrider.collector.app" && r["state"] == "OK")
    });
    assert!(ok["summary"].is_string(), "{ok}");
    let pgid = wait_until("the collector wrote its pid", secs(30), || {
        read_pid(&pidfile)
    });
    let members = wait_until("the collector's group runs", secs(30), || {
        let m = group_members(pgid);
        (m.len() >= 2).then_some(m)
    });
    assert!(members.contains(&pgid), "{members:?}");

    server.cli(&["collectors", "remove", "app"]);
    wait_until("the collector's whole group is gone", secs(30), || {
        group_members(pgid).is_empty().then_some(())
    });
    assert!(
        server
            .cli(&["collectors", "list"])
            .contains("no collectors")
    );
}
