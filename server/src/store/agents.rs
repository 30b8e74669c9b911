//! Agents: registration with key pinning, removal, and presence, on the
//! server's SQLite store.
//!
//! The area's interface, rules and types are `crate::backend::agents`
//! ([`AgentStore`]); its SQLite statements live in
//! server/src/backend/sqlite/agents.rs, its PostgreSQL ones in
//! server/src/backend/postgres/agents.rs.
//!
//! The `Store` methods below are kept, each a one-line call of the trait
//! on the backend the server runs on ([`Store::backend`]: this file, or the shared PostgreSQL), with the clock read here.
//! That is the smaller correct change: the server's many callers (the
//! agent sessions, the API, the dashboard, alerting, the exporters and the
//! tests) keep calling `Store` with `anyhow` errors, unchanged, while the
//! statements exist once, behind the trait both backends implement, so
//! what the SQLite backend is tested to do is what the server runs.

use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence};

use crate::backend::Backend;
use crate::backend::agents::AgentStore;
pub use crate::backend::agents::{Admission, Registered, Registration, split_tags};

use super::{Store, now_ms};

impl Store {
    /// The agents area of this store behind its trait.
    fn agents_area(&self) -> Backend {
        self.backend()
    }

    /// The pinned public key (hex) of `fingerprint`, if the agent is known.
    pub async fn pinned_key(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<String>> {
        Ok(self.agents_area().pinned_key(fingerprint).await?)
    }

    /// Records a successful registration and marks the agent connected
    /// ([`AgentStore::register`]). `None`: the pinned agent's row is gone
    /// or holds another key (removed since it authenticated).
    pub async fn register(&self, reg: Registration) -> anyhow::Result<Option<Registered>> {
        Ok(self.agents_area().register(reg, now_ms()).await?)
    }

    /// Removes agent `fingerprint`: unpins its key (coming back needs an
    /// enrollment token) and drops its latest results, so it no longer
    /// shows among the checks; older results and metrics age out with
    /// retention. False when no such agent exists.
    pub async fn remove_agent(&self, fingerprint: &Fingerprint) -> anyhow::Result<bool> {
        Ok(self.agents_area().remove_agent(fingerprint).await?)
    }

    /// Sets the presence of an agent. Returns the time of the change, or
    /// `None` when it already was in that state.
    pub async fn set_presence(
        &self,
        fingerprint: &Fingerprint,
        presence: Presence,
    ) -> anyhow::Result<Option<i64>> {
        Ok(self
            .agents_area()
            .set_presence(fingerprint, presence, now_ms())
            .await?)
    }

    /// Replaces the server-assigned tags of an agent; false when unknown.
    pub async fn set_server_tags(
        &self,
        fingerprint: &Fingerprint,
        tags: Vec<String>,
    ) -> anyhow::Result<bool> {
        Ok(self
            .agents_area()
            .set_server_tags(fingerprint, &tags)
            .await?)
    }

    /// Allows or forbids ad-hoc scripts on an agent; false when unknown.
    pub async fn set_allow_adhoc(
        &self,
        fingerprint: &Fingerprint,
        allow: bool,
    ) -> anyhow::Result<bool> {
        Ok(self
            .agents_area()
            .set_allow_adhoc(fingerprint, allow)
            .await?)
    }

    /// One agent, if known.
    pub async fn agent(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<AgentInfo>> {
        Ok(self.agents_area().agent(fingerprint).await?)
    }

    /// At startup: agents that were connected to the previous server process
    /// are not connected to this one until they come back.
    pub async fn mark_connected_down(&self) -> anyhow::Result<usize> {
        Ok(self.agents_area().mark_connected_down(now_ms()).await?)
    }

    /// Every agent, ordered by hostname then fingerprint.
    pub async fn agents(&self) -> anyhow::Result<Vec<AgentInfo>> {
        Ok(self.agents_area().agents().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pinned_admission_cannot_bring_back_a_removed_agent() {
        use crate::store::test_support::{registration, store_with_agent};
        let (_dir, store, fp) = store_with_agent("web-1").await;
        let pinned = Registration {
            admission: Admission::Pinned,
            ..registration(&fp, "web-1", &["db"])
        };
        // Known agent: updated; its token allowed any tag.
        let registered = store.register(pinned.clone()).await.unwrap().unwrap();
        assert_eq!(registered.refused_tags, Vec::<String>::new());
        // Another key under the same fingerprint: not this agent.
        let forged = Registration {
            public_key: "11".repeat(32),
            ..pinned.clone()
        };
        assert_eq!(store.register(forged).await.unwrap(), None);
        // Removed (say, while this session authenticated): no row again.
        assert!(store.remove_agent(&fp).await.unwrap());
        assert_eq!(store.register(pinned).await.unwrap(), None);
        assert_eq!(store.pinned_key(&fp).await.unwrap(), None);
        assert!(!store.remove_agent(&fp).await.unwrap());
    }
}
