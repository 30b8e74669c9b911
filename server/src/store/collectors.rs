//! Collector definitions, on the server's SQLite store.
//!
//! The area's interface, rules and types are `crate::backend::collectors`
//! ([`CollectorStore`]); its SQLite statements live in
//! server/src/backend/sqlite/collectors.rs, its PostgreSQL ones in
//! server/src/backend/postgres/collectors.rs. The `Store` methods below
//! are kept, each a call of the trait on the backend the server runs on
//! ([`Store::backend`]: this file, or the shared PostgreSQL) with the clock read here: the callers are unchanged.

use anyhow::Context;
use outrider_protocol::api::CollectorInfo;

use super::{Store, now_ms};
use crate::backend::Backend;
use crate::backend::collectors::CollectorStore;

impl Store {
    /// The collectors area of this store behind its trait.
    fn collectors_area(&self) -> Backend {
        self.backend()
    }

    /// Every collector, by name.
    pub async fn collectors(&self) -> anyhow::Result<Vec<CollectorInfo>> {
        self.collectors_area()
            .collectors()
            .await
            .context("reading the collectors")
    }

    /// Creates or replaces a collector (already validated); true when the
    /// stored definition changed.
    pub async fn put_collector(&self, info: CollectorInfo) -> anyhow::Result<bool> {
        self.collectors_area()
            .put_collector(info, now_ms())
            .await
            .context("storing the collector")
    }

    /// Deletes a collector; false when none of that name existed.
    pub async fn delete_collector(&self, name: String) -> anyhow::Result<bool> {
        self.collectors_area()
            .delete_collector(&name)
            .await
            .context("deleting the collector")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::collectors::tests::info;

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
