//! The PostgreSQL backend: several server nodes sharing one database.
//!
//! Connections come from a `deadpool-postgres` pool; TLS, when asked for,
//! is rustls with ring like the rest of the server. Statements are plain
//! SQL, prepared once per connection (`prepare_cached`).
//!
//! Migrations are the numbered files in `postgres/migrations/`
//! ([`MIGRATIONS`]), applied in order at [`PgBackend::connect`], each
//! recorded in `schema_migrations`. Nodes starting together take turns:
//! the whole run holds a transaction-scoped advisory lock
//! ([`MIGRATION_LOCK`]), so one node applies a migration and the others
//! then find it applied. A migration that fails rolls back whole and the
//! node does not start; a database migrated by a newer server is refused.
//!
//! Concurrency of the presence area is written into the statements (see
//! `postgres/presence.rs`): every rule is one statement whose `WHERE`
//! PostgreSQL re-checks on the row's newest version after waiting for its
//! lock (READ COMMITTED), so two nodes never both win. A registration
//! (`postgres/agents.rs`) takes its agent's row lock with its first
//! statement and keeps it to commit, so registrations of one agent run one
//! after the other, as on SQLite's single writer; so does a consumption of
//! an enrollment token (`postgres/tokens.rs`) with its token's row. A
//! computation of config documents (`postgres/checks.rs`) locks the
//! agents' rows before it reads the definitions, so versions only grow
//! and the last computation uses the newest definitions.

mod agents;
pub mod alert_inputs;
mod alerts;
mod artefacts;
pub mod bus;
mod checks;
mod collectors;
mod fleet;
mod leader;
mod logins;
mod notify;
mod plugin_files;
mod presence;
pub(crate) mod results;
mod tokens;
pub(crate) mod update_events;

pub use artefacts::{
    BLOB_PUT_LOCK, DEFAULT_CHUNK_BYTES, DEFAULT_MAX_TOTAL_BLOB_BYTES, GC_LOCK, PgArtefacts,
    ROOT_LOCK, StoredManifest, chunk_spans,
};
pub use plugin_files::PgPluginFiles;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_rustls::rustls;

use super::StoreError;

/// One numbered migration file.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order; versions count up from 1 without gaps
/// (a test checks).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "presence",
        sql: include_str!("postgres/migrations/0001_presence.sql"),
    },
    Migration {
        version: 2,
        name: "leases",
        sql: include_str!("postgres/migrations/0002_leases.sql"),
    },
    Migration {
        version: 3,
        name: "artefacts",
        sql: include_str!("postgres/migrations/0003_artefacts.sql"),
    },
    Migration {
        version: 4,
        name: "bus",
        sql: include_str!("postgres/migrations/0004_bus.sql"),
    },
    Migration {
        version: 5,
        name: "agents",
        sql: include_str!("postgres/migrations/0005_agents.sql"),
    },
    Migration {
        version: 6,
        name: "tokens",
        sql: include_str!("postgres/migrations/0006_tokens.sql"),
    },
    Migration {
        version: 7,
        name: "logins",
        sql: include_str!("postgres/migrations/0007_logins.sql"),
    },
    Migration {
        version: 8,
        name: "update_events",
        sql: include_str!("postgres/migrations/0008_update_events.sql"),
    },
    Migration {
        version: 9,
        name: "checks",
        sql: include_str!("postgres/migrations/0009_checks.sql"),
    },
    Migration {
        version: 10,
        name: "collectors",
        sql: include_str!("postgres/migrations/0010_collectors.sql"),
    },
    Migration {
        version: 11,
        name: "alerts",
        sql: include_str!("postgres/migrations/0011_alerts.sql"),
    },
    Migration {
        version: 12,
        name: "results",
        sql: include_str!("postgres/migrations/0012_results.sql"),
    },
    Migration {
        version: 13,
        name: "notify",
        sql: include_str!("postgres/migrations/0013_notify.sql"),
    },
    Migration {
        version: 14,
        name: "alert_inputs",
        sql: include_str!("postgres/migrations/0014_alert_inputs.sql"),
    },
];

/// The advisory lock key nodes migrate under ("outrmigr" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x6f75_7472_6d69_6772;

/// Connections a node keeps to PostgreSQL by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// The longest a caller waits for a pooled connection, and for a new one
/// to be opened: an exhausted pool (every connection held by writes queued
/// on a lock) or an unreachable server becomes a `StoreError::Pool` the
/// caller can report and retry, never a wait without end (the bus's tasks
/// take their statements from this pool too).
pub const POOL_WAIT: Duration = Duration::from_secs(30);

/// How to talk to PostgreSQL.
#[derive(Clone, Debug)]
pub enum PgTls {
    /// Plain: a Unix socket or a trusted network.
    Disable,
    /// TLS with this rustls configuration (its roots decide which server
    /// certificates are trusted), required: every connection made with it
    /// has `sslmode` `require` (`PgTls::enforce`).
    Rustls(Arc<rustls::ClientConfig>),
}

