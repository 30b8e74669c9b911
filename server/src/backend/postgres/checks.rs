//! The checks area on PostgreSQL (tables of migrations/0009_checks.sql and
//! the document columns of migrations/0005_agents.sql).
//!
//! Concurrency. SQLite runs one change or computation at a time (one
//! writer). Here several nodes change definitions and compute documents at
//! once; each gets the result of some one-after-the-other order:
//! - A computation locks the agents' rows first (`SELECT … FOR UPDATE`, in
//!   fingerprint order, so two computations never deadlock) and only then
//!   reads the checks, plugins and collectors. Under READ COMMITTED each
//!   statement sees what was committed before it started, so a computation
//!   that waited for another's row locks reads that one's stored version
//!   and hash, and definitions at least as new as that one's: the version
//!   is bumped from the newest stored one (strictly increasing, never
//!   lost), and the last computation to commit used the newest
//!   definitions. Every change is followed by a computation
//!   (server/src/configs.rs), so the stored documents end up those of the
//!   last definitions, as on SQLite.
//! - A check naming a plugin takes a shared lock on the plugin's row
//!   (`FOR SHARE`) in the transaction that stores the check; a plugin's
//!   deletion takes the row's exclusive lock before it looks for checks
//!   using it. Whichever locks first wins as it would alone: the check
//!   then finds no plugin (`UnknownPlugin`), or the deletion, having waited
//!   for the check's commit, finds it (`InUse`).
//! - Repointing and deleting plugins take turns on a transaction-scoped
//!   advisory lock ([`PLUGINS_LOCK`]), so "does another plugin still use
//!   this file" is answered on the state no other plugin change is moving.
//! - Storing one check twice at once: `INSERT … ON CONFLICT DO UPDATE`
//!   locks the row, and the second re-checks its `WHERE` on the first's
//!   version (only one reports `Changed` for the same definition).

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use outrider_protocol::api::{CheckInfo, PluginInfo};
use outrider_protocol::{Fingerprint, PluginRef};

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::checks::{
    AgentDocRow, CheckStore, ComputedConfig, DeletePlugin, PutCheck, compute, normalize_tags,
    orphaned, plugin_of, plugin_users,
};

/// The advisory lock key plugin changes take turns on ("outrplug" in
/// ASCII).
pub const PLUGINS_LOCK: i64 = 0x6f75_7472_706c_7567;

/// A stored number, checked against the type it is reported in.
fn stored<T: TryFrom<i64>>(what: &'static str, value: i64) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Malformed {
        what,
        value: value.to_string(),
    })
}

impl CheckStore for PgBackend {
    async fn checks(&self) -> Result<Vec<CheckInfo>, StoreError> {
        let client = self.client().await?;
        load_checks(&client).await
    }

