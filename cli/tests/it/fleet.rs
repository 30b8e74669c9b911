//! `outrider agents|checks|plugins|tokens|run` against a real server on
//! loopback, with a scripted agent answering run-now calls.

use std::path::Path;
use std::process::Output;

use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use outrider_protocol::{
    AGENT_WS_PATH, AgentMessage, CheckResult, CheckState, Fingerprint, Hello, PROTOCOL_VERSION,
    ServerMessage, auth_message, fingerprint_of,
};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A server running on its own runtime until dropped.
struct Fleet {
    url: String,
    token: String,
    enrollment: String,
    home: tempfile::TempDir,
    _data: tempfile::TempDir,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Fleet {
    fn start() -> Fleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = data.path().join("ready");
        let mut config = outrider_server::ServerConfig::new(data.path().join("server"), addr);
        config.ready_file = Some(ready.clone());
        let shutdown = CancellationToken::new();
        runtime.spawn(outrider_server::run(config, listener, shutdown.clone()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ready.exists() {
            assert!(std::time::Instant::now() < deadline, "server did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let read = |name: &str| {
            std::fs::read_to_string(data.path().join("server").join(name))
                .unwrap()
                .trim()
                .to_owned()
        };
        Fleet {
            url: format!("http://{addr}"),
            token: read("admin.token"),
            enrollment: read("enrollment.token"),
            home: tempfile::tempdir().unwrap(),
            _data: data,
            shutdown,
            runtime,
        }
    }

    fn output(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_outrider"))
            .args(["--server", &self.url, "--token", &self.token])
            .args(args)
            .env("OUTRIDER_HOME", self.home.path())
            .output()
            .unwrap()
    }

    /// Runs the CLI, asserting success; returns stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "outrider {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI with `--json`, parsing stdout.
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.cli(&[&["--json"], args].concat())).unwrap()
    }

    /// Runs the CLI expecting `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.output(args);
        assert_eq!(out.status.code(), Some(code), "outrider {args:?}: {out:?}");
        String::from_utf8(out.stderr).unwrap()
    }

    /// Connects an agent with `tags` that answers every RPC with an OK
    /// result summarising what it was asked; returns its fingerprint and
    /// the token that ends it.
    fn agent(&self, seed: u8, hostname: &str, tags: &[&str]) -> (Fingerprint, CancellationToken) {
        self.agent_with(seed, hostname, tags, None, Vec::new())
    }

