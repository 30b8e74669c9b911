//! Check definitions, plugins' rows, and the configuration document each
//! agent receives.
//!
//! Assignment: a check runs on an agent when the agent's tags (its own from
//! `Hello` ∪ those assigned on the server) include every tag of the check's
//! selector; an empty selector selects every agent.
//!
//! Versions: each agent has its own document version in `agents`, next to
//! the SHA-256 of the document's canonical JSON (with version 0). Recomputing
//! bumps the version only when that hash changed, so a change that does not
//! touch an agent's document leaves its version — and the agent — alone.
//!
//! Plugins: a check naming `plugin:<name>` can only be stored while that
//! plugin exists, and a plugin can only be deleted while no check names it;
//! both rules are enforced inside the transaction of the change, so every
//! computed document lists the plugins its checks use.

use std::collections::{BTreeSet, HashMap};

use anyhow::Context;
use outrider_protocol::api::{CheckInfo, PluginInfo};
use outrider_protocol::{AgentConfig, CheckSpec, Fingerprint, PLUGIN_PREFIX, PluginRef};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{Store, now_ms};

/// Outcome of [`Store::put_check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutCheck {
    /// Stored; documents must be recomputed.
    Changed,
    /// Identical to the stored definition.
    Unchanged,
    /// The command names a plugin the server does not have.
    UnknownPlugin(String),
}

/// Outcome of [`Store::delete_plugin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletePlugin {
    /// Deleted; `orphaned` is its hash when no other plugin shares the file.
    Deleted {
        orphaned: Option<String>,
    },
    NotFound,
    /// These checks still use it.
    InUse(Vec<String>),
}

/// One agent's computed document.
#[derive(Clone, Debug)]
pub struct ComputedConfig {
    pub fingerprint: Fingerprint,
    pub config: AgentConfig,
    /// Whether the version moved in this computation.
    pub changed: bool,
}

impl Store {
    /// Every check, by name.
    pub async fn checks(&self) -> anyhow::Result<Vec<CheckInfo>> {
        self.read(load_checks).await
    }