impl PgTls {
    /// TLS trusting the bundled web PKI roots and the certificates of
    /// `ca_pem` (PEM text), with ring, as the rest of the server. Fails
    /// when `ca_pem` holds something that is not a certificate.
    pub fn with_ca_pem(ca_pem: Option<&str>) -> Result<PgTls, StoreError> {
        crate::notify::smtp::client_config(ca_pem)
            .map(PgTls::Rustls)
            .map_err(StoreError::Config)
    }

    /// `config` as connections with this setting must use it. With TLS,
    /// `sslmode` becomes `require` whatever it was: tokio-postgres'
    /// default, `prefer`, goes on in plain text when the server answers
    /// that it has no TLS, so anyone on the path could strip TLS by
    /// answering that. `require` makes such a connection fail instead
    /// ("server does not support TLS"); so does a Unix socket, on which
    /// PostgreSQL never speaks TLS. Plain connections keep their setting.
    pub(crate) fn enforce(&self, mut config: tokio_postgres::Config) -> tokio_postgres::Config {
        if let PgTls::Rustls(_) = self {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        config
    }
}

/// `err` as [`StoreError::NoTls`] when it is tokio-postgres refusing a
/// server at `config` that does not speak TLS (under `sslmode` `require`),
/// else `err` as it is. tokio-postgres gives that refusal no kind of its
/// own, only its message, which
/// `backend::tests::postgres_with_tls_refuses_a_server_without_tls` pins.
pub(crate) fn no_tls(err: StoreError, config: &tokio_postgres::Config) -> StoreError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cause {
        if e.to_string() == "server does not support TLS" {
            return StoreError::NoTls {
                server: server_of(config),
            };
        }
        cause = e.source();
    }
    err
}

/// Where `config` connects, for messages: its first host and port.
fn server_of(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(Host::Tcp(host)) => format!("{host}:{port}"),
        Some(Host::Unix(dir)) => format!("{}/.s.PGSQL.{port}", dir.display()),
        None => format!("localhost:{port}"),
    }
}

/// The PostgreSQL backend; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct PgBackend {
    pool: Pool,
    /// The settings again, for connections outside the pool (elections,
    /// `postgres/leader.rs`).
    session: Arc<leader::SessionSettings>,
    /// Result batches written at once: at most [`ingest_share`] of the
    /// pool, so a fleet reporting at full speed leaves connections for
    /// hellos, heartbeats and the API. Without it, after a node died, its
    /// agents' hellos on the other nodes waited ten seconds and more behind
    /// the pool's queue of result batches (docs/benchmarks.md, "Several
    /// nodes on PostgreSQL").
    ingest: Arc<tokio::sync::Semaphore>,
}

/// How many of a pool of `size` connections result batches may hold at
/// once: three quarters, at least one.
pub fn ingest_share(size: usize) -> usize {
    (size - size / 4).max(1)
}

/// The migrations still to apply to a database at version `applied`
/// (0: none applied). Fails when the database is newer than `known`.
pub fn pending(applied: i64, known: &[Migration]) -> Result<&[Migration], StoreError> {
    let latest = known.last().map_or(0, |m| m.version);
    if applied > latest {
        return Err(StoreError::NewerSchema {
            found: applied,
            known: latest,
        });
    }
    Ok(&known[known.partition_point(|m| m.version <= applied)..])
}

