//! The behaviour suite of the checks area ([`CheckStore`],
//! `backend/checks.rs`), built like `backend/agent_tests.rs`: every test is
//! one generic function given two "nodes" on one shared store, run against
//! SQLite (one store on a real file: both handles are that one node) and
//! PostgreSQL (two [`PgBackend`]s with their own pools on one fresh
//! database of `outrider-pgtest`'s private cluster). Concurrent changes and
//! computations must give a result that running them one after the other
//! gives: versions strictly increasing, each bump reported once, the last
//! documents those of the last definitions.

use std::collections::BTreeMap;

use outrider_protocol::Fingerprint;
use outrider_protocol::api::{CheckAlert, CheckInfo};

use super::agents::{Admission, AgentStore, Registration};
use super::checks::{CheckStore, ComputedConfig, DeletePlugin, PutCheck};
use super::two_nodes::two_node_suite;
use super::{Backend, PgBackend, PgTls};
use crate::store::TokenGrant;

two_node_suite!(
    versions_move_only_for_agents_whose_document_changed,
    checks_are_stored_replaced_listed_by_name_and_deleted,
    plugins_cannot_be_named_before_upload_or_deleted_while_used,
    a_repointed_plugin_reports_the_file_no_plugin_uses_any_more,
    concurrent_changes_and_computations_never_lose_a_version,
    a_check_naming_a_plugin_racing_its_deletion_leaves_one_of_them,
);

const T0: i64 = 1_800_000_000_000;

