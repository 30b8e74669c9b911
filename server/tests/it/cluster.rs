//! Several server nodes sharing one PostgreSQL database (a private
//! cluster from `outrider-pgtest`), each a real server in this process on
//! its own port, driven by scripted agents over real websockets: run-now
//! relayed to the node holding the agent's session, config changes
//! reaching every node's agents, and presence across a move.

use std::sync::Arc;
use std::time::Duration;

use outrider_protocol::api::Presence;
use outrider_protocol::{AgentMessage, CheckState, ServerMessage};
use serde_json::json;

use crate::dashboard::{Browser, Live};
use crate::helpers::{
    Agent, Closed, Conn, ENROLLMENT_TOKEN, POLICY, Server, result, run_in_background,
    shared_database as database,
};

/// Longest wait for what a heartbeat (every 5 s) or the bus's polling
/// brings about.
const BEAT: Duration = Duration::from_secs(20);

/// A node named `name` on `database`.
async fn node(database: &str, name: &str) -> Arc<Server> {
    let (database, name) = (database.to_owned(), name.to_owned());
    Arc::new(
        Server::start_with(move |c| {
            c.cluster.database = Some(database);
            c.cluster.node_id = Some(name.parse().unwrap());
            // Not what these tests look at (cluster_alerting.rs does).
            c.no_alerting = true;
        })
        .await,
    )
}

/// Receives until an RPC comes, skipping config pushes.
async fn next_rpc(conn: &mut Conn) -> ServerMessage {
    loop {
        match conn.recv().await {
            ServerMessage::Config(_) => continue,
            msg @ (ServerMessage::RunCheck { .. } | ServerMessage::RunScript { .. }) => {
                return msg;
            }
            other => panic!("expected an RPC, got {other:?}"),
        }
    }
}

/// Defines check `load` through `server`; `conn`'s agent, wherever it is
/// connected, receives the config carrying it.
async fn define_load_check_on(server: &Server, conn: &mut Conn) {
    let check = json!({ "command": ["/bin/true"], "interval_secs": 60, "timeout_secs": 5 });
    server
        .admin("PUT", "/api/v1/checks/load", Some(&check))
        .await;
    let pushed = async {
        loop {
            if let ServerMessage::Config(config) = conn.recv().await
                && config.checks.iter().any(|c| c.name == "load")
            {
                return;
            }
        }
    };
    tokio::time::timeout(BEAT, pushed)
        .await
        .expect("the agent never got the check defined on the other node");
}

