//! The two-node setup of the areas' behaviour suites (`agent_tests.rs`,
//! `token_tests.rs`, …): every test is one generic function given two
//! "nodes" on one shared store, and [`two_node_suite!`] runs each against
//! SQLite (one store on a real file in a temporary directory: one node, so
//! both handles are that node's, as the server has one writer) and
//! PostgreSQL (two [`PgBackend`]s with their own pools on one fresh
//! database of the test binary's private cluster, `outrider-pgtest`, as
//! two server processes would be).

use super::{Backend, PgBackend, PgTls, SqliteBackend};

/// What keeps a backend's storage alive for one test.
pub(crate) type Guard = Option<tempfile::TempDir>;

/// One SQLite store on a file of its own, as both nodes.
pub(crate) async fn sqlite() -> (Guard, Backend, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("test.db"))
        .await
        .unwrap();
    let node = Backend::Sqlite(SqliteBackend::new(store));
    (Some(dir), node.clone(), node)
}

/// A node on the PostgreSQL database `config` names, with a pool of its
/// own.
pub(crate) async fn pg_node(config: &tokio_postgres::Config) -> Backend {
    Backend::Postgres(
        PgBackend::with_config(config.clone(), PgTls::Disable, 4)
            .await
            .unwrap(),
    )
}

/// One node (a pool of 2) on a fresh PostgreSQL database, and that
/// database, for the raw sessions a step-by-step test holds locks with.
pub(crate) async fn pg_database_node() -> (outrider_pgtest::TestDb, Backend) {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    let node = Backend::Postgres(
        PgBackend::with_config(db.config.clone(), PgTls::Disable, 2)
            .await
            .unwrap(),
    );
    (db, node)
}

/// Two nodes on one fresh PostgreSQL database.
pub(crate) async fn postgres() -> (Guard, Backend, Backend) {
    let db = outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap();
    (None, pg_node(&db.config).await, pg_node(&db.config).await)
}

/// Instantiates each named generic test `async fn test(a: Backend, b:
/// Backend)` of the invoking module once per backend.
macro_rules! two_node_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_guard, a, b) = $crate::backend::two_nodes::sqlite().await;
                    super::$test(a, b).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_guard, a, b) = $crate::backend::two_nodes::postgres().await;
                    super::$test(a, b).await;
                }
            )*
        }
    };
}
pub(crate) use two_node_suite;

/// Waits until a session of the test's database waits for a lock (of
/// `wait_event`, e.g. `advisory`, when given), polling `pg_stat_activity`:
/// the step-by-step tests' way of knowing a call queued behind a lock they
/// hold. Fails after 30 s.
pub(crate) async fn wait_for_a_lock_wait(
    config: &tokio_postgres::Config,
    wait_event: Option<&str>,
) {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND ($1::text IS NULL OR wait_event = $1)",
                &[&wait_event],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call waited for a lock ({wait_event:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(client);
    driver.await.unwrap().unwrap();
}