fn fp(i: u32) -> Fingerprint {
    format!("{i:020x}").parse().unwrap()
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

/// Registers agent `i` announcing `declared` tags.
pub(super) async fn agent(b: &Backend, i: u32, declared: &[&str]) -> Fingerprint {
    let agent = fp(i);
    let reg = Registration {
        fingerprint: agent.clone(),
        public_key: format!("{:02x}", i % 256).repeat(32),
        hostname: format!("host-{i}"),
        os: "linux".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
        build_sha256: None,
        build_version: None,
        tags: tags(declared),
        admission: Admission::Enrolled(TokenGrant {
            id: "t".into(),
            allowed_tags: None,
        }),
        stub_version: None,
        channel: None,
        protocol_version: 2,
    };
    b.register(reg, T0).await.unwrap().expect("enrolled");
    agent
}

fn check(name: &str, interval_secs: u32, selector: &[&str]) -> CheckInfo {
    CheckInfo {
        name: name.into(),
        command: vec!["/bin/true".into()],
        interval_secs,
        timeout_secs: 5,
        tags: tags(selector),
        alert: None,
    }
}

/// (fingerprint, version, changed), sorted.
pub(super) fn versions(computed: &[ComputedConfig]) -> Vec<(String, u64, bool)> {
    let mut v: Vec<_> = computed
        .iter()
        .map(|c| (c.fingerprint.to_string(), c.config.version, c.changed))
        .collect();
    v.sort();
    v
}

async fn versions_move_only_for_agents_whose_document_changed(a: Backend, b: Backend) {
    let web = agent(&a, 1, &["web"]).await;
    let db = agent(&b, 2, &["db"]).await;
    let (w, d) = (web.to_string(), db.to_string());
    assert_eq!(
        versions(&a.compute_configs(None).await.unwrap()),
        [(w.clone(), 1, true), (d.clone(), 1, true)]
    );
    // Recomputing without a change moves nothing, on either node.
    assert_eq!(
        versions(&b.compute_configs(None).await.unwrap()),
        [(w.clone(), 1, false), (d.clone(), 1, false)]
    );
    assert_eq!(
        a.put_check(check("nginx", 10, &["web"]), T0).await.unwrap(),
        PutCheck::Changed
    );
    let computed = b.compute_configs(None).await.unwrap();
    assert_eq!(
        versions(&computed),
        [(w.clone(), 2, true), (d.clone(), 1, false)]
    );
    let doc = &computed
        .iter()
        .find(|c| c.fingerprint == web)
        .unwrap()
        .config;
    assert_eq!(doc.checks[0].name, "nginx");
    assert_eq!(doc.tags, ["web"]);
    assert!(!doc.allow_adhoc);
    // An empty selector reaches everyone.
    a.put_check(check("load", 30, &[]), T0).await.unwrap();
    assert_eq!(
        versions(&a.compute_configs(None).await.unwrap()),
        [(w.clone(), 3, true), (d.clone(), 2, true)]
    );
    // Server-assigned tags count like the agent's own; `only` computes one
    // agent.
    assert!(b.set_server_tags(&db, &tags(&["web"])).await.unwrap());
    let computed = b.compute_configs(Some(&db)).await.unwrap();
    assert_eq!(versions(&computed), [(d.clone(), 3, true)]);
    assert_eq!(computed[0].config.tags, ["db", "web"]);
    assert_eq!(computed[0].config.checks.len(), 2);
    // The ad-hoc permission is part of the document.
    assert!(a.set_allow_adhoc(&web, true).await.unwrap());
    let computed = a.compute_configs(Some(&web)).await.unwrap();
    assert_eq!(versions(&computed), [(w.clone(), 4, true)]);
    assert!(computed[0].config.allow_adhoc);
    assert_eq!(computed[0].config.version, 4);
    // Unknown agents compute nothing.
    assert!(a.compute_configs(Some(&fp(99))).await.unwrap().is_empty());
    // Deleting a check moves the versions of the agents it selected.
    assert!(b.delete_check("nginx").await.unwrap());
    assert_eq!(
        versions(&a.compute_configs(None).await.unwrap()),
        [(w, 5, true), (d, 4, true)]
    );
}

async fn checks_are_stored_replaced_listed_by_name_and_deleted(a: Backend, b: Backend) {
    assert!(a.checks().await.unwrap().is_empty());
    let mut alerting = check("a", 10, &["web", "eu", "web"]);
    alerting.alert = Some(CheckAlert {
        after_failures: Some(3),
        after_secs: None,
        recover_after: Some(2),
    });
    assert_eq!(
        a.put_check(alerting.clone(), T0).await.unwrap(),
        PutCheck::Changed
    );
    // The same definition (selector in another order) changes nothing.
    let mut same = alerting.clone();
    same.tags = tags(&["eu", "web"]);
    assert_eq!(
        b.put_check(same, T0 + 1).await.unwrap(),
        PutCheck::Unchanged
    );
    // Each field is a change.
    let mut changes = Vec::new();
    let mut c = alerting.clone();
    c.interval_secs = 11;
    changes.push(c);
    let mut c = alerting.clone();
    c.timeout_secs = 6;
    changes.push(c);
    let mut c = alerting.clone();
    c.command = tags(&["/bin/false"]);
    changes.push(c);
    let mut c = alerting.clone();
    c.tags = tags(&["web"]);
    changes.push(c);
    let mut c = alerting.clone();
    c.alert = None;
    changes.push(c);
    changes.push(alerting.clone());
    for (i, c) in changes.into_iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            node.put_check(c.clone(), T0).await.unwrap(),
            PutCheck::Changed,
            "{c:?}"
        );
    }
    // Listed by name, byte by byte; the selector normalised.
    b.put_check(check("B", 10, &[]), T0).await.unwrap();
    b.put_check(check("_x", u32::MAX, &[]), T0).await.unwrap();
    let listed = a.checks().await.unwrap();
    let names: Vec<_> = listed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["B", "_x", "a"]);
    assert_eq!(listed[1].interval_secs, u32::MAX);
    let mut want = alerting;
    want.tags = tags(&["eu", "web"]);
    assert_eq!(listed[2], want);
    assert!(b.delete_check("a").await.unwrap());
    assert!(!a.delete_check("a").await.unwrap());
    assert_eq!(a.checks().await.unwrap().len(), 2);
}