#[tokio::test]
async fn run_now_asked_of_another_node_reaches_the_agent_and_answers_as_it_would() {
    let db = database().await;
    let (a, b) = (node(&db, "a").await, node(&db, "b").await);
    let agent = Agent::new(1, "web-1");
    let (mut conn, _, _) = agent.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    // Defined through b, pushed by a to its agent.
    define_load_check_on(&b, &mut conn).await;

    // Asked of b, run by the agent on a.
    let call = run_in_background(&b, agent.fp.as_str(), json!({ "check": "load" }));
    let ServerMessage::RunCheck { id, check } = next_rpc(&mut conn).await else {
        unreachable!()
    };
    assert_eq!(check, "load");
    conn.send(&AgentMessage::RpcResult {
        id: id.clone(),
        result: Some(result(0, "load", CheckState::Warning, "load 7.2")),
        error: None,
    })
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["result"]["summary"], "load 7.2");

    // The agent's own refusal comes back through b as a's 422.
    let call = run_in_background(&b, agent.fp.as_str(), json!({ "check": "load" }));
    let ServerMessage::RunCheck { id, .. } = next_rpc(&mut conn).await else {
        unreachable!()
    };
    conn.send(&AgentMessage::RpcResult {
        id,
        result: None,
        error: Some("plugin not found".into()),
    })
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("plugin not found"),
        "{body}"
    );

    // Checked on b before relaying: nothing reaches the agent.
    let (status, body) = b
        .http(
            "POST",
            &format!("/api/v1/agents/{}/run", agent.fp),
            Some(&format!("Bearer {}", b.admin_token)),
            Some(&json!({ "check": "nope" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn an_agent_moving_to_another_node_stays_connected_and_the_old_node_lets_go() {
    let db = database().await;
    let (a, b) = (node(&db, "a").await, node(&db, "b").await);
    let agent = Agent::new(2, "web-2");
    let (mut old, _, _) = agent.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    // The agent reconnects to b while a still holds its socket (a
    // network path died silently, as when a's host is cut off).
    let (_new, _, _) = agent.connect(&b, None).await;
    // a learns from its next heartbeat that the session moved and closes
    // its socket as replaced, writing no presence.
    let closed = old.closed_within(BEAT).await;
    assert_eq!(
        closed,
        Closed::Frame(POLICY, "replaced by a newer session".into())
    );
    for server in [&a, &b] {
        assert_eq!(server.agent(&agent.fp).await.presence, Presence::Connected);
    }
}

#[tokio::test]
async fn a_call_through_a_node_the_agent_left_fails_as_soon_as_it_is_elsewhere() {
    let db = database().await;
    let (a, b, c) = (
        node(&db, "a").await,
        node(&db, "b").await,
        node(&db, "c").await,
    );
    let agent = Agent::new(3, "web-3");
    let (mut on_a, _, _) = agent.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    define_load_check_on(&a, &mut on_a).await;
    // Asked of b, relayed to a; the agent never answers there.
    let call = run_in_background(&b, agent.fp.as_str(), json!({ "check": "load" }));
    next_rpc(&mut on_a).await;
    // The agent turns up on c: b's call fails then, not at its deadline
    // (the check's 5 s timeout plus the margin, 15 s).
    let (_on_c, _, _) = agent.connect(&c, None).await;
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(BEAT, call).await.unwrap().unwrap();
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("now connected to node c"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The database away while a known agent says hello: the server cannot
/// look up its key, so it does not reject the agent (which would make it
/// give up its enrollment) but asks it to come back (close 1013); back,
/// the database lets it in as before.
#[tokio::test]
async fn a_hello_during_a_database_outage_is_asked_to_come_back_not_rejected() {
    // A cluster of this test's own: it is stopped and started again.
    let cluster = outrider_pgtest::Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    let db = cluster.database().await.unwrap().conninfo();
    let a = node(&db, "a").await;
    let agent = Agent::new(4, "web-4");
    let (conn, _, _) = agent.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    drop(conn);

    cluster.pause().unwrap();
    let (mut conn, nonce) = Conn::open(&a).await;
    conn.send(&AgentMessage::Hello(agent.hello(&nonce, None)))
        .await;
    assert_eq!(
        conn.closed_within(BEAT).await,
        Closed::Frame(1013, "server busy; try again later".into())
    );
    cluster.resume().unwrap();
    let (_conn, _, _) = agent.connect(&a, None).await;
}

/// A subscriber of node b's live events (the dashboard, `GET
/// /api/v1/events`) sees what happens to an agent connected to node a:
/// its presence and its stored results, relayed over the bus.
#[tokio::test]
async fn live_events_of_another_nodes_agents_reach_this_nodes_subscribers() {
    let db = database().await;
    let (a, b) = (node(&db, "a").await, node(&db, "b").await);
    let mut on_b = b.events().await;
    let agent = Agent::new(5, "web-5");
    let (mut conn, _, _) = agent.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    on_b.find(|e| match e {
        outrider_protocol::api::Event::Presence {
            agent: fp,
            presence: Presence::Connected,
            ..
        } if *fp == agent.fp => Some(()),
        _ => None,
    })
    .await;
    conn.send_results(vec![result(1, "load", CheckState::Critical, "load 42")])
        .await;
    let summary = on_b
        .find(|e| match e {
            outrider_protocol::api::Event::Result { agent: fp, result } if *fp == agent.fp => {
                Some(result.summary.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(summary, "load 42");
}

/// A dashboard on node b shows the agents of node a live; an event too
/// large to relay reaches b's subscribers as `Lagged`, and b's open pages
/// are told to reload (they would otherwise miss it silently).
#[tokio::test]
async fn a_dashboard_shows_another_nodes_agents_live_and_reloads_when_an_event_was_dropped() {
    let db = database().await;
    let a = node(&db, "a").await;
    let b = {
        let db = db.clone();
        Server::start_with_dashboard_and(move |c| {
            c.cluster.database = Some(db);
            c.cluster.node_id = Some("b".parse().unwrap());
            c.no_alerting = true;
        })
        .await
    };
    let browser = Browser::login(&b, &b.admin_token).await;
    let agent = Agent::new(6, "web-6");
    let mut live = Live::open(
        &browser,
        &format!("/live?agent={0}&rows={0}&list=fleet", agent.fp),
        None,
    )
    .await;
    let mut on_b = b.events().await;

    let (mut conn, _, _) = agent.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    let (_, row) = live.row_with(&format!("id=\"agent-{}\"", agent.fp)).await;
    assert!(row.contains("presence-connected"), "{row}");

    let mut huge = result(1, "load", CheckState::Critical, "load 43");
    huge.long_output = "x".repeat(64 * 1024);
    conn.send_results(vec![huge]).await;
    let missed = on_b
        .find(|e| match e {
            outrider_protocol::api::Event::Lagged { missed } => Some(*missed),
            _ => None,
        })
        .await;
    assert_eq!(missed, 1);
    loop {
        let (_, event, _) = live.next().await;
        if event == "reset" {
            break;
        }
    }
}

/// With one hello answered at a time (`--max-concurrent-hellos 1`), a
/// hello held up in the store keeps the next one waiting for its turn;
/// after `HELLO_QUEUE_WAIT` that one is asked to come back (1013, not a
/// rejection) and counted, and once the store answers both agents get in.
/// Without the limit, the second hello would queue behind the store too,
/// and a fleet connecting at once would be answered after it gave up.
#[tokio::test]
async fn a_hello_that_waited_too_long_for_its_turn_is_asked_to_come_back() {
    let db = database().await;
    let a = {
        let db = db.clone();
        Server::start_with(move |c| {
            c.cluster.database = Some(db);
            c.cluster.node_id = Some("a".parse().unwrap());
            c.no_alerting = true;
            c.max_concurrent_hellos = 1;
        })
        .await
    };
    // Holding the enrollment token's row holds up every new agent's hello.
    let (mut client, pg) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    let pg = tokio::spawn(pg);
    let hold = client.transaction().await.unwrap();
    hold.execute("SELECT 1 FROM enrollment_tokens FOR UPDATE", &[])
        .await
        .unwrap();
    let first = Agent::new(9, "web-9");
    let (mut held, nonce) = Conn::open(&a).await;
    held.send(&AgentMessage::Hello(
        first.hello(&nonce, Some(ENROLLMENT_TOKEN)),
    ))
    .await;
    let waiting = async {
        loop {
            let row = hold
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(BEAT, waiting)
        .await
        .expect("the first hello never waited on the token");

    let second = Agent::new(10, "web-10");
    let (mut queued, nonce) = Conn::open(&a).await;
    queued
        .send(&AgentMessage::Hello(
            second.hello(&nonce, Some(ENROLLMENT_TOKEN)),
        ))
        .await;
    assert_eq!(
        queued.closed_within(BEAT).await,
        Closed::Frame(1013, "server busy; try again later".into())
    );
    // Counted; and the held hello holds up nothing else.
    assert_eq!(crate::dos::refused(&a, "hello_queue").await, 1);

    hold.rollback().await.unwrap();
    assert!(
        matches!(held.recv().await, ServerMessage::Welcome(_)),
        "the held hello is answered once the store is"
    );
    let (_conn, _, _) = second.connect(&a, Some(ENROLLMENT_TOKEN)).await;
    drop(client);
    pg.await.unwrap().unwrap();
}
