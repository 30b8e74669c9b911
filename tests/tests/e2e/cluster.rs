//! Three `outrider-server` processes on loopback sharing one PostgreSQL
//! (a private cluster of this test's own, from `outrider-pgtest`), with
//! real agents (stub and library) spread over them by their
//! `extra_server_urls`:
//! - a node killed with SIGKILL: its agents reconnect to the others, no
//!   agent is shown down meanwhile, nothing acknowledged is lost, and a
//!   run-now pending through the dead node fails fast with a clear error;
//! - PostgreSQL stopped and started again under load: the nodes and agents
//!   carry on, nothing acknowledged is lost, no agent is shown down.
//!
//! The state the nodes share is read straight from PostgreSQL: which node
//! holds each agent's session, and each agent's acknowledged sequence.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outrider_tests::{
    ENROLLMENT_TOKEN, Keys, LISTENERS_OFF, TestAgent, TestServer, agent_library, secs, test_policy,
    wait_until,
};

/// Agents in each test: two per node on average.
const AGENTS: usize = 6;

/// A private cluster, one database in it, and a runtime to query it.
struct Shared {
    cluster: outrider_pgtest::Cluster,
    db: outrider_pgtest::TestDb,
    runtime: tokio::runtime::Runtime,
}

impl Shared {
    fn start() -> Shared {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cluster = outrider_pgtest::Cluster::start().unwrap_or_else(|e| panic!("{e}"));
        let db = runtime.block_on(cluster.database()).unwrap();
        Shared {
            cluster,
            db,
            runtime,
        }
    }

    /// Rows of `sql` as text columns; `None` while PostgreSQL is away.
    fn query(&self, sql: &str) -> Option<Vec<Vec<String>>> {
        self.runtime.block_on(async {
            let (client, connection) = self.db.config.connect(tokio_postgres::NoTls).await.ok()?;
            let driver = tokio::spawn(connection);
            let rows = client.simple_query(sql).await.ok();
            drop(client);
            let _ = driver.await;
            Some(
                rows?
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                            (0..row.len())
                                .map(|i| row.get(i).unwrap_or_default().to_owned())
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect(),
            )
        })
    }

    /// The node holding each agent's up session.
    fn sessions(&self) -> BTreeMap<String, String> {
        self.query("SELECT agent_fp, node_id FROM sessions WHERE ended_at_ms IS NULL")
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect()
    }

    /// Each agent's acknowledged sequence number.
    fn acked(&self) -> BTreeMap<String, u64> {
        self.query("SELECT fingerprint, acked_seq FROM agents")
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap()))
            .collect()
    }

    /// How many of `fingerprint`'s results with a sequence number from 1
    /// to `up_to` are stored (all of them when nothing acked was lost: an
    /// agent numbers its results 1, 2, 3, …).
    fn stored_up_to(&self, fingerprint: &str, up_to: u64) -> u64 {
        let rows = self
            .query(&format!(
                "SELECT count(*) FROM results WHERE fingerprint = '{fingerprint}' AND seq BETWEEN 1 AND {up_to}"
            ))
            .expect("PostgreSQL answers");
        rows[0][0].parse().unwrap()
    }
}

/// `down_for` of these tests: an agent lost for longer is an outage to
/// page about; the moves these tests make must stay well under it.
const DOWN_FOR_MS: u64 = 8_000;

/// Three nodes on `shared`'s database, alerting on with short timers, so
/// a false "down" would be paged within the tests.
fn nodes(shared: &Shared) -> Vec<TestServer> {
    let conninfo = shared.db.conninfo();
    let settings = shared.cluster.socket_dir().join("alerting.json");
    let config = serde_json::json!({
        "down_for_ms": DOWN_FOR_MS,
        "group": {"group_wait_ms": 300, "group_interval_ms": 1_000, "repeat_interval_ms": 3_600_000}
    });
    std::fs::write(&settings, config.to_string()).unwrap();
    let settings = settings.to_string_lossy().into_owned();
    (1..=3)
        .map(|i| {
            let name = format!("n{i}");
            TestServer::start_args(&[
                "--database",
                &conninfo,
                "--node-id",
                &name,
                "--alerting-config",
                &settings,
                "--alert-tick-ms",
                "100",
            ])
        })
        .collect()
}

