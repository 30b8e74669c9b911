//! The behaviour suite of the fleet pages ([`FleetStore`],
//! `backend/fleet.rs`), built like `backend/agent_tests.rs`:
//! `two_node_suite!` (`two_nodes.rs`) runs each test against SQLite (one
//! store on a real file) and PostgreSQL (two pools on one fresh database
//! of the test binary's private cluster). Agents are registered through
//! the agents area; latest results are written as the results area stores
//! them (`latest_results`, the contract between the two areas; on
//! PostgreSQL from the results area's migration 12).

use outrider_protocol::api::Presence;
use outrider_protocol::{CheckState, Fingerprint};

use super::Backend;
use super::agents::{Admission, AgentStore, Registration};
use super::fleet::{FleetQuery, FleetStore, MAX_FLEET_PAGE};
use super::two_nodes::two_node_suite;
use crate::store::TokenGrant;

two_node_suite!(
    pages_filter_by_text_and_tag_and_show_the_worst_state,
    pages_sort_byte_by_byte_and_the_text_filter_folds_ascii_only,
    pages_cover_the_fleet_once_in_order,
    the_matrix_holds_the_latest_states_of_the_agents_asked_for,
);

const T0: i64 = 1_800_000_000_000;

fn fp(i: u32) -> Fingerprint {
    format!("{i:020x}").parse().unwrap()
}

/// Registers agent `i` as `hostname` with its declared `tags`.
async fn agent(b: &Backend, i: u32, hostname: &str, tags: &[&str]) -> Fingerprint {
    let registration = Registration {
        fingerprint: fp(i),
        public_key: "01".repeat(32),
        hostname: hostname.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        build_sha256: None,
        build_version: (i % 2 == 1).then(|| "0.2.0".to_owned()),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        admission: Admission::Enrolled(TokenGrant {
            id: "t".into(),
            allowed_tags: None,
        }),
        stub_version: None,
        channel: None,
        protocol_version: 2,
    };
    b.register(registration, T0).await.unwrap().unwrap();
    fp(i)
}

/// Stores `state` (`None`: a row from before states were kept) as the
/// latest of `check` of `agent`. Such rows exist only in SQLite files
/// migrated from schema 6; PostgreSQL's table never held one (its
/// `state` is `NOT NULL`), so there the row is not written, and the pages
/// must show what they show without it.
async fn latest(b: &Backend, agent: &Fingerprint, check: &str, state: Option<&str>) {
    let (agent, check, state) = (
        agent.to_string(),
        check.to_owned(),
        state.map(str::to_owned),
    );
    match b {
        Backend::Sqlite(s) => s
            .store()
            .with_writer(move |c| {
                c.execute(
                    "INSERT INTO latest_results (fingerprint, check_name, seq, state, state_since_ms)
                     VALUES (?1, ?2, 1, ?3, 0)",
                    rusqlite::params![agent, check, state],
                )
            })
            .await
            .unwrap()
            .map(drop)
            .unwrap(),
        Backend::Postgres(_) if state.is_none() => {}
        Backend::Postgres(p) => p
            .client()
            .await
            .unwrap()
            .execute(
                "INSERT INTO latest_results (fingerprint, check_name, seq, state, state_since_ms)
                 VALUES ($1, $2, 1, $3, 0)",
                &[&agent, &check, &state],
            )
            .await
            .map(drop)
            .unwrap(),
    }
}

fn all(page: u32, per_page: u32) -> FleetQuery {
    FleetQuery {
        page,
        per_page,
        ..FleetQuery::default()
    }
}

fn text(t: &str) -> FleetQuery {
    FleetQuery {
        text: Some(t.into()),
        ..all(0, 50)
    }
}

async fn hostnames(b: &Backend, q: FleetQuery) -> Vec<String> {
    b.fleet_page(q)
        .await
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.hostname)
        .collect()
}

