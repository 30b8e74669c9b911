//! The shared cache of computed agent configuration documents.
//!
//! Documents are computed by the store (see `store::checks`) and kept here
//! as `Arc`s, so ten thousand sessions share one copy each and nobody reads
//! SQLite to push or serve a config. After every change of checks, plugins,
//! tags or permissions [`refresh`] recomputes, and only the agents whose
//! document version moved are woken and get a `config` event.
//!
//! Refreshes are serialised by an async mutex so a slow older computation
//! can never overwrite the cache entry of a newer one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outrider_protocol::api::Event;
use outrider_protocol::{
    AgentConfig, COLLECTOR_CHECK_PREFIX, Fingerprint, MAX_MESSAGE_BYTES, ServerMessage,
};

use crate::AppState;
use crate::ingest::names::REMOVED_GRACE_MS;

/// Computed documents by agent.
#[derive(Debug, Default)]
pub struct ConfigCache {
    docs: Mutex<HashMap<Fingerprint, Arc<AgentConfig>>>,
    /// Checks that left each agent's document less than
    /// [`REMOVED_GRACE_MS`] ago, with when (Unix ms): results of a check
    /// just removed or renamed are still accepted while the agent catches
    /// up (`ingest/names.rs`). Bounded by what operators remove in that
    /// window.
    removed: Mutex<HashMap<Fingerprint, Vec<(String, i64)>>>,
    /// Held shared by the refresh of one agent (each hello: they run side
    /// by side, or a fleet connecting at once would queue its hellos past
    /// their timeouts), alone by a refresh of every agent.
    refreshing: tokio::sync::RwLock<()>,
}

impl ConfigCache {
    /// The current document of `fp`, if computed.
    pub fn get(&self, fp: &Fingerprint) -> Option<Arc<AgentConfig>> {
        self.docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fp)
            .cloned()
    }

    /// The checks that left `fp`'s document recently, with when.
    pub fn removed(&self, fp: &Fingerprint) -> Vec<(String, i64)> {
        self.removed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fp)
            .cloned()
            .unwrap_or_default()
    }

    /// Drops the document of a removed agent, and the checks that recently
    /// left it: enrolled again, it starts from its new document alone.
    pub fn forget(&self, fp: &Fingerprint) {
        self.docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(fp);
        self.removed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(fp);
    }
}

/// The check names an agent with `doc` reports results under: its checks,
/// and `outrider.collector.<name>` for each of its collectors.
pub fn reported_names(doc: &AgentConfig) -> impl Iterator<Item = String> + '_ {
    let checks = doc.checks.iter().map(|k| k.name.clone());
    let collectors = doc
        .collectors
        .iter()
        .filter_map(|c| c.name())
        .map(|n| format!("{COLLECTOR_CHECK_PREFIX}{n}"));
    checks.chain(collectors)
}

/// Whether an agent with `doc` reports results under `name` (see
/// [`reported_names`]).
pub fn reports_under(doc: &AgentConfig, name: &str) -> bool {
    doc.checks.iter().any(|k| k.name == name)
        || name
            .strip_prefix(COLLECTOR_CHECK_PREFIX)
            .is_some_and(|n| doc.collectors.iter().any(|c| c.name() == Some(n)))
}

/// [`refresh`] after a change made through this node (checks, plugins,
/// collectors, an agent's tags or permissions), then, with several nodes,
/// tells the others to refresh too (`crate::relay`), so an agent connected
/// to any node gets its new document.
pub async fn changed(
    state: &AppState,
    only: Option<&Fingerprint>,
) -> anyhow::Result<Option<Arc<AgentConfig>>> {
    let found = refresh(state, only).await?;
    if let Some(bus) = &state.bus {
        crate::relay::config_changed(bus).await;
    }
    Ok(found)
}

