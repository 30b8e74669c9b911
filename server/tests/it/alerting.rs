//! Alerting through the real server: results and presence arrive over real
//! websocket sessions, decisions are read back from the outbox
//! (`GET /api/v1/alerts/history`) and the open problems
//! (`GET /api/v1/alerts`). Timers are shortened through the server's
//! alerting settings; every wait polls a condition with a deadline.
//!
//! "Nothing was sent" is proved against a witness: something that must be
//! notified later than the thing that must not, so once the witness's row
//! is in the outbox, the other one would be too.

use std::time::Duration;

use outrider_alerting::config::{CheckRules, GateRule};
use outrider_protocol::{AgentMessage, CheckResult, CheckState};
use outrider_server::ServerConfig;
use serde_json::{Value, json};

use crate::helpers::{Agent, Conn, ENROLLMENT_TOKEN, Server, result};

/// How long a test waits for a decision.
const DECISION: Duration = Duration::from_secs(10);
/// `down_for` in these tests.
const DOWN_FOR_MS: u64 = 400;

/// Fast timers: a tick every 20 ms, `group_wait` 50 ms, agents down after
/// [`DOWN_FOR_MS`], no restart grace beyond `down_for`, a Goodbye counted
/// after 300 ms.
fn fast(c: &mut ServerConfig) {
    c.alert_tick_ms = 20;
    c.alerting.down_for_ms = DOWN_FOR_MS;
    c.alerting.restart_grace_extra_ms = 0;
    c.alerting.group.group_wait_ms = 50;
    c.alerting.group.group_interval_ms = 50;
    c.alert_goodbye_grace_ms = 300;
}

async fn history(server: &Server) -> Vec<Value> {
    let rows = server
        .admin("GET", "/api/v1/alerts/history?limit=1000", None)
        .await;
    let mut rows = rows.as_array().expect("history is an array").clone();
    rows.reverse(); // oldest first reads better in assertions
    rows
}

