//! The update events area on SQLite: the statements the server has always
//! run (moved here from server/src/store/update_events.rs), on the tables
//! of server/src/store/update_events.sql.
//!
//! [`insert`] takes the caller's transaction: the results ingest
//! (server/src/store/results.rs) stores an event in the transaction that
//! stores its result, as it always has.
//! [`UpdateEventStore::record_update_event`] runs the same on its own
//! immediate transaction. One writer, so an insert and its pruning are
//! never interleaved with another agent's: the bounds hold.

use outrider_protocol::{Fingerprint, UpdateEvent};
use rusqlite::{Transaction, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::update_events::{
    BuildRow, FAILURE_KINDS, KEEP_BUILDS_PER_AGENT, KEEP_PER_AGENT, ROLLBACK_WINDOW_MS,
    UpdateEventStore, health, stored_count, stored_event, stored_id,
};
use outrider_protocol::api::{FailureGroup, UpdateHealth};

/// Stores `event` of agent `fp`, received at `now`, in `tx` (ignored if
/// already stored) and prunes the agent's old events. True when stored.
pub(crate) fn insert(
    tx: &Transaction<'_>,
    fp: &str,
    event: &UpdateEvent,
    now: i64,
) -> rusqlite::Result<bool> {
    let id = stored_id(event.id);
    let event = &stored_event(event);
    let reason = &event.reason;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO update_events (fingerprint, id, kind, at_ms, build_sha256, version,
                                              to_sha256, to_version, reason, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            fp,
            id,
            event.kind,
            event.at_unix_ms,
            event.build_sha256,
            event.version,
            event.to_sha256,
            event.to_version,
            reason,
            now
        ],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO update_latest (fingerprint, build_sha256, id, kind, version, reason, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (fingerprint, build_sha256) DO UPDATE SET
             id = excluded.id, kind = excluded.kind, version = excluded.version,
             reason = excluded.reason, at_ms = excluded.at_ms
         WHERE excluded.id > update_latest.id",
        params![
            fp,
            event.build_sha256.as_deref().unwrap_or(""),
            id,
            event.kind,
            event.version,
            reason,
            event.at_unix_ms
        ],
    )?;
    tx.execute(
        "DELETE FROM update_events WHERE fingerprint = ?1 AND id < (
             SELECT id FROM update_events WHERE fingerprint = ?1
             ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![fp, KEEP_PER_AGENT - 1],
    )?;
    tx.execute(
        "DELETE FROM update_latest WHERE fingerprint = ?1 AND id < (
             SELECT id FROM update_latest WHERE fingerprint = ?1
             ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![fp, KEEP_BUILDS_PER_AGENT - 1],
    )?;
    Ok(true)
}

impl UpdateEventStore for SqliteBackend {
    async fn record_update_event(
        &self,
        agent: &Fingerprint,
        event: &UpdateEvent,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (fp, event) = (agent.to_string(), event.clone());
        self.write(move |tx| Ok(insert(tx, &fp, &event, now_ms)?))
            .await
    }

    async fn update_events(&self, agent: &Fingerprint) -> Result<Vec<UpdateEvent>, StoreError> {
        let fp = agent.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, kind, at_ms, build_sha256, version, to_sha256, to_version, reason
                 FROM update_events WHERE fingerprint = ?1 ORDER BY id DESC",
            )?;
            let rows = stmt.query_map([fp], |r| {
                Ok(UpdateEvent {
                    id: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    at_unix_ms: r.get(2)?,
                    build_sha256: r.get(3)?,
                    version: r.get(4)?,
                    to_sha256: r.get(5)?,
                    to_version: r.get(6)?,
                    reason: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_health(&self, now_ms: i64) -> Result<UpdateHealth, StoreError> {
        self.read(move |c| {
            let mut builds = Vec::new();
            {
                let mut stmt = c.prepare(
                    "SELECT channel, build_version, agent_version, build_sha256, COUNT(*)
                     FROM agents GROUP BY channel, build_version, agent_version, build_sha256",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    builds.push(BuildRow {
                        channel: r.get(0)?,
                        build_version: r.get(1)?,
                        agent_version: r.get(2)?,
                        build_sha256: r.get(3)?,
                        agents: stored_count(r.get(4)?)?,
                    });
                }
            }
            let mut failing = Vec::new();
            {
                let mut stmt = c.prepare(&format!(
                    "SELECT a.channel, l.version, NULLIF(l.build_sha256, ''), l.kind, l.reason,
                            COUNT(*)
                     FROM update_latest l JOIN agents a ON a.fingerprint = l.fingerprint
                     WHERE l.kind IN {FAILURE_KINDS}
                       AND (a.build_sha256 IS NULL OR a.build_sha256 != l.build_sha256)
                     GROUP BY a.channel, l.version, l.build_sha256, l.kind, l.reason"
                ))?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    failing.push((
                        r.get(0)?,
                        FailureGroup {
                            version: r.get(1)?,
                            build_sha256: r.get(2)?,
                            kind: r.get(3)?,
                            reason: r.get(4)?,
                            agents: stored_count(r.get(5)?)?,
                        },
                    ));
                }
            }
            let mut rollbacks = Vec::new();
            {
                let mut stmt = c.prepare(
                    "SELECT a.channel, COUNT(*)
                     FROM update_events e JOIN agents a ON a.fingerprint = e.fingerprint
                     WHERE e.kind = 'rolled_back' AND e.at_ms >= ?1
                     GROUP BY a.channel",
                )?;
                let mut rows = stmt.query([now_ms - ROLLBACK_WINDOW_MS])?;
                while let Some(r) = rows.next()? {
                    rollbacks.push((r.get(0)?, stored_count(r.get(1)?)?));
                }
            }
            Ok(health(builds, failing, rollbacks))
        })
        .await
    }
}