    async fn put_check(&self, check: CheckInfo, now_ms: i64) -> Result<PutCheck, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(plugin) = plugin_of(&check.command) {
            let stmt = tx
                .prepare_cached("SELECT 1 FROM plugins WHERE name = $1 FOR SHARE")
                .await?;
            if tx.query_opt(&stmt, &[&plugin]).await?.is_none() {
                return Ok(PutCheck::UnknownPlugin(plugin.to_owned()));
            }
        }
        let tags = normalize_tags(&check.tags);
        // The API's alert rules always serialise.
        let alert = check
            .alert
            .as_ref()
            .map(|a| serde_json::to_string(a).expect("alert rules serialise"));
        let stmt = tx
            .prepare_cached(
                "INSERT INTO checks (name, command, interval_secs, timeout_secs, tags, alert, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (name) DO UPDATE SET command = excluded.command,
                     interval_secs = excluded.interval_secs, timeout_secs = excluded.timeout_secs,
                     tags = excluded.tags, alert = excluded.alert,
                     updated_at_ms = excluded.updated_at_ms
                 WHERE checks.command IS DISTINCT FROM excluded.command
                    OR checks.interval_secs IS DISTINCT FROM excluded.interval_secs
                    OR checks.timeout_secs IS DISTINCT FROM excluded.timeout_secs
                    OR checks.tags IS DISTINCT FROM excluded.tags
                    OR checks.alert IS DISTINCT FROM excluded.alert",
            )
            .await?;
        let changed = tx
            .execute(
                &stmt,
                &[
                    &check.name,
                    &check.command,
                    &i64::from(check.interval_secs),
                    &i64::from(check.timeout_secs),
                    &tags,
                    &alert,
                    &now_ms,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(if changed > 0 {
            PutCheck::Changed
        } else {
            PutCheck::Unchanged
        })
    }

    async fn delete_check(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM checks WHERE name = $1")
            .await?;
        Ok(client.execute(&stmt, &[&name]).await? > 0)
    }

    async fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT name, sha256, size, updated_at_ms FROM plugins ORDER BY name COLLATE \"C\"",
            )
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(PluginInfo {
                    name: r.get(0),
                    sha256: r.get(1),
                    size: stored("plugin size", r.get(2))?,
                    updated_at_ms: r.get(3),
                })
            })
            .collect()
    }

    async fn put_plugin(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        now_ms: i64,
    ) -> Result<(PluginInfo, Option<String>), StoreError> {
        let size_db = i64::try_from(size).map_err(|_| StoreError::Malformed {
            what: "plugin size",
            value: size.to_string(),
        })?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLUGINS_LOCK])
            .await?;
        let old: Option<String> = tx
            .query_opt(
                "SELECT sha256 FROM plugins WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?
            .map(|r| r.get(0));
        tx.execute(
            "INSERT INTO plugins (name, sha256, size, updated_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
                 updated_at_ms = excluded.updated_at_ms",
            &[&name, &sha256, &size_db, &now_ms],
        )
        .await?;
        let still_used = match &old {
            Some(old) => hash_in_use(&tx, old).await?,
            None => false,
        };
        tx.commit().await?;
        Ok((
            PluginInfo {
                name: name.to_owned(),
                sha256: sha256.to_owned(),
                size,
                updated_at_ms: now_ms,
            },
            orphaned(old, Some(sha256), still_used),
        ))
    }

    async fn delete_plugin(&self, name: &str) -> Result<DeletePlugin, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLUGINS_LOCK])
            .await?;
        // The row lock first: a check naming the plugin that locked it
        // before has committed when this returns, and is seen below.
        let sha: Option<String> = tx
            .query_opt(
                "SELECT sha256 FROM plugins WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?
            .map(|r| r.get(0));
        let users = plugin_users(&load_checks(&tx).await?, name);
        if !users.is_empty() {
            return Ok(DeletePlugin::InUse(users));
        }
        let Some(sha) = sha else {
            return Ok(DeletePlugin::NotFound);
        };
        tx.execute("DELETE FROM plugins WHERE name = $1", &[&name])
            .await?;
        let still_used = hash_in_use(&tx, &sha).await?;
        tx.commit().await?;
        Ok(DeletePlugin::Deleted {
            orphaned: orphaned(Some(sha), None, still_used),
        })
    }

    /// Two passes, so a computation that changes nothing locks nothing:
    /// the first computes every document from one snapshot without locks
    /// (what the other nodes do after a change was broadcast, and what
    /// most computations find: nothing to bump); only when some documents
    /// changed, the second does the locked computation of the module
    /// comment for those agents alone. A definition changed between the
    /// passes is left to the computation its own change runs.
    async fn compute_configs(
        &self,
        only: Option<&Fingerprint>,
    ) -> Result<Vec<ComputedConfig>, StoreError> {
        let out = self.read_configs(only).await?;
        let changed: Vec<String> = out
            .iter()
            .filter(|c| c.changed)
            .map(|c| c.fingerprint.to_string())
            .collect();
        if changed.is_empty() {
            return Ok(out);
        }
        let locked = self.bump_configs(&changed).await?;
        let mut locked: HashMap<Fingerprint, ComputedConfig> = locked
            .into_iter()
            .map(|c| (c.fingerprint.clone(), c))
            .collect();
        // An agent changed in the first pass but gone from the second was
        // removed in between: it has no document any more.
        let mut kept = Vec::with_capacity(out.len());
        for c in out {
            match (c.changed, locked.remove(&c.fingerprint)) {
                (_, Some(newer)) => kept.push(newer),
                (false, None) => kept.push(c),
                (true, None) => {}
            }
        }
        Ok(kept)
    }
}

/// The columns of `agents` a document is computed from.
const DOC_COLUMNS: &str = "SELECT fingerprint, hello_tags, server_tags, allow_adhoc,
                                  config_version, config_sha256
                           FROM agents";

