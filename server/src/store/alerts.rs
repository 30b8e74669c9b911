//! The alert engine's persisted state (`alerts.sql`) and its decisions, the
//! rows of `alert_outbox` (`alert_outbox.sql`, the contract with the
//! notifier).
//!
//! Invariant: [`Store::save_alerts`] writes the engine state and the outbox
//! rows decided before it in one transaction. A crash then neither loses a
//! decision (the state is never ahead of the outbox) nor makes it twice: a
//! row already stored (same `batch_key`) is ignored.

use anyhow::Context;
use outrider_alerting::api::HistoryEntry;
use rusqlite::{OptionalExtension, params};

use super::{Store, effective_tags, json_tags, now_ms};

/// Most outbox rows [`Store::alert_outbox`] returns.
pub const MAX_OUTBOX_PAGE: u32 = 1000;

/// One `alerting::Action::Notify` as the driver hands it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxBatch {
    /// `<incident_key>#<seq>` of every notification, sorted, joined by ' '.
    pub batch_key: String,
    /// `agent/<fingerprint>` or `site/<tag>`.
    pub group_key: String,
    /// The worst status among the notifications, lowercase.
    pub severity: String,
    /// JSON array of `alerting::Notification`.
    pub notifications: String,
}

impl Store {
    /// The engine state stored by the latest [`Store::save_alerts`].
    pub async fn alert_state(&self) -> anyhow::Result<Option<String>> {
        self.call(|c| {
            Ok(
                c.query_row("SELECT state FROM alert_state WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    /// Stores the engine `state` (JSON) and `batches` in one transaction.
    /// Each row's tags are the group's: the agent's effective tags (as
    /// stored now) or the site's one tag. Returns how many rows were new.
    ///
    /// Fails when the database fails; nothing is stored then.
    pub async fn save_alerts(
        &self,
        state: String,
        batches: Vec<OutboxBatch>,
    ) -> anyhow::Result<usize> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let mut inserted = 0;
            {
                let mut tags_of = tx.prepare_cached(
                    "SELECT hello_tags, server_tags FROM agents WHERE fingerprint = ?1",
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO alert_outbox
                         (batch_key, group_key, tags, severity, notifications, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for b in &batches {
                    let tags = match b.group_key.split_once('/') {
                        Some(("site", tag)) => vec![tag.to_owned()],
                        Some(("agent", fp)) => tags_of
                            .query_row([fp], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?
                            .map(|(hello, server): (String, String)| {
                                effective_tags(&json_tags(hello), &json_tags(server))
                            })
                            .unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    inserted += insert.execute(params![
                        b.batch_key,
                        b.group_key,
                        serde_json::to_string(&tags)?,
                        b.severity,
                        b.notifications,
                        now
                    ])?;
                }
            }
            tx.execute(
                "INSERT INTO alert_state (id, state, saved_at_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                                                saved_at_ms = excluded.saved_at_ms",
                params![state, now],
            )?;
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    /// The newest `limit` outbox rows (at most [`MAX_OUTBOX_PAGE`]), newest
    /// first.
    pub async fn alert_outbox(&self, limit: u32) -> anyhow::Result<Vec<HistoryEntry>> {
        let limit = limit.min(MAX_OUTBOX_PAGE);
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
                    notifications: serde_json::from_str(&notifications)
                        .context("stored notifications are not readable")?,
                    created_at_ms: created,
                    routed_at_ms: routed,
                });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{self, TEST_FP};

    fn batch(key: &str) -> OutboxBatch {
        OutboxBatch {
            batch_key: key.into(),
            group_key: format!("agent/{TEST_FP}"),
            severity: "critical".into(),
            notifications: "[]".into(),
        }
    }

    #[tokio::test]
    async fn state_and_rows_are_stored_together_and_a_row_only_once() {
        let (_dir, store, _fp) = test_support::store_with_agent("web-1").await;
        assert_eq!(store.alert_state().await.unwrap(), None);
        let n = store
            .save_alerts("{\"v\":1}".into(), vec![batch("a@1#1")])
            .await
            .unwrap();
        assert_eq!(n, 1);
        // The same decision again (a retry after an unknown outcome) is not a second row.
        let n = store
            .save_alerts("{\"v\":2}".into(), vec![batch("a@1#1"), batch("a@1#2")])
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(store.alert_state().await.unwrap().unwrap(), "{\"v\":2}");
        let rows = store.alert_outbox(10).await.unwrap();
        let keys: Vec<_> = rows.iter().map(|r| r.batch_key.as_str()).collect();
        assert_eq!(keys, ["a@1#2", "a@1#1"], "newest first");
        assert!(rows.iter().all(|r| r.routed_at_ms.is_none()));
        assert_eq!(store.alert_outbox(1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn rows_carry_the_agents_effective_tags_or_the_site_tag() {
        let (_dir, store, fp) = test_support::store_with_agent("web-1").await;
        store
            .set_server_tags(&fp, vec!["prod".into()])
            .await
            .unwrap();
        let site = OutboxBatch {
            group_key: "site/dc1".into(),
            ..batch("site@1#1")
        };
        store
            .save_alerts("{}".into(), vec![batch("a@1#1"), site])
            .await
            .unwrap();
        let rows = store.alert_outbox(10).await.unwrap();
        assert_eq!(rows[0].tags, ["dc1"]);
        assert_eq!(rows[1].tags, ["prod"]);
    }
}
