//! The SQLite backend: the areas ported to the trait interface, on the
//! server's one SQLite file.
//!
//! It wraps the [`Store`] the server runs on and goes through the same
//! single writer connection (`Store::with_writer`), so one process has
//! one writer, whichever interface a call comes through. Its tables are
//! created with the store's own schema (server/src/store/schema.sql;
//! server/src/store/presence.sql at every open, beside the others, without
//! a schema version bump: see `SCHEMA_VERSION` in server/src/store.rs).
//! SQLite has one writer at a time, so each method reads, decides with the
//! pure rules of its area and writes in one immediate transaction; reads
//! that change nothing go through the store's read-only connections.

mod agents;
mod alerts;
mod checks;
mod collectors;
mod fleet;
mod logins;
mod notify;
mod presence;
mod results;
mod tokens;
pub(crate) mod update_events;

use crate::store::Store;

use super::StoreError;

/// The SQLite backend; cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    store: Store,
}

impl SqliteBackend {
    /// The backend on the file `store` has open.
    pub fn new(store: Store) -> SqliteBackend {
        SqliteBackend { store }
    }

    /// The store this backend runs on (tests read its tables directly).
    #[cfg(test)]
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `f` in an immediate transaction on the writer connection,
    /// committed when `f` succeeds.
    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        self.store
            .with_writer(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })
            .await?
    }

    /// Runs `f` on one of the store's read-only connections: it sees the
    /// last committed state and never waits for the writer.
    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<R, StoreError> + Send + 'static,
    {
        self.store.with_reader(f).await?
    }
}