    /// [`Fleet::agent`] following `channel`, sending `report` (and waiting
    /// for its ack) right after the welcome.
    fn agent_with(
        &self,
        seed: u8,
        hostname: &str,
        tags: &[&str],
        channel: Option<&str>,
        report: Vec<CheckResult>,
    ) -> (Fingerprint, CancellationToken) {
        let channel = channel.map(str::to_owned);
        let key = SigningKey::from_bytes(&[seed; 32]);
        let fp = fingerprint_of(&key.verifying_key());
        let url = format!("{}{AGENT_WS_PATH}", self.url.replacen("http", "ws", 1));
        let stop = CancellationToken::new();
        let (hostname, tags, token) = (
            hostname.to_owned(),
            tags.iter().map(|t| t.to_string()).collect(),
            self.enrollment.clone(),
        );
        let (welcomed_tx, welcomed) = std::sync::mpsc::channel();
        let agent_fp = fp.clone();
        let agent_stop = stop.clone();
        self.runtime.spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Some(ServerMessage::decode(&t).unwrap()),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            };
            let Some(ServerMessage::Challenge { nonce }) = next(&mut ws).await else {
                panic!("no challenge")
            };
            let hello = Hello {
                protocol_version: PROTOCOL_VERSION,
                fingerprint: agent_fp.clone(),
                public_key: hex::encode(key.verifying_key().as_bytes()),
                signature: hex::encode(key.sign(&auth_message(&nonce, &agent_fp)).to_bytes()),
                enrollment_token: Some(token),
                hostname,
                os: "linux".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
                build_sha256: None,
                // Published as 0.1.1 while the crate says 0.1.0: every
                // view must show 0.1.1.
                build_version: Some("0.1.1".into()),
                protocol_min: None,
                protocol_max: None,
                capabilities: Vec::new(),
                stub_version: Some("0.2.0".into()),
                channel,
                last_seq: 0,
                tags,
                resume_token: None,
                config_version: 0,
            };
            let text = AgentMessage::Hello(hello).encode();
            ws.send(Message::text(text)).await.unwrap();
            let welcome = next(&mut ws).await;
            assert!(
                matches!(welcome, Some(ServerMessage::Welcome(_))),
                "{welcome:?}"
            );
            if !report.is_empty() {
                let batch = AgentMessage::Results { results: report };
                ws.send(Message::text(batch.encode())).await.unwrap();
                loop {
                    match next(&mut ws).await {
                        Some(ServerMessage::Ack { .. }) => break,
                        Some(_) => continue,
                        None => panic!("no ack"),
                    }
                }
            }
            welcomed_tx.send(()).unwrap();
            loop {
                let msg = tokio::select! {
                    _ = agent_stop.cancelled() => return,
                    msg = next(&mut ws) => msg,
                };
                let (id, check, summary) = match msg {
                    Some(ServerMessage::RunCheck { id, check }) => {
                        (id, check.clone(), format!("ran check {check}"))
                    }
                    Some(ServerMessage::RunScript { id, script, .. }) => (
                        id,
                        "adhoc".to_owned(),
                        format!("ran {} script bytes", script.len()),
                    ),
                    Some(_) => continue,
                    None => return,
                };
                let result = CheckResult {
                    seq: 0,
                    check,
                    state: CheckState::Ok,
                    summary,
                    long_output: String::new(),
                    perfdata: Vec::new(),
                    unknown_perfdata: Vec::new(),
                    started_at_ms: 1,
                    duration_ms: 2,
                    update_event: None,
                };
                let answer = AgentMessage::RpcResult {
                    id,
                    result: Some(result),
                    error: None,
                };
                ws.send(Message::text(answer.encode())).await.unwrap();
            }
        });
        welcomed
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("agent was not welcomed");
        (fp, stop)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn tokens_are_created_listed_and_revoked() {
    let fleet = Fleet::start();
    let created = fleet.json(&[
        "tokens",
        "create",
        "--note",
        "lab",
        "--uses",
        "2",
        "--expires",
        "1d",
    ]);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["token"].as_str().unwrap().len(), 64);
    assert_eq!(created["uses_left"], 2);
    let listed = fleet.json(&["tokens", "list"]);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(
        !listed
            .to_string()
            .contains(created["token"].as_str().unwrap())
    );
    assert!(fleet.cli(&["tokens"]).contains("active"));
    fleet.cli(&["tokens", "revoke", &id]);
    assert!(fleet.cli(&["tokens", "list"]).contains("revoked"));
    let err = fleet.fails(&["tokens", "revoke", "nope"], 1);
    assert!(err.contains("no enrollment token"), "{err}");
    let err = fleet.fails(&["tokens", "create", "--expires", "3w"], 2);
    assert!(err.contains("unit"), "{err}");
}

#[test]
fn tokens_carry_expiry_and_tags_and_removed_agents_disappear() {
    let fleet = Fleet::start();
    let created = fleet.json(&[
        "tokens",
        "create",
        "--expires-in",
        "2h",
        "--max-uses",
        "1",
        "--tags",
        "web,db",
    ]);
    assert_eq!(created["allowed_tags"], serde_json::json!(["db", "web"]));
    let lifetime =
        created["expires_at_ms"].as_i64().unwrap() - created["created_at_ms"].as_i64().unwrap();
    assert_eq!(lifetime, 7_200_000);
    let table = fleet.cli(&["tokens"]);
    let row = table
        .lines()
        .find(|l| l.contains(created["id"].as_str().unwrap()))
        .unwrap();
    assert!(
        row.contains(" in 2h ") || row.contains(" in 120m "),
        "{table}"
    );
    assert!(row.contains(" db,web"), "{table}");
    // The server's own token is listed, with its expiry.
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("bootstrap ") && l.contains(" in 24h ")),
        "{table}"
    );

    let (fp, _stop) = fleet.agent(1, "web-1", &[]);
    let out = fleet.cli(&["agents", "remove", "web-1"]);
    assert!(out.contains(&format!("agent {fp} removed")), "{out}");
    assert!(out.contains("new enrollment token"), "{out}");
    assert_eq!(fleet.json(&["agents"]), serde_json::json!([]));
    let err = fleet.fails(&["agents", "remove", fp.as_str()], 1);
    assert!(err.contains("no agent"), "{err}");
}

