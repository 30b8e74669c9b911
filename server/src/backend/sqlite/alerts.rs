//! The alert engine's state and outbox on SQLite: the statements the server
//! has always run (moved here from server/src/store/alerts.rs), on the
//! tables of server/src/store/alerts.sql and
//! server/src/store/alert_outbox.sql. One node, so the fence is the check
//! that the save carries the one term SQLite leads under
//! (`backend/alerts.rs`, rule 4); one writer, so the save is one immediate
//! transaction.

use outrider_alerting::api::HistoryEntry;
use rusqlite::{OptionalExtension, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::alerts::{
    AlertStore, Group, OutboxBatch, group_of, outbox_page, row_tags, sqlite_fence,
    stored_notifications,
};
use crate::backend::leader::LeaderTerm;
use crate::store::json_tags;

impl AlertStore for SqliteBackend {
    async fn alert_state(&self) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT state FROM alert_state WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    async fn save_alerts(
        &self,
        term: &LeaderTerm,
        state: String,
        batches: Vec<OutboxBatch>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        sqlite_fence(term)?;
        self.write(move |tx| {
            let mut inserted = 0;
            let mut tags_of = tx.prepare_cached(
                "SELECT hello_tags, server_tags FROM agents WHERE fingerprint = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO alert_outbox
                     (batch_key, group_key, tags, severity, notifications, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for b in &batches {
                let group = group_of(&b.group_key);
                let agent = match group {
                    Group::Agent(fp) => tags_of
                        .query_row([fp], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?
                        .map(|(hello, server): (String, String)| {
                            (json_tags(hello), json_tags(server))
                        }),
                    Group::Site(_) | Group::Other => None,
                };
                let tags = serde_json::to_string(&row_tags(group, agent))
                    .expect("a list of strings serializes");
                inserted += insert.execute(params![
                    b.batch_key,
                    b.group_key,
                    tags,
                    b.severity,
                    b.notifications,
                    now_ms
                ])?;
            }
            tx.execute(
                "INSERT INTO alert_state (id, state, saved_at_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                                                saved_at_ms = excluded.saved_at_ms",
                params![state, now_ms],
            )?;
            Ok(inserted)
        })
        .await
    }

    async fn alert_outbox(&self, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        let limit = outbox_page(limit);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, batch_key, group_key, tags, severity, notifications, created_at_ms,
                        routed_at_ms
                 FROM alert_outbox ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, batch_key, group_key, tags, severity, notifications, created, routed) =
                    row?;
                out.push(HistoryEntry {
                    id,
                    batch_key,
                    group_key,
                    tags: json_tags(tags),
                    severity,
                    notifications: stored_notifications(&notifications)?,
                    created_at_ms: created,
                    routed_at_ms: routed,
                });
            }
            Ok(out)
        })
        .await
    }
}
