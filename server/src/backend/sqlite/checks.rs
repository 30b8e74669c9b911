//! The checks area on SQLite: the statements the server has always run
//! (moved here from server/src/store/checks.rs, whose `Store` methods now
//! call these), on the `checks`, `plugins` and `agents` tables of
//! server/src/store/schema.sql. Writes run in one immediate transaction on
//! the single writer, so a computation reads the definitions and every
//! agent's stored version and writes the new versions without any other
//! write in between: versions grow by one per change, none is lost.

use std::collections::HashMap;

use outrider_protocol::api::{CheckInfo, PluginInfo};
use outrider_protocol::{Fingerprint, PLUGIN_PREFIX, PluginRef};
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::checks::{
    AgentDocRow, CheckStore, ComputedConfig, DeletePlugin, PutCheck, compute, json_tags,
    normalize_tags, orphaned, plugin_users,
};

impl CheckStore for SqliteBackend {
    async fn checks(&self) -> Result<Vec<CheckInfo>, StoreError> {
        self.read(load_checks).await
    }

    async fn put_check(&self, check: CheckInfo, now_ms: i64) -> Result<PutCheck, StoreError> {
        self.write(move |tx| {
            if let Some(plugin) = check.command.first().and_then(|c| c.strip_prefix(PLUGIN_PREFIX)) {
                let known: Option<i64> = tx
                    .query_row("SELECT 1 FROM plugins WHERE name = ?1", [plugin], |r| r.get(0))
                    .optional()?;
                if known.is_none() {
                    return Ok(PutCheck::UnknownPlugin(plugin.to_owned()));
                }
            }
            let (command, tags, alert) = check_json(&check);
            let changed = tx.execute(
                "INSERT INTO checks (name, command, interval_secs, timeout_secs, tags, alert, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET command = excluded.command,
                     interval_secs = excluded.interval_secs, timeout_secs = excluded.timeout_secs,
                     tags = excluded.tags, alert = excluded.alert,
                     updated_at_ms = excluded.updated_at_ms
                 WHERE command != excluded.command OR interval_secs != excluded.interval_secs
                    OR timeout_secs != excluded.timeout_secs OR tags != excluded.tags
                    OR alert IS NOT excluded.alert",
                params![check.name, command, check.interval_secs, check.timeout_secs, tags, alert, now_ms],
            )?;
            Ok(if changed > 0 { PutCheck::Changed } else { PutCheck::Unchanged })
        })
        .await
    }