/// Recomputes the documents of every agent (or only `only`), updates the
/// cache, wakes the sessions whose document changed and publishes a
/// `config` event for each. Returns `only`'s document when asked for one.
///
/// Fails when the store fails; the cache then keeps the previous documents.
pub async fn refresh(
    state: &AppState,
    only: Option<&Fingerprint>,
) -> anyhow::Result<Option<Arc<AgentConfig>>> {
    // Held to the end of the refresh (see `ConfigCache::refreshing`).
    let _one = if only.is_some() {
        Some(state.configs.refreshing.read().await)
    } else {
        None
    };
    let _all = if only.is_none() {
        Some(state.configs.refreshing.write().await)
    } else {
        None
    };
    let computed = state.store.compute_configs(only.cloned()).await?;
    let mut changed = Vec::new();
    let mut found = None;
    let now = crate::store::now_ms();
    {
        // Lock order: `docs`, then `removed`.
        let mut docs = state.configs.docs.lock().unwrap_or_else(|p| p.into_inner());
        let mut removed = state
            .configs
            .removed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        removed.retain(|_, names| {
            names.retain(|(_, at)| now.saturating_sub(*at) <= REMOVED_GRACE_MS);
            !names.is_empty()
        });
        for mut c in computed {
            // Two refreshes of one agent may finish out of order (versions
            // only grow): the older document never replaces the newer.
            if docs
                .get(&c.fingerprint)
                .is_some_and(|old| old.version > c.config.version)
            {
                continue;
            }
            // Changed by this computation, or by another node's (several
            // nodes share the store): this node's sessions were not told.
            c.changed |= docs
                .get(&c.fingerprint)
                .is_some_and(|old| old.version != c.config.version);
            if let Err(e) = c.config.validate() {
                // Cannot happen while the store keeps its plugin rules; keep
                // the agent on its previous document rather than break it.
                tracing::error!(fingerprint = %c.fingerprint, "computed config is invalid: {e}");
                continue;
            }
            // Only a changed document can have grown past the limit.
            let len = if c.changed {
                ServerMessage::Config(c.config.clone()).encode().len()
            } else {
                0
            };
            if len > MAX_MESSAGE_BYTES {
                // The agent would refuse the frame; keep it on its previous
                // document and tell the operator.
                tracing::error!(
                    fingerprint = %c.fingerprint,
                    bytes = len,
                    "the agent's config exceeds the {MAX_MESSAGE_BYTES}-byte message limit; it keeps its previous config until checks are removed"
                );
                continue;
            }
            let doc = Arc::new(c.config);
            if Some(&c.fingerprint) == only {
                found = Some(doc.clone());
            }
            if c.changed {
                changed.push((c.fingerprint.clone(), doc.version));
            }
            if let Some(old) = docs.get(&c.fingerprint)
                && c.changed
            {
                let gone = reported_names(old).filter(|n| !reports_under(&doc, n));
                let gone: Vec<String> = gone.collect();
                let names = removed.entry(c.fingerprint.clone()).or_default();
                names.retain(|(n, _)| !reports_under(&doc, n));
                names.extend(gone.into_iter().map(|n| (n, now)));
                if names.is_empty() {
                    removed.remove(&c.fingerprint);
                }
            }
            docs.insert(c.fingerprint, doc);
        }
    }
    for (fp, version) in changed {
        state.sessions.notify_config(&fp);
        state.events.publish(Event::Config { agent: fp, version });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckSpec, CollectorEntry, CollectorSpecWire, KindWire};

    use super::*;

    #[test]
    fn an_agent_reports_under_its_checks_and_its_collectors() {
        let doc = AgentConfig {
            checks: vec![CheckSpec {
                name: "load".into(),
                command: vec!["/bin/true".into()],
                interval_secs: 60,
                timeout_secs: 5,
            }],
            collectors: vec![
                CollectorEntry::Known(CollectorSpecWire {
                    name: "app".into(),
                    kind: KindWire::Command,
                    argv: Some(vec!["/x".into()]),
                    interval_secs: None,
                    plugins: None,
                    raw_config: None,
                    graphite_port: None,
                }),
                CollectorEntry::Unparsed(serde_json::json!({"name": "new", "kind": "future"})),
            ],
            ..AgentConfig::default()
        };
        let table = [
            ("load", true),
            ("outrider.collector.app", true),
            ("outrider.collector.new", true),
            ("outrider.collector.other", false),
            ("app", false),
            ("outrider.collector.", false),
            ("loadx", false),
        ];
        for (name, want) in table {
            assert_eq!(reports_under(&doc, name), want, "{name}");
        }
        let all: Vec<String> = reported_names(&doc).collect();
        assert_eq!(
            all,
            ["load", "outrider.collector.app", "outrider.collector.new"]
        );
        assert!(all.iter().all(|n| reports_under(&doc, n)));
    }
}