/// Asserts that nothing was paged: no notification decided, as `node`
/// (any node) reads the shared outbox.
fn nobody_paged(node: &TestServer) {
    let history = node.api_get("alerts/history");
    assert_eq!(history, serde_json::json!([]), "paged: {history}");
}

/// `AGENTS` agents, each told of every node, started on different ones.
fn agents(nodes: &[TestServer], keys: &Keys) -> Vec<TestAgent> {
    (0..AGENTS)
        .map(|i| {
            let first = &nodes[i % nodes.len()].url;
            let others: Vec<String> = nodes
                .iter()
                .map(|n| format!("{:?}", n.url))
                .filter(|u| !u.contains(first.as_str()))
                .collect();
            let toml = format!(
                "server_url = \"{first}\"\nextra_server_urls = [{}]\n\
                 enrollment_token = \"{ENROLLMENT_TOKEN}\"\nchannel = \"dev\"\n{LISTENERS_OFF}\n\
                 policy = {}\n",
                others.join(", "),
                test_policy()
            );
            TestAgent::start_toml(keys, &toml, &[])
        })
        .collect()
}

/// Starts the three nodes, publishes the build through the first (every
/// node serves it), defines the checks and starts the agents; returns
/// when every agent is connected and has results acknowledged.
fn fleet(shared: &Shared) -> (Vec<TestServer>, Keys, Vec<TestAgent>) {
    let nodes = nodes(shared);
    let keys = Keys::init();
    nodes[0].publish(&keys, "dev", &agent_library());
    nodes[0].add_check("tick", 1, &["/bin/true"]);
    nodes[1].add_check("slow", 3600, &["/bin/sleep", "4"]);
    let agents = agents(&nodes, &keys);
    wait_until("every agent connected", secs(120), || {
        (shared.sessions().len() == AGENTS).then_some(())
    });
    wait_until("every agent's results acknowledged", secs(60), || {
        let acked = shared.acked();
        (acked.len() == AGENTS && acked.values().all(|&a| a >= 2)).then_some(())
    });
    (nodes, keys, agents)
}

/// Asserts that every result acknowledged in `acked` is still stored.
fn nothing_acked_lost(shared: &Shared, acked: &BTreeMap<String, u64>) {
    for (fp, &up_to) in acked {
        assert_eq!(
            shared.stored_up_to(fp, up_to),
            up_to,
            "agent {fp}: a result acknowledged up to {up_to} is missing"
        );
    }
}