/// The same host shows the same version in `agents`, `agents show`, the
/// API and `release status`: the version its build was published as.
#[test]
fn one_version_everywhere() {
    let fleet = Fleet::start();
    let (_fp, _stop) = fleet.agent(1, "web-1", &[]);
    let table = fleet.cli(&["agents"]);
    let row = table.lines().find(|l| l.contains("web-1")).unwrap();
    assert!(
        row.contains(" 0.1.1 ") && row.contains(" 0.2.0 "),
        "{table}"
    );
    assert!(!row.contains("0.1.0"), "{table}");
    let shown = fleet.cli(&["agents", "show", "web-1"]);
    assert!(shown.contains("version:      0.1.1\n"), "{shown}");
    assert!(shown.contains("stub:         0.2.0\n"), "{shown}");
    let api = fleet.json(&["agents"]);
    assert_eq!(api[0]["version"], "0.1.1");
    assert_eq!(api[0]["stub_version"], "0.2.0");
    let keys = tempfile::tempdir().unwrap();
    let keys = keys.path().to_str().unwrap();
    let status = fleet.json(&["release", "status", "--keys", keys]);
    assert_eq!(status["agents_by_version"], serde_json::json!({"0.1.1": 1}));
    assert_eq!(status["stubs_by_version"], serde_json::json!({"0.2.0": 1}));
    let text = fleet.cli(&["release", "status", "--keys", keys]);
    assert!(text.contains("agents by version:\n  0.1.1 "), "{text}");
}

/// `release status` shows per channel which agents fail to take a build
/// and why, from the update events agents reported.
#[test]
fn release_status_shows_agents_refusing_a_build_by_reason() {
    let fleet = Fleet::start();
    let refusal = |seq| CheckResult {
        seq,
        check: "outrider.update".into(),
        state: CheckState::Warning,
        summary: "refused 1.4.0".into(),
        long_output: String::new(),
        perfdata: Vec::new(),
        started_at_ms: 1,
        duration_ms: 0,
        unknown_perfdata: Vec::new(),
        update_event: Some(Box::new(outrider_protocol::UpdateEvent {
            id: 9,
            kind: "refused".into(),
            at_unix_ms: outrider_protocol::unix_now_ms(),
            build_sha256: Some("ab".repeat(32)),
            version: Some("1.4.0".into()),
            to_sha256: None,
            to_version: None,
            reason: "hash mismatch: expected abab…, got 9f3c…".into(),
        })),
    };
    let mut stops = Vec::new();
    for seed in 1..=3 {
        let name = format!("web-{seed}");
        stops.push(fleet.agent_with(seed, &name, &[], Some("stable"), vec![refusal(1)]));
    }
    let keys = tempfile::tempdir().unwrap();
    let keys = keys.path().to_str().unwrap();
    let text = fleet.cli(&["release", "status", "--keys", keys]);
    assert!(
        text.contains("  3 agents refuse 1.4.0: hash mismatch: expected abab…, got 9f3c…\n"),
        "{text}"
    );
    assert!(text.contains("rollbacks in the last 24 h: 0"), "{text}");
    let json = fleet.json(&["release", "status", "--keys", keys]);
    let stable = &json["update_health"]["channels"][0];
    assert_eq!(stable["channel"], "stable");
    assert_eq!(stable["builds"][0]["version"], "0.1.1");
    assert_eq!(stable["builds"][0]["agents"], 3);
    assert_eq!(stable["failing"][0]["agents"], 3);
}

#[test]
fn plugins_checks_agents_and_run_now() {
    let fleet = Fleet::start();
    let work = tempfile::tempdir().unwrap();
    let (web, _web_stop) = fleet.agent(1, "web-1", &["web"]);
    let (db, db_stop) = fleet.agent(2, "db-1", &["db"]);

    // Plugins and a check using one, for web agents only.
    let plugin = write(work.path(), "check_disk_x", "#!/bin/sh\necho OK\n");
    let info = fleet.json(&["plugins", "add", &plugin]);
    assert_eq!(info["name"], "check_disk_x");
    assert_eq!(info["size"], 18);
    fleet.cli(&[
        "checks",
        "add",
        "disk",
        "--plugin",
        "check_disk_x",
        "--tags",
        "web",
        "--",
        "-w",
        "80",
    ]);
    let checks = fleet.json(&["checks", "list"]);
    assert_eq!(
        checks[0]["command"],
        serde_json::json!(["plugin:check_disk_x", "-w", "80"])
    );
    assert_eq!(checks[0]["tags"], serde_json::json!(["web"]));
    let err = fleet.fails(&["plugins", "remove", "check_disk_x"], 1);
    assert!(err.contains("used by check(s) disk"), "{err}");
    let err = fleet.fails(&["checks", "add", "empty"], 64);
    assert!(err.contains("--plugin"), "{err}");

    // Agents: the web agent runs the check, the db agent does not.
    let agents = fleet.json(&["agents"]);
    assert_eq!(agents.as_array().unwrap().len(), 2);
    let shown = fleet.json(&["agents", "show", "web-1"]);
    assert_eq!(shown["agent"]["fingerprint"], web.as_str());
    assert_eq!(shown["config"]["checks"][0]["name"], "disk");
    let shown = fleet.json(&["agents", "show", db.as_str()]);
    assert_eq!(shown["config"]["checks"], serde_json::json!([]));
    let tagged = fleet.json(&["agents", "tags", "db-1", "web"]);
    assert_eq!(tagged["tags"], serde_json::json!(["db", "web"]));
    let shown = fleet.json(&["agents", "show", "db-1"]);
    assert_eq!(shown["config"]["checks"][0]["name"], "disk");

    // Run-now: a check, then a script once allowed.
    let out = fleet.cli(&["run", "web-1", "disk"]);
    assert!(out.contains("disk OK: ran check disk"), "{out}");
    let script = write(work.path(), "probe.sh", "echo probing\n");
    let err = fleet.fails(&["run", "web-1", "--script", &script], 1);
    assert!(err.contains("does not accept ad-hoc scripts"), "{err}");
    let allowed = fleet.json(&["agents", "allow-adhoc", "web-1", "on"]);
    assert_eq!(allowed["allow_adhoc"], true);
    let answer = fleet.json(&["run", "web-1", "--script", &script]);
    assert_eq!(answer["result"]["summary"], "ran 13 script bytes");
    let err = fleet.fails(&["run", "nobody", "disk"], 64);
    assert!(
        err.contains("no agent has fingerprint or hostname"),
        "{err}"
    );

    // A disconnected agent cannot run anything, and the CLI says so.
    db_stop.cancel();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let err = fleet.fails(&["run", "db-1", "disk"], 1);
        if err.contains("is not connected") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Cleanup in the allowed order.
    fleet.cli(&["checks", "remove", "disk"]);
    fleet.cli(&["plugins", "remove", "check_disk_x"]);
    assert_eq!(fleet.json(&["plugins"]), serde_json::json!([]));
}