/// An agents row of [`DOC_COLUMNS`].
fn doc_row(r: &tokio_postgres::Row) -> Result<AgentDocRow, StoreError> {
    Ok(AgentDocRow {
        fingerprint: r.get(0),
        hello_tags: r.get(1),
        server_tags: r.get(2),
        allow_adhoc: r.get(3),
        config_version: stored("config version", r.get(4))?,
        config_sha256: r.get(5),
    })
}

impl PgBackend {
    /// Every document (or `only`'s) computed from one snapshot, without
    /// locks and without storing anything: `changed` says which would be
    /// bumped.
    async fn read_configs(
        &self,
        only: Option<&Fingerprint>,
    ) -> Result<Vec<ComputedConfig>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let rows = match only {
            Some(fp) => {
                let stmt = tx
                    .prepare_cached(&format!("{DOC_COLUMNS} WHERE fingerprint = $1"))
                    .await?;
                tx.query(&stmt, &[&fp.as_str()]).await?
            }
            None => {
                let stmt = tx
                    .prepare_cached(&format!("{DOC_COLUMNS} ORDER BY fingerprint COLLATE \"C\""))
                    .await?;
                tx.query(&stmt, &[]).await?
            }
        };
        let checks = load_checks(&tx).await?;
        let plugins = load_plugin_refs(&tx).await?;
        let collectors = super::collectors::load_collectors(&tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok(compute(doc_row(r)?, &checks, &plugins, &collectors)?.0))
            .collect()
    }

    /// The locked computation (module comment) of the agents `fingerprints`,
    /// storing the bumped versions.
    async fn bump_configs(
        &self,
        fingerprints: &[String],
    ) -> Result<Vec<ComputedConfig>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The rows' locks before the definitions are read (see the module
        // comment), in fingerprint order.
        let stmt = tx
            .prepare_cached(&format!(
                "{DOC_COLUMNS} WHERE fingerprint = ANY($1) ORDER BY fingerprint COLLATE \"C\" FOR UPDATE"
            ))
            .await?;
        let rows = tx.query(&stmt, &[&fingerprints]).await?;
        let checks = load_checks(&tx).await?;
        let plugins = load_plugin_refs(&tx).await?;
        let collectors = super::collectors::load_collectors(&tx).await?;
        let update = tx
            .prepare_cached(
                "UPDATE agents SET config_version = $2, config_sha256 = $3 WHERE fingerprint = $1",
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let (computed, hash) = compute(doc_row(r)?, &checks, &plugins, &collectors)?;
            if computed.changed {
                let version =
                    i64::try_from(computed.config.version).map_err(|_| StoreError::Malformed {
                        what: "config version",
                        value: computed.config.version.to_string(),
                    })?;
                tx.execute(&update, &[&computed.fingerprint.as_str(), &version, &hash])
                    .await?;
            }
            out.push(computed);
        }
        tx.commit().await?;
        Ok(out)
    }
}

async fn hash_in_use(c: &impl GenericClient, sha256: &str) -> Result<bool, StoreError> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM plugins WHERE sha256 = $1)",
            &[&sha256],
        )
        .await?;
    Ok(row.get(0))
}

async fn load_plugin_refs(
    c: &impl GenericClient,
) -> Result<HashMap<String, PluginRef>, StoreError> {
    let mut out = HashMap::new();
    for r in c
        .query("SELECT name, sha256, size FROM plugins", &[])
        .await?
    {
        let p = PluginRef {
            name: r.get(0),
            sha256: r.get(1),
            size: stored("plugin size", r.get(2))?,
        };
        out.insert(p.name.clone(), p);
    }
    Ok(out)
}

/// Every check, by name (byte order, as SQLite sorts).
async fn load_checks(c: &impl GenericClient) -> Result<Vec<CheckInfo>, StoreError> {
    let rows = c
        .query(
            "SELECT name, command, interval_secs, timeout_secs, tags, alert
             FROM checks ORDER BY name COLLATE \"C\"",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let alert = r
                .get::<_, Option<String>>(5)
                .map(|a| serde_json::from_str(&a))
                .transpose()
                .map_err(|e| StoreError::Malformed {
                    what: "alert rules",
                    value: format!("check {name:?}: {e}"),
                })?;
            Ok(CheckInfo {
                command: r.get(1),
                interval_secs: stored("check interval", r.get(2))?,
                timeout_secs: stored("check timeout", r.get(3))?,
                tags: r.get(4),
                alert,
                name,
            })
        })
        .collect()
}
