//! The stub's update outcomes per agent (`update_events.sql`), and the
//! per-channel update health that `outrider release status` shows.
//!
//! The area's interface, rules and types are `crate::backend::update_events`
//! ([`UpdateEventStore`]); its SQLite statements live in
//! server/src/backend/sqlite/update_events.rs, its PostgreSQL ones in
//! server/src/backend/postgres/update_events.rs.
//!
//! Events arrive on `outrider.update` results and are stored in the same
//! transaction as the result (the results area's ingest calls the
//! backend's `insert` on its transaction), once per `(agent, id)`.
//! Retention is bounded: the newest `KEEP_PER_AGENT` events and the
//! newest `KEEP_BUILDS_PER_AGENT` per-build summaries of each agent.
//! [`Store::update_health`] is a one-line call of the trait on
//! [`SqliteBackend`] over this same store, with the clock read here.

use outrider_protocol::api::UpdateHealth;

use crate::backend::update_events::UpdateEventStore;

use super::{Store, now_ms};

impl Store {
    /// Per channel: agents per build, agents failing to take a build they
    /// do not run grouped by build, kind and reason, and rollbacks of the
    /// last 24 hours. Three grouped queries, whatever the fleet size.
    pub async fn update_health(&self) -> anyhow::Result<UpdateHealth> {
        Ok(self.backend().update_health(now_ms()).await?)
    }
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckResult, CheckState, UpdateEvent};

    use crate::backend::update_events::{KEEP_BUILDS_PER_AGENT, KEEP_PER_AGENT, MAX_REASON_BYTES};
    use crate::store::test_support::store_with_agent;

    #[tokio::test]
    async fn retention_keeps_the_newest_events_of_each_agent() {
        let (_dir, store, fp) = store_with_agent("web-1").await;
        let results: Vec<CheckResult> = (1..=150u64)
            .map(|i| CheckResult {
                seq: i,
                check: "outrider.update".into(),
                state: CheckState::Warning,
                summary: format!("event {i}"),
                long_output: String::new(),
                perfdata: Vec::new(),
                unknown_perfdata: Vec::new(),
                started_at_ms: 1,
                duration_ms: 0,
                update_event: Some(Box::new(UpdateEvent {
                    id: i,
                    kind: "refused".into(),
                    at_unix_ms: 1,
                    build_sha256: Some(format!("{:064x}", i % 30)),
                    version: Some(format!("1.{i}")),
                    to_sha256: None,
                    to_version: None,
                    reason: "x".repeat(MAX_REASON_BYTES + 10),
                })),
            })
            .collect();
        store.ingest(&fp, results).await.unwrap();
        let (events, oldest, builds, longest): (i64, i64, i64, i64) = store
            .call(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT COUNT(*) FROM update_events), (SELECT MIN(id) FROM update_events),
                            (SELECT COUNT(*) FROM update_latest),
                            (SELECT MAX(LENGTH(reason)) FROM update_events)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!((events, oldest), (KEEP_PER_AGENT, 150 - KEEP_PER_AGENT + 1));
        assert_eq!(builds, KEEP_BUILDS_PER_AGENT);
        assert_eq!(longest, MAX_REASON_BYTES as i64);
    }
}
