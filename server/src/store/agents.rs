//! Agents: registration with key pinning, and presence.

use anyhow::Context;
use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence};
use rusqlite::{OptionalExtension, params};

use super::{Store, now_ms};

/// What a verified `Hello` tells the store.
#[derive(Clone, Debug)]
pub struct Registration {
    pub fingerprint: Fingerprint,
    pub public_key: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub build_sha256: Option<String>,
    pub build_version: Option<String>,
}

impl Store {
    /// The pinned public key (hex) of `fingerprint`, if the agent is known.
    pub async fn pinned_key(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<String>> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT public_key FROM agents WHERE fingerprint = ?1",
                [fp],
                |r| r.get(0),
            )
            .optional()
            .context("looking up the agent")
        })
        .await
    }

    /// Records a successful registration: inserts the agent (pinning its
    /// key) or refreshes its labels, and marks it connected. Returns the
    /// highest result sequence already stored for it.
    pub async fn register(&self, reg: Registration) -> anyhow::Result<u64> {
        self.call(move |c| {
            let now = now_ms();
            c.execute(
                "INSERT INTO agents (fingerprint, public_key, hostname, os, arch, agent_version,
                                     build_sha256, build_version,
                                     presence, presence_since_ms, registered_at_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, ?9, 'connected', ?7, ?7, ?7)
                 ON CONFLICT (fingerprint) DO UPDATE SET
                     hostname = excluded.hostname, os = excluded.os, arch = excluded.arch,
                     agent_version = excluded.agent_version, last_seen_ms = excluded.last_seen_ms,
                     build_sha256 = excluded.build_sha256, build_version = excluded.build_version,
                     presence_since_ms = CASE WHEN presence = 'connected' THEN presence_since_ms
                                              ELSE excluded.presence_since_ms END,
                     presence = 'connected'",
                params![
                    reg.fingerprint.as_str(),
                    reg.public_key,
                    reg.hostname,
                    reg.os,
                    reg.arch,
                    reg.agent_version,
                    now,
                    reg.build_sha256,
                    reg.build_version
                ],
            )
            .context("registering the agent")?;
            let acked: i64 = c.query_row(
                "SELECT acked_seq FROM agents WHERE fingerprint = ?1",
                [reg.fingerprint.as_str()],
                |r| r.get(0),
            )?;
            Ok(acked as u64)
        })
        .await
    }

    /// Sets the presence of an agent (no-op when it is already in that state).
    pub async fn set_presence(
        &self,
        fingerprint: &Fingerprint,
        presence: Presence,
    ) -> anyhow::Result<()> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE agents SET presence = ?2, presence_since_ms = ?3
                 WHERE fingerprint = ?1 AND presence != ?2",
                params![fp, presence.as_str(), now_ms()],
            )
            .context("updating presence")?;
            Ok(())
        })
        .await
    }

    /// At startup: agents that were connected to the previous server process
    /// are not connected to this one until they come back.
    pub async fn mark_connected_down(&self) -> anyhow::Result<usize> {
        self.call(|c| {
            Ok(c.execute(
                "UPDATE agents SET presence = 'down', presence_since_ms = ?1 WHERE presence = 'connected'",
                [now_ms()],
            )?)
        })
        .await
    }

    /// Every agent, ordered by hostname then fingerprint.
    pub async fn agents(&self) -> anyhow::Result<Vec<AgentInfo>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT fingerprint, hostname, os, arch, agent_version, build_sha256, build_version,
                        presence, presence_since_ms, registered_at_ms, last_seen_ms
                 FROM agents ORDER BY hostname, fingerprint",
            )?;
            let rows = stmt.query_map([], agent_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

/// Maps a row of the `agents()` query; a malformed stored value is a
/// conversion error naming the column, not a panic.
fn agent_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentInfo> {
    fn parsed<T: std::str::FromStr>(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T>
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
    Ok(AgentInfo {
        fingerprint: parsed(r, 0)?,
        hostname: r.get(1)?,
        os: r.get(2)?,
        arch: r.get(3)?,
        agent_version: r.get(4)?,
        build_sha256: r.get(5)?,
        build_version: r.get(6)?,
        presence: parsed(r, 7)?,
        presence_since_ms: r.get(8)?,
        registered_at_ms: r.get(9)?,
        last_seen_ms: r.get(10)?,
    })
}
