//! The behaviour suite of the collectors area ([`CollectorStore`],
//! `backend/collectors.rs`), built like `backend/check_tests.rs`: each
//! generic test runs on SQLite (one store on a real file, both handles
//! that one node) and on PostgreSQL (two [`PgBackend`]s, two pools, one
//! database of `outrider-pgtest`'s private cluster).

use outrider_protocol::api::CollectorInfo;
use outrider_protocol::{CollectorSpecWire, KindWire};

use super::Backend;
use super::check_tests::{agent, versions};
use super::checks::CheckStore;
use super::collectors::CollectorStore;
use super::two_nodes::two_node_suite;

two_node_suite!(
    definitions_are_stored_replaced_listed_by_name_and_deleted,
    collectors_reach_the_documents_of_the_agents_they_select_only,
    one_definition_stored_on_two_nodes_at_once_is_one_change,
);

const T0: i64 = 1_800_000_000_000;

fn info(name: &str, argv: &str, tags: &[&str]) -> CollectorInfo {
    CollectorInfo {
        collector: CollectorSpecWire {
            name: name.into(),
            kind: KindWire::Command,
            argv: Some(vec![argv.into()]),
            interval_secs: None,
            plugins: None,
            raw_config: None,
            graphite_port: None,
        },
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        updated_at_ms: 0,
    }
}

async fn definitions_are_stored_replaced_listed_by_name_and_deleted(a: Backend, b: Backend) {
    assert!(a.collectors().await.unwrap().is_empty());
    assert!(
        a.put_collector(info("app", "/bin/a", &["web", "a"]), T0)
            .await
            .unwrap()
    );
    // The same definition, selector in another order: no change, and the
    // row keeps its time.
    assert!(
        !b.put_collector(info("app", "/bin/a", &["a", "web", "a"]), T0 + 1)
            .await
            .unwrap()
    );
    let listed = b.collectors().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tags, ["a", "web"]);
    assert_eq!(listed[0].updated_at_ms, T0);
    assert_eq!(listed[0].collector, info("app", "/bin/a", &[]).collector);
    // The selector and the definition each are a change.
    assert!(
        b.put_collector(info("app", "/bin/a", &["b"]), T0 + 2)
            .await
            .unwrap()
    );
    assert!(
        a.put_collector(info("app", "/bin/b", &["b"]), T0 + 3)
            .await
            .unwrap()
    );
    let listed = a.collectors().await.unwrap();
    assert_eq!(
        (listed[0].tags.clone(), listed[0].updated_at_ms),
        (vec!["b".to_owned()], T0 + 3)
    );
    // Listed by name, byte by byte.
    for name in ["b", "B"] {
        b.put_collector(info(name, "/bin/x", &[]), T0)
            .await
            .unwrap();
    }
    let names: Vec<_> = a
        .collectors()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.collector.name)
        .collect();
    assert_eq!(names, ["B", "app", "b"]);
    assert!(b.delete_collector("app").await.unwrap());
    assert!(!a.delete_collector("app").await.unwrap());
    assert_eq!(a.collectors().await.unwrap().len(), 2);
}

async fn collectors_reach_the_documents_of_the_agents_they_select_only(a: Backend, b: Backend) {
    let web = agent(&a, 1, &["web"]).await;
    let db = agent(&a, 2, &["db"]).await;
    let (w, d) = (web.to_string(), db.to_string());
    a.compute_configs(None).await.unwrap();
    b.put_collector(info("nginx", "/bin/n", &["web"]), T0)
        .await
        .unwrap();
    let computed = a.compute_configs(None).await.unwrap();
    assert_eq!(
        versions(&computed),
        [(w.clone(), 2, true), (d.clone(), 1, false)]
    );
    let doc = &computed
        .iter()
        .find(|c| c.fingerprint == web)
        .unwrap()
        .config;
    let names: Vec<_> = doc.collectors.iter().filter_map(|c| c.name()).collect();
    assert_eq!(names, ["nginx"]);
    assert!(
        computed
            .iter()
            .find(|c| c.fingerprint == db)
            .unwrap()
            .config
            .collectors
            .is_empty()
    );
    a.delete_collector("nginx").await.unwrap();
    assert_eq!(
        versions(&b.compute_configs(None).await.unwrap()),
        [(w, 3, true), (d, 1, false)]
    );
}

async fn one_definition_stored_on_two_nodes_at_once_is_one_change(a: Backend, b: Backend) {
    for round in 0..8 {
        let name = format!("c{round}");
        let mut tasks = tokio::task::JoinSet::new();
        for node in [a.clone(), b.clone(), a.clone(), b.clone()] {
            let c = info(&name, "/bin/same", &["x"]);
            tasks.spawn(async move { node.put_collector(c, T0).await.unwrap() });
        }
        let mut changed = 0;
        while let Some(done) = tasks.join_next().await {
            changed += usize::from(done.unwrap());
        }
        assert_eq!(changed, 1, "round {round}");
    }
    assert_eq!(a.collectors().await.unwrap().len(), 8);
}
