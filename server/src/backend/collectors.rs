//! Collector definitions: stored like checks, assigned by the same tag
//! selector (an agent runs a collector when its tags include every tag of
//! the collector's selector, [`super::checks::selects`]), and carried in
//! each agent's config document (`backend/checks.rs`,
//! `AgentConfig::collectors`).
//!
//! Table `collectors` (server/src/store/collectors.sql for SQLite,
//! server/src/backend/postgres/migrations/0010_collectors.sql for
//! PostgreSQL): one row per collector name, holding its definition as
//! JSON, its normalised tag selector and when it last changed.
//!
//! Rules (the shared suite in `backend/collector_tests.rs` checks both
//! backends):
//! 1. Storing a definition identical to the stored one (same JSON, same
//!    selector once normalised) changes nothing and reports false, so no
//!    document is recomputed for it.
//! 2. A stored row whose definition no longer parses (written by a newer
//!    server) is left out with a warning rather than failing every
//!    agent's document ([`parse_collector`]).

use std::future::Future;

use outrider_protocol::api::CollectorInfo;
use outrider_protocol::{CollectorEntry, CollectorSpecWire};

use super::checks::selects;
use super::{Backend, StoreError, dispatch};

/// The collectors an agent with `tags` runs, in the order given (name
/// order as stored).
pub fn selected(collectors: &[CollectorInfo], tags: &[String]) -> Vec<CollectorEntry> {
    collectors
        .iter()
        .filter(|c| selects(&c.tags, tags))
        .map(|c| CollectorEntry::Known(c.collector.clone()))
        .collect()
}

/// Rule 2: a stored row as a [`CollectorInfo`], `None` (with a warning)
/// when its definition does not parse.
pub fn parse_collector(
    name: &str,
    definition: &str,
    tags: Vec<String>,
    updated_at_ms: i64,
) -> Option<CollectorInfo> {
    match serde_json::from_str::<CollectorSpecWire>(definition) {
        Ok(collector) => Some(CollectorInfo {
            collector,
            tags,
            updated_at_ms,
        }),
        Err(e) => {
            tracing::warn!(collector = %name, "stored definition does not parse: {e}; left out");
            None
        }
    }
}

/// The stored JSON of a definition.
pub fn definition_json(collector: &CollectorSpecWire) -> String {
    // A definition of strings, numbers and lists always serialises.
    serde_json::to_string(collector).expect("a collector definition serialises")
}

/// The collectors area of the store. Times are Unix milliseconds given by
/// the caller.
pub trait CollectorStore {
    /// Every collector, by name.
    fn collectors(&self) -> impl Future<Output = Result<Vec<CollectorInfo>, StoreError>> + Send;

    /// Creates or replaces a collector (already validated) at `now_ms`;
    /// true when the stored definition changed (rule 1).
    fn put_collector(
        &self,
        info: CollectorInfo,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes a collector; false when none of that name existed.
    fn delete_collector(&self, name: &str)
    -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl CollectorStore for Backend {
    async fn collectors(&self) -> Result<Vec<CollectorInfo>, StoreError> {
        dispatch!(self, b => b.collectors())
    }

    async fn put_collector(&self, info: CollectorInfo, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, b => b.put_collector(info, now_ms))
    }

    async fn delete_collector(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, b => b.delete_collector(name))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use outrider_protocol::KindWire;

    /// A command collector `name` for agents with `tags`.
    pub(crate) fn info(name: &str, tags: &[&str]) -> CollectorInfo {
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

    #[test]
    fn a_definition_that_does_not_parse_is_left_out() {
        let good = definition_json(&info("app", &[]).collector);
        assert!(parse_collector("app", &good, Vec::new(), 1).is_some());
        assert!(parse_collector("app", "{\"kind\":\"future\"}", Vec::new(), 1).is_none());
    }
}
