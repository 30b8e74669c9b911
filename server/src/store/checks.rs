//! Check definitions, plugins' rows, and the configuration document each
//! agent receives, on the server's SQLite store.
//!
//! The area's interface, rules and types are `crate::backend::checks`
//! ([`CheckStore`]); its SQLite statements live in
//! server/src/backend/sqlite/checks.rs, its PostgreSQL ones in
//! server/src/backend/postgres/checks.rs. The `Store` methods below are
//! kept, each a call of the trait on the backend the server runs on ([`Store::backend`]: this file, or the shared PostgreSQL)
//! with the clock read here, as server/src/store/agents.rs does: the
//! callers (server/src/configs.rs, the API, the tests) are unchanged.

use anyhow::Context;
use outrider_protocol::Fingerprint;
use outrider_protocol::api::{CheckInfo, PluginInfo};

use crate::backend::Backend;
use crate::backend::checks::CheckStore;
pub use crate::backend::checks::{
    ComputedConfig, DeletePlugin, PutCheck, effective_tags, json_tags, normalize_tags,
};

use super::{Store, now_ms};

impl Store {
    /// The checks area of this store behind its trait.
    fn checks_area(&self) -> Backend {
        self.backend()
    }

    /// Every check, by name.
    pub async fn checks(&self) -> anyhow::Result<Vec<CheckInfo>> {
        self.checks_area()
            .checks()
            .await
            .context("reading the checks")
    }

    /// Creates or replaces a check (already validated).
    pub async fn put_check(&self, check: CheckInfo) -> anyhow::Result<PutCheck> {
        self.checks_area()
            .put_check(check, now_ms())
            .await
            .context("storing the check")
    }

    /// Deletes a check; false when no such check existed.
    pub async fn delete_check(&self, name: String) -> anyhow::Result<bool> {
        self.checks_area()
            .delete_check(&name)
            .await
            .context("deleting the check")
    }

    /// Every plugin, by name.
    pub async fn plugins(&self) -> anyhow::Result<Vec<PluginInfo>> {
        self.checks_area()
            .plugins()
            .await
            .context("reading the plugins")
    }

    /// Points plugin `name` at a stored file. Returns the row and the hash
    /// of the file it pointed at before, when no plugin uses that any more.
    pub async fn put_plugin(
        &self,
        name: String,
        sha256: String,
        size: u64,
    ) -> anyhow::Result<(PluginInfo, Option<String>)> {
        self.checks_area()
            .put_plugin(&name, &sha256, size, now_ms())
            .await
            .context("storing the plugin")
    }

    /// Deletes plugin `name` unless a check uses it.
    pub async fn delete_plugin(&self, name: String) -> anyhow::Result<DeletePlugin> {
        self.checks_area()
            .delete_plugin(&name)
            .await
            .context("deleting the plugin")
    }

    /// Recomputes the documents of every agent (or of `only`), storing new
    /// versions where a document changed.
    pub async fn compute_configs(
        &self,
        only: Option<Fingerprint>,
    ) -> anyhow::Result<Vec<ComputedConfig>> {
        self.checks_area()
            .compute_configs(only.as_ref())
            .await
            .context("computing the config documents")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::registration;

    async fn store_with(agents: &[(&str, &[&str])]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        for (fp, tags) in agents {
            store
                .register(registration(
                    &fp.parse().unwrap(),
                    &format!("host-{fp}"),
                    tags,
                ))
                .await
                .unwrap();
        }
        (dir, store)
    }

    fn check(name: &str, interval_secs: u32, tags: &[&str]) -> CheckInfo {
        CheckInfo {
            name: name.into(),
            command: vec!["/bin/true".into()],
            interval_secs,
            timeout_secs: 5,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            alert: None,
        }
    }

    fn versions(computed: &[ComputedConfig]) -> Vec<(String, u64, bool)> {
        let mut v: Vec<_> = computed
            .iter()
            .map(|c| (c.fingerprint.to_string(), c.config.version, c.changed))
            .collect();
        v.sort();
        v
    }

    const WEB: &str = "0000000000000000000a";
    const DB: &str = "0000000000000000000b";

    #[tokio::test]
    async fn versions_move_only_for_agents_whose_document_changed() {
        let (_dir, store) = store_with(&[(WEB, &["web"]), (DB, &["db"])]).await;
        assert_eq!(
            versions(&store.compute_configs(None).await.unwrap()),
            [(WEB.into(), 1, true), (DB.into(), 1, true)]
        );
        // Recomputing without a change moves nothing.
        assert_eq!(
            versions(&store.compute_configs(None).await.unwrap()),
            [(WEB.into(), 1, false), (DB.into(), 1, false)]
        );
        assert_eq!(
            store.put_check(check("nginx", 10, &["web"])).await.unwrap(),
            PutCheck::Changed
        );
        assert_eq!(
            store.put_check(check("nginx", 10, &["web"])).await.unwrap(),
            PutCheck::Unchanged
        );
        let computed = store.compute_configs(None).await.unwrap();
        assert_eq!(
            versions(&computed),
            [(WEB.into(), 2, true), (DB.into(), 1, false)]
        );
        let web = computed
            .iter()
            .find(|c| c.fingerprint.as_str() == WEB)
            .unwrap();
        assert_eq!(web.config.checks[0].name, "nginx");
        assert_eq!(web.config.tags, ["web"]);
        // An empty selector reaches everyone.
        store.put_check(check("load", 30, &[])).await.unwrap();
        assert_eq!(
            versions(&store.compute_configs(None).await.unwrap()),
            [(WEB.into(), 3, true), (DB.into(), 2, true)]
        );
        // Server-assigned tags count like the agent's own.
        let db: Fingerprint = DB.parse().unwrap();
        store
            .set_server_tags(&db, vec!["web".into()])
            .await
            .unwrap();
        let computed = store.compute_configs(Some(db.clone())).await.unwrap();
        assert_eq!(versions(&computed), [(DB.into(), 3, true)]);
        assert_eq!(computed[0].config.tags, ["db", "web"]);
        assert_eq!(computed[0].config.checks.len(), 2);
        assert!(store.delete_check("nginx".into()).await.unwrap());
        assert!(!store.delete_check("nginx".into()).await.unwrap());
    }

    #[tokio::test]
    async fn plugins_cannot_be_named_before_upload_or_deleted_while_used() {
        let (_dir, store) = store_with(&[(WEB, &[])]).await;
        let mut uses = check("custom", 10, &[]);
        uses.command = vec!["plugin:check_foo".into(), "-w".into(), "1".into()];
        assert_eq!(
            store.put_check(uses.clone()).await.unwrap(),
            PutCheck::UnknownPlugin("check_foo".into())
        );
        let sha = "ab".repeat(32);
        store
            .put_plugin("check_foo".into(), sha.clone(), 10)
            .await
            .unwrap();
        assert_eq!(store.put_check(uses).await.unwrap(), PutCheck::Changed);
        let computed = store.compute_configs(None).await.unwrap();
        computed[0].config.validate().unwrap();
        assert_eq!(computed[0].config.plugins[0].sha256, sha);
        assert_eq!(
            store.delete_plugin("check_foo".into()).await.unwrap(),
            DeletePlugin::InUse(vec!["custom".into()])
        );
        store.delete_check("custom".into()).await.unwrap();
        assert_eq!(
            store.delete_plugin("check_foo".into()).await.unwrap(),
            DeletePlugin::Deleted {
                orphaned: Some(sha)
            }
        );
        assert_eq!(
            store.delete_plugin("check_foo".into()).await.unwrap(),
            DeletePlugin::NotFound
        );
    }
}
