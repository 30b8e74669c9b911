//! The update events area on PostgreSQL (tables of
//! migrations/0008_update_events.sql).
//!
//! Concurrency. The bounds (the newest `KEEP_PER_AGENT` events and
//! `KEEP_BUILDS_PER_AGENT` builds of each agent) are a delete of what lies
//! beyond the newest N after each insert. Under READ COMMITTED two
//! transactions inserting events of one agent at once (the agent's old
//! session still ingesting on node A while its new one does on node B)
//! would each count the committed rows plus only their own insert, so
//! both could keep one too many, and their prunes, deleting overlapping
//! rows in different orders, deadlock (observed: without the lock the
//! suite's concurrent test fails with "deadlock detected"; the step test
//! `postgres_one_agents_event_writes_take_turns_so_the_bound_counts_the_others`
//! shows the bound). So [`insert`] first takes a
//! transaction-scoped advisory lock of the agent (the two-key form, class
//! [`EVENTS_LOCK`] and the hash of its fingerprint; the one-key locks of
//! migrations and elections are another key space): one agent's inserts
//! take turns, each statement after the lock sees every earlier holder's
//! commit, and each prune counts the rows as the one before left them, as
//! SQLite's single writer does. Inserts of different agents wait only on a
//! hash collision, briefly. The `update_latest` upsert keeps the highest
//! id whatever the order (`WHERE excluded.id > update_latest.id`, re-checked
//! on the newest row after a lock wait).
//!
//! Results ingest: the results area (server/src/backend/postgres/results.rs)
//! calls [`insert`] on its ingest transaction, after locking the agent's
//! row, so a result and its event commit together, as on SQLite;
//! [`UpdateEventStore::record_update_event`] is the same write alone.

use outrider_protocol::api::{FailureGroup, UpdateHealth};
use outrider_protocol::{Fingerprint, UpdateEvent};

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::update_events::{
    BuildRow, FAILURE_KINDS, KEEP_BUILDS_PER_AGENT, KEEP_PER_AGENT, ROLLBACK_WINDOW_MS,
    UpdateEventStore, health, stored_count, stored_event, stored_id,
};

/// The class of the advisory locks that make one agent's event writes
/// take turns ("uevt" in ASCII).
pub(crate) const EVENTS_LOCK: i32 = 0x7565_7674;

/// Stores `event` of agent `fp`, received at `now`, in `tx` (ignored if
/// already stored) and prunes the agent's old events; true when stored.
/// Holds the agent's events lock (module comment) until `tx` ends.
pub(crate) async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    fp: &str,
    event: &UpdateEvent,
    now: i64,
) -> Result<bool, StoreError> {
    let id = stored_id(event.id);
    let event = &stored_event(event);
    let reason = &event.reason;
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .await?;
    tx.execute(&lock, &[&EVENTS_LOCK, &fp]).await?;
    let store = tx
        .prepare_cached(
            "INSERT INTO update_events (fingerprint, id, kind, at_ms, build_sha256, version,
                                        to_sha256, to_version, reason, received_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (fingerprint, id) DO NOTHING",
        )
        .await?;
    let inserted = tx
        .execute(
            &store,
            &[
                &fp,
                &id,
                &event.kind,
                &event.at_unix_ms,
                &event.build_sha256,
                &event.version,
                &event.to_sha256,
                &event.to_version,
                &reason,
                &now,
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    let latest = tx
        .prepare_cached(
            "INSERT INTO update_latest (fingerprint, build_sha256, id, kind, version, reason, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (fingerprint, build_sha256) DO UPDATE SET
                 id = excluded.id, kind = excluded.kind, version = excluded.version,
                 reason = excluded.reason, at_ms = excluded.at_ms
             WHERE excluded.id > update_latest.id",
        )
        .await?;
    tx.execute(
        &latest,
        &[
            &fp,
            &event.build_sha256.as_deref().unwrap_or(""),
            &id,
            &event.kind,
            &event.version,
            &reason,
            &event.at_unix_ms,
        ],
    )
    .await?;
    let prune_events = tx
        .prepare_cached(
            "DELETE FROM update_events WHERE fingerprint = $1 AND id < (
                 SELECT id FROM update_events WHERE fingerprint = $1
                 ORDER BY id DESC LIMIT 1 OFFSET $2)",
        )
        .await?;
    tx.execute(&prune_events, &[&fp, &(KEEP_PER_AGENT - 1)])
        .await?;
    let prune_latest = tx
        .prepare_cached(
            "DELETE FROM update_latest WHERE fingerprint = $1 AND id < (
                 SELECT id FROM update_latest WHERE fingerprint = $1
                 ORDER BY id DESC LIMIT 1 OFFSET $2)",
        )
        .await?;
    tx.execute(&prune_latest, &[&fp, &(KEEP_BUILDS_PER_AGENT - 1)])
        .await?;
    Ok(true)
}