/// The presence each agent is shown with by `node`'s API, if it answers.
fn shown(node: &TestServer) -> Option<Vec<(String, String)>> {
    let agents = ureq::get(&format!("{}/api/v1/agents", node.url))
        .set("Authorization", &format!("Bearer {}", node.admin_token))
        .call()
        .ok()?
        .into_json::<serde_json::Value>()
        .ok()?;
    Some(
        agents
            .as_array()?
            .iter()
            .map(|a| {
                (
                    a["fingerprint"].as_str().unwrap_or_default().to_owned(),
                    a["presence"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
    )
}

#[test]
fn a_killed_node_s_agents_move_on_without_being_shown_down_or_losing_acked_results() {
    let shared = Shared::start();
    let (mut nodes, _keys, _agents) = fleet(&shared);
    // The node holding the most agents dies.
    let sessions = shared.sessions();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in sessions.values() {
        *per_node.entry(node).or_default() += 1;
    }
    let (victim, held) = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, c)| (n.to_string(), *c))
        .unwrap();
    let victim_index: usize = victim[1..].parse::<usize>().unwrap() - 1;
    let caller_index = (victim_index + 1) % 3;
    let moving = sessions
        .iter()
        .find(|(_, n)| **n == victim)
        .map(|(fp, _)| fp.clone())
        .unwrap();
    let acked = shared.acked();
    nothing_acked_lost(&shared, &acked);

    // A run-now through another node, pending on the victim's agent
    // (its check takes 4 s) when the victim dies.
    let call = {
        let url = format!("{}/api/v1/agents/{moving}/run", nodes[caller_index].url);
        let token = nodes[caller_index].admin_token.clone();
        std::thread::spawn(move || {
            let answer = ureq::post(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(serde_json::json!({ "check": "slow" }));
            let at = Instant::now();
            match answer {
                Ok(r) => (r.status(), r.into_string().unwrap_or_default(), at),
                Err(ureq::Error::Status(code, r)) => {
                    (code, r.into_string().unwrap_or_default(), at)
                }
                Err(e) => panic!("run-now request failed: {e}"),
            }
        })
    };
    let killed_at = Instant::now();
    nodes[victim_index].kill();

    // Every agent ends up on a live node; meanwhile no agent is shown down
    // by the live nodes.
    let survivors: Vec<&TestServer> = (0..3)
        .filter(|&i| i != victim_index)
        .map(|i| &nodes[i])
        .collect();
    let moved_in = wait_until("every agent connected to a live node", secs(60), || {
        for node in &survivors {
            if let Some(rows) = shown(node) {
                for (fp, presence) in rows {
                    assert_eq!(
                        presence, "connected",
                        "agent {fp} shown {presence} by {}",
                        node.url
                    );
                }
            }
        }
        let now = shared.sessions();
        (now.len() == AGENTS && now.values().all(|n| *n != victim)).then(|| killed_at.elapsed())
    });
    println!("{held} agents of the killed node {victim} reconnected within {moved_in:?}");
    assert!(moved_in < secs(30), "reconnect took {moved_in:?}");

    let (status, body, answered_at) = call.join().unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("now connected to node") || body.contains("cannot be reached"),
        "{body}"
    );
    let waited = answered_at.duration_since(killed_at);
    assert!(
        waited < secs(10),
        "the call failed {waited:?} after the node died, not fast"
    );

    // The agents go on reporting through the live nodes; nothing of what
    // was acknowledged before is gone.
    wait_until("results acknowledged after the move", secs(60), || {
        let now = shared.acked();
        acked
            .iter()
            .all(|(fp, &before)| now.get(fp).is_some_and(|&a| a > before))
            .then_some(())
    });
    nothing_acked_lost(&shared, &acked);
    nothing_acked_lost(&shared, &shared.acked());
    // After the sweep's silence, still nobody is down.
    wait_until("the sweep's silence passed", secs(60), || {
        (killed_at.elapsed() > Duration::from_millis(35_000)).then_some(())
    });
    for node in &survivors {
        for (fp, presence) in shown(node).expect("a live node answers") {
            assert_eq!(presence, "connected", "agent {fp}");
        }
    }
    // Past down_for, with the killed node's agents moved (and alert
    // evaluation with them if it ran there): nothing was paged.
    nobody_paged(survivors[0]);
}

#[test]
fn postgresql_restarted_under_load_loses_nothing_acknowledged_and_shows_nobody_down() {
    let shared = Shared::start();
    let (nodes, _keys, agents) = fleet(&shared);
    let acked = shared.acked();
    nothing_acked_lost(&shared, &acked);

    shared.cluster.pause().unwrap();
    let paused_at = Instant::now();
    // The outage itself: results pile up in the agents' spools.
    wait_until("an outage of 5 s", secs(10), || {
        (paused_at.elapsed() >= secs(5)).then_some(())
    });
    shared.cluster.resume().unwrap();

    let deadline = Instant::now() + secs(120);
    loop {
        let now = shared.acked();
        if acked
            .iter()
            .all(|(fp, &before)| now.get(fp).is_some_and(|&a| a > before))
        {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| tail(&n.proc.log(), 40))
                .chain(agents.iter().map(|a| tail(&a.proc.log(), 60)))
                .collect();
            panic!(
                "no results acknowledged after the restart within 120 s: before {acked:?}, now {now:?}\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until("every agent connected again", secs(60), || {
        (shared.sessions().len() == AGENTS).then_some(())
    });
    nothing_acked_lost(&shared, &shared.acked());
    for node in &nodes {
        for (fp, presence) in shown(node).expect("the node answers again") {
            assert_eq!(presence, "connected", "agent {fp} shown by {}", node.url);
        }
    }
    // Past down_for after the outage: the agents were never down.
    let back = Instant::now();
    wait_until("down_for passed after the outage", secs(30), || {
        (back.elapsed() > Duration::from_millis(DOWN_FOR_MS + 2_000)).then_some(())
    });
    nobody_paged(&nodes[0]);
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