async fn plugins_cannot_be_named_before_upload_or_deleted_while_used(a: Backend, b: Backend) {
    let web = agent(&a, 1, &[]).await;
    let mut uses = check("custom", 10, &[]);
    uses.command = tags(&["plugin:check_foo", "-w", "1"]);
    assert_eq!(
        a.put_check(uses.clone(), T0).await.unwrap(),
        PutCheck::UnknownPlugin("check_foo".into())
    );
    assert!(b.checks().await.unwrap().is_empty());
    let sha = "ab".repeat(32);
    let (row, orphaned) = b.put_plugin("check_foo", &sha, 10, T0).await.unwrap();
    assert_eq!(
        (row.name.as_str(), row.size, row.updated_at_ms),
        ("check_foo", 10, T0)
    );
    assert_eq!(orphaned, None);
    assert_eq!(a.plugins().await.unwrap(), [row]);
    assert_eq!(a.put_check(uses, T0).await.unwrap(), PutCheck::Changed);
    let computed = b.compute_configs(None).await.unwrap();
    assert_eq!(computed[0].fingerprint, web);
    computed[0].config.validate().unwrap();
    assert_eq!(computed[0].config.plugins[0].sha256, sha);
    assert_eq!(computed[0].config.plugins[0].size, 10);
    assert_eq!(
        b.delete_plugin("check_foo").await.unwrap(),
        DeletePlugin::InUse(vec!["custom".into()])
    );
    a.delete_check("custom").await.unwrap();
    assert_eq!(
        b.delete_plugin("check_foo").await.unwrap(),
        DeletePlugin::Deleted {
            orphaned: Some(sha)
        }
    );
    assert_eq!(
        a.delete_plugin("check_foo").await.unwrap(),
        DeletePlugin::NotFound
    );
    assert!(a.plugins().await.unwrap().is_empty());
}

async fn a_repointed_plugin_reports_the_file_no_plugin_uses_any_more(a: Backend, b: Backend) {
    let (x, y) = ("aa".repeat(32), "bb".repeat(32));
    a.put_plugin("one", &x, 1, T0).await.unwrap();
    a.put_plugin("two", &x, 1, T0).await.unwrap();
    // `two` still uses x.
    assert_eq!(b.put_plugin("one", &y, 2, T0 + 1).await.unwrap().1, None);
    // The same file again orphans nothing.
    assert_eq!(b.put_plugin("one", &y, 2, T0 + 2).await.unwrap().1, None);
    assert_eq!(a.put_plugin("two", &y, 2, T0 + 3).await.unwrap().1, Some(x));
    // Deleting one of two users of a file orphans nothing; the last does.
    assert_eq!(
        a.delete_plugin("one").await.unwrap(),
        DeletePlugin::Deleted { orphaned: None }
    );
    assert_eq!(
        b.delete_plugin("two").await.unwrap(),
        DeletePlugin::Deleted { orphaned: Some(y) }
    );
    // Listed by name, byte by byte.
    for name in ["b", "B", "a"] {
        a.put_plugin(name, &"cc".repeat(32), 3, T0).await.unwrap();
    }
    let names: Vec<_> = b
        .plugins()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["B", "a", "b"]);
}