/// `outrider alerts` shows an open problem and why it is muted;
/// `outrider silences` adds, lists and expires the silence that mutes it.
#[test]
fn alerts_show_open_problems_and_silences_mute_them() {
    let fleet = Fleet::start();
    let critical = |seq| CheckResult {
        seq,
        check: "disk".into(),
        state: CheckState::Critical,
        summary: "/ is full".into(),
        long_output: String::new(),
        perfdata: Vec::new(),
        started_at_ms: outrider_protocol::unix_now_ms(),
        duration_ms: 0,
        unknown_perfdata: Vec::new(),
        update_event: None,
    };
    assert!(fleet.cli(&["alerts"]).contains("no open alerts"));
    // The server stores results only for checks the agent is assigned.
    fleet.cli(&["checks", "add", "disk", "--tags", "db", "--", "/bin/true"]);
    // Three CRITICAL results pass the default gate.
    let (fp, _stop) = fleet.agent_with(1, "db-1", &["db"], None, (1..=3).map(critical).collect());
    let key = format!("check/{fp}/disk");
    let open = fleet.json(&["alerts"]);
    assert_eq!(open[0]["key"], key.as_str());
    assert_eq!(open[0]["muted"], Value::Null);

    let added = fleet.json(&[
        "silences",
        "add",
        "--tag",
        "db",
        "--check",
        "~di.*",
        "--duration",
        "1h",
        "--author",
        "alice",
        "--comment",
        "disk swap",
    ]);
    let id = added["id"].as_u64().unwrap();
    let listed = fleet.json(&["silences", "list"]);
    assert_eq!(listed[0]["author"], "alice");
    assert_eq!(listed[0]["active"], true);
    let table = fleet.cli(&["silences"]);
    assert!(
        table.contains("check=~di.*,tag=db") && table.contains("active"),
        "{table}"
    );
    assert!(fleet.cli(&["alerts"]).contains(&format!("silence {id}")));

    fleet.cli(&["silences", "expire", &id.to_string()]);
    assert!(fleet.cli(&["silences"]).contains("ended"));
    assert_eq!(fleet.json(&["alerts"])[0]["muted"], Value::Null);
    // Nothing was sent yet: the group waits 30 s by default.
    assert!(
        fleet
            .cli(&["alerts", "history"])
            .contains("no notifications yet")
    );

    // Bad input names the problem, locally or from the server.
    let err = fleet.fails(&["silences", "add", "--comment", "x"], 64);
    assert!(err.contains("at least one of --agent"), "{err}");
    let err = fleet.fails(&["silences", "add", "--agent", "~(", "--comment", "x"], 64);
    assert!(err.contains("regular expression"), "{err}");
    let err = fleet.fails(
        &[
            "silences",
            "add",
            "--agent",
            "a",
            "--start",
            "+2h",
            "--end",
            "+1h",
            "--comment",
            "x",
        ],
        64,
    );
    assert!(err.contains("before it starts"), "{err}");
    let err = fleet.fails(&["silences", "expire", "99"], 1);
    assert!(err.contains("no silence with id 99"), "{err}");
}
