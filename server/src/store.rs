//! The server's embedded store: one SQLite file in WAL mode.
//!
//! rusqlite is blocking, so every operation runs on tokio's blocking pool
//! through `Store::call`, holding the connection mutex only for the
//! duration of one short transaction and never across an `.await`.
//!
//! Reads that change nothing (the API's lists, the dashboard's pages, the
//! `/metrics` scrape) go through `Store::read` instead: a small pool of
//! read-only connections ([`READERS`] at most) opened with
//! `SQLITE_OPEN_READ_ONLY` and `PRAGMA query_only`. In WAL mode a reader
//! works on the last committed snapshot while the writer goes on, so no
//! dashboard or API query waits for ingest and ingest never waits for
//! one. What a write committed before its call returned, every later read
//! sees.
//!
//! Invariants:
//! - `results` is keyed by `(fingerprint, seq)`: a batch resent after a lost
//!   ack is stored once (`INSERT OR IGNORE`), and its ack is still sent.
//! - An ack is sent only after the transaction holding the batch committed.
//! - Each agent's config version grows by one whenever its computed
//!   document changes (see `checks`).

mod agents;
pub mod alerts;
mod checks;
mod collectors;
mod fleet;
mod logins;
pub mod metrics;
pub mod notify;
mod results;
pub mod samples;
#[cfg(test)]
pub(crate) mod test_support;
mod tokens;
mod update_events;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use rusqlite::{Connection, OpenFlags};

pub use agents::{Admission, Registered, Registration, split_tags};
pub use alerts::OutboxBatch;
pub use checks::{
    ComputedConfig, DeletePlugin, PutCheck, effective_tags, json_tags, normalize_tags,
};
pub use fleet::{FleetPage, FleetQuery, FleetRow, MAX_FLEET_PAGE};
pub use logins::StoredLogin;
pub use results::{DEFAULT_MAX_SERIES_PER_AGENT, IngestLimits, Ingested, MAX_FUTURE_MS};
pub use tokens::{
    BOOTSTRAP_TOKEN_ID, BootstrapToken, EnrollmentRefusal, TokenGrant, TokenRefusal, token_status,
};

/// Version of `schema.sql`, recorded in `meta` so a later server can migrate.
///
/// A server refuses a file of a newer version, so every bump stops a
/// rollback to the server before it. Tables that only come in beside the
/// others, created at every open with `IF NOT EXISTS` and needed by no
/// server a rollback could go to, therefore come without one: the presence
/// tables (`store/presence.sql`), which an older server leaves alone.
const SCHEMA_VERSION: i64 = 9;

/// What development builds stamped files with while the presence tables
/// came with a bump: version 9 plus those tables, nothing else. No release
/// wrote it, so a file with it is opened as version 9 (and stamped 9
/// again, which lets the previous server open it). For that, the number is
/// taken: the next schema change that needs a bump goes from 9 to 11.
const PRESENCE_DEV_VERSION: i64 = 10;

