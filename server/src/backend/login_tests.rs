//! The behaviour suite of the dashboard logins area ([`LoginStore`],
//! `backend/logins.rs`), run like `backend/agent_tests.rs`: each generic
//! test gets two "nodes" on one shared store, SQLite (one file, one node)
//! and PostgreSQL (two pools on one fresh database of `outrider-pgtest`'s
//! cluster), and must behave the same on both.

use super::Backend;
use super::logins::{LoginStore, StoredLogin};
use super::two_nodes::{pg_node, two_node_suite};

two_node_suite!(
    logins_are_saved_touched_and_deleted_as_one_store,
    a_save_replaces_the_login_of_its_key_whole,
    the_prune_deletes_the_ended_logins_and_returns_the_others,
    concurrent_logins_touches_and_logouts_on_two_nodes_all_land,
);

fn login(byte: u8, role: &str, last_ms: i64) -> StoredLogin {
    StoredLogin {
        key: [byte; 32],
        role: role.into(),
        csrf: format!("csrf-{byte}"),
        token_sha256: "ab".repeat(32),
        created_ms: 5,
        last_ms,
    }
}

/// Every login, read without pruning, by key.
async fn all(b: &Backend) -> Vec<StoredLogin> {
    let mut all = b.live_logins(|_| false).await.unwrap();
    all.sort_by_key(|l| l.key);
    all
}

async fn logins_are_saved_touched_and_deleted_as_one_store(a: Backend, b: Backend) {
    assert_eq!(all(&a).await, vec![]);
    a.save_login(login(1, "admin", 10)).await.unwrap();
    b.save_login(login(2, "viewer", 20)).await.unwrap();
    a.save_login(login(3, "viewer", 30)).await.unwrap();
    b.touch_login([1; 32], 100).await.unwrap();
    a.delete_login([2; 32]).await.unwrap();
    // Unknown keys (pruned meanwhile): nothing changes, no error.
    a.touch_login([9; 32], 100).await.unwrap();
    b.delete_login([9; 32]).await.unwrap();
    let expected = vec![login(1, "admin", 100), login(3, "viewer", 30)];
    assert_eq!(all(&a).await, expected);
    assert_eq!(all(&b).await, expected);
}

async fn a_save_replaces_the_login_of_its_key_whole(a: Backend, b: Backend) {
    a.save_login(login(1, "viewer", 10)).await.unwrap();
    let replaced = StoredLogin {
        csrf: "other".into(),
        token_sha256: "cd".repeat(32),
        created_ms: 50,
        ..login(1, "admin", 60)
    };
    b.save_login(replaced.clone()).await.unwrap();
    assert_eq!(all(&a).await, vec![replaced]);
}

async fn the_prune_deletes_the_ended_logins_and_returns_the_others(a: Backend, b: Backend) {
    for (byte, last_ms) in [(1, 10), (2, 60), (3, 20), (4, 70)] {
        a.save_login(login(byte, "viewer", last_ms)).await.unwrap();
    }
    // Those last used before 50 have ended.
    let mut live = b.live_logins(|l| l.last_ms < 50).await.unwrap();
    live.sort_by_key(|l| l.key);
    assert_eq!(live, vec![login(2, "viewer", 60), login(4, "viewer", 70)]);
    assert_eq!(all(&a).await, live, "the ended ones were deleted");
    // Every one ended: none left.
    assert_eq!(a.live_logins(|_| true).await.unwrap(), vec![]);
    assert_eq!(all(&b).await, vec![]);
}

async fn concurrent_logins_touches_and_logouts_on_two_nodes_all_land(a: Backend, b: Backend) {
    const N: u8 = 40;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            node.save_login(login(i, "viewer", 1)).await?;
            node.touch_login([i; 32], 100 + i64::from(i)).await?;
            if i % 4 == 0 {
                node.delete_login([i; 32]).await?;
            }
            Ok::<_, super::StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let expected: Vec<StoredLogin> = (0..N)
        .filter(|i| i % 4 != 0)
        .map(|i| login(i, "viewer", 100 + i64::from(i)))
        .collect();
    assert_eq!(all(&a).await, expected);
}

/// PostgreSQL, rule 4 of `backend/logins.rs`: while a node's start decides
/// which logins have ended, another node uses one of them. The prune
/// deletes only logins as it read them, so that one is kept and, live on
/// its newest version, returned; the other ended one is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_login_used_on_another_node_during_a_prune_is_kept() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let node = pg_node(&db.config).await;
    node.save_login(login(1, "viewer", 10)).await.unwrap();
    node.save_login(login(2, "viewer", 20)).await.unwrap();
    node.save_login(login(3, "viewer", 90)).await.unwrap();
    let touched = AtomicBool::new(false);
    let config = db.config.clone();
    let live = node
        .live_logins(move |l| {
            if l.key == [1; 32] && !touched.swap(true, Ordering::SeqCst) {
                // The other node, on its own runtime, uses login 1 now:
                // after this prune read it, before it deletes.
                let config = config.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let other = pg_node(&config).await;
                        other.touch_login([1; 32], 100).await.unwrap();
                    });
                })
                .join()
                .unwrap();
            }
            l.last_ms < 50
        })
        .await
        .unwrap();
    let mut live = live;
    live.sort_by_key(|l| l.key);
    let expected = vec![login(1, "viewer", 100), login(3, "viewer", 90)];
    assert_eq!(live, expected);
    assert_eq!(all(&node).await, expected);
}

/// PostgreSQL: a touch never moves a login's last use back (a late touch
/// from a slow node); SQLite's single node touches in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_late_touch_does_not_move_the_last_use_back() {
    let (_guard, a, b) = super::two_nodes::postgres().await;
    a.save_login(login(1, "viewer", 10)).await.unwrap();
    a.touch_login([1; 32], 100).await.unwrap();
    b.touch_login([1; 32], 50).await.unwrap();
    assert_eq!(all(&a).await, vec![login(1, "viewer", 100)]);
}
