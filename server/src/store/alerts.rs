//! The alert engine's persisted state and its outbox, on the server's
//! SQLite store.
//!
//! The area's interface, rules and types are `crate::backend::alerts`
//! ([`AlertStore`]); its SQLite statements live in
//! server/src/backend/sqlite/alerts.rs, its PostgreSQL ones in
//! server/src/backend/postgres/alerts.rs.
//!
//! Invariant: [`Store::save_alerts`] writes the engine state and the outbox
//! rows decided before it in one transaction. A crash then neither loses a
//! decision (the state is never ahead of the outbox) nor makes it twice: a
//! row already stored (same `batch_key`) is ignored.
//!
//! The `Store` methods below are kept, each a call of the trait on
//! the backend the server runs on ([`Store::backend`]: this file, or the shared PostgreSQL), with the clock read here and
//! the save made under the one term SQLite leads alert evaluation under
//! (`backend/leader.rs`), as server/src/store/agents.rs does: the callers
//! (the alert driver, the API, the dashboard) are unchanged.

use anyhow::Context;
use outrider_alerting::api::HistoryEntry;

use crate::backend::Backend;
use crate::backend::alerts::AlertStore;
pub use crate::backend::alerts::{MAX_OUTBOX_PAGE, OutboxBatch};
use crate::backend::leader::{Job, LeaderTerm, SQLITE_TERM};

use super::{Store, now_ms};

/// The node name of SQLite's one node in its alert evaluation term.
const SQLITE_NODE: &str = "local";

impl Store {
    /// The alerts area of this store behind its trait.
    fn alerts_area(&self) -> Backend {
        self.backend()
    }

    /// The engine state stored by the latest [`Store::save_alerts`].
    pub async fn alert_state(&self) -> anyhow::Result<Option<String>> {
        self.alerts_area()
            .alert_state()
            .await
            .context("reading the alerting state")
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
        let term = LeaderTerm {
            job: Job::AlertEvaluation,
            node: SQLITE_NODE.parse().expect("a valid node id"),
            term: SQLITE_TERM,
        };
        self.alerts_area()
            .save_alerts(&term, state, batches, now_ms())
            .await
            .context("storing the alerting state and outbox")
    }

    /// The newest `limit` outbox rows (at most [`MAX_OUTBOX_PAGE`]), newest
    /// first.
    pub async fn alert_outbox(&self, limit: u32) -> anyhow::Result<Vec<HistoryEntry>> {
        self.alerts_area()
            .alert_outbox(limit)
            .await
            .context("reading the alert outbox")
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