async fn pages_filter_by_text_and_tag_and_show_the_worst_state(a: Backend, b: Backend) {
    let mut fps = Vec::new();
    for i in 0..5 {
        let tags: &[&str] = if i % 2 == 0 { &["web"] } else { &["db"] };
        fps.push(agent(&a, i, &format!("host-{i}"), tags).await);
    }
    assert!(
        b.set_server_tags(&fps[1], &["web".into(), "eu".into()])
            .await
            .unwrap()
    );
    latest(&a, &fps[0], "load", Some("WARNING")).await;
    latest(&a, &fps[0], "disk", Some("CRITICAL")).await;
    latest(&a, &fps[0], "mem", Some("OK")).await;
    latest(&a, &fps[1], "load", Some("OK")).await;
    latest(&a, &fps[2], "load", Some("UNKNOWN")).await;
    latest(&a, &fps[2], "old", None).await;

    let first = b.fleet_page(all(0, 2)).await.unwrap();
    assert_eq!(first.total, 5);
    let row = &first.rows[0];
    assert_eq!(
        (
            row.hostname.as_str(),
            row.worst,
            row.problems,
            row.checks,
            row.presence,
            row.presence_since_ms,
            row.version.as_str()
        ),
        (
            "host-0",
            Some(CheckState::Critical),
            2,
            3,
            Presence::Connected,
            T0,
            "0.1.0"
        )
    );
    assert_eq!(row.tags, ["web"]);
    let second = &first.rows[1];
    assert_eq!(
        (
            second.worst,
            second.problems,
            second.checks,
            second.version.as_str()
        ),
        (Some(CheckState::Ok), 0, 1, "0.2.0")
    );
    assert_eq!(second.tags, ["db", "eu", "web"]);
    let middle = b.fleet_page(all(1, 2)).await.unwrap();
    // A row without a state (SQLite only, see `latest`) counts as a
    // check, not as a problem.
    let stateless = u32::from(matches!(a, Backend::Sqlite(_)));
    assert_eq!(
        (
            middle.rows[0].worst,
            middle.rows[0].problems,
            middle.rows[0].checks
        ),
        (Some(CheckState::Unknown), 1, 1 + stateless)
    );
    let last = a.fleet_page(all(2, 2)).await.unwrap();
    assert_eq!(last.rows.len(), 1);
    assert_eq!(
        (
            last.rows[0].hostname.as_str(),
            last.rows[0].worst,
            last.rows[0].checks
        ),
        ("host-4", None, 0)
    );
    assert!(a.fleet_page(all(3, 2)).await.unwrap().rows.is_empty());

    // The agent's own tags and the server's.
    let web = FleetQuery {
        tag: Some("web".into()),
        ..all(0, 50)
    };
    let page = b.fleet_page(web).await.unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(page.rows.len(), 4);
    let eu = FleetQuery {
        tag: Some("eu".into()),
        ..all(0, 50)
    };
    assert_eq!(hostnames(&a, eu).await, ["host-1"]);
    assert_eq!(hostnames(&b, text("ST-3")).await, ["host-3"]);
    // Part of a fingerprint, in either case.
    let hex = fps[4].to_string();
    let tail = hex[hex.len() - 6..].to_ascii_uppercase();
    assert_eq!(hostnames(&a, text(&tail)).await, ["host-4"]);
    // LIKE's own characters match only themselves.
    assert_eq!(b.fleet_page(text("%")).await.unwrap().total, 0);
    assert_eq!(b.fleet_page(text("host_")).await.unwrap().total, 0);
    let both = FleetQuery {
        text: Some("host-".into()),
        tag: Some("db".into()),
        ..all(0, 50)
    };
    assert_eq!(hostnames(&a, both).await, ["host-1", "host-3"]);

    let one = a.fleet_row(&fps[0]).await.unwrap().unwrap();
    assert_eq!(one, first.rows[0]);
    assert_eq!(b.fleet_row(&fps[1]).await.unwrap().unwrap(), first.rows[1]);
    assert_eq!(a.fleet_row(&fp(99)).await.unwrap(), None);
}

async fn pages_sort_byte_by_byte_and_the_text_filter_folds_ascii_only(a: Backend, b: Backend) {
    let names = [
        "beta", "Beta", "alpha", "Zulu", "_under", "éclair", "Éclair", "b-2", "b.1", "10", "9",
    ];
    for (i, name) in names.iter().enumerate() {
        agent(&a, i as u32, name, &[]).await;
    }
    // Two agents of one host name: by fingerprint.
    agent(&a, 100, "alpha", &[]).await;
    let mut expected: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    expected.push("alpha".into());
    expected.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(hostnames(&b, all(0, 50)).await, expected);
    let alphas: Vec<Fingerprint> = a
        .fleet_page(text("alpha"))
        .await
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.fingerprint)
        .collect();
    assert_eq!(alphas, [fp(2), fp(100)]);
    // ASCII letters match in either case; others only as they are.
    assert_eq!(hostnames(&a, text("BETA")).await, ["Beta", "beta"]);
    assert_eq!(hostnames(&a, text("zU")).await, ["Zulu"]);
    assert_eq!(hostnames(&b, text("éCLAIR")).await, ["éclair"]);
    assert_eq!(hostnames(&b, text("Éclair")).await, ["Éclair"]);
    assert_eq!(hostnames(&a, text("_")).await, ["_under"]);
    assert_eq!(hostnames(&a, text(".")).await, ["b.1"]);
}

