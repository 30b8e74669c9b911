//! Agents: registration with key pinning, and presence.

use anyhow::Context;
use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence, host_version};
use rusqlite::{OptionalExtension, params};

use super::checks::{effective_tags, json_tags};
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
    /// Tags the agent announced (already validated and normalised).
    pub tags: Vec<String>,
    /// Version of the agent's stub, when reported.
    pub stub_version: Option<String>,
    /// Update channel of the agent, when reported.
    pub channel: Option<String>,
    /// The protocol version negotiated for this session.
    pub protocol_version: u32,
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
                                     build_sha256, build_version, hello_tags,
                                     stub_version, channel, protocol_version,
                                     presence, presence_since_ms, registered_at_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, ?9, ?10, ?11, ?12, ?13, 'connected', ?7, ?7, ?7)
                 ON CONFLICT (fingerprint) DO UPDATE SET
                     hostname = excluded.hostname, os = excluded.os, arch = excluded.arch,
                     agent_version = excluded.agent_version, last_seen_ms = excluded.last_seen_ms,
                     build_sha256 = excluded.build_sha256, build_version = excluded.build_version,
                     hello_tags = excluded.hello_tags,
                     stub_version = excluded.stub_version, channel = excluded.channel,
                     protocol_version = excluded.protocol_version,
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
                    reg.build_version,
                    serde_json::to_string(&reg.tags)?,
                    reg.stub_version,
                    reg.channel,
                    reg.protocol_version
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

    /// Sets the presence of an agent. Returns the time of the change, or
    /// `None` when it already was in that state.
    pub async fn set_presence(
        &self,
        fingerprint: &Fingerprint,
        presence: Presence,
    ) -> anyhow::Result<Option<i64>> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let now = now_ms();
            let changed = c
                .execute(
                    "UPDATE agents SET presence = ?2, presence_since_ms = ?3
                     WHERE fingerprint = ?1 AND presence != ?2",
                    params![fp, presence.as_str(), now],
                )
                .context("updating presence")?;
            Ok((changed > 0).then_some(now))
        })
        .await
    }

    /// Replaces the server-assigned tags of an agent; false when unknown.
    pub async fn set_server_tags(
        &self,
        fingerprint: &Fingerprint,
        tags: Vec<String>,
    ) -> anyhow::Result<bool> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE agents SET server_tags = ?2 WHERE fingerprint = ?1",
                params![fp, serde_json::to_string(&tags)?],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Allows or forbids ad-hoc scripts on an agent; false when unknown.
    pub async fn set_allow_adhoc(
        &self,
        fingerprint: &Fingerprint,
        allow: bool,
    ) -> anyhow::Result<bool> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE agents SET allow_adhoc = ?2 WHERE fingerprint = ?1",
                params![fp, allow],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// One agent, if known.
    pub async fn agent(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<AgentInfo>> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("{AGENT_COLUMNS} WHERE fingerprint = ?1"),
                [fp],
                agent_from_row,
            )
            .optional()?)
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
            let mut stmt = c.prepare(&format!("{AGENT_COLUMNS} ORDER BY hostname, fingerprint"))?;
            let rows = stmt.query_map([], agent_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

/// The query behind [`agent_from_row`].
const AGENT_COLUMNS: &str = "SELECT fingerprint, hostname, os, arch, agent_version, build_sha256,
        build_version, presence, presence_since_ms, registered_at_ms, last_seen_ms,
        hello_tags, server_tags, allow_adhoc, config_version, stub_version, channel,
        protocol_version
     FROM agents";

/// Maps a row of [`AGENT_COLUMNS`]; a malformed stored value is a
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
    let server_tags = json_tags(r.get(12)?);
    let agent_version: String = r.get(4)?;
    let build_version: Option<String> = r.get(6)?;
    Ok(AgentInfo {
        version: host_version(build_version.as_deref(), &agent_version).to_owned(),
        fingerprint: parsed(r, 0)?,
        hostname: r.get(1)?,
        os: r.get(2)?,
        arch: r.get(3)?,
        agent_version,
        build_sha256: r.get(5)?,
        build_version,
        presence: parsed(r, 7)?,
        presence_since_ms: r.get(8)?,
        registered_at_ms: r.get(9)?,
        last_seen_ms: r.get(10)?,
        tags: effective_tags(&json_tags(r.get(11)?), &server_tags),
        server_tags,
        allow_adhoc: r.get(13)?,
        config_version: r.get::<_, i64>(14)? as u64,
        stub_version: r.get(15)?,
        channel: r.get(16)?,
        protocol_version: r.get::<_, Option<i64>>(17)?.map(|v| v as u32),
    })
}