/// Steps from each older schema version to the next, applied in order.
/// Index `i` migrates version `i + 1` to `i + 2`.
const MIGRATIONS: &[&str] = &[
    // 1 → 2: agents report the build their stub loaded.
    "ALTER TABLE agents ADD COLUMN build_sha256 TEXT; ALTER TABLE agents ADD COLUMN build_version TEXT;",
    // 2 → 3: tags, per-agent config versions and ad-hoc permission; check
    // selectors. New tables (enrollment_tokens, plugins) come from schema.sql.
    "ALTER TABLE agents ADD COLUMN hello_tags TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE agents ADD COLUMN server_tags TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE agents ADD COLUMN allow_adhoc INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE agents ADD COLUMN config_version INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE agents ADD COLUMN config_sha256 TEXT;
     ALTER TABLE checks ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';",
    // 3 → 4: perfdata series, raw points and rollups (store/metrics.rs).
    include_str!("store/metrics.sql"),
    // 4 → 5: the stub's version, the update channel and the negotiated
    // protocol version of each agent.
    "ALTER TABLE agents ADD COLUMN stub_version TEXT;
     ALTER TABLE agents ADD COLUMN channel TEXT;
     ALTER TABLE agents ADD COLUMN protocol_version INTEGER;",
    // 5 → 6: update events (store/update_events.rs).
    include_str!("store/update_events.sql"),
    // 6 → 7: since when each check has been in its latest state (the
    // alerting engine and `outrider alerts` show it), filled from the
    // latest result for rows stored before; per-check alert rules.
    // New tables (alert_state, alert_outbox) are created below.
    "ALTER TABLE latest_results ADD COLUMN state TEXT;
     ALTER TABLE latest_results ADD COLUMN state_since_ms INTEGER;
     UPDATE latest_results SET
         state = (SELECT r.state FROM results r
                  WHERE r.fingerprint = latest_results.fingerprint AND r.seq = latest_results.seq),
         state_since_ms = (SELECT r.started_at_ms FROM results r
                  WHERE r.fingerprint = latest_results.fingerprint AND r.seq = latest_results.seq);
     ALTER TABLE checks ADD COLUMN alert TEXT;",
    // 7 → 8: the enrollment lifecycle (store/tokens.rs). Tokens get a tag
    // allow-list and a count of refusals; agents remember the token they
    // enrolled with, its allow-list and the tags it refused. Every token
    // now expires: one stored without an expiry gets one 30 days after the
    // upgrade (docs/operations.md, "Enrollment tokens"), so hosts still
    // being installed with it have time to move to a new one. A database
    // from before schema 3 has no token table yet: it is created in its
    // schema-7 shape first.
    "CREATE TABLE IF NOT EXISTS enrollment_tokens (
         id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL UNIQUE, note TEXT NOT NULL DEFAULT '',
         created_at_ms INTEGER NOT NULL, expires_at_ms INTEGER, uses_left INTEGER,
         used INTEGER NOT NULL DEFAULT 0, revoked_at_ms INTEGER) STRICT;
     ALTER TABLE enrollment_tokens ADD COLUMN allowed_tags TEXT;
     ALTER TABLE enrollment_tokens ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
     UPDATE enrollment_tokens
         SET expires_at_ms = (CAST(strftime('%s', 'now') AS INTEGER) + 30 * 86400) * 1000
         WHERE expires_at_ms IS NULL;
     ALTER TABLE agents ADD COLUMN enrollment_token_id TEXT;
     ALTER TABLE agents ADD COLUMN allowed_tags TEXT;
     ALTER TABLE agents ADD COLUMN refused_tags TEXT NOT NULL DEFAULT '[]';",
    // 8 → 9: dashboard logins (store/logins.rs); the new table comes from
    // schema.sql.
    "",
    // Next, when a change needs a bump: 10 is taken (PRESENCE_DEV_VERSION,
    // which opens as 9), so this entry takes 9 to 11 and an empty one
    // follows it, keeping index `i` at version `i + 1`.
];

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Series ids of perfdata metrics (store/metrics.rs); locked only
    /// while `conn` is held.
    series: Arc<Mutex<metrics::SeriesCache>>,
    /// Calls allowed onto the blocking pool at once. Only one can hold the
    /// connection, so more would only park threads on the mutex: under a
    /// burst of thousands of agents the pool grew to its 512 threads (and
    /// their stacks and malloc arenas); waiting here costs a task, not a
    /// thread. Fair (FIFO), like the mutex it fronts.
    gate: Arc<tokio::sync::Semaphore>,
    /// Read-only connections for [`Store::read`].
    readers: Arc<Readers>,
    /// The shared database of the multi-node mode (`--database`), when
    /// the server runs on one: the ported areas go there ([`Store::backend`]);
    /// metrics and metric samples stay in this node's SQLite file.
    pg: Option<crate::backend::PgBackend>,
    /// This node's name in what it claims on a shared database
    /// (`local` on its SQLite file alone).
    node: crate::backend::presence::NodeId,
}

/// Size of [`Store::gate`]: one call running, a few ready behind it.
const CONCURRENT_CALLS: usize = 4;

/// Read-only connections open at once, so reads running at once: the
/// blocking threads and page caches a burst of dashboards can take.
pub const READERS: usize = 4;