    async fn delete_check(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| Ok(tx.execute("DELETE FROM checks WHERE name = ?1", [&name])? > 0))
            .await
    }

    async fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT name, sha256, size, updated_at_ms FROM plugins ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(PluginInfo {
                    name: r.get(0)?,
                    sha256: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    updated_at_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn put_plugin(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        now_ms: i64,
    ) -> Result<(PluginInfo, Option<String>), StoreError> {
        let (name, sha256) = (name.to_owned(), sha256.to_owned());
        self.write(move |tx| {
            let old: Option<String> = tx
                .query_row("SELECT sha256 FROM plugins WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            tx.execute(
                "INSERT INTO plugins (name, sha256, size, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
                     updated_at_ms = excluded.updated_at_ms",
                params![name, sha256, size as i64, now_ms],
            )?;
            let still_used = match &old {
                Some(old) => hash_in_use(tx, old)?,
                None => false,
            };
            let orphaned = orphaned(old, Some(&sha256), still_used);
            Ok((
                PluginInfo {
                    name,
                    sha256,
                    size,
                    updated_at_ms: now_ms,
                },
                orphaned,
            ))
        })
        .await
    }

    async fn delete_plugin(&self, name: &str) -> Result<DeletePlugin, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| {
            let users = plugin_users(&load_checks(tx)?, &name);
            if !users.is_empty() {
                return Ok(DeletePlugin::InUse(users));
            }
            let sha: Option<String> = tx
                .query_row("SELECT sha256 FROM plugins WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(sha) = sha else {
                return Ok(DeletePlugin::NotFound);
            };
            tx.execute("DELETE FROM plugins WHERE name = ?1", [&name])?;
            let still_used = hash_in_use(tx, &sha)?;
            Ok(DeletePlugin::Deleted {
                orphaned: orphaned(Some(sha), None, still_used),
            })
        })
        .await
    }

    async fn compute_configs(
        &self,
        only: Option<&Fingerprint>,
    ) -> Result<Vec<ComputedConfig>, StoreError> {
        let only = only.cloned();
        self.write(move |tx| {
            let checks = load_checks(tx)?;
            let plugins = load_plugin_refs(tx)?;
            let collectors = super::collectors::load_collectors(tx)?;
            let mut out = Vec::new();
            // Two statements: `?1 IS NULL OR fingerprint = ?1` cannot use
            // the primary key, and scanned every agent on every handshake
            // (a reconnect storm of N agents read N² rows).
            const SELECT: &str = "SELECT fingerprint, hello_tags, server_tags, allow_adhoc, config_version, config_sha256
                                  FROM agents";
            let mut stmt;
            let mut rows = match &only {
                Some(fp) => {
                    stmt = tx.prepare_cached(&format!("{SELECT} WHERE fingerprint = ?1"))?;
                    stmt.query([fp.as_str()])?
                }
                None => {
                    stmt = tx.prepare_cached(SELECT)?;
                    stmt.query([])?
                }
            };
            let mut update = tx.prepare_cached(
                "UPDATE agents SET config_version = ?2, config_sha256 = ?3 WHERE fingerprint = ?1",
            )?;
            while let Some(r) = rows.next()? {
                let row = AgentDocRow {
                    fingerprint: r.get(0)?,
                    hello_tags: json_tags(r.get(1)?),
                    server_tags: json_tags(r.get(2)?),
                    allow_adhoc: r.get(3)?,
                    config_version: r.get::<_, i64>(4)? as u64,
                    config_sha256: r.get(5)?,
                };
                let (computed, hash) = compute(row, &checks, &plugins, &collectors)?;
                if computed.changed {
                    update.execute(params![
                        computed.fingerprint.as_str(),
                        computed.config.version as i64,
                        hash
                    ])?;
                }
                out.push(computed);
            }
            Ok(out)
        })
        .await
    }
}

/// The stored JSON of a check's command, normalised selector and alert
/// rules.
fn check_json(check: &CheckInfo) -> (String, String, Option<String>) {
    // Lists of strings and the API's alert rules always serialise.
    let command = serde_json::to_string(&check.command).expect("a command serialises");
    let tags = serde_json::to_string(&normalize_tags(&check.tags)).expect("tags serialise");
    let alert = check
        .alert
        .as_ref()
        .map(|a| serde_json::to_string(a).expect("alert rules serialise"));
    (command, tags, alert)
}

fn hash_in_use(c: &Connection, sha256: &str) -> Result<bool, StoreError> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM plugins WHERE sha256 = ?1",
        [sha256],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

fn load_plugin_refs(c: &Connection) -> Result<HashMap<String, PluginRef>, StoreError> {
    let mut stmt = c.prepare("SELECT name, sha256, size FROM plugins")?;
    let rows = stmt.query_map([], |r| {
        Ok(PluginRef {
            name: r.get(0)?,
            sha256: r.get(1)?,
            size: r.get::<_, i64>(2)? as u64,
        })
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let p = row?;
        out.insert(p.name.clone(), p);
    }
    Ok(out)
}

fn malformed(what: &'static str, name: &str, e: serde_json::Error) -> StoreError {
    StoreError::Malformed {
        what,
        value: format!("check {name:?}: {e}"),
    }
}

fn load_checks(c: &Connection) -> Result<Vec<CheckInfo>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT name, command, interval_secs, timeout_secs, tags, alert FROM checks ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, u32>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, command, interval_secs, timeout_secs, tags, alert) = row?;
        let alert = alert
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(|e| malformed("alert rules", &name, e))?;
        let command = serde_json::from_str(&command).map_err(|e| malformed("command", &name, e))?;
        let tags = serde_json::from_str(&tags).map_err(|e| malformed("tags", &name, e))?;
        out.push(CheckInfo {
            name,
            command,
            interval_secs,
            timeout_secs,
            tags,
            alert,
        });
    }
    Ok(out)
}