/// Polls the history until it has at least `n` rows; returns them, oldest first.
async fn wait_rows(server: &Server, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DECISION;
    loop {
        let rows = history(server).await;
        if rows.len() >= n {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} outbox rows within {DECISION:?}, have {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `(subject key, kind)` of every notification of `rows`.
fn notes(rows: &[Value]) -> Vec<(String, String)> {
    rows.iter()
        .flat_map(|r| r["notifications"].as_array().unwrap().iter())
        .map(|n| {
            let subject: outrider_alerting::Subject =
                serde_json::from_value(n["subject"].clone()).unwrap();
            (subject.to_string(), n["kind"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn open_alerts(server: &Server) -> Vec<Value> {
    server
        .admin("GET", "/api/v1/alerts", None)
        .await
        .as_array()
        .unwrap()
        .clone()
}

fn now_ms() -> i64 {
    outrider_protocol::unix_now_ms()
}

/// A result of `check` started now (the tests' results otherwise carry a
/// fixed time in the past).
fn result_now(seq: u64, check: &str, state: CheckState) -> CheckResult {
    CheckResult {
        started_at_ms: now_ms(),
        ..result(seq, check, state, "output")
    }
}

struct Sender {
    conn: Conn,
    seq: u64,
}

impl Sender {
    async fn connect(agent: &Agent, server: &Server) -> Sender {
        let (conn, acked, _) = agent.connect(server, Some(ENROLLMENT_TOKEN)).await;
        Sender { conn, seq: acked }
    }

    /// Sends one result and waits for its ack: the engine has seen it then.
    async fn send(&mut self, check: &str, state: CheckState) {
        self.seq += 1;
        let seq = self.seq;
        assert_eq!(
            self.conn
                .send_results(vec![result_now(seq, check, state)])
                .await,
            seq
        );
    }

    async fn goodbye(mut self) {
        self.conn
            .send(&AgentMessage::Goodbye {
                reason: "shutdown".into(),
            })
            .await;
        self.conn.closed().await;
    }
}

#[tokio::test]
async fn a_check_critical_three_times_fires_once_and_resolves_after_two_oks() {
    let server = Server::start_with(fast).await;
    let agent = Agent::new(1, "web-1");
    let mut s = Sender::connect(&agent, &server).await;
    let key = format!("check/{}/disk", agent.fp);

    s.send("disk", CheckState::Critical).await;
    s.send("disk", CheckState::Critical).await;
    // Two results do not pass the default gate of three.
    assert!(open_alerts(&server).await.is_empty());
    s.send("disk", CheckState::Critical).await;
    let open = open_alerts(&server).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["key"], key.as_str());
    assert_eq!(open[0]["muted"], Value::Null);

    let rows = wait_rows(&server, 1).await;
    assert_eq!(notes(&rows), [(key.clone(), "firing".to_owned())]);
    assert_eq!(rows[0]["group_key"], format!("agent/{}", agent.fp).as_str());
    assert_eq!(rows[0]["severity"], "critical");
    // The notifier routes the committed row (to no receiver: none is set).
    let deadline = tokio::time::Instant::now() + DECISION;
    while history(&server).await[0]["routed_at_ms"].is_null() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the notifier did not route the outbox row within {DECISION:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // More CRITICAL results are the same incident: nothing new.
    s.send("disk", CheckState::Critical).await;
    // One OK is not a recovery (hysteresis: two are needed)…
    s.send("disk", CheckState::Ok).await;
    assert_eq!(open_alerts(&server).await.len(), 1);
    // …the second is.
    s.send("disk", CheckState::Ok).await;
    let rows = wait_rows(&server, 2).await;
    assert_eq!(
        notes(&rows),
        [(key.clone(), "firing".into()), (key, "resolved".into())]
    );
    assert_eq!(rows[1]["severity"], "ok");
    assert!(open_alerts(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn gates_from_the_settings_count_results_or_time() {
    let server = Server::start_with(|c| {
        fast(c);
        c.alerting.checks.insert(
            "once".into(),
            CheckRules {
                gate: GateRule::Consecutive { count: 1 },
                recover_after: 1,
                ..CheckRules::default()
            },
        );
        c.alerting.checks.insert(
            "slow".into(),
            CheckRules {
                gate: GateRule::Duration { for_ms: 300 },
                ..CheckRules::default()
            },
        );
    })
    .await;
    let agent = Agent::new(2, "web-2");
    let mut s = Sender::connect(&agent, &server).await;
    // One non-OK result passes a gate of one.
    s.send("once", CheckState::Warning).await;
    let rows = wait_rows(&server, 1).await;
    assert_eq!(
        notes(&rows),
        [(format!("check/{}/once", agent.fp), "firing".into())]
    );
    assert_eq!(rows[0]["severity"], "warning");
    // A duration gate fires between results, once the state lasted long enough.
    let sent = now_ms();
    s.send("slow", CheckState::Critical).await;
    let rows = wait_rows(&server, 2).await;
    assert_eq!(
        notes(&rows[1..]),
        [(format!("check/{}/slow", agent.fp), "firing".into())]
    );
    let created = rows[1]["created_at_ms"].as_i64().unwrap();
    assert!(
        created - sent >= 300,
        "fired {} ms after the first CRITICAL, before its 300 ms",
        created - sent
    );
    server.stop().await;
}

#[tokio::test]
async fn a_lost_agent_is_down_after_down_for_and_a_deregistered_one_never() {
    let server = Server::start_with(fast).await;
    let leaving = Agent::new(3, "leaving");
    let lost = Agent::new(4, "lost");
    let a = Sender::connect(&leaving, &server).await;
    let b = Sender::connect(&lost, &server).await;
    // Both end their sessions now: one with a Goodbye, one without.
    a.goodbye().await;
    let gone = now_ms();
    drop(b);
    let rows = wait_rows(&server, 1).await;
    let created = rows[0]["created_at_ms"].as_i64().unwrap();
    assert!(
        created - gone >= DOWN_FOR_MS as i64,
        "down after {} ms, before down_for",
        created - gone
    );
    // The witness is down; the deregistered agent, lost at the same time,
    // never is.
    assert_eq!(
        notes(&history(&server).await),
        [(format!("agent/{}", lost.fp), "firing".into())]
    );
    // It comes back: one resolve.
    let _b = Sender::connect(&lost, &server).await;
    let rows = wait_rows(&server, 2).await;
    assert_eq!(
        notes(&rows[1..]),
        [(format!("agent/{}", lost.fp), "resolved".into())]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reconnect_within_down_for_is_no_alert() {
    let server = Server::start_with(fast).await;
    let flaky = Agent::new(5, "flaky");
    let witness = Agent::new(6, "witness");
    let s = Sender::connect(&flaky, &server).await;
    let w = Sender::connect(&witness, &server).await;
    drop(s);
    // Back at once, as after a hot swap or a network blip.
    let _s = Sender::connect(&flaky, &server).await;
    drop(w);
    let rows = wait_rows(&server, 1).await;
    assert_eq!(
        notes(&rows),
        [(format!("agent/{}", witness.fp), "firing".into())]
    );
    server.stop().await;
}

#[tokio::test]
async fn no_agent_is_down_within_the_restart_grace() {
    let grace_extra = 1_000;
    let configure = move |c: &mut ServerConfig| {
        fast(c);
        c.alerting.restart_grace_extra_ms = grace_extra;
    };
    let server = Server::start_with(configure).await;
    let agent = Agent::new(7, "web-7");
    let s = Sender::connect(&agent, &server).await;
    drop(s);
    // The server restarts before `down_for` passed; the agent never returns.
    let server = server.restart(configure).await;
    let restarted = now_ms();
    let rows = wait_rows(&server, 1).await;
    assert_eq!(
        notes(&rows),
        [(format!("agent/{}", agent.fp), "firing".into())]
    );
    let created = rows[0]["created_at_ms"].as_i64().unwrap();
    assert!(
        created - restarted >= (DOWN_FOR_MS + grace_extra) as i64,
        "down {} ms after the restart, within the grace",
        created - restarted
    );
    server.stop().await;
}

#[tokio::test]
async fn a_silence_mutes_what_it_matches_and_expiring_it_lets_it_fire() {
    let server = Server::start_with(fast).await;
    let agent = Agent::new(8, "db-1").with_tags(&["db"]);
    let mut s = Sender::connect(&agent, &server).await;
    let now = now_ms() as u64;
    let silence = json!({
        "matchers": [
            {"field": "tag", "op": {"equal": "db"}},
            {"field": "check", "op": {"regex": "disk|mem"}}
        ],
        "starts_ms": now - 1000,
        "ends_ms": now + 3_600_000,
        "author": "alice",
        "comment": "disk replacement"
    });
    let id = server
        .admin("POST", "/api/v1/silences", Some(&silence))
        .await["id"]
        .as_u64()
        .unwrap();
    let listed = server.admin("GET", "/api/v1/silences", None).await;
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["active"], true);
    assert_eq!(listed[0]["author"], "alice");

    for _ in 0..3 {
        s.send("disk", CheckState::Critical).await;
        s.send("load", CheckState::Critical).await;
    }
    // `load` (the witness) fires; `disk` is open but muted by the silence.
    let rows = wait_rows(&server, 1).await;
    assert_eq!(
        notes(&rows),
        [(format!("check/{}/load", agent.fp), "firing".into())]
    );
    let open = open_alerts(&server).await;
    let disk = open
        .iter()
        .find(|a| a["key"] == format!("check/{}/disk", agent.fp).as_str())
        .expect("disk is open");
    assert_eq!(disk["muted"], json!({"silenced": {"id": id}}));

    let expired = server
        .admin("POST", &format!("/api/v1/silences/{id}/expire"), None)
        .await;
    assert_eq!(expired["expired"], true);
    let rows = wait_rows(&server, 2).await;
    assert_eq!(
        notes(&rows[1..]),
        [(format!("check/{}/disk", agent.fp), "firing".into())]
    );
    let listed = server.admin("GET", "/api/v1/silences", None).await;
    assert_eq!(listed[0]["active"], false);
    server.stop().await;
}

#[tokio::test]
async fn bad_silences_are_refused_with_the_reason() {
    let server = Server::start_with(fast).await;
    let auth = format!("Bearer {}", server.admin_token);
    let now = now_ms() as u64;
    let table = [
        (
            json!({"matchers": [], "starts_ms": now, "ends_ms": now + 1, "author": "a", "comment": ""}),
            400,
            "at least one matcher",
        ),
        (
            json!({"matchers": [{"field": "agent", "op": {"regex": "("}}], "starts_ms": now,
                   "ends_ms": now + 1, "author": "a", "comment": ""}),
            400,
            "not a valid regular expression",
        ),
        (
            json!({"matchers": [{"field": "agent", "op": {"equal": "x"}}], "starts_ms": now,
                   "ends_ms": now, "author": "a", "comment": ""}),
            400,
            "at or before it starts",
        ),
        (
            json!({"matchers": [{"field": "agent", "op": {"equal": "x"}}], "starts_ms": now,
                   "ends_ms": now + 1, "author": " ", "comment": ""}),
            400,
            "author",
        ),
    ];
    for (body, status, needle) in table {
        let (got, answer) = server
            .http("POST", "/api/v1/silences", Some(&auth), Some(&body))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    let (got, answer) = server
        .http("POST", "/api/v1/silences/99/expire", Some(&auth), None)
        .await;
    assert_eq!(got, 404, "{answer}");
    let (got, _) = server
        .http("GET", "/api/v1/alerts/history?limit=0", Some(&auth), None)
        .await;
    assert_eq!(got, 400);
    server.stop().await;
}

#[tokio::test]
async fn a_restart_mid_incident_neither_loses_nor_repeats_a_notification() {
    let server = Server::start_with(fast).await;
    let agent = Agent::new(9, "web-9");
    let mut s = Sender::connect(&agent, &server).await;
    for _ in 0..3 {
        s.send("disk", CheckState::Critical).await;
    }
    let rows = wait_rows(&server, 1).await;
    let firing = rows[0]["batch_key"].as_str().unwrap().to_owned();
    drop(s);
    // The silence added before the restart survives it too.
    let now = now_ms() as u64;
    let silence = json!({"matchers": [{"field": "check", "op": {"equal": "mem"}}],
                         "starts_ms": now, "ends_ms": now + 3_600_000,
                         "author": "bob", "comment": "kept"});
    server
        .admin("POST", "/api/v1/silences", Some(&silence))
        .await;

    let server = server.restart(fast).await;
    assert_eq!(
        server.admin("GET", "/api/v1/silences", None).await[0]["author"],
        "bob"
    );
    // The incident is still open after the restart (the agent is muted as
    // lost until it reconnects)…
    assert_eq!(open_alerts(&server).await.len(), 1);
    let mut s = Sender::connect(&agent, &server).await;
    s.seq = 100;
    s.send("disk", CheckState::Ok).await;
    s.send("disk", CheckState::Ok).await;
    // …and its resolve is sent exactly once, with no second firing.
    let rows = wait_rows(&server, 2).await;
    let key = format!("check/{}/disk", agent.fp);
    assert_eq!(
        notes(&rows),
        [(key.clone(), "firing".into()), (key, "resolved".into())]
    );
    assert_eq!(rows[0]["batch_key"], firing.as_str());
    let started = |r: &Value| r["notifications"][0]["incident_started_ms"].clone();
    assert_eq!(started(&rows[0]), started(&rows[1]), "one incident");
    assert_eq!(rows[1]["notifications"][0]["seq"], 2);
    server.stop().await;
}

#[tokio::test]
async fn a_check_definition_sets_its_gate_and_keeps_it_across_a_restart() {
    let server = Server::start_with(fast).await;
    let auth = format!("Bearer {}", server.admin_token);
    let def = |alert: Value| json!({"command": ["/bin/true"], "interval_secs": 10, "timeout_secs": 5, "alert": alert});
    // Refused before anything is stored.
    for (alert, needle) in [
        (json!({"after_failures": 2, "after_secs": 5}), "give one"),
        (json!({"after_failures": 0}), "between 1 and"),
        (json!({"after_falures": 2}), "unknown field"),
    ] {
        let (status, answer) = server
            .http("PUT", "/api/v1/checks/ping", Some(&auth), Some(&def(alert)))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    assert_eq!(server.admin("GET", "/api/v1/checks", None).await, json!([]));
    server
        .admin(
            "PUT",
            "/api/v1/checks/ping",
            Some(&def(json!({"after_failures": 1, "recover_after": 1}))),
        )
        .await;
    let checks = server.admin("GET", "/api/v1/checks", None).await;
    assert_eq!(
        checks[0]["alert"],
        json!({"after_failures": 1, "recover_after": 1})
    );

    let server = server.restart(fast).await;
    let agent = Agent::new(10, "web-10");
    let mut s = Sender::connect(&agent, &server).await;
    let key = format!("check/{}/ping", agent.fp);
    s.send("ping", CheckState::Critical).await;
    let rows = wait_rows(&server, 1).await;
    assert_eq!(notes(&rows), [(key.clone(), "firing".into())]);
    s.send("ping", CheckState::Ok).await;
    let rows = wait_rows(&server, 2).await;
    assert_eq!(notes(&rows[1..]), [(key, "resolved".into())]);
    server.stop().await;
}

/// The engine state is written every few seconds between notifications,
/// so a crash can lose a Goodbye that the agents table committed. The next
/// start replays it: the agent that left is not called down.
#[tokio::test]
async fn a_goodbye_lost_with_the_engine_state_is_replayed_from_the_store() {
    let server = Server::start_with(fast).await;
    let leaving = Agent::new(11, "leaving");
    let witness = Agent::new(12, "witness");
    let a = Sender::connect(&leaving, &server).await;
    let w = Sender::connect(&witness, &server).await;
    let server = server.restart(fast).await;
    drop((a, w));
    let db = server.data_dir().join("outrider.db");
    let read_state = || {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT state FROM alert_state", [], |r| {
                r.get::<_, String>(0)
            })
            .unwrap()
    };
    // Both agents were connected when that state was written.
    let before_goodbye = read_state();
    let a = Sender::connect(&leaving, &server).await;
    a.goodbye().await;
    server
        .wait_presence(&leaving.fp, outrider_protocol::api::Presence::Deregistered)
        .await;
    let server = server.restart(|_| {}).await;
    // As after a crash: the state from before the Goodbye.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE alert_state SET state = ?1", [&before_goodbye])
        .unwrap();
    let server = server.restart(fast).await;
    let rows = wait_rows(&server, 1).await;
    assert_eq!(
        notes(&rows),
        [(format!("agent/{}", witness.fp), "firing".into())]
    );
    server.stop().await;
}

/// A check failing half the time in runs long enough to pass its gate
/// (3 CRITICAL, 3 OK) for an hour, then steady: one notification when it
/// starts flapping, one when it settles.
///
/// The hour is test time: the results carry their own start times, 10 s
/// apart over the hour before now (as a spool replayed after an outage
/// would), and the driver hands the engine each result at its own time
/// (`Alerts::results` in `server/src/alerts.rs`), which is what gates and
/// flap history count in; grouping timers and incident start times run on
/// the server's clock (grouping shortened here). The engine alone runs the
/// same hour on a simulated clock in `alerting/tests/it/scenarios.rs`.
#[tokio::test]
async fn a_check_flapping_at_50_percent_for_an_hour_sends_exactly_two_notifications() {
    let server = Server::start_with(|c| {
        fast(c);
        // Each batch below is taken in one go, long before a flush.
        c.alerting.group.group_wait_ms = 300;
    })
    .await;
    let agent = Agent::new(13, "api-1");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let cycle = [
        CheckState::Critical,
        CheckState::Critical,
        CheckState::Critical,
        CheckState::Ok,
        CheckState::Ok,
        CheckState::Ok,
    ];
    // 360 flapping results, then 60 steady ones, every 10 s, ending now.
    const EVERY_MS: i64 = 10_000;
    let states: Vec<CheckState> = cycle.iter().copied().cycle().take(360).collect();
    let first_ms = now_ms() - 420 * EVERY_MS;
    let mut seq = 0;
    let mut next = |state: CheckState| {
        seq += 1;
        CheckResult {
            started_at_ms: first_ms + (seq as i64 - 1) * EVERY_MS,
            ..result(seq, "api", state, "api")
        }
    };
    for chunk in states.chunks(120) {
        let batch = chunk.iter().map(|s| next(*s)).collect();
        conn.send_results(batch).await;
    }
    let key = format!("check/{}/api", agent.fp);
    let rows = wait_rows(&server, 1).await;
    assert_eq!(notes(&rows), [(key.clone(), "flapping_started".into())]);
    let open = open_alerts(&server).await;
    assert_eq!(open[0]["muted"], "flapping");
    // Steady from now on.
    let batch = (0..60).map(|_| next(CheckState::Ok)).collect();
    conn.send_results(batch).await;
    let rows = wait_rows(&server, 2).await;
    assert_eq!(
        notes(&rows),
        [
            (key.clone(), "flapping_started".into()),
            (key, "flapping_stopped".into())
        ]
    );
    assert_eq!(rows[1]["notifications"][0]["status"], "OK");
    assert!(open_alerts(&server).await.is_empty());
    server.stop().await;
}

/// An agent that lost the server while its resolver check failed is
/// reported as "DNS broken", once, not as a plain agent down; a resolver
/// failing for less than `down_for` is no alert.
#[tokio::test]
async fn dns_broken_past_down_for_is_one_dns_incident_and_shorter_is_none() {
    let server = Server::start_with(fast).await;
    let brief = Agent::new(14, "brief");
    let broken = Agent::new(15, "broken");
    let mut b = Sender::connect(&brief, &server).await;
    let mut x = Sender::connect(&broken, &server).await;
    // The resolver fails on both, reported once each (the agent reports
    // the resolver check only when it changes).
    b.send("outrider.dns", CheckState::Critical).await;
    x.send("outrider.dns", CheckState::Critical).await;
    drop(x);
    // `brief` recovers within down_for.
    b.send("outrider.dns", CheckState::Ok).await;
    let rows = wait_rows(&server, 1).await;
    assert_eq!(
        notes(&rows),
        [(format!("agent/{}", broken.fp), "firing".into())]
    );
    let title = rows[0]["notifications"][0]["title"].as_str().unwrap();
    assert_eq!(
        title,
        format!("DNS broken: agent {} cannot reach the server", broken.fp)
    );
    server.stop().await;
}

/// Three of three agents sharing a tag lost together are one site
/// incident; the agents' own incidents are muted by it.
#[tokio::test]
async fn agents_of_a_tag_lost_together_are_one_site_incident() {
    let server = Server::start_with(fast).await;
    let mut conns = Vec::new();
    for seed in 20..23 {
        let agent = Agent::new(seed, &format!("dc1-{seed}")).with_tags(&["dc1"]);
        conns.push(Sender::connect(&agent, &server).await);
    }
    drop(conns);
    let rows = wait_rows(&server, 1).await;
    assert_eq!(notes(&rows), [("site/dc1".to_owned(), "firing".into())]);
    assert_eq!(rows[0]["group_key"], "site/dc1");
    assert_eq!(rows[0]["tags"], json!(["dc1"]));
    let open = open_alerts(&server).await;
    let muted: Vec<_> = open
        .iter()
        .filter(|a| a["muted"] == json!({"site_outage": {"tag": "dc1"}}))
        .collect();
    assert_eq!(muted.len(), 3, "{open:#?}");
    server.stop().await;
}

/// Update outcomes stored with results alert without a gate: a rollback is
/// a problem at once, the next healthy build resolves it.
#[tokio::test]
async fn a_rolled_back_update_fires_and_a_healthy_build_resolves_it() {
    let server = Server::start_with(fast).await;
    let agent = Agent::new(16, "web-16");
    let (mut conn, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    let update = |seq: u64, id: u64, kind: &str| CheckResult {
        update_event: Some(Box::new(outrider_protocol::UpdateEvent {
            id,
            kind: kind.into(),
            at_unix_ms: now_ms(),
            build_sha256: Some("ab".repeat(32)),
            version: Some("1.4.0".into()),
            to_sha256: None,
            to_version: None,
            reason: "health check failed".into(),
        })),
        ..result(seq, "outrider.update", CheckState::Ok, "update")
    };
    conn.send_results(vec![update(1, 1, "rolled_back")]).await;
    let key = format!("update/{}", agent.fp);
    let rows = wait_rows(&server, 1).await;
    assert_eq!(notes(&rows), [(key.clone(), "firing".into())]);
    assert_eq!(
        rows[0]["notifications"][0]["summary"],
        "rolled_back 1.4.0: health check failed"
    );
    conn.send_results(vec![update(2, 2, "probation_passed")])
        .await;
    let rows = wait_rows(&server, 2).await;
    assert_eq!(notes(&rows[1..]), [(key, "resolved".into())]);
    server.stop().await;
}

/// The agent library says Goodbye on every stop, hot swaps included: an
/// agent back at once neither resolves its notified incident nor opens it
/// again. One that stays away is deregistered after the goodbye grace, and
/// only then is what was notified resolved.
#[tokio::test]
async fn a_goodbye_followed_by_a_reconnect_is_a_hot_swap_not_a_deregistration() {
    let server = Server::start_with(fast).await;
    let agent = Agent::new(17, "web-17");
    let mut s = Sender::connect(&agent, &server).await;
    for _ in 0..3 {
        s.send("disk", CheckState::Critical).await;
    }
    let key = format!("check/{}/disk", agent.fp);
    wait_rows(&server, 1).await;
    // Ten hot swaps: Goodbye, then the new build connects.
    for _ in 0..10 {
        let seq = s.seq;
        s.goodbye().await;
        s = Sender::connect(&agent, &server).await;
        s.seq = seq;
        s.send("disk", CheckState::Critical).await;
    }
    s.send("disk", CheckState::Ok).await;
    s.send("disk", CheckState::Ok).await;
    let rows = wait_rows(&server, 2).await;
    assert_eq!(
        notes(&rows),
        [
            (key.clone(), "firing".into()),
            (key.clone(), "resolved".into())
        ]
    );
    assert_eq!(rows[1]["notifications"][0]["resolve_cause"], "recovered");

    // A real shutdown during an incident: resolved as deregistered.
    for _ in 0..3 {
        s.send("disk", CheckState::Critical).await;
    }
    wait_rows(&server, 3).await;
    let left = now_ms();
    s.goodbye().await;
    let rows = wait_rows(&server, 4).await;
    assert_eq!(notes(&rows[3..]), [(key, "resolved".into())]);
    assert_eq!(rows[3]["notifications"][0]["resolve_cause"], "deregistered");
    let created = rows[3]["created_at_ms"].as_i64().unwrap();
    assert!(
        created - left >= 300,
        "resolved {} ms after the Goodbye",
        created - left
    );
    server.stop().await;
}

/// `--no-alerting`, there to measure what alerting costs: results that
/// open a problem are stored and acked, but the engine never sees them.
/// The same results on a server with alerting are the control.
#[tokio::test]
async fn with_alerting_off_results_reach_the_store_but_not_the_engine() {
    for (no_alerting, open) in [(false, 1), (true, 0)] {
        let server = Server::start_with(|c| {
            fast(c);
            c.no_alerting = no_alerting;
        })
        .await;
        let agent = Agent::new(30, "db-30");
        let mut conn = Sender::connect(&agent, &server).await;
        for _ in 0..3 {
            conn.send("disk", CheckState::Critical).await;
        }
        // Acked: stored, and handed to the engine if it runs.
        assert_eq!(
            open_alerts(&server).await.len(),
            open,
            "no_alerting = {no_alerting}"
        );
        let latest = server.admin("GET", "/api/v1/results/latest", None).await;
        assert_eq!(
            latest[0]["state"], "CRITICAL",
            "no_alerting = {no_alerting}"
        );
        server.stop().await;
    }
}
