//! Collector definitions: stored like checks, assigned by the same tag
//! selector (an agent runs a collector when its tags include every tag of
//! the collector's selector), and carried in each agent's config document
//! (`checks.rs`, `AgentConfig::collectors`).

use outrider_protocol::api::CollectorInfo;
use outrider_protocol::{CollectorEntry, CollectorSpecWire};
use rusqlite::{Connection, params};

use super::{Store, now_ms};
use crate::store::normalize_tags;

impl Store {
    /// Every collector, by name.
    pub async fn collectors(&self) -> anyhow::Result<Vec<CollectorInfo>> {
        self.read(load_collectors).await
    }

    /// Creates or replaces a collector (already validated); true when the
    /// stored definition changed.
    pub async fn put_collector(&self, info: CollectorInfo) -> anyhow::Result<bool> {
        self.call(move |c| {
            let definition = serde_json::to_string(&info.collector)?;
            let tags = serde_json::to_string(&normalize_tags(&info.tags))?;
            let changed = c.execute(
                "INSERT INTO collectors (name, definition, tags, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,
                     tags = excluded.tags, updated_at_ms = excluded.updated_at_ms
                 WHERE definition != excluded.definition OR tags != excluded.tags",
                params![info.collector.name, definition, tags, now_ms()],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// Deletes a collector; false when none of that name existed.
    pub async fn delete_collector(&self, name: String) -> anyhow::Result<bool> {
        self.call(move |c| Ok(c.execute("DELETE FROM collectors WHERE name = ?1", [&name])? > 0))
            .await
    }
}

/// Every stored collector, by name. A row whose definition no longer
/// parses (written by a newer server) is left out with a warning rather
/// than failing every agent's document.
pub(super) fn load_collectors(c: &Connection) -> anyhow::Result<Vec<CollectorInfo>> {
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
        match serde_json::from_str::<CollectorSpecWire>(&definition) {
            Ok(collector) => out.push(CollectorInfo {
                collector,
                tags: super::checks::json_tags(tags),
                updated_at_ms,
            }),
            Err(e) => {
                tracing::warn!(collector = %name, "stored definition does not parse: {e}; left out")
            }
        }
    }
    Ok(out)
}

/// The collectors an agent with `tags` runs, in name order.
pub(super) fn selected(collectors: &[CollectorInfo], tags: &[String]) -> Vec<CollectorEntry> {
    collectors
        .iter()
        .filter(|c| c.tags.iter().all(|t| tags.contains(t)))
        .map(|c| CollectorEntry::Known(c.collector.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_protocol::KindWire;

    fn info(name: &str, tags: &[&str]) -> CollectorInfo {
        CollectorInfo {
            collector: CollectorSpecWire {
                name: name.into(),
                kind: KindWire::Command,
                argv: Some(vec!["/usr/bin/true".into()]),
                interval_secs: None,
                plugins: None,
                raw_config: None,
                graphite_port: None,
            },
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            updated_at_ms: 0,
        }
    }

    #[test]
    fn collectors_are_selected_by_tags_like_checks() {
        let all = [
            info("every", &[]),
            info("web", &["web"]),
            info("both", &["db", "web"]),
        ];
        let s = |tags: &[&str]| -> Vec<String> {
            let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
            selected(&all, &tags)
                .iter()
                .filter_map(|e| e.name().map(str::to_owned))
                .collect()
        };
        let table: [(&[&str], &[&str]); 4] = [
            (&[], &["every"]),
            (&["web"], &["every", "web"]),
            (&["db", "web"], &["every", "web", "both"]),
            (&["db"], &["every"]),
        ];
        for (tags, want) in table {
            assert_eq!(s(tags), want, "{tags:?}");
        }
    }

    #[tokio::test]
    async fn definitions_are_stored_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        assert!(
            store
                .put_collector(info("app", &["web", "a"]))
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_collector(info("app", &["a", "web"]))
                .await
                .unwrap(),
            "same definition"
        );
        let listed = store.collectors().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].tags, ["a", "web"]);
        assert!(store.put_collector(info("app", &["b"])).await.unwrap());
        assert!(store.delete_collector("app".into()).await.unwrap());
        assert!(!store.delete_collector("app".into()).await.unwrap());
        assert!(store.collectors().await.unwrap().is_empty());
    }
}