impl PgBackend {
    /// Connects to the database `url` names (a `postgresql://` URL or a
    /// libpq `key=value` string) and migrates it. Fails when the settings
    /// are unusable, no connection can be made (with `tls`, also when the
    /// server does not speak TLS), or a migration fails.
    pub async fn connect(
        url: &str,
        tls: PgTls,
        max_connections: usize,
    ) -> Result<PgBackend, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("{e}")))?;
        PgBackend::with_config(config, tls, max_connections).await
    }

    /// [`PgBackend::connect`] with parsed settings. With TLS, its
    /// connections require TLS whatever `sslmode` said (`PgTls::enforce`):
    /// a server without TLS is refused.
    pub async fn with_config(
        config: tokio_postgres::Config,
        tls: PgTls,
        max_connections: usize,
    ) -> Result<PgBackend, StoreError> {
        let config = tls.enforce(config);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let session = Arc::new(leader::SessionSettings {
            config: config.clone(),
            tls: tls.clone(),
        });
        let manager = match tls {
            PgTls::Disable => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
            PgTls::Rustls(client) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(Arc::unwrap_or_clone(client)),
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let ingest = Arc::new(tokio::sync::Semaphore::new(ingest_share(
            max_connections.max(1),
        )));
        let backend = PgBackend {
            pool,
            session,
            ingest,
        };
        backend
            .migrate()
            .await
            .map_err(|e| no_tls(e, &backend.session.config))?;
        Ok(backend)
    }

    /// Applies the pending [`MIGRATIONS`] under [`MIGRATION_LOCK`].
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY,
                 name TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let applied: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        for m in pending(applied, MIGRATIONS)? {
            let failed = |source: tokio_postgres::Error| StoreError::Migration {
                version: m.version,
                name: m.name,
                source: Box::new(source.into()),
            };
            tx.batch_execute(m.sql).await.map_err(failed)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await
            .map_err(failed)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A connection from the pool.
    /// Where this backend's node opens its bus's dedicated `LISTEN`
    /// connection: the pool's database and TLS, outside the pool.
    pub fn listen_config(&self) -> bus::ListenConfig {
        bus::ListenConfig {
            config: self.session.config.clone(),
            tls: self.session.tls.clone(),
        }
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| no_tls(e.into(), &self.session.config))
    }

    /// A result batch's turn (see `PgBackend::ingest`), waited for as
    /// long as a connection would be ([`POOL_WAIT`]).
    pub(crate) async fn ingest_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        match tokio::time::timeout(POOL_WAIT, self.ingest.acquire()).await {
            Ok(Ok(turn)) => Ok(turn),
            // Never closed; a timeout reads as the pool's own.
            _ => Err(StoreError::Pool(deadpool_postgres::PoolError::Timeout(
                deadpool_postgres::TimeoutType::Wait,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_leaves_a_quarter_of_the_pool_to_everything_else() {
        // (pool size, connections result batches may hold)
        for (size, share) in [(1, 1), (2, 2), (4, 3), (16, 12), (60, 45)] {
            assert_eq!(ingest_share(size), share, "pool of {size}");
        }
    }

    /// An exhausted pool answers within `POOL_WAIT` with an error naming
    /// the timeout, instead of leaving the caller waiting for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exhausted_pool_fails_after_its_wait_limit() {
        let db = outrider_pgtest::Cluster::shared()
            .unwrap_or_else(|e| panic!("{e}"))
            .database()
            .await
            .unwrap();
        let backend = PgBackend::with_config(db.config.clone(), PgTls::Disable, 1)
            .await
            .unwrap();
        let held = backend.client().await.unwrap();
        let second = tokio::time::timeout(POOL_WAIT * 2, backend.client())
            .await
            .expect("the pool gives up by itself");
        let err = second.unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Pool(deadpool_postgres::PoolError::Timeout(_))
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("no PostgreSQL connection"),
            "{err}"
        );
        drop(held);
        let _again = backend.client().await.expect("free again once released");
    }

    const M: &[Migration] = &[
        Migration {
            version: 1,
            name: "a",
            sql: "",
        },
        Migration {
            version: 2,
            name: "b",
            sql: "",
        },
    ];

    #[test]
    fn pending_migrations_are_those_above_the_applied_version() {
        // (applied, pending versions)
        let cases: [(i64, &[i64]); 3] = [(0, &[1, 2]), (1, &[2]), (2, &[])];
        for (applied, expected) in cases {
            let versions: Vec<i64> = pending(applied, M)
                .unwrap()
                .iter()
                .map(|m| m.version)
                .collect();
            assert_eq!(versions, expected, "{applied}");
        }
        assert!(matches!(
            pending(3, M),
            Err(StoreError::NewerSchema { found: 3, known: 2 })
        ));
    }

    #[test]
    fn with_tls_connections_require_it_whatever_sslmode_said() {
        use tokio_postgres::config::SslMode;
        let tls = PgTls::with_ca_pem(None).unwrap();
        // (TLS setting, sslmode given, sslmode connected with)
        let cases = [
            ("plain", &PgTls::Disable, SslMode::Disable, SslMode::Disable),
            ("plain", &PgTls::Disable, SslMode::Prefer, SslMode::Prefer),
            ("plain", &PgTls::Disable, SslMode::Require, SslMode::Require),
            ("tls", &tls, SslMode::Disable, SslMode::Require),
            ("tls", &tls, SslMode::Prefer, SslMode::Require),
            ("tls", &tls, SslMode::Require, SslMode::Require),
        ];
        for (name, tls, given, used) in cases {
            let mut config = tokio_postgres::Config::new();
            config.ssl_mode(given);
            assert_eq!(tls.enforce(config).get_ssl_mode(), used, "{name} {given:?}");
        }
    }

    #[test]
    fn migration_files_are_numbered_from_one_without_gaps() {
        for (m, expected) in MIGRATIONS.iter().zip(1..) {
            assert_eq!(m.version, expected, "{}", m.name);
            assert!(!m.sql.trim().is_empty(), "{}", m.name);
        }
    }
}