    /// Creates or replaces a check (already validated).
    pub async fn put_check(&self, check: CheckInfo) -> anyhow::Result<PutCheck> {
        self.call(move |c| {
            let tx = c.transaction()?;
            if let Some(plugin) = check.command.first().and_then(|c| c.strip_prefix(PLUGIN_PREFIX)) {
                let known: Option<i64> = tx
                    .query_row("SELECT 1 FROM plugins WHERE name = ?1", [plugin], |r| r.get(0))
                    .optional()?;
                if known.is_none() {
                    return Ok(PutCheck::UnknownPlugin(plugin.to_owned()));
                }
            }
            let command = serde_json::to_string(&check.command)?;
            let tags = serde_json::to_string(&normalize_tags(&check.tags))?;
            let alert = check.alert.as_ref().map(serde_json::to_string).transpose()?;
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
                params![check.name, command, check.interval_secs, check.timeout_secs, tags, alert, now_ms()],
            )?;
            tx.commit()?;
            Ok(if changed > 0 { PutCheck::Changed } else { PutCheck::Unchanged })
        })
        .await
    }

    /// Deletes a check; false when no such check existed.
    pub async fn delete_check(&self, name: String) -> anyhow::Result<bool> {
        self.call(move |c| Ok(c.execute("DELETE FROM checks WHERE name = ?1", [&name])? > 0))
            .await
    }

    /// Every plugin, by name.
    pub async fn plugins(&self) -> anyhow::Result<Vec<PluginInfo>> {
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

    /// Points plugin `name` at a stored file. Returns the row and the hash
    /// of the file it pointed at before, when no plugin uses that any more.
    pub async fn put_plugin(
        &self,
        name: String,
        sha256: String,
        size: u64,
    ) -> anyhow::Result<(PluginInfo, Option<String>)> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let old: Option<String> = tx
                .query_row("SELECT sha256 FROM plugins WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO plugins (name, sha256, size, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
                     updated_at_ms = excluded.updated_at_ms",
                params![name, sha256, size as i64, now],
            )?;
            let orphaned = match old {
                Some(old) if old != sha256 && !hash_in_use(&tx, &old)? => Some(old),
                _ => None,
            };
            tx.commit()?;
            Ok((
                PluginInfo {
                    name,
                    sha256,
                    size,
                    updated_at_ms: now,
                },
                orphaned,
            ))
        })
        .await
    }

    /// Deletes plugin `name` unless a check uses it.
    pub async fn delete_plugin(&self, name: String) -> anyhow::Result<DeletePlugin> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let users: Vec<String> = load_checks(&tx)?
                .into_iter()
                .filter(|c| plugin_of(&c.command) == Some(name.as_str()))
                .map(|c| c.name)
                .collect();
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
            let orphaned = (!hash_in_use(&tx, &sha)?).then_some(sha);
            tx.commit()?;
            Ok(DeletePlugin::Deleted { orphaned })
        })
        .await
    }

    /// Recomputes the documents of every agent (or of `only`), storing new
    /// versions where a document changed.
    pub async fn compute_configs(
        &self,
        only: Option<Fingerprint>,
    ) -> anyhow::Result<Vec<ComputedConfig>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let checks = load_checks(&tx)?;
            let plugins = load_plugin_refs(&tx)?;
            let collectors = super::collectors::load_collectors(&tx)?;
            let mut out = Vec::new();
            {
                // Two statements: `?1 IS NULL OR fingerprint = ?1` cannot
                // use the primary key, and scanned every agent on every
                // handshake (a reconnect storm of N agents read N² rows).
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
                    let fp: String = r.get(0)?;
                    let tags = effective_tags(&json_tags(r.get(1)?), &json_tags(r.get(2)?));
                    let mut config = document(&checks, &plugins, tags, r.get(3)?);
                    // Only a document with collectors changes its JSON (the
                    // field is left out when empty), so adding collectors
                    // moves no version of an agent they do not select.
                    config.collectors = super::collectors::selected(&collectors, &config.tags);
                    let hash = hex::encode(Sha256::digest(serde_json::to_vec(&config)?));
                    let mut version = r.get::<_, i64>(4)? as u64;
                    let stored: Option<String> = r.get(5)?;
                    let changed = stored.as_deref() != Some(hash.as_str());
                    if changed {
                        version += 1;
                        update.execute(params![fp, version as i64, hash])?;
                    }
                    config.version = version;
                    let fingerprint = fp.parse().map_err(|e| anyhow::anyhow!("stored fingerprint {fp:?}: {e}"))?;
                    out.push(ComputedConfig { fingerprint, config, changed });
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

/// The document (version 0) for an agent with `tags`.
fn document(
    checks: &[CheckInfo],
    plugins: &HashMap<String, PluginRef>,
    tags: Vec<String>,
    allow_adhoc: bool,
) -> AgentConfig {
    let mut used = BTreeSet::new();
    let mut specs = Vec::new();
    for check in checks
        .iter()
        .filter(|c| c.tags.iter().all(|t| tags.contains(t)))
    {
        if let Some(name) = plugin_of(&check.command) {
            // `put_check`/`delete_plugin` keep every named plugin present.
            let Some(plugin) = plugins.get(name) else {
                tracing::warn!(check = %check.name, plugin = name, "check names a missing plugin; left out");
                continue;
            };
            used.insert(plugin.name.clone());
        }
        specs.push(CheckSpec {
            name: check.name.clone(),
            command: check.command.clone(),
            interval_secs: check.interval_secs,
            timeout_secs: check.timeout_secs,
        });
    }
    AgentConfig {
        version: 0,
        checks: specs,
        plugins: used.iter().map(|n| plugins[n].clone()).collect(),
        tags,
        allow_adhoc,
        collectors: Vec::new(),
    }
}

fn plugin_of(command: &[String]) -> Option<&str> {
    command.first()?.strip_prefix(PLUGIN_PREFIX)
}

fn hash_in_use(c: &Connection, sha256: &str) -> anyhow::Result<bool> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM plugins WHERE sha256 = ?1",
        [sha256],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Sorted, deduplicated tags.
pub fn normalize_tags(tags: &[String]) -> Vec<String> {
    tags.iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The agent's own tags ∪ the server's, sorted.
pub fn effective_tags(hello: &[String], server: &[String]) -> Vec<String> {
    hello
        .iter()
        .chain(server)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Parses a stored JSON tag array; a corrupt value counts as no tags.
pub fn json_tags(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

fn load_plugin_refs(c: &Connection) -> anyhow::Result<HashMap<String, PluginRef>> {
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

fn load_checks(c: &Connection) -> anyhow::Result<Vec<CheckInfo>> {
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
            .with_context(|| format!("stored alert rules of check {name:?}"))?;
        let command = serde_json::from_str(&command)
            .with_context(|| format!("stored command of check {name:?}"))?;
        let tags = serde_json::from_str(&tags)
            .with_context(|| format!("stored tags of check {name:?}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::registration;

    async fn store_with(agents: &[(&str, &[&str])]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        for (fp, tags) in agents {
            store
                .register(registration(
                    &fp.parse().unwrap(),
                    &format!("host-{fp}"),
                    tags,
                ))
                .await
                .unwrap();
        }
        (dir, store)
    }

    fn check(name: &str, interval_secs: u32, tags: &[&str]) -> CheckInfo {
        CheckInfo {
            name: name.into(),
            command: vec!["/bin/true".into()],
            interval_secs,
            timeout_secs: 5,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            alert: None,
        }
    }

    fn versions(computed: &[ComputedConfig]) -> Vec<(String, u64, bool)> {
        let mut v: Vec<_> = computed
            .iter()
            .map(|c| (c.fingerprint.to_string(), c.config.version, c.changed))
            .collect();
        v.sort();
        v
    }

    const WEB: &str = "0000000000000000000a";
    const DB: &str = "0000000000000000000b";

    #[tokio::test]
    async fn versions_move_only_for_agents_whose_document_changed() {
        let (_dir, store) = store_with(&[(WEB, &["web"]), (DB, &["db"])]).await;
        assert_eq!(
            versions(&store.compute_configs(None).await.unwrap()),
            [(WEB.into(), 1, true), (DB.into(), 1, true)]
        );
        // Recomputing without a change moves nothing.
        assert_eq!(
            versions(&store.compute_configs(None).await.unwrap()),
            [(WEB.into(), 1, false), (DB.into(), 1, false)]
        );
        assert_eq!(
            store.put_check(check("nginx", 10, &["web"])).await.unwrap(),
            PutCheck::Changed
        );
        assert_eq!(
            store.put_check(check("nginx", 10, &["web"])).await.unwrap(),
            PutCheck::Unchanged
        );
        let computed = store.compute_configs(None).await.unwrap();
        assert_eq!(
            versions(&computed),
            [(WEB.into(), 2, true), (DB.into(), 1, false)]
        );
        let web = computed
            .iter()
            .find(|c| c.fingerprint.as_str() == WEB)
            .unwrap();
        assert_eq!(web.config.checks[0].name, "nginx");
        assert_eq!(web.config.tags, ["web"]);
        // An empty selector reaches everyone.
        store.put_check(check("load", 30, &[])).await.unwrap();
        assert_eq!(
            versions(&store.compute_configs(None).await.unwrap()),
            [(WEB.into(), 3, true), (DB.into(), 2, true)]
        );
        // Server-assigned tags count like the agent's own.
        let db: Fingerprint = DB.parse().unwrap();
        store
            .set_server_tags(&db, vec!["web".into()])
            .await
            .unwrap();
        let computed = store.compute_configs(Some(db.clone())).await.unwrap();
        assert_eq!(versions(&computed), [(DB.into(), 3, true)]);
        assert_eq!(computed[0].config.tags, ["db", "web"]);
        assert_eq!(computed[0].config.checks.len(), 2);
        assert!(store.delete_check("nginx".into()).await.unwrap());
        assert!(!store.delete_check("nginx".into()).await.unwrap());
    }

    #[tokio::test]
    async fn plugins_cannot_be_named_before_upload_or_deleted_while_used() {
        let (_dir, store) = store_with(&[(WEB, &[])]).await;
        let mut uses = check("custom", 10, &[]);
        uses.command = vec!["plugin:check_foo".into(), "-w".into(), "1".into()];
        assert_eq!(
            store.put_check(uses.clone()).await.unwrap(),
            PutCheck::UnknownPlugin("check_foo".into())
        );
        let sha = "ab".repeat(32);
        store
            .put_plugin("check_foo".into(), sha.clone(), 10)
            .await
            .unwrap();
        assert_eq!(store.put_check(uses).await.unwrap(), PutCheck::Changed);
        let computed = store.compute_configs(None).await.unwrap();
        computed[0].config.validate().unwrap();
        assert_eq!(computed[0].config.plugins[0].sha256, sha);
        assert_eq!(
            store.delete_plugin("check_foo".into()).await.unwrap(),
            DeletePlugin::InUse(vec!["custom".into()])
        );
        store.delete_check("custom".into()).await.unwrap();
        assert_eq!(
            store.delete_plugin("check_foo".into()).await.unwrap(),
            DeletePlugin::Deleted {
                orphaned: Some(sha)
            }
        );
        assert_eq!(
            store.delete_plugin("check_foo".into()).await.unwrap(),
            DeletePlugin::NotFound
        );
    }
}
