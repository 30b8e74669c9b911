//! Store backends: the store's interface as one trait per area, each
//! implemented by SQLite (the zero-config default) and by PostgreSQL (the
//! multi-node mode, several server processes sharing one database).
//!
//! docs/architecture.md, "Store backends", has the design: the areas, the
//! dispatch, the migrations, and which areas exist for which backend. In
//! short:
//! - one trait per area ([`presence::PresenceStore`] first), so each area
//!   is ported to PostgreSQL on its own while the server keeps running on
//!   the SQLite [`crate::store::Store`];
//! - dispatch by the enum [`Backend`], not `dyn`: the backends are a closed
//!   set chosen at start-up, and async trait methods are not object-safe
//!   without boxing every call's future;
//! - errors are [`StoreError`], typed, not `anyhow`;
//! - one behaviour test suite per area, run against both backends (a real
//!   SQLite file, a private PostgreSQL cluster from `outrider-pgtest`).

#[cfg(test)]
mod agent_tests;
pub mod agents;
#[cfg(test)]
mod alert_tests;
pub mod alerts;
#[cfg(test)]
mod artefact_tests;
pub mod bus;
#[cfg(test)]
mod check_tests;
pub mod checks;
#[cfg(test)]
mod collector_tests;
pub mod collectors;
pub mod error;
pub mod fleet;
#[cfg(test)]
mod fleet_tests;
pub mod leader;
#[cfg(test)]
mod login_tests;
pub mod logins;
pub mod notify;
#[cfg(test)]
mod notify_tests;
pub mod plugin_files;
pub mod postgres;
pub mod presence;
#[cfg(test)]
mod result_tests;
pub mod results;
pub mod sqlite;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod token_tests;
pub mod tokens;
#[cfg(test)]
mod two_nodes;
#[cfg(test)]
mod update_event_tests;
pub mod update_events;

pub use agents::AgentStore;
pub use alerts::AlertStore;
pub use checks::CheckStore;
pub use collectors::CollectorStore;
pub use error::StoreError;
pub use fleet::FleetStore;
pub use logins::LoginStore;
pub use notify::NotifyStore;
pub use plugin_files::PluginFileStore;
pub use postgres::{MIGRATION_LOCK, PgArtefacts, PgBackend, PgPluginFiles, PgTls};
pub use results::ResultStore;
pub use sqlite::SqliteBackend;
pub use tokens::TokenStore;
pub use update_events::UpdateEventStore;

/// The store backend the server runs on; cheap to clone.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite(SqliteBackend),
    Postgres(PgBackend),
}

/// Forwards one trait method to the backend in use.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Backend::Sqlite($b) => $call.await,
            Backend::Postgres($b) => $call.await,
        }
    };
}
pub(crate) use dispatch;