async fn concurrent_changes_and_computations_never_lose_a_version(a: Backend, b: Backend) {
    const AGENTS: u32 = 4;
    const CHANGES: u32 = 24;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        agents.push(agent(&a, i, &["web"]).await);
    }
    assert!(
        a.compute_configs(None)
            .await
            .unwrap()
            .iter()
            .all(|c| c.config.version == 1)
    );
    // Every task changes a check, then computes every document or one
    // agent's, from both nodes at once, as the server does after a change
    // and at a handshake.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CHANGES {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let only = (i % 3 == 0).then(|| agents[(i % AGENTS) as usize].clone());
        tasks.spawn(async move {
            node.put_check(check(&format!("c{i}"), 10 + i, &["web"]), T0)
                .await
                .unwrap();
            node.compute_configs(only.as_ref()).await.unwrap()
        });
    }
    let mut bumps: BTreeMap<Fingerprint, Vec<u64>> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for c in done.unwrap() {
            if c.changed {
                bumps
                    .entry(c.fingerprint)
                    .or_default()
                    .push(c.config.version);
            }
        }
    }
    // Once more, with every change committed: the stored documents are
    // those of the last definitions, unless a version moves now.
    let last = b.compute_configs(None).await.unwrap();
    for c in &last {
        let mut seen = bumps.remove(&c.fingerprint).unwrap_or_default();
        if c.changed {
            seen.push(c.config.version);
        }
        seen.sort();
        // Each version from 2 on was reported by exactly one computation:
        // none lost, none given twice.
        let want: Vec<u64> = (2..=c.config.version).collect();
        assert_eq!(seen, want, "{}", c.fingerprint);
        assert_eq!(c.config.checks.len(), CHANGES as usize, "{}", c.fingerprint);
    }
    assert!(bumps.is_empty());
    assert!(
        a.compute_configs(None)
            .await
            .unwrap()
            .iter()
            .all(|c| !c.changed),
        "a computation after the last one moves nothing"
    );
}

