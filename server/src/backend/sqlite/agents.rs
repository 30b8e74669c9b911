//! The agents area on SQLite: the statements the server has always run
//! (moved here from server/src/store/agents.rs, whose `Store` methods now
//! call these), on the `agents` table of server/src/store/schema.sql.
//! Writes run in one immediate transaction on the single writer, so a
//! registration's read of the pinned row, its decision ([`admit`]) and its
//! writes are atomic; reads go through the read-only connections.

use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence, host_version};
use rusqlite::{OptionalExtension, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::agents::{
    Admission, Admit, AgentStore, Pinned, Registered, Registration, admit, split_tags,
};
use crate::store::{effective_tags, json_tags, parsed_column};

/// A tag list as the JSON text the `agents` columns hold.
fn tags_json(tags: &[String]) -> String {
    // A list of strings always serialises.
    serde_json::to_string(tags).expect("a list of strings serialises")
}

impl AgentStore for SqliteBackend {
    async fn pinned_key(&self, agent: &Fingerprint) -> Result<Option<String>, StoreError> {
        let fp = agent.to_string();
        self.write(move |tx| {
            Ok(tx
                .query_row(
                    "SELECT public_key FROM agents WHERE fingerprint = ?1",
                    [fp],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn register(
        &self,
        reg: Registration,
        now_ms: i64,
    ) -> Result<Option<Registered>, StoreError> {
        self.write(move |tx| {
            let fp = reg.fingerprint.as_str();
            let stored = tx
                .query_row(
                    "SELECT public_key, allowed_tags FROM agents WHERE fingerprint = ?1",
                    [fp],
                    |r| {
                        Ok(Pinned {
                            public_key: r.get(0)?,
                            allowed_tags: r.get::<_, Option<String>>(1)?.map(json_tags),
                        })
                    },
                )
                .optional()?;
            let allowed = match admit(&reg.admission, &reg.public_key, stored.as_ref()) {
                Admit::Allowed { allowed } => allowed,
                Admit::Refused => return Ok(None),
            };
            let (kept, refused) = split_tags(&reg.tags, allowed.as_deref());
            if let Admission::Enrolled(grant) = &reg.admission {
                tx.execute(
                    "INSERT INTO agents (fingerprint, public_key, hostname, os, arch, agent_version,
                                         presence, presence_since_ms, registered_at_ms, last_seen_ms,
                                         enrollment_token_id, allowed_tags, acked_seq)
                     VALUES (?1, ?2, '', '', '', '', 'connected', ?3, ?3, ?3, ?4, ?5,
                             -- A removed agent enrolling again continues
                             -- above the results still stored for it (the
                             -- server's own have negative seqs).
                             COALESCE((SELECT MAX(seq) FROM results
                                       WHERE fingerprint = ?1 AND seq > 0), 0))
                     ON CONFLICT (fingerprint) DO UPDATE SET
                         public_key = excluded.public_key,
                         enrollment_token_id = excluded.enrollment_token_id,
                         allowed_tags = excluded.allowed_tags",
                    params![
                        fp,
                        reg.public_key,
                        now_ms,
                        grant.id,
                        allowed.as_deref().map(tags_json)
                    ],
                )?;
            }
            tx.execute(
                "UPDATE agents SET
                     hostname = ?2, os = ?3, arch = ?4, agent_version = ?5, last_seen_ms = ?6,
                     build_sha256 = ?7, build_version = ?8, hello_tags = ?9, refused_tags = ?10,
                     stub_version = ?11, channel = ?12, protocol_version = ?13,
                     presence_since_ms = CASE WHEN presence = 'connected' THEN presence_since_ms
                                              ELSE ?6 END,
                     presence = 'connected'
                 WHERE fingerprint = ?1",
                params![
                    fp,
                    reg.hostname,
                    reg.os,
                    reg.arch,
                    reg.agent_version,
                    now_ms,
                    reg.build_sha256,
                    reg.build_version,
                    tags_json(&kept),
                    tags_json(&refused),
                    reg.stub_version,
                    reg.channel,
                    reg.protocol_version
                ],
            )?;
            let acked: i64 = tx.query_row(
                "SELECT acked_seq FROM agents WHERE fingerprint = ?1",
                [fp],
                |r| r.get(0),
            )?;
            Ok(Some(Registered {
                acked_seq: acked as u64,
                refused_tags: refused,
            }))
        })
        .await
    }

    async fn remove_agent(&self, agent: &Fingerprint) -> Result<bool, StoreError> {
        let fp = agent.to_string();
        self.write(move |tx| {
            let n = tx.execute("DELETE FROM agents WHERE fingerprint = ?1", [&fp])?;
            tx.execute("DELETE FROM latest_results WHERE fingerprint = ?1", [&fp])?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_presence(
        &self,
        agent: &Fingerprint,
        presence: Presence,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let fp = agent.to_string();
        self.write(move |tx| {
            let changed = tx.execute(
                "UPDATE agents SET presence = ?2, presence_since_ms = ?3
                 WHERE fingerprint = ?1 AND presence != ?2
                   AND (?2 = 'connected' OR NOT EXISTS (
                       SELECT 1 FROM sessions s
                       WHERE s.agent_fp = ?1 AND s.ended_at_ms IS NULL))",
                params![fp, presence.as_str(), now_ms],
            )?;
            Ok((changed > 0).then_some(now_ms))
        })
        .await
    }

    async fn set_server_tags(
        &self,
        agent: &Fingerprint,
        tags: &[String],
    ) -> Result<bool, StoreError> {
        let (fp, tags) = (agent.to_string(), tags_json(tags));
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE agents SET server_tags = ?2 WHERE fingerprint = ?1",
                params![fp, tags],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_allow_adhoc(&self, agent: &Fingerprint, allow: bool) -> Result<bool, StoreError> {
        let fp = agent.to_string();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE agents SET allow_adhoc = ?2 WHERE fingerprint = ?1",
                params![fp, allow],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn agent(&self, agent: &Fingerprint) -> Result<Option<AgentInfo>, StoreError> {
        let fp = agent.to_string();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{AGENT_COLUMNS} WHERE fingerprint = ?1"),
                [fp],
                agent_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn mark_connected_down(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE agents SET presence = 'down', presence_since_ms = ?1 WHERE presence = 'connected'",
                [now_ms],
            )?)
        })
        .await
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        self.read(|c| {
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
        protocol_version, enrollment_token_id, allowed_tags, refused_tags
     FROM agents";

/// Maps a row of [`AGENT_COLUMNS`]; a malformed stored value is a
/// conversion error naming the column, not a panic.
fn agent_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentInfo> {
    let server_tags = json_tags(r.get(12)?);
    let agent_version: String = r.get(4)?;
    let build_version: Option<String> = r.get(6)?;
    Ok(AgentInfo {
        version: host_version(build_version.as_deref(), &agent_version).to_owned(),
        fingerprint: parsed_column(r, 0)?,
        hostname: r.get(1)?,
        os: r.get(2)?,
        arch: r.get(3)?,
        agent_version,
        build_sha256: r.get(5)?,
        build_version,
        presence: parsed_column(r, 7)?,
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
        enrollment_token: r.get(18)?,
        allowed_tags: r.get::<_, Option<String>>(19)?.map(json_tags),
        refused_tags: json_tags(r.get(20)?),
    })
}
