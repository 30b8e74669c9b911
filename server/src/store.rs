//! The server's embedded store: one SQLite file in WAL mode.
//!
//! rusqlite is blocking, so every operation runs on tokio's blocking pool
//! through [`Store::call`], holding the connection mutex only for the
//! duration of one short transaction and never across an `.await`.
//!
//! Invariants:
//! - `results` is keyed by `(fingerprint, seq)`: a batch resent after a lost
//!   ack is stored once (`INSERT OR IGNORE`), and its ack is still sent.
//! - An ack is sent only after the transaction holding the batch committed.
//! - The config version in `meta` grows by one on every check change.

mod agents;
mod checks;
mod results;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use rusqlite::Connection;

pub use agents::Registration;

/// Version of `schema.sql`, recorded in `meta` so a later server can migrate.
const SCHEMA_VERSION: i64 = 1;

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    ///
    /// Fails when the file cannot be opened, is not a SQLite database, or
    /// was written by a newer server (higher schema version).
    pub async fn open(path: &Path) -> anyhow::Result<Store> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .context("opening the store panicked")??;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A poisoned mutex means a previous call panicked mid-operation;
            // SQLite rolled that transaction back, so the connection is fine.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| anyhow!("store task failed: {e}"))?
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
    tx.execute_batch(include_str!("store/schema.sql"))
        .context("applying the schema")?;
    let found: Option<i64> = tx
        .query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .ok();
    match found {
        None => {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            anyhow::bail!(
                "database {} has schema version {v}, newer than this server's {SCHEMA_VERSION}; upgrade the server",
                path.display()
            );
        }
        Some(_) => {}
    }
    tx.commit()?;
    Ok(conn)
}

/// Current wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
