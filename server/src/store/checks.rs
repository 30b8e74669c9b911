//! Check definitions and the configuration document agents receive.
//!
//! In this version every agent runs every check; assignment by tags comes
//! with the server issue. The document version is the `config_version` in
//! `meta`, bumped in the same transaction as the change it describes.

use anyhow::Context;
use outrider_protocol::{AgentConfig, CheckSpec};
use rusqlite::{Transaction, params};

use super::{Store, now_ms};

impl Store {
    /// The current configuration version (0 before any check exists).
    pub async fn config_version(&self) -> anyhow::Result<u64> {
        self.call(|c| read_version(c)).await
    }

    /// Every check, by name.
    pub async fn checks(&self) -> anyhow::Result<Vec<CheckSpec>> {
        self.call(|c| load_checks(c)).await
    }

    /// The document an agent runs: version plus every check.
    pub async fn agent_config(&self) -> anyhow::Result<AgentConfig> {
        self.call(|c| {
            let tx = c.transaction()?;
            let version = read_version(&tx)?;
            let checks = load_checks(&tx)?;
            Ok(AgentConfig {
                version,
                checks,
                ..AgentConfig::default()
            })
        })
        .await
    }

    /// Creates or replaces a check (already validated). Returns the new
    /// config version, or the old one when nothing changed.
    pub async fn put_check(&self, spec: CheckSpec) -> anyhow::Result<u64> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let command = serde_json::to_string(&spec.command)?;
            let changed = tx.execute(
                "INSERT INTO checks (name, command, interval_secs, timeout_secs, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET command = excluded.command,
                     interval_secs = excluded.interval_secs, timeout_secs = excluded.timeout_secs,
                     updated_at_ms = excluded.updated_at_ms
                 WHERE command != excluded.command OR interval_secs != excluded.interval_secs
                    OR timeout_secs != excluded.timeout_secs",
                params![
                    spec.name,
                    command,
                    spec.interval_secs,
                    spec.timeout_secs,
                    now_ms()
                ],
            )?;
            let version = if changed > 0 {
                bump_version(&tx)?
            } else {
                read_version(&tx)?
            };
            tx.commit()?;
            Ok(version)
        })
        .await
    }

    /// Deletes a check. Returns the new config version, or `None` when no
    /// such check existed.
    pub async fn delete_check(&self, name: String) -> anyhow::Result<Option<u64>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            if tx.execute("DELETE FROM checks WHERE name = ?1", [&name])? == 0 {
                return Ok(None);
            }
            let version = bump_version(&tx)?;
            tx.commit()?;
            Ok(Some(version))
        })
        .await
    }
}

fn load_checks(c: &rusqlite::Connection) -> anyhow::Result<Vec<CheckSpec>> {
    let mut stmt =
        c.prepare("SELECT name, command, interval_secs, timeout_secs FROM checks ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, u32>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, command, interval_secs, timeout_secs) = row?;
        let command = serde_json::from_str(&command)
            .with_context(|| format!("stored command of check {name:?}"))?;
        out.push(CheckSpec {
            name,
            command,
            interval_secs,
            timeout_secs,
        });
    }
    Ok(out)
}

fn read_version(tx: &rusqlite::Connection) -> anyhow::Result<u64> {
    let v: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'config_version'",
            [],
            |r| r.get(0),
        )
        .ok();
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn bump_version(tx: &Transaction<'_>) -> anyhow::Result<u64> {
    let next = read_version(tx)? + 1;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('config_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [next.to_string()],
    )?;
    Ok(next)
}
