//! Alerting across nodes sharing one PostgreSQL database (a private
//! cluster from `outrider-pgtest`): in-process nodes with alerting on,
//! scripted agents over real websockets, decisions read back from the
//! shared outbox and from each node's API (server/src/alerts.rs, "Across
//! nodes"). "Nothing was sent" is proved against a witness, as in
//! alerting.rs: something notified later than what must not be.

use std::time::Duration;

use outrider_protocol::CheckState;
use outrider_server::ServerConfig;
use serde_json::{Value, json};

use crate::dashboard::Browser;
use crate::helpers::{Agent, Conn, ENROLLMENT_TOKEN, Server, result, shared_database as database};

/// Longest wait for a decision, a relayed answer or a takeover (the
/// election retries every 5 s).
const WAIT: Duration = Duration::from_secs(30);
/// `down_for` in these tests.
const DOWN_FOR_MS: u64 = 1_000;

/// Fast alerting timers (as alerting.rs's `fast`).
fn fast(c: &mut ServerConfig) {
    c.alert_tick_ms = 20;
    c.alerting.down_for_ms = DOWN_FOR_MS;
    c.alerting.restart_grace_extra_ms = 0;
    c.alerting.group.group_wait_ms = 50;
    c.alerting.group.group_interval_ms = 50;
    c.alert_goodbye_grace_ms = 300;
}

/// A node named `name` on `database`, alerting on.
async fn node(database: &str, name: &str) -> Server {
    let (database, name) = (database.to_owned(), name.to_owned());
    Server::start_with(move |c| {
        fast(c);
        c.cluster.database = Some(database);
        c.cluster.node_id = Some(name.parse().unwrap());
    })
    .await
}

/// [`node`] with the web dashboard.
async fn node_with_dashboard(database: &str, name: &str) -> Server {
    let (database, name) = (database.to_owned(), name.to_owned());
    Server::start_with_dashboard_and(move |c| {
        fast(c);
        c.cluster.database = Some(database);
        c.cluster.node_id = Some(name.parse().unwrap());
    })
    .await
}