async fn pages_cover_the_fleet_once_in_order(a: Backend, b: Backend) {
    let n = MAX_FLEET_PAGE + 50;
    for i in 0..n {
        // Host names out of insertion order.
        agent(&a, i, &format!("h{:04}", (i * 7919) % n), &[]).await;
    }
    let mut seen = Vec::new();
    let mut page = 0;
    loop {
        let got = b.fleet_page(all(page, 60)).await.unwrap();
        assert_eq!(got.total, u64::from(n));
        if got.rows.is_empty() {
            break;
        }
        assert!(got.rows.len() <= 60);
        seen.extend(got.rows.into_iter().map(|r| r.hostname));
        page += 1;
    }
    let expected: Vec<String> = (0..n).map(|i| format!("h{i:04}")).collect();
    assert_eq!(seen, expected);
    // A page never holds more than the maximum.
    let big = a.fleet_page(all(0, 10_000)).await.unwrap();
    assert_eq!(big.rows.len(), MAX_FLEET_PAGE as usize);
    assert_eq!(a.fleet_page(all(0, 0)).await.unwrap().rows.len(), 1);
}

async fn the_matrix_holds_the_latest_states_of_the_agents_asked_for(a: Backend, b: Backend) {
    // Fingerprints ordered by bytes: fp(10) is "…0a", after "…09".
    let (x, y, z) = (
        agent(&a, 10, "x", &[]).await,
        agent(&a, 9, "y", &[]).await,
        agent(&a, 11, "z", &[]).await,
    );
    latest(&a, &x, "load", Some("WARNING")).await;
    latest(&a, &x, "Disk", Some("CRITICAL")).await;
    latest(&a, &x, "disk", Some("OK")).await;
    latest(&a, &x, "old", None).await;
    latest(&a, &y, "load", Some("UNKNOWN")).await;
    latest(&a, &z, "load", Some("CRITICAL")).await;
    let cells = b
        .check_states(vec![x.clone(), y.clone(), fp(99)])
        .await
        .unwrap();
    let cells: Vec<(String, &str, CheckState)> = cells
        .iter()
        .map(|(fp, check, state)| (fp.to_string(), check.as_str(), *state))
        .collect();
    assert_eq!(
        cells,
        [
            (y.to_string(), "load", CheckState::Unknown),
            (x.to_string(), "Disk", CheckState::Critical),
            (x.to_string(), "disk", CheckState::Ok),
            (x.to_string(), "load", CheckState::Warning),
        ]
    );
    assert!(a.check_states(vec![]).await.unwrap().is_empty());
}

/// PostgreSQL pages, filters and fills the matrix as SQLite does whatever
/// the columns' collation (the test cluster's default is C, so the columns
/// are given an ICU one here, under which "a" sorts before "B" and
/// `lower` folds "É").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pages_are_in_byte_order_whatever_the_collation() {
    let (db, node) = super::two_nodes::pg_database_node().await;
    let (client, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(
            r#"ALTER TABLE agents ALTER COLUMN hostname TYPE TEXT COLLATE "und-x-icu";
               ALTER TABLE agents ALTER COLUMN fingerprint TYPE TEXT COLLATE "und-x-icu";
               ALTER TABLE latest_results ALTER COLUMN fingerprint TYPE TEXT COLLATE "und-x-icu";
               ALTER TABLE latest_results ALTER COLUMN check_name TYPE TEXT COLLATE "und-x-icu";"#,
        )
        .await
        .unwrap();
    let natural: Vec<String> = client
        .query(
            r#"SELECT h FROM (VALUES ('a'), ('B')) AS t(h) ORDER BY h COLLATE "und-x-icu""#,
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(natural, ["a", "B"], "the collation orders otherwise");
    drop(client);
    driver.await.unwrap().unwrap();
    pages_sort_byte_by_byte_and_the_text_filter_folds_ascii_only(node.clone(), node.clone()).await;
    the_matrix_holds_the_latest_states_of_the_agents_asked_for(node.clone(), node).await;
}

/// SQLite runs a page in two statements, the matrix and a live row in one
/// each, whatever the fleet size: what the dashboard's budget
/// (`crate::store::StatementCount`, at most four a page) counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pages_cost_two_statements_the_matrix_and_a_row_one() {
    let (_guard, a, _) = super::two_nodes::sqlite().await;
    let mut fps = Vec::new();
    for i in 0..30 {
        fps.push(agent(&a, i, &format!("h{i}"), &["web"]).await);
        latest(&a, &fps[i as usize], "load", Some("OK")).await;
    }
    let page = FleetQuery {
        text: Some("h".into()),
        tag: Some("web".into()),
        ..all(1, 10)
    };
    let count = crate::store::StatementCount::default();
    count.scope(a.fleet_page(page)).await.unwrap();
    assert_eq!(count.get(), 2, "a page");
    count.scope(a.check_states(fps.clone())).await.unwrap();
    assert_eq!(count.get(), 3, "and the matrix");
    count.scope(a.fleet_row(&fps[0])).await.unwrap();
    assert_eq!(count.get(), 4, "and a row");
}
