//! The agents area on PostgreSQL (table of migrations/0005_agents.sql).
//!
//! Concurrency. SQLite runs one registration at a time (one writer), so
//! each reads the agent's row, decides ([`admit`], [`split_tags`]) and
//! writes as if it were alone. Here several nodes register at once; a
//! registration gets the same result by holding the agent's row lock from
//! its first statement to its commit, so registrations of one agent queue
//! on that row and each decides on the row as the one before it left it:
//! - a pinned registration starts with `SELECT … FOR UPDATE`: under READ
//!   COMMITTED, after waiting for a concurrent writer it reads the row's
//!   newest version (or none, when a removal deleted it), so a key
//!   re-pinned or a row removed meanwhile refuses it, as the single writer
//!   would;
//! - an enrollment starts with `INSERT … ON CONFLICT (fingerprint) DO
//!   UPDATE`: two nodes inserting the same new fingerprint at once do not
//!   both insert (the second waits for the first's commit, then takes the
//!   conflict path, which locks the row), and the last to commit pins its
//!   key, as the second of two serial enrollments does;
//! - the `UPDATE` of the Hello's labels, tags and presence then runs under
//!   that lock, so no other registration's fields get mixed into the row.
//!
//! Row locks, not SERIALIZABLE: nothing has to be retried, and only
//! registrations of the same agent wait for each other. The other writes
//! are single statements; `set_presence`'s `WHERE presence <> $2` is
//! re-checked on the newest row after a wait, so of two concurrent equal
//! changes one reports the change and the other none, as in SQLite.
//!
//! The results area's share (migrations/0012_results.sql), as on SQLite:
//! an enrollment starts `acked_seq` above the agent's results still
//! stored (a removed agent coming back continues where it was, so its new
//! results are not taken for ones already stored), and a removal deletes
//! the agent's `latest_results` in its transaction, after the agent's row:
//! the results ingest (`postgres/results.rs`) locks that row first, so an
//! ingest and a removal of one agent take turns.

use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence, host_version};

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::agents::{
    Admission, Admit, AgentStore, Pinned, Registered, Registration, admit, split_tags,
    stored_presence,
};
use crate::backend::presence::stored_agent;
use crate::store::effective_tags;

/// The query behind [`agent_from_row`].
const AGENT_COLUMNS: &str = "SELECT fingerprint, hostname, os, arch, agent_version, build_sha256,
        build_version, presence, presence_since_ms, registered_at_ms, last_seen_ms,
        hello_tags, server_tags, allow_adhoc, config_version, stub_version, channel,
        protocol_version, enrollment_token_id, allowed_tags, refused_tags
     FROM agents";

/// A stored non-negative count (`acked_seq`, `config_version`), checked.
fn stored_count(what: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Malformed {
        what,
        value: value.to_string(),
    })
}

/// Maps a row of [`AGENT_COLUMNS`]; a malformed stored value is
/// [`StoreError::Malformed`].
fn agent_from_row(r: &tokio_postgres::Row) -> Result<AgentInfo, StoreError> {
    let hello_tags: Vec<String> = r.get(11);
    let server_tags: Vec<String> = r.get(12);
    let agent_version: String = r.get(4);
    let build_version: Option<String> = r.get(6);
    let protocol_version = r
        .get::<_, Option<i64>>(17)
        .map(|v| {
            u32::try_from(v).map_err(|_| StoreError::Malformed {
                what: "protocol version",
                value: v.to_string(),
            })
        })
        .transpose()?;
    Ok(AgentInfo {
        version: host_version(build_version.as_deref(), &agent_version).to_owned(),
        fingerprint: stored_agent(r.get(0))?,
        hostname: r.get(1),
        os: r.get(2),
        arch: r.get(3),
        agent_version,
        build_sha256: r.get(5),
        build_version,
        presence: stored_presence(r.get(7))?,
        presence_since_ms: r.get(8),
        registered_at_ms: r.get(9),
        last_seen_ms: r.get(10),
        tags: effective_tags(&hello_tags, &server_tags),
        server_tags,
        allow_adhoc: r.get(13),
        config_version: stored_count("config version", r.get(14))?,
        stub_version: r.get(15),
        channel: r.get(16),
        protocol_version,
        enrollment_token: r.get(18),
        allowed_tags: r.get(19),
        refused_tags: r.get(20),
    })
}