/// A stored event id, checked (the table's `CHECK` keeps it non-negative).
fn stored_event_id(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Malformed {
        what: "update event id",
        value: value.to_string(),
    })
}

impl UpdateEventStore for PgBackend {
    async fn record_update_event(
        &self,
        agent: &Fingerprint,
        event: &UpdateEvent,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stored = insert(&tx, agent.as_str(), event, now_ms).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn update_events(&self, agent: &Fingerprint) -> Result<Vec<UpdateEvent>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, kind, at_ms, build_sha256, version, to_sha256, to_version, reason
                 FROM update_events WHERE fingerprint = $1 ORDER BY id DESC",
            )
            .await?;
        client
            .query(&stmt, &[&agent.as_str()])
            .await?
            .iter()
            .map(|r| {
                Ok(UpdateEvent {
                    id: stored_event_id(r.get(0))?,
                    kind: r.get(1),
                    at_unix_ms: r.get(2),
                    build_sha256: r.get(3),
                    version: r.get(4),
                    to_sha256: r.get(5),
                    to_version: r.get(6),
                    reason: r.get(7),
                })
            })
            .collect()
    }

    async fn update_health(&self, now_ms: i64) -> Result<UpdateHealth, StoreError> {
        let mut client = self.client().await?;
        // The three queries read one snapshot, as SQLite's reader does.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let builds_stmt = tx
            .prepare_cached(
                "SELECT channel, build_version, agent_version, build_sha256, COUNT(*)
                 FROM agents GROUP BY channel, build_version, agent_version, build_sha256",
            )
            .await?;
        let mut builds = Vec::new();
        for r in tx.query(&builds_stmt, &[]).await? {
            builds.push(BuildRow {
                channel: r.get(0),
                build_version: r.get(1),
                agent_version: r.get(2),
                build_sha256: r.get(3),
                agents: stored_count(r.get(4))?,
            });
        }
        let failing_stmt = tx
            .prepare_cached(&format!(
                "SELECT a.channel, l.version, NULLIF(l.build_sha256, ''), l.kind, l.reason,
                        COUNT(*)
                 FROM update_latest l JOIN agents a ON a.fingerprint = l.fingerprint
                 WHERE l.kind IN {FAILURE_KINDS}
                   AND (a.build_sha256 IS NULL OR a.build_sha256 <> l.build_sha256)
                 GROUP BY a.channel, l.version, l.build_sha256, l.kind, l.reason"
            ))
            .await?;
        let mut failing = Vec::new();
        for r in tx.query(&failing_stmt, &[]).await? {
            failing.push((
                r.get(0),
                FailureGroup {
                    version: r.get(1),
                    build_sha256: r.get(2),
                    kind: r.get(3),
                    reason: r.get(4),
                    agents: stored_count(r.get(5))?,
                },
            ));
        }
        let rollbacks_stmt = tx
            .prepare_cached(
                "SELECT a.channel, COUNT(*)
                 FROM update_events e JOIN agents a ON a.fingerprint = e.fingerprint
                 WHERE e.kind = 'rolled_back' AND e.at_ms >= $1
                 GROUP BY a.channel",
            )
            .await?;
        let mut rollbacks = Vec::new();
        for r in tx
            .query(&rollbacks_stmt, &[&(now_ms - ROLLBACK_WINDOW_MS)])
            .await?
        {
            rollbacks.push((r.get(0), stored_count(r.get(1))?));
        }
        tx.commit().await?;
        Ok(health(builds, failing, rollbacks))
    }
}
