//! The agent and the server together, through the real binaries: plugins
//! pulled by hash and assigned by tag, built-in checks, run-now, the metric
//! outputs, and a server outage that loses nothing.

use outrider_tests::{
    Keys, LISTENERS_OFF, TestAgent, TestServer, agent_library, script, secs, wait_until,
};
use serde_json::Value;

/// `outrider --json ARGS` against `server`, parsed.
fn cli_json(server: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("outrider {args:?}: {e}: {out}"))
}

fn results_of(server: &TestServer, fingerprint: &str, check: &str) -> Option<Value> {
    server
        .latest_results()
        .into_iter()
        .find(|r| r["agent"] == fingerprint && r["check"] == check)
}

fn fingerprint_of(server: &TestServer, hostname_tag: &str) -> String {
    wait_until("the agent registers", secs(90), || {
        server.agents().into_iter().find_map(|a| {
            let tagged = a["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == hostname_tag));
            (tagged && a["presence"] == "connected")
                .then(|| a["fingerprint"].as_str().unwrap().to_owned())
        })
    })
}

#[test]
fn plugins_by_tag_builtins_run_now_and_metric_outputs() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());

    // A plugin uploaded to the server (never present on the hosts), for
    // agents tagged `web` only; a built-in check for every agent.
    let dir = tempfile::tempdir().unwrap();
    let plugin = script(
        dir.path(),
        "check_queue",
        "echo \"QUEUE WARNING - 17 jobs|queue=17;10;20;0;100\"\nexit 1",
    );
    server.cli(&["plugins", "add", plugin.to_str().unwrap()]);
    server.cli(&[
        "checks",
        "add",
        "queue",
        "--tags",
        "web",
        "--plugin",
        "check_queue",
        "--interval-secs",
        "2",
    ]);
    server.cli(&[
        "checks",
        "add",
        "load",
        "--interval-secs",
        "2",
        "--",
        "builtin:load",
    ]);

    let web = TestAgent::start_with(&server, &keys, "dev", "tags = [\"web\"]");
    let db = TestAgent::start_with(&server, &keys, "dev", "tags = [\"db\"]");
    let web_fp = fingerprint_of(&server, "web");
    let db_fp = fingerprint_of(&server, "db");

    // The web agent fetched the plugin by hash and runs it.
    let queue = wait_until("the plugin's result", secs(60), || {
        results_of(&server, &web_fp, "queue")
    });
    assert_eq!(queue["state"], "WARNING", "{queue}");
    assert_eq!(queue["perfdata"][0]["label"], "queue", "{queue}");
    let cached = web.prefix.path().join("plugins");
    let files: Vec<_> = std::fs::read_dir(&cached).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one plugin cached by hash");
    assert_eq!(
        outrider_tests::sha256_file(&files[0].path()),
        files[0].file_name().to_string_lossy(),
        "the cached plugin is named by its content hash"
    );

    // Both run the built-in; only the web agent got the tagged check.
    for fp in [&web_fp, &db_fp] {
        let load = wait_until("a built-in result", secs(60), || {
            results_of(&server, fp, "load")
        });
        let labels: Vec<&str> = load["perfdata"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert!(labels.contains(&"load1"), "{load}");
    }
    let db_config = cli_json(&server, &["agents", "show", &db_fp]);
    assert!(
        !db_config.to_string().contains("check_queue"),
        "the db agent's config has no web check: {db_config}"
    );
    assert!(results_of(&server, &db_fp, "queue").is_none());
    assert!(
        !db.prefix.path().join("plugins").exists() || {
            std::fs::read_dir(db.prefix.path().join("plugins"))
                .unwrap()
                .next()
                .is_none()
        }
    );

    // Run-now through the CLI: the agent runs it at once, with the id.
    let run = cli_json(&server, &["run", &web_fp, "queue"]);
    assert_eq!(run["result"]["state"], "WARNING", "{run}");
    assert_eq!(run["result"]["check"], "queue", "{run}");
    let out = server.cli_output(&["run", &db_fp, "no-such-check"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-check"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The perfdata reaches /metrics and the series API.
    let metrics = ureq::get(&format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("outrider_perfdata{") && l.contains("label=\"queue\"")),
        "{metrics}"
    );
    let points = wait_until("queue points in the series API", secs(30), || {
        let q = server.api_get(&format!(
            "series/query?agent={web_fp}&check=queue&metric=queue"
        ));
        let n = q["points"].as_array().map_or(0, Vec::len);
        (n >= 2).then_some(q)
    });
    assert_eq!(points["resolution"], "raw", "{points}");
    assert_eq!(points["points"][0]["value"], 17.0, "{points}");
}

/// The server's SQLite store, read-only (WAL lets it be read while the
/// server writes).
fn open_store(server: &TestServer) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        server.data_dir().join("outrider.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// Every result sequence number the server stored for `fingerprint`.
fn stored_seqs(server: &TestServer, fingerprint: &str) -> Vec<i64> {
    let db = open_store(server);
    let mut stmt = db
        .prepare("SELECT seq FROM results WHERE fingerprint = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([fingerprint], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn results_spooled_while_the_server_is_down_arrive_once_and_in_order() {
    let mut server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    server.add_check("tick", 1, &["/bin/echo", "OK tick|n=1"]);
    let agent = TestAgent::start_with(&server, &keys, "dev", "tags = [\"spool\"]");
    let fp = fingerprint_of(&server, "spool");
    wait_until("a few results", secs(60), || {
        (stored_seqs(&server, &fp).len() >= 3).then_some(())
    });

    // The server crashes; the agent keeps checking into its disk spool.
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    server.kill();
    let down_at = unix_ms();
    let before = std::fs::read_dir(agent.prefix.path().join("spool"))
        .map(|d| d.count())
        .unwrap_or(0);
    std::thread::sleep(secs(6));
    assert!(before > 0, "the agent spools to disk");
    let up_at = unix_ms();
    server.restart();

    // Everything written during the outage arrives: the stored sequence is
    // gap-free from the first result on, each number once.
    let started = std::time::Instant::now();
    let seqs = wait_until("the spooled results arrive", secs(90), || {
        let seqs = stored_seqs(&server, &fp);
        let newest = *seqs.last()?;
        let ticks_since_restart = started.elapsed().as_secs() as i64;
        // Outage (6 s) + some after it, at 1 per second.
        (newest >= seqs[0] + 8 + ticks_since_restart / 2).then_some(seqs)
    });
    let first = seqs[0];
    let expected: Vec<i64> = (first..first + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "no gap and no duplicate in what was stored");
    // Results that ran while the server was down were stored at the time
    // they ran (back-dated), not when they arrived.
    let during_outage: i64 = {
        let db = open_store(&server);
        db.query_row(
            "SELECT COUNT(*) FROM results WHERE fingerprint = ?1 AND check_name = 'tick' \
             AND started_at_ms > ?2 AND started_at_ms < ?3 AND received_at_ms >= ?3",
            rusqlite::params![&fp, down_at, up_at],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert!(
        during_outage >= 4,
        "the 6 s outage's results arrived back-dated: {during_outage}"
    );
    drop(agent);
}

#[test]
fn cli_lists_tokens_and_refuses_a_revoked_one() {
    let server = TestServer::start();
    let keys = Keys::init();
    server.publish(&keys, "dev", &agent_library());
    let created = cli_json(&server, &["tokens", "create", "--uses", "1"]);
    let token = created["token"].as_str().expect("the secret, shown once");
    let id = created["id"].to_string();
    let id = id.trim_matches('"');
    let listed = cli_json(&server, &["tokens", "list"]);
    assert!(listed.to_string().contains(id), "{listed}");
    assert!(
        !listed.to_string().contains(token),
        "the list never shows the secret"
    );
    server.cli(&["tokens", "revoke", id]);

    // An agent enrolling with the revoked token is refused, and says why.
    let agent = TestAgent::start_toml(
        &keys,
        &format!(
            "server_url = \"{}\"\nenrollment_token = \"{token}\"\nchannel = \"dev\"\n{LISTENERS_OFF}\n",
            server.url
        ),
        &[],
    );
    agent.proc.wait_for_log("rejected", secs(60));
    drop(agent);
    assert!(server.agents().is_empty(), "nobody registered");
}