/// The pool behind [`Store::read`]: idle connections, opened on demand
/// and kept; `gate` bounds how many exist.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    /// An idle connection, or a new one when none is idle (the gate's
    /// permit the caller holds means fewer than [`READERS`] exist).
    fn take(&self) -> Result<Connection, ReaderError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path).map_err(|source| ReaderError {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn put(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

/// A count of the SQL statements run by [`Store`] reads on behalf of one
/// piece of work (a dashboard page): install it with
/// [`StatementCount::scope`], and every read awaited inside counts its
/// statements into it, whichever blocking thread runs them. Reads outside
/// a scope are not counted.
#[derive(Clone, Debug, Default)]
pub struct StatementCount(Arc<AtomicU64>);

tokio::task_local! {
    static COUNT: StatementCount;
}

thread_local! {
    /// The count of the read running on this (blocking) thread, if any.
    static RUNNING: RefCell<Option<StatementCount>> = const { RefCell::new(None) };
}

impl StatementCount {
    /// Runs `work` with this count installed.
    pub async fn scope<F: std::future::Future>(&self, work: F) -> F::Output {
        COUNT.scope(self.clone(), work).await
    }

    /// Statements counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Column `idx` of `r`, stored as text, parsed into `T`: a malformed stored
/// value is a conversion error naming the column, not a panic.
pub(crate) fn parsed_column<T: std::str::FromStr>(
    r: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = r.get(idx)?;
    text.parse().map_err(|e: T::Err| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            e.to_string().into(),
        )
    })
}

/// SQLite's trace callback of the read connections: called as each
/// statement starts.
fn count_statement(_event: rusqlite::trace::TraceEvent<'_>) {
    RUNNING.with(|running| {
        if let Some(count) = running.borrow().as_ref() {
            count.0.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// A read-only connection to the store's file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("opening database {} for reading: {source}", path.display())]
pub struct ReaderError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// Opens a read-only connection to the database at `path`, which the
/// writer opened (and migrated) before. Fails when the file cannot be
/// opened.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Belt and braces: even a statement that would write is refused.
    conn.pragma_update(None, "query_only", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.trace_v2(
        rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT,
        Some(count_statement),
    );
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    ///
    /// Fails when the file cannot be opened, is not a SQLite database, or
    /// was written by a newer server (higher schema version).
    pub async fn open(path: &Path) -> anyhow::Result<Store> {
        let path = path.to_owned();
        let readers = Arc::new(Readers {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
            gate: Arc::new(tokio::sync::Semaphore::new(READERS)),
        });
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .context("opening the store panicked")??;
        Ok(Store {
            readers,
            conn: Arc::new(Mutex::new(conn)),
            series: Arc::new(Mutex::new(metrics::SeriesCache::new(
                metrics::DEFAULT_SERIES_CACHE_ENTRIES,
            ))),
            gate: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS)),
            pg: None,
            node: crate::cluster::SQLITE_NODE
                .parse()
                .expect("a valid node id"),
        })
    }

    /// This store with the areas ported to the backends (docs/architecture.md,
    /// "Store backends") on the shared PostgreSQL database `pg`, as node
    /// `node`; the file keeps this node's metrics.
    pub fn with_postgres(
        mut self,
        pg: crate::backend::PgBackend,
        node: crate::backend::presence::NodeId,
    ) -> Store {
        self.pg = Some(pg);
        self.node = node;
        self
    }

    /// This node's name: what it claims work under on a shared database.
    pub fn node(&self) -> &crate::backend::presence::NodeId {
        &self.node
    }

    /// The backend the ported areas run on: PostgreSQL when the server
    /// was started with a database, else the SQLite file. `Store`'s methods
    /// of those areas are one-line calls of their trait on it.
    pub fn backend(&self) -> crate::backend::Backend {
        match &self.pg {
            Some(pg) => crate::backend::Backend::Postgres(pg.clone()),
            None => {
                crate::backend::Backend::Sqlite(crate::backend::SqliteBackend::new(self.clone()))
            }
        }
    }

    /// Whether the ported areas run on a shared PostgreSQL database.
    pub fn is_shared(&self) -> bool {
        self.pg.is_some()
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send + 'static,
    {
        self.with_writer(f)
            .await
            .map_err(|e| anyhow!("store task failed: {e}"))?
    }

    /// [`Store::call`] for the store backends (`crate::backend::sqlite`),
    /// whose errors are typed: `f`'s error comes back as it is, a panic in
    /// `f` as the `JoinError`.
    pub(crate) async fn with_writer<R, E, F>(
        &self,
        f: F,
    ) -> Result<Result<R, E>, tokio::task::JoinError>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, E> + Send + 'static,
    {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = self.gate.clone().acquire_owned().await;
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the call is done, even if the caller went away.
            let _permit = permit;
            // A poisoned mutex means a previous call panicked mid-operation;
            // SQLite rolled that transaction back, so the connection is fine.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
    }

    /// Runs `f` with one of the read-only connections on the blocking pool:
    /// it sees the last committed state and never waits for the writer.
    /// `f` that tries to write fails (`attempt to write a readonly database`).
    async fn read<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<R> + Send + 'static,
    {
        self.with_reader(f)
            .await
            .map_err(|e| anyhow!("store task failed: {e}"))?
    }

    /// [`Store::read`] for the store backends (`crate::backend::sqlite`),
    /// whose errors are typed: `f`'s error, or the failure to open a read
    /// connection, comes back as `E`, a panic in `f` as the `JoinError`.
    pub(crate) async fn with_reader<R, E, F>(
        &self,
        f: F,
    ) -> Result<Result<R, E>, tokio::task::JoinError>
    where
        R: Send + 'static,
        E: From<ReaderError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
    {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = self.readers.gate.clone().acquire_owned().await;
        let readers = self.readers.clone();
        let count = COUNT.try_with(StatementCount::clone).ok();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take()?;
            RUNNING.with(|running| *running.borrow_mut() = count);
            let result = f(&conn);
            RUNNING.with(|running| *running.borrow_mut() = None);
            // A panic in `f` drops the connection instead; the next read
            // opens a fresh one.
            readers.put(conn);
            result
        })
        .await
    }
}

fn open_blocking(path: &Path) -> anyhow::Result<Connection> {
    let mut conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("{} is not a usable SQLite database", path.display()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;",
    )?;
    let found: Option<i64> = tx
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .ok()
        .map(|v| {
            if v == PRESENCE_DEV_VERSION {
                SCHEMA_VERSION
            } else {
                v
            }
        });
    match found {
        Some(v) if v > SCHEMA_VERSION => {
            anyhow::bail!(
                "database {} has schema version {v}, newer than this server's {SCHEMA_VERSION}; upgrade the server",
                path.display()
            );
        }
        Some(v) => {
            for (i, step) in MIGRATIONS.iter().enumerate().skip((v - 1).max(0) as usize) {
                tx.execute_batch(step).with_context(|| {
                    format!(
                        "migrating {} from schema {} to {}",
                        path.display(),
                        i + 1,
                        i + 2
                    )
                })?;
            }
        }
        None => {}
    }
    tx.execute_batch(include_str!("store/schema.sql"))
        .context("applying the schema")?;
    tx.execute_batch(include_str!("store/metrics.sql"))
        .context("applying the metrics schema")?;
    tx.execute_batch(include_str!("store/update_events.sql"))
        .context("applying the update events schema")?;
    tx.execute_batch(include_str!("store/alert_outbox.sql"))
        .context("applying the alert outbox schema")?;
    tx.execute_batch(include_str!("store/alerts.sql"))
        .context("applying the alert state schema")?;

    tx.execute_batch(include_str!("store/notify.sql"))
        .context("applying the notifier schema")?;
    tx.execute_batch(include_str!("store/collectors.sql"))
        .context("applying the collectors schema")?;
    tx.execute_batch(include_str!("store/samples.sql"))
        .context("applying the sample batches schema")?;
    // Beside the others, without a version (see SCHEMA_VERSION).
    tx.execute_batch(include_str!("store/presence.sql"))
        .context("applying the presence schema")?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [SCHEMA_VERSION.to_string()],
    )?;
    tx.commit()?;
    Ok(conn)
}

/// Current wall-clock time in Unix milliseconds.
pub use outrider_protocol::unix_now_ms as now_ms;

#[cfg(test)]
mod tests {
    use outrider_protocol::api::Presence;

    use super::*;

    /// The agents and checks tables as schema version 1 created them.
    const V1_AGENTS: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE agents (
            fingerprint TEXT PRIMARY KEY, public_key TEXT NOT NULL, hostname TEXT NOT NULL,
            os TEXT NOT NULL, arch TEXT NOT NULL, agent_version TEXT NOT NULL,
            presence TEXT NOT NULL CHECK (presence IN ('connected', 'down', 'deregistered')),
            presence_since_ms INTEGER NOT NULL, registered_at_ms INTEGER NOT NULL,
            last_seen_ms INTEGER NOT NULL, acked_seq INTEGER NOT NULL DEFAULT 0
        ) STRICT;
        CREATE TABLE checks (
            name TEXT PRIMARY KEY, command TEXT NOT NULL, interval_secs INTEGER NOT NULL,
            timeout_secs INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL
        ) STRICT;
        INSERT INTO checks VALUES ('load', '[\"/bin/true\"]', 10, 5, 1);
        CREATE TABLE results (
            fingerprint TEXT NOT NULL, seq INTEGER NOT NULL, check_name TEXT NOT NULL,
            state TEXT NOT NULL, summary TEXT NOT NULL, long_output TEXT NOT NULL,
            perfdata TEXT NOT NULL, started_at_ms INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
            received_at_ms INTEGER NOT NULL, PRIMARY KEY (fingerprint, seq)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE latest_results (
            fingerprint TEXT NOT NULL, check_name TEXT NOT NULL, seq INTEGER NOT NULL,
            PRIMARY KEY (fingerprint, check_name)
        ) STRICT, WITHOUT ROWID;
        INSERT INTO results VALUES ('0123456789abcdef0123', 42, 'load', 'CRITICAL', 'high', '',
                                    '[]', 4000, 3, 4001);
        INSERT INTO latest_results VALUES ('0123456789abcdef0123', 'load', 42);
        INSERT INTO agents VALUES ('0123456789abcdef0123', 'aa', 'old-host', 'linux', 'x86_64',
                                   '0.0.9', 'deregistered', 5, 1, 5, 42);";

    #[tokio::test]
    async fn version_1_database_is_migrated_without_losing_agents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(V1_AGENTS)
            .unwrap();

        let store = Store::open(&path).await.unwrap();
        let agents = store.agents().await.unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].hostname, "old-host");
        assert_eq!(agents[0].presence, Presence::Deregistered);
        assert_eq!(agents[0].build_sha256, None);
        assert_eq!(store.checks().await.unwrap().len(), 1);
        // 6 → 7: the latest result's state and since-when are filled in.
        let latest = store.latest_results(None).await.unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].state_since_ms, Some(4000));
        let version: String = store
            .call(|c| {
                Ok(c.query_row(
                    "SELECT value FROM meta WHERE key = 'schema_version'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        drop(store);
        // Opening again is a no-op, not a second migration.
        assert_eq!(
            Store::open(&path)
                .await
                .unwrap()
                .agents()
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn version_7_tokens_get_an_expiry_and_agents_keep_their_pinned_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v7.db");
        // A schema-7 token table (as created by schema 3 to 7) holding a
        // token without expiry and one with, on top of the version-1 data.
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!(
                "{V1_AGENTS}
                 CREATE TABLE enrollment_tokens (
                     id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL UNIQUE,
                     note TEXT NOT NULL DEFAULT '', created_at_ms INTEGER NOT NULL,
                     expires_at_ms INTEGER, uses_left INTEGER,
                     used INTEGER NOT NULL DEFAULT 0, revoked_at_ms INTEGER) STRICT;
                 INSERT INTO enrollment_tokens VALUES ('forever', 'aa', 'fleet', 1, NULL, NULL, 7, NULL);
                 INSERT INTO enrollment_tokens VALUES ('dated', 'bb', '', 1, 99, 2, 0, NULL);"
            ))
            .unwrap();
        let before = now_ms();
        let store = Store::open(&path).await.unwrap();
        let tokens = store.enrollment_tokens().await.unwrap();
        let forever = tokens.iter().find(|t| t.id == "forever").unwrap();
        let expiry = forever
            .expires_at_ms
            .expect("every token expires after the upgrade");
        let thirty_days = 30 * 86_400_000;
        assert!(
            (before - 1000 + thirty_days..=now_ms() + thirty_days).contains(&expiry),
            "{expiry}"
        );
        assert_eq!(
            (
                forever.used,
                forever.note.as_str(),
                forever.allowed_tags.clone()
            ),
            (7, "fleet", None)
        );
        let dated = tokens.iter().find(|t| t.id == "dated").unwrap();
        assert_eq!((dated.expires_at_ms, dated.uses_left), (Some(99), Some(2)));
        // The agent enrolled before keeps its pinned key and any tag.
        let fp = "0123456789abcdef0123".parse().unwrap();
        assert_eq!(store.pinned_key(&fp).await.unwrap().as_deref(), Some("aa"));
        let agent = store.agent(&fp).await.unwrap().unwrap();
        assert_eq!((agent.allowed_tags, agent.refused_tags.len()), (None, 0));
    }

    #[tokio::test]
    async fn reads_see_the_last_commit_and_never_wait_for_the_writer() {
        let (_dir, store, fp) = test_support::store_with_agent("web-1").await;
        // A writer in the middle of a long transaction, holding the one
        // write connection (as a burst of ingest does).
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let conn = store.conn.clone();
        let writer = std::thread::spawn(move || {
            let mut guard = conn.lock().unwrap();
            let tx = guard
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            tx.execute("UPDATE agents SET hostname = 'renamed'", [])
                .unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            tx.commit().unwrap();
        });
        held_rx.recv().unwrap();
        // Several reads at once, more than the pool holds: each finishes
        // while the writer still holds its lock and transaction.
        let reads = futures_util::future::join_all((0..READERS * 2).map(|_| store.agents()));
        let all = tokio::time::timeout(std::time::Duration::from_secs(5), reads)
            .await
            .expect("a read waited for the writer");
        for agents in all {
            assert_eq!(agents.unwrap()[0].hostname, "web-1");
        }
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        // Committed before the call: every later read sees it.
        let agent = store.agent(&fp).await.unwrap().unwrap();
        assert_eq!(agent.hostname, "renamed");
        assert!(store.readers.idle.lock().unwrap().len() <= READERS);
    }

    #[tokio::test]
    async fn statements_are_counted_for_the_scope_that_asked() {
        let (_dir, store, fp) = test_support::store_with_agent("web-1").await;
        let count = StatementCount::default();
        count
            .scope(async {
                store.agents().await.unwrap();
                store.latest_results(Some(fp.clone())).await.unwrap();
            })
            .await;
        // One for the agents, two for the latest results and their unknown samples.
        assert_eq!(count.get(), 3);
        // Outside the scope nothing is counted.
        store.agents().await.unwrap();
        assert_eq!(count.get(), 3);
    }

    #[tokio::test]
    async fn a_read_connection_refuses_to_write() {
        let (_dir, store, _fp) = test_support::store_with_agent("web-1").await;
        let err = store
            .read(|c| Ok(c.execute("DELETE FROM agents", [])?))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("readonly"), "{err:#}");
        assert_eq!(store.agents().await.unwrap().len(), 1);
    }

    fn stored_version(path: &Path) -> String {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn has_presence_tables(path: &Path) -> bool {
        Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('sessions', 'nodes')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 2
    }

    /// The previous release refuses a file whose schema_version is above
    /// 9. A file this server writes, presence tables and all, stays at 9,
    /// so the server can be rolled back to it. (A change that does need a
    /// bump goes to 11 and changes this test knowingly.)
    #[tokio::test]
    async fn a_file_this_server_writes_opens_with_the_previous_servers_version_check() {
        const PREVIOUS_RELEASE_SCHEMA: i64 = 9;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(Store::open(&path).await.unwrap());
        let stored: i64 = stored_version(&path).parse().unwrap();
        assert!(
            stored <= PREVIOUS_RELEASE_SCHEMA,
            "schema_version {stored}: the previous server would refuse this file"
        );
        assert!(has_presence_tables(&path));
    }

    /// A file a development build stamped 10 (9 plus the presence tables)
    /// opens as 9 and keeps its presence rows; 11 is newer and refused.
    #[tokio::test]
    async fn a_file_stamped_10_by_a_development_build_opens_as_version_9() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.db");
        drop(Store::open(&path).await.unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "UPDATE meta SET value = '10' WHERE key = 'schema_version';
                 INSERT INTO nodes (node_id, last_seen_ms) VALUES ('n1', 5);",
            )
            .unwrap();
        drop(Store::open(&path).await.unwrap());
        assert_eq!(stored_version(&path), "9");
        let kept: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT last_seen_ms FROM nodes WHERE node_id = 'n1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept, 5);

        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE meta SET value = '11' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let err = Store::open(&path).await.unwrap_err().to_string();
        assert!(err.contains("schema version 11, newer"), "{err}");
    }

    #[tokio::test]
    async fn database_from_a_newer_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version', '99');")
            .unwrap();
        let err = Store::open(&path).await.unwrap_err().to_string();
        assert!(err.contains("newer than this server"), "{err}");
    }
}