/// The node leading alert evaluation, as the `leases` table says.
async fn leader(database: &str) -> Option<String> {
    let (client, conn) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let row = client
        .query_opt(
            "SELECT holder_node FROM leases WHERE job = 'alert-evaluation'",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    conn.await.unwrap().unwrap();
    row.map(|r| r.get(0))
}

/// Waits until the shared log of alert inputs is empty: the leader saved
/// a state that has seen every input.
async fn wait_log_empty(database: &str) {
    let (client, conn) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n: i64 = client
            .query_one("SELECT count(*) FROM alert_inputs", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} alert inputs still not saved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    conn.await.unwrap().unwrap();
}

/// Polls `GET path` on `server` until it answers 200; returns the body.
async fn get_ok(server: &Server, path: &str) -> Value {
    let auth = format!("Bearer {}", server.admin_token);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.http("GET", path, Some(&auth), None).await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("alert evaluation is changing nodes"),
            "{body}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still 503 after {WAIT:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `POST path` on `server` until it answers 200.
async fn post_ok(server: &Server, path: &str, body: &Value) -> Value {
    let auth = format!("Bearer {}", server.admin_token);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, answer) = server.http("POST", path, Some(&auth), Some(body)).await;
        if status == 200 {
            return answer;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(tokio::time::Instant::now() < deadline, "{path}: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn history(server: &Server) -> Vec<Value> {
    let mut rows = get_ok(server, "/api/v1/alerts/history?limit=1000")
        .await
        .as_array()
        .unwrap()
        .clone();
    rows.reverse();
    rows
}

/// Polls the history until `done` holds of its notes.
async fn wait_notes(
    server: &Server,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let notes = notes(&history(server).await);
        if done(&notes) {
            return notes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox never got there: {notes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

fn now_ms() -> i64 {
    outrider_protocol::unix_now_ms()
}

/// Sends one result of `check` started now; returns the next seq.
async fn send(conn: &mut Conn, seq: u64, check: &str, state: CheckState) -> u64 {
    let seq = seq + 1;
    let r = outrider_protocol::CheckResult {
        started_at_ms: now_ms(),
        ..result(seq, check, state, "output")
    };
    assert_eq!(conn.send_results(vec![r]).await, seq);
    seq
}

/// Waits until `server`'s open alerts hold `key` (muted or not as `muted`).
async fn wait_open(server: &Server, key: &str, muted: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let open = get_ok(server, "/api/v1/alerts").await;
        if open
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["key"] == key && o["muted"].is_null() != muted)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} not open (muted: {muted}): {open}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts node `a` and waits until it leads alert evaluation.
async fn leading_node(db: &str, name: &str) -> Server {
    let a = node(db, name).await;
    get_ok(&a, "/api/v1/alerts").await;
    assert_eq!(leader(db).await.as_deref(), Some(name));
    a
}

/// (a) A check failing on an agent of node b, which does not evaluate
/// alerts, is notified once, and the open alert shows through every node.
#[tokio::test]
async fn a_failure_seen_by_a_node_not_leading_is_notified_once_and_shown_everywhere() {
    let db = database().await;
    let a = leading_node(&db, "a").await;
    let b = node(&db, "b").await;
    let agent = Agent::new(31, "web-31");
    let (mut conn, mut seq, _) = agent.connect(&b, Some(ENROLLMENT_TOKEN)).await;
    let disk = format!("check/{}/disk", agent.fp);
    let load = format!("check/{}/load", agent.fp);
    for _ in 0..4 {
        seq = send(&mut conn, seq, "disk", CheckState::Critical).await;
    }
    for server in [&a, &b] {
        wait_open(server, &disk, false).await;
    }
    // The witness fires after disk's incident was decided: once its row
    // is there, a second disk row would be too.
    for _ in 0..3 {
        seq = send(&mut conn, seq, "load", CheckState::Critical).await;
    }
    for server in [&a, &b] {
        let notes = wait_notes(server, |n| n.iter().any(|(k, _)| k == &load)).await;
        let firing = |key: &str| {
            notes
                .iter()
                .filter(|(k, kind)| k == key && kind == "firing")
                .count()
        };
        assert_eq!((firing(&disk), firing(&load)), (1, 1), "{notes:#?}");
    }
    b.stop().await;
    a.stop().await;
}

/// (b) An agent moving from node a to node b (it connects to b while a
/// still holds its old socket, which then drops) is never called down.
#[tokio::test]
async fn an_agent_moving_between_nodes_is_never_down() {
    let db = database().await;
    let a = leading_node(&db, "a").await;
    let b = node(&db, "b").await;
    let mover = Agent::new(32, "mover");
    let witness = Agent::new(33, "witness");
    let (old, _, _) = mover.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    let (_new, _, _) = mover.connect(&b, None).await;
    // a has not noticed the move (its heartbeat is 5 s away): the old
    // socket's end is a loss of the older session, reported after the
    // newer one opened on b.
    drop(old);
    // The witness is lost after that, on b: once it is down, down_for has
    // passed for the mover's old session too.
    let (w, _, _) = witness.connect(&b, Some(ENROLLMENT_TOKEN)).await;
    drop(w);
    let notes = wait_notes(&a, |n| !n.is_empty()).await;
    assert_eq!(
        notes,
        [(format!("agent/{}", witness.fp), "firing".to_owned())]
    );
    let open = get_ok(&b, "/api/v1/alerts").await;
    assert!(
        !open.to_string().contains(mover.fp.as_str()),
        "the mover is open: {open}"
    );
    b.stop().await;
    a.stop().await;
}

/// (c) The leading node stops: another takes over alert evaluation, and
/// silences added through a node not leading, before and after, hold.
#[tokio::test]
async fn another_node_takes_over_and_silences_added_anywhere_hold() {
    let db = database().await;
    let a = leading_node(&db, "a").await;
    let b = node(&db, "b").await;
    let c = node(&db, "c").await;
    let silence = |check: &str| {
        let now = now_ms() as u64;
        json!({
            "matchers": [{"field": "check", "op": {"equal": check}}],
            "starts_ms": now - 1000,
            "ends_ms": now + 3_600_000,
            "author": "alice",
            "comment": "maintenance"
        })
    };
    let before = post_ok(&b, "/api/v1/silences", &silence("disk")).await;
    assert!(before["id"].is_u64(), "{before}");
    // An agent connected to b throughout: a's engine has it connected, and
    // its session does not end with a's leadership.
    let stayer = Agent::new(35, "stayer");
    let (_stays, _, _) = stayer.connect(&b, Some(ENROLLMENT_TOKEN)).await;
    // a's engine saved every input (so the next leader finds the stayer in
    // the stored state, not in the log).
    wait_log_empty(&db).await;

    a.stop().await;
    // b or c takes over within the election's retry.
    let deadline = tokio::time::Instant::now() + WAIT;
    let new_leader = loop {
        match leader(&db).await.as_deref() {
            Some("a") | None => {}
            Some(other) => break other.to_owned(),
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (leading, other) = if new_leader == "b" {
        (&b, &c)
    } else {
        (&c, &b)
    };
    let listed = get_ok(other, "/api/v1/silences").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let after = post_ok(other, "/api/v1/silences", &silence("load")).await;
    assert!(after["id"].is_u64(), "{after}");

    let agent = Agent::new(34, "db-34");
    let (mut conn, mut seq, _) = agent.connect(other, Some(ENROLLMENT_TOKEN)).await;
    for check in ["disk", "load", "cpu"] {
        for _ in 0..3 {
            seq = send(&mut conn, seq, check, CheckState::Critical).await;
        }
    }
    // A witness lost after the takeover: once it is down, the stayer
    // would be too had the new leader counted it lost.
    let witness = Agent::new(36, "witness-36");
    let (w, _, _) = witness.connect(other, Some(ENROLLMENT_TOKEN)).await;
    drop(w);
    let cpu = format!("check/{}/cpu", agent.fp);
    let down = format!("agent/{}", witness.fp);
    let mut notes = wait_notes(leading, |n| n.iter().any(|(k, _)| k == &down)).await;
    notes.sort();
    let mut want = vec![(cpu, "firing".to_owned()), (down, "firing".to_owned())];
    want.sort();
    assert_eq!(notes, want);
    for check in ["disk", "load"] {
        wait_open(other, &format!("check/{}/{check}", agent.fp), true).await;
    }
    c.stop().await;
    b.stop().await;
}

/// The dashboard of a node not leading: its alerts page lists the
/// leader's silences, and its silence form and Expire button change them.
#[tokio::test]
async fn the_dashboard_of_a_node_not_leading_adds_and_expires_the_leaders_silences() {
    let db = database().await;
    let a = leading_node(&db, "a").await;
    let b = node_with_dashboard(&db, "b").await;
    let admin = Browser::login(&b, &b.admin_token).await;
    let csrf = admin.csrf("/alerts").await;
    let added = admin
        .post(
            "/silences",
            &format!("csrf={csrf}&check=load&hours=2&comment=db+work"),
        )
        .await;
    assert_eq!(
        (added.status, added.header("location")),
        (303, Some("/alerts")),
        "{}",
        added.body
    );
    let silences = get_ok(&a, "/api/v1/silences").await;
    let silence = &silences.as_array().unwrap()[0];
    assert_eq!(silence["comment"], "db work");
    let id = silence["id"].as_u64().unwrap();
    let page = admin.get("/alerts").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("check=load") && page.body.contains(&format!("/silences/{id}/expire")),
        "{}",
        page.body
    );
    let expired = admin
        .post(&format!("/silences/{id}/expire"), &format!("csrf={csrf}"))
        .await;
    assert_eq!(expired.status, 303, "{}", expired.body);
    assert_eq!(get_ok(&a, "/api/v1/silences").await[0]["active"], false);
    // The leader's refusal keeps its status through the bus.
    let unknown = admin
        .post("/silences/999/expire", &format!("csrf={csrf}"))
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    b.stop().await;
    a.stop().await;
}
