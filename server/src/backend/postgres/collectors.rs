//! The collectors area on PostgreSQL (table of
//! migrations/0010_collectors.sql).
//!
//! Concurrency: each write is one statement. Storing one collector on two
//! nodes at once: `INSERT … ON CONFLICT DO UPDATE` locks the row and the
//! second re-checks its `WHERE` on the first's version, so the row ends as
//! one of the two definitions, whole, and the same definition is reported
//! changed once. Documents are recomputed after each change by the checks
//! area (`postgres/checks.rs`), which reads this table after locking the
//! agents' rows.

use deadpool_postgres::GenericClient;
use outrider_protocol::api::CollectorInfo;

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::checks::normalize_tags;
use crate::backend::collectors::{CollectorStore, definition_json, parse_collector};

impl CollectorStore for PgBackend {
    async fn collectors(&self) -> Result<Vec<CollectorInfo>, StoreError> {
        let client = self.client().await?;
        load_collectors(&client).await
    }

    async fn put_collector(&self, info: CollectorInfo, now_ms: i64) -> Result<bool, StoreError> {
        let definition = definition_json(&info.collector);
        let tags = normalize_tags(&info.tags);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO collectors (name, definition, tags, updated_at_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,
                     tags = excluded.tags, updated_at_ms = excluded.updated_at_ms
                 WHERE collectors.definition IS DISTINCT FROM excluded.definition
                    OR collectors.tags IS DISTINCT FROM excluded.tags",
            )
            .await?;
        let changed = client
            .execute(&stmt, &[&info.collector.name, &definition, &tags, &now_ms])
            .await?;
        Ok(changed > 0)
    }

    async fn delete_collector(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM collectors WHERE name = $1")
            .await?;
        Ok(client.execute(&stmt, &[&name]).await? > 0)
    }
}

/// Every stored collector, by name (byte order, as SQLite sorts); rows
/// that do not parse are left out (rule 2).
pub(super) async fn load_collectors(
    c: &impl GenericClient,
) -> Result<Vec<CollectorInfo>, StoreError> {
    let rows = c
        .query(
            "SELECT name, definition, tags, updated_at_ms FROM collectors
             ORDER BY name COLLATE \"C\"",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let definition: String = r.get(1);
            parse_collector(&name, &definition, r.get(2), r.get(3))
        })
        .collect())
}