impl AgentStore for PgBackend {
    async fn pinned_key(&self, agent: &Fingerprint) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT public_key FROM agents WHERE fingerprint = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[&agent.as_str()])
            .await?
            .map(|r| r.get(0)))
    }

    async fn register(
        &self,
        reg: Registration,
        now_ms: i64,
    ) -> Result<Option<Registered>, StoreError> {
        let fp = reg.fingerprint.as_str();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A pinned registration locks the row it decides on; an enrollment
        // is decided by its token alone and locks the row with its upsert
        // below (module comment).
        let stored = match &reg.admission {
            Admission::Pinned => {
                let lock = tx
                    .prepare_cached(
                        "SELECT public_key, allowed_tags FROM agents WHERE fingerprint = $1
                         FOR UPDATE",
                    )
                    .await?;
                tx.query_opt(&lock, &[&fp]).await?.map(|r| Pinned {
                    public_key: r.get(0),
                    allowed_tags: r.get(1),
                })
            }
            Admission::Enrolled(_) => None,
        };
        let allowed = match admit(&reg.admission, &reg.public_key, stored.as_ref()) {
            Admit::Allowed { allowed } => allowed,
            // Dropping the transaction rolls it back: nothing was written.
            Admit::Refused => return Ok(None),
        };
        let (kept, refused) = split_tags(&reg.tags, allowed.as_deref());
        if let Admission::Enrolled(grant) = &reg.admission {
            let pin = tx
                .prepare_cached(
                    "INSERT INTO agents (fingerprint, public_key, hostname, os, arch, agent_version,
                                         presence, presence_since_ms, registered_at_ms, last_seen_ms,
                                         enrollment_token_id, allowed_tags, acked_seq)
                     VALUES ($1, $2, '', '', '', '', 'connected', $3, $3, $3, $4, $5,
                             -- A removed agent enrolling again continues
                             -- above the results still stored for it (the
                             -- server's own have negative seqs).
                             COALESCE((SELECT MAX(seq) FROM results
                                       WHERE fingerprint = $1 AND seq > 0), 0))
                     ON CONFLICT (fingerprint) DO UPDATE SET
                         public_key = excluded.public_key,
                         enrollment_token_id = excluded.enrollment_token_id,
                         allowed_tags = excluded.allowed_tags",
                )
                .await?;
            tx.execute(&pin, &[&fp, &reg.public_key, &now_ms, &grant.id, &allowed])
                .await?;
        }
        let update = tx
            .prepare_cached(
                "UPDATE agents SET
                     hostname = $2, os = $3, arch = $4, agent_version = $5, last_seen_ms = $6,
                     build_sha256 = $7, build_version = $8, hello_tags = $9, refused_tags = $10,
                     stub_version = $11, channel = $12, protocol_version = $13,
                     presence_since_ms = CASE WHEN presence = 'connected' THEN presence_since_ms
                                              ELSE $6 END,
                     presence = 'connected'
                 WHERE fingerprint = $1
                 RETURNING acked_seq",
            )
            .await?;
        let row = tx
            .query_opt(
                &update,
                &[
                    &fp,
                    &reg.hostname,
                    &reg.os,
                    &reg.arch,
                    &reg.agent_version,
                    &now_ms,
                    &reg.build_sha256,
                    &reg.build_version,
                    &kept,
                    &refused,
                    &reg.stub_version,
                    &reg.channel,
                    &i64::from(reg.protocol_version),
                ],
            )
            .await?;
        // This transaction holds the row's lock (taken above), so the row
        // is there; were it not, refusing writes nothing.
        let Some(row) = row else {
            return Ok(None);
        };
        let acked_seq = stored_count("acked sequence", row.get(0))?;
        tx.commit().await?;
        Ok(Some(Registered {
            acked_seq,
            refused_tags: refused,
        }))
    }

    async fn remove_agent(&self, agent: &Fingerprint) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The agent's row first: the lock order of the results ingest.
        let stmt = tx
            .prepare_cached("DELETE FROM agents WHERE fingerprint = $1")
            .await?;
        let removed = tx.execute(&stmt, &[&agent.as_str()]).await? > 0;
        let latest = tx
            .prepare_cached("DELETE FROM latest_results WHERE fingerprint = $1")
            .await?;
        tx.execute(&latest, &[&agent.as_str()]).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn set_presence(
        &self,
        agent: &Fingerprint,
        presence: Presence,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE agents SET presence = $2, presence_since_ms = $3
                 WHERE fingerprint = $1 AND presence <> $2
                   AND ($2 = 'connected' OR NOT EXISTS (
                       SELECT 1 FROM sessions s
                       WHERE s.agent_fp = $1 AND s.ended_at_ms IS NULL))",
            )
            .await?;
        let changed = client
            .execute(&stmt, &[&agent.as_str(), &presence.as_str(), &now_ms])
            .await?;
        Ok((changed > 0).then_some(now_ms))
    }

    async fn set_server_tags(
        &self,
        agent: &Fingerprint,
        tags: &[String],
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("UPDATE agents SET server_tags = $2 WHERE fingerprint = $1")
            .await?;
        Ok(client.execute(&stmt, &[&agent.as_str(), &tags]).await? > 0)
    }

    async fn set_allow_adhoc(&self, agent: &Fingerprint, allow: bool) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("UPDATE agents SET allow_adhoc = $2 WHERE fingerprint = $1")
            .await?;
        Ok(client.execute(&stmt, &[&agent.as_str(), &allow]).await? > 0)
    }

    async fn agent(&self, agent: &Fingerprint) -> Result<Option<AgentInfo>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{AGENT_COLUMNS} WHERE fingerprint = $1"))
            .await?;
        client
            .query_opt(&stmt, &[&agent.as_str()])
            .await?
            .as_ref()
            .map(agent_from_row)
            .transpose()
    }

    async fn mark_connected_down(&self, now_ms: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE agents SET presence = 'down', presence_since_ms = $1
                 WHERE presence = 'connected'",
            )
            .await?;
        let n = client.execute(&stmt, &[&now_ms]).await?;
        // At most the number of rows, which fits any platform's usize.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        let client = self.client().await?;
        // Byte order, as SQLite sorts, whatever the database's collation.
        let stmt = client
            .prepare_cached(&format!(
                "{AGENT_COLUMNS} ORDER BY hostname COLLATE \"C\", fingerprint COLLATE \"C\""
            ))
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }
}
