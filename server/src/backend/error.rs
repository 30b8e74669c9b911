//! The error of every store backend's trait method.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused or failed a statement.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A read-only connection to the SQLite file could not be opened.
    #[error("SQLite: {0}")]
    SqliteReader(#[from] crate::store::ReaderError),
    /// PostgreSQL refused or failed a statement, or the connection broke.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The PostgreSQL connection settings are unusable.
    #[error("PostgreSQL settings: {0}")]
    Config(String),
    /// TLS is configured, so required, but the server at `server` answered
    /// that it does not speak it: refused rather than going on in plain
    /// text. Its cause is a server without `ssl = on`, a Unix socket (on
    /// which PostgreSQL never speaks TLS) or someone on the path stripping
    /// TLS off the connection.
    #[error(
        "PostgreSQL at {server} does not offer TLS, which is configured: not connecting in plain text; turn ssl on at the server, or do not configure TLS for a trusted path such as a Unix socket"
    )]
    NoTls { server: String },
    /// The database was migrated by a newer server than this one.
    #[error(
        "the database has schema version {found}, newer than this server's {known}; upgrade the server"
    )]
    NewerSchema { found: i64, known: i64 },
    /// Applying migration `version` failed; nothing of it was kept.
    #[error("migrating the database to version {version} ({name}): {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: Box<StoreError>,
    },
    /// A stored value is not what this server writes (hand-edited, or
    /// written by a newer server).
    #[error("stored {what} is malformed: {value}")]
    Malformed { what: &'static str, value: String },
    /// A node's heartbeat carried a lease of another node: a bug of the
    /// caller; nothing was written.
    #[error("node {node} sent a heartbeat holding a lease of node {lease_node}")]
    ForeignLease { node: String, lease_node: String },
    /// A write fenced by leadership of `job` under `term` was refused: the
    /// job's newest term is `current` (another node took over), or it was
    /// never acquired. Nothing was written.
    #[error(
        "{job}: leadership under term {term} was lost (newest term {current:?}); nothing written"
    )]
    Fenced {
        job: &'static str,
        term: i64,
        current: Option<i64>,
    },
    /// A write fenced by a leader term carried a term of job `got` where
    /// one of `expected` belongs: a bug of the caller; nothing was written.
    #[error("a write for {expected} carried a leader term of {got}; nothing written")]
    ForeignTerm {
        expected: &'static str,
        got: &'static str,
    },
    /// A result batch came from an agent that is not registered (removed
    /// while its session was still sending): nothing of it was stored or
    /// acknowledged.
    #[error("agent {fingerprint} is not registered; its results were not stored")]
    UnknownAgent { fingerprint: String },
    /// An agent sent a sequence number beyond what the store keeps (`i64`):
    /// nothing of its batch was stored.
    #[error("sequence number {seq} is out of range")]
    SeqOutOfRange { seq: u64 },
    /// `what` did not finish within `after`.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
    /// The blocking task running a SQLite call panicked.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
