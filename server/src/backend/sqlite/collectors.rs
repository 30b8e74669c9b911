//! The collectors area on SQLite: the statements the server has always run
//! (moved here from server/src/store/collectors.rs, whose `Store` methods
//! now call these), on the `collectors` table of
//! server/src/store/collectors.sql.

use outrider_protocol::api::CollectorInfo;
use rusqlite::{Connection, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::checks::{json_tags, normalize_tags};
use crate::backend::collectors::{CollectorStore, definition_json, parse_collector};

impl CollectorStore for SqliteBackend {
    async fn collectors(&self) -> Result<Vec<CollectorInfo>, StoreError> {
        self.read(load_collectors).await
    }

    async fn put_collector(&self, info: CollectorInfo, now_ms: i64) -> Result<bool, StoreError> {
        self.write(move |tx| {
            let definition = definition_json(&info.collector);
            // A list of strings always serialises.
            let tags = serde_json::to_string(&normalize_tags(&info.tags)).expect("tags serialise");
            let changed = tx.execute(
                "INSERT INTO collectors (name, definition, tags, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,
                     tags = excluded.tags, updated_at_ms = excluded.updated_at_ms
                 WHERE definition != excluded.definition OR tags != excluded.tags",
                params![info.collector.name, definition, tags, now_ms],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn delete_collector(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| Ok(tx.execute("DELETE FROM collectors WHERE name = ?1", [&name])? > 0))
            .await
    }
}

/// Every stored collector, by name (rule 2: rows that do not parse are
/// left out).
pub(super) fn load_collectors(c: &Connection) -> Result<Vec<CollectorInfo>, StoreError> {
    let mut stmt =
        c.prepare("SELECT name, definition, tags, updated_at_ms FROM collectors ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, definition, tags, updated_at_ms) = row?;
        out.extend(parse_collector(
            &name,
            &definition,
            json_tags(tags),
            updated_at_ms,
        ));
    }
    Ok(out)
}