async fn a_check_naming_a_plugin_racing_its_deletion_leaves_one_of_them(a: Backend, b: Backend) {
    for round in 0..8 {
        let plugin = format!("p{round}");
        a.put_plugin(&plugin, &"dd".repeat(32), 1, T0)
            .await
            .unwrap();
        let mut uses = check(&format!("c{round}"), 10, &[]);
        uses.command = vec![format!("plugin:{plugin}")];
        let put = {
            let node = if round % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { node.put_check(uses, T0).await.unwrap() })
        };
        let delete = {
            let node = if round % 2 == 0 { b.clone() } else { a.clone() };
            let plugin = plugin.clone();
            tokio::spawn(async move { node.delete_plugin(&plugin).await.unwrap() })
        };
        let (put, delete) = (put.await.unwrap(), delete.await.unwrap());
        let stored = a
            .checks()
            .await
            .unwrap()
            .iter()
            .any(|c| c.name == format!("c{round}"));
        let plugin_kept = b.plugins().await.unwrap().iter().any(|p| p.name == plugin);
        match (&put, &delete) {
            (PutCheck::Changed, DeletePlugin::InUse(users)) => {
                assert_eq!(users, &[format!("c{round}")]);
                assert!(stored && plugin_kept);
            }
            (PutCheck::UnknownPlugin(p), DeletePlugin::Deleted { .. }) => {
                assert_eq!(p, &plugin);
                assert!(!stored && !plugin_kept);
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

/// PostgreSQL, step by step: a computation that finds an agent's row
/// locked waits, then reads the definitions committed while it waited
/// and the row's newest version: the document is that of the newest check,
/// one version above the one stored meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_computation_waits_for_the_agents_row_then_reads_the_newest_definitions() {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let node = || async {
        Backend::Postgres(
            PgBackend::with_config(db.config.clone(), PgTls::Disable, 2)
                .await
                .unwrap(),
        )
    };
    let (a, b) = (node().await, node().await);
    let web = agent(&a, 1, &["web"]).await;
    a.compute_configs(None).await.unwrap();
    let (mut other, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let holder = other.transaction().await.unwrap();
    // Another node's computation, uncommitted: it stored version 2.
    let held = holder
        .execute(
            "UPDATE agents SET config_version = 2, config_sha256 = 'other' WHERE fingerprint = $1",
            &[&web.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(held, 1);
    // A committed check the document lacks: the computation must bump.
    b.put_check(check("early", 10, &["web"]), T0).await.unwrap();
    let waiting = {
        let a = a.clone();
        let web = web.clone();
        tokio::spawn(async move { a.compute_configs(Some(&web)).await })
    };
    super::two_nodes::wait_for_a_lock_wait(&db.config, None).await;
    // A check stored while the computation waits.
    b.put_check(check("late", 10, &["web"]), T0).await.unwrap();
    holder.commit().await.unwrap();
    let computed = waiting.await.unwrap().unwrap();
    assert_eq!(versions(&computed), [(web.to_string(), 3, true)]);
    let names: Vec<&str> = computed[0]
        .config
        .checks
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["early", "late"]);
    drop(other);
    driver.await.unwrap().unwrap();
}

/// PostgreSQL: a computation that finds every document as stored (what
/// the other nodes run after a change was broadcast) locks no agent row:
/// it neither waits for nor blocks another node's registration or bump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_computation_that_changes_nothing_takes_no_row_lock() {
    let (db, node) = super::two_nodes::pg_database_node().await;
    let web = agent(&node, 1, &["web"]).await;
    node.put_check(check("load", 10, &["web"]), T0)
        .await
        .unwrap();
    node.compute_configs(None).await.unwrap();
    let (mut other, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    // Another node holds the agent's row (a registration in progress).
    let holder = other.transaction().await.unwrap();
    holder
        .execute(
            "SELECT 1 FROM agents WHERE fingerprint = $1 FOR UPDATE",
            &[&web.as_str()],
        )
        .await
        .unwrap();
    let computed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        node.compute_configs(None),
    )
    .await
    .expect("a computation with nothing to bump waited for a row lock")
    .unwrap();
    assert_eq!(versions(&computed), [(web.to_string(), 1, false)]);
    holder.rollback().await.unwrap();
    drop(other);
    driver.await.unwrap().unwrap();
}

/// PostgreSQL, step by step: a check naming a plugin and the plugin's
/// deletion meet on the plugin's row. A check stored while another node's
/// deletion holds the row waits and then finds no plugin; a deletion
/// while another node's check holds the row (shared) waits and then finds
/// that check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_check_and_its_plugins_deletion_wait_for_each_other_on_the_plugins_row() {
    let (db, node) = super::two_nodes::pg_database_node().await;
    let sha = "ee".repeat(32);
    node.put_plugin("gone", &sha, 1, T0).await.unwrap();
    node.put_plugin("kept", &sha, 1, T0).await.unwrap();
    let (mut other, connection) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);

    // Another node's deletion of `gone`, uncommitted.
    let deletion = other.transaction().await.unwrap();
    deletion
        .execute("DELETE FROM plugins WHERE name = 'gone'", &[])
        .await
        .unwrap();
    let put = {
        let node = node.clone();
        let mut uses = check("uses-gone", 10, &[]);
        uses.command = tags(&["plugin:gone"]);
        tokio::spawn(async move { node.put_check(uses, T0).await })
    };
    super::two_nodes::wait_for_a_lock_wait(&db.config, None).await;
    deletion.commit().await.unwrap();
    assert_eq!(
        put.await.unwrap().unwrap(),
        PutCheck::UnknownPlugin("gone".into())
    );
    assert!(node.checks().await.unwrap().is_empty());

    // Another node's check naming `kept`, uncommitted, holding the
    // plugin's row as `put_check` does.
    let naming = other.transaction().await.unwrap();
    naming
        .execute("SELECT 1 FROM plugins WHERE name = 'kept' FOR SHARE", &[])
        .await
        .unwrap();
    naming
        .execute(
            "INSERT INTO checks (name, command, interval_secs, timeout_secs, updated_at_ms)
             VALUES ('uses-kept', '{plugin:kept}', 10, 5, 0)",
            &[],
        )
        .await
        .unwrap();
    let delete = {
        let node = node.clone();
        tokio::spawn(async move { node.delete_plugin("kept").await })
    };
    super::two_nodes::wait_for_a_lock_wait(&db.config, None).await;
    naming.commit().await.unwrap();
    assert_eq!(
        delete.await.unwrap().unwrap(),
        DeletePlugin::InUse(vec!["uses-kept".into()])
    );
    drop(other);
    driver.await.unwrap().unwrap();
}
