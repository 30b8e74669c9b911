//! The alert engine's state and outbox on PostgreSQL (tables of
//! migrations/0011_alerts.sql).
//!
//! Concurrency. Alert evaluation runs on the node leading
//! `Job::AlertEvaluation`, but two nodes can believe they lead for a while
//! (`backend/leader.rs`, guarantee 2). So a save runs through
//! [`PgBackend::fenced`] (`postgres/leader.rs`): it reads the job's term in
//! `leases` `FOR SHARE` in the save's own transaction and writes only under
//! the newest term, and a new leader's term bump waits for a fenced save in
//! flight; a paused old leader's save is refused with
//! [`StoreError::Fenced`] and writes neither the state nor any row. The
//! outbox stays exactly-once whoever leads: rows are unique by
//! `batch_key` (`ON CONFLICT DO NOTHING`), so a new leader deciding again
//! what its predecessor stored adds no row. Saves are one at a time (the
//! fence), so row ids grow in commit order and "newest first" is by id,
//! as on SQLite.

use outrider_alerting::api::HistoryEntry;

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::alerts::{
    AlertStore, Group, OutboxBatch, check_job, group_of, outbox_page, row_tags,
    stored_notifications,
};
use crate::backend::leader::LeaderTerm;

impl AlertStore for PgBackend {
    async fn alert_state(&self) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT state FROM alert_state WHERE id = 1")
            .await?;
        Ok(client.query_opt(&stmt, &[]).await?.map(|r| r.get(0)))
    }

    async fn save_alerts(
        &self,
        term: &LeaderTerm,
        state: String,
        batches: Vec<OutboxBatch>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        check_job(term)?;
        self.fenced(term, move |tx| {
            Box::pin(async move { write_alerts(tx, &state, &batches, now_ms).await })
        })
        .await
    }

    async fn alert_outbox(&self, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        let limit = i64::from(outbox_page(limit));
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, batch_key, group_key, tags, severity, notifications, created_at_ms,
                        routed_at_ms
                 FROM alert_outbox ORDER BY id DESC LIMIT $1",
            )
            .await?;
        client
            .query(&stmt, &[&limit])
            .await?
            .iter()
            .map(|r| {
                Ok(HistoryEntry {
                    id: r.get(0),
                    batch_key: r.get(1),
                    group_key: r.get(2),
                    tags: r.get(3),
                    severity: r.get(4),
                    notifications: stored_notifications(r.get(5))?,
                    created_at_ms: r.get(6),
                    routed_at_ms: r.get(7),
                })
            })
            .collect()
    }
}

/// Rule 1's writes, in the caller's fenced transaction `tx`: the outbox
/// rows `batches` (each with its group's tags, rule 3; a `batch_key`
/// already stored is ignored, rule 2) and the engine `state`. Returns how
/// many rows were new.
pub(super) async fn write_alerts(
    tx: &tokio_postgres::Transaction<'_>,
    state: &str,
    batches: &[OutboxBatch],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let tags_of = tx
        .prepare("SELECT hello_tags, server_tags FROM agents WHERE fingerprint = $1")
        .await?;
    let insert = tx
        .prepare(
            "INSERT INTO alert_outbox
                     (batch_key, group_key, tags, severity, notifications, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (batch_key) DO NOTHING",
        )
        .await?;
    let mut inserted = 0;
    for b in batches {
        let group = group_of(&b.group_key);
        let agent = match group {
            Group::Agent(fp) => tx
                .query_opt(&tags_of, &[&fp])
                .await?
                .map(|r| (r.get::<_, Vec<String>>(0), r.get::<_, Vec<String>>(1))),
            Group::Site(_) | Group::Other => None,
        };
        let tags = row_tags(group, agent);
        let n = tx
            .execute(
                &insert,
                &[
                    &b.batch_key,
                    &b.group_key,
                    &tags,
                    &b.severity,
                    &b.notifications,
                    &now_ms,
                ],
            )
            .await?;
        inserted += usize::try_from(n).unwrap_or(usize::MAX);
    }
    tx.execute(
        "INSERT INTO alert_state (id, state, saved_at_ms) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                                            saved_at_ms = excluded.saved_at_ms",
        &[&state, &now_ms],
    )
    .await?;
    Ok(inserted)
}
