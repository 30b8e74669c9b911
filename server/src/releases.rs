//! The release repository this node serves: [`Releases`], the directory
//! store (`<data-dir>/releases`, one node) or PostgreSQL (a shared
//! `--database`: every node answers every update request), chosen once at
//! start-up (docs/architecture.md, "Release artefacts across nodes").
//!
//! Both implement update-server's [`ArtefactStore`]; [`Releases`]
//! dispatches by matching its closed [`ReleaseBackend`], as
//! [`crate::backend::Backend`] does (async trait methods are not
//! object-safe). It also carries the manifest hook (update nudges): on
//! either store it runs after a manifest is newly stored through this node,
//! and [`Releases::manifest_stored`] runs it for a manifest another node
//! stored, once that node's announcement arrives.
//!
//! On PostgreSQL, blobs no manifest references are collected by one node
//! at a time ([`collect_garbage`], the singleton
//! [`Job::ReleaseGc`](crate::backend::leader::Job::ReleaseGc)). The
//! directory store is never collected by the server, as before.

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use outrider_signing::{Channel, Sha256, now_unix};
use outrider_update_server::{
    ArtefactStore, BlobStream, BuildInfo, ChannelInfo, Error, GcReport, ManifestHook, ReleaseStore,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::AppState;
use crate::backend::PgArtefacts;

/// Where this node's release artefacts are stored.
#[derive(Clone, Debug)]
pub enum ReleaseBackend {
    /// `<data-dir>/releases`: one node.
    Directory(Arc<ReleaseStore>),
    /// The shared `--database`.
    Postgres(PgArtefacts),
}

/// The release repository of this node; cheap to clone.
#[derive(Clone)]
pub struct Releases {
    backend: ReleaseBackend,
    /// Called with each newly stored manifest ([`Releases::manifest_stored`]).
    on_manifest: Arc<OnceLock<ManifestHook>>,
}

impl std::fmt::Debug for Releases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Releases")
            .field("backend", &self.backend)
            .field(
                "on_manifest",
                &self.on_manifest.get().map(|_| "ManifestHook"),
            )
            .finish()
    }
}

impl Releases {
    /// The directory store `store`. Its own hook (called by
    /// [`ReleaseStore::put_manifest`] after its lock is released) runs this
    /// one's, so a manifest stored directly on `store` is announced too.
    pub fn directory(store: ReleaseStore) -> Releases {
        let on_manifest: Arc<OnceLock<ManifestHook>> = Arc::default();
        store.on_manifest_stored({
            let on_manifest = on_manifest.clone();
            Box::new(move |channel, sequence| {
                if let Some(hook) = on_manifest.get() {
                    hook(channel, sequence);
                }
            })
        });
        Releases {
            backend: ReleaseBackend::Directory(Arc::new(store)),
            on_manifest,
        }
    }

    /// The PostgreSQL store `store`.
    pub fn postgres(store: PgArtefacts) -> Releases {
        Releases {
            backend: ReleaseBackend::Postgres(store),
            on_manifest: Arc::default(),
        }
    }

    /// The store behind.
    pub fn backend(&self) -> &ReleaseBackend {
        &self.backend
    }

    /// Sets the hook called with the channel and sequence of each newly
    /// stored manifest (publish, promote, rollout, pause and rollback all
    /// store one). It must not block. Only the first call has an effect
    /// (returns false for later ones).
    pub fn set_manifest_hook(&self, hook: ManifestHook) -> bool {
        self.on_manifest.set(hook).is_ok()
    }

    /// Announces that manifest `sequence` of `channel` was stored: runs the
    /// hook. Called by this store after each new manifest put through this
    /// node; with several nodes, what learns of another node's new manifest
    /// (the cross-node broadcast) calls it too, so every node nudges its
    /// own agents of the channel.
    pub fn manifest_stored(&self, channel: &Channel, sequence: u64) {
        if let Some(hook) = self.on_manifest.get() {
            hook(channel, sequence);
        }
    }
}

/// Calls `$call` on the store behind `$self` bound to `$s`.
macro_rules! dispatch {
    ($self:expr, $s:ident => $call:expr) => {
        match &$self.backend {
            ReleaseBackend::Directory($s) => $call.await,
            ReleaseBackend::Postgres($s) => $call.await,
        }
    };
}

impl ArtefactStore for Releases {
    async fn put_root(&self, envelope: Vec<u8>) -> Result<(), Error> {
        dispatch!(self, s => s.put_root(envelope))
    }

    async fn root(&self) -> Result<Option<Vec<u8>>, Error> {
        dispatch!(self, s => s.root())
    }

    async fn root_version(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        dispatch!(self, s => s.root_version(version))
    }

    async fn put_blob(&self, expected: Sha256, bytes: Bytes) -> Result<(), Error> {
        dispatch!(self, s => s.put_blob(expected, bytes))
    }

    async fn put_blob_stream<B, E>(&self, expected: Sha256, body: B) -> Result<u64, Error>
    where
        B: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        dispatch!(self, s => s.put_blob_stream(expected, body))
    }

    async fn blob_len(&self, sha: Sha256) -> Result<Option<u64>, Error> {
        dispatch!(self, s => s.blob_len(sha))
    }

    async fn read_blob(&self, sha: Sha256, range: Range<u64>) -> Result<Option<BlobStream>, Error> {
        dispatch!(self, s => s.read_blob(sha, range))
    }

    async fn put_manifest(&self, channel: Channel, envelope: Vec<u8>) -> Result<u64, Error> {
        match &self.backend {
            // The directory store runs the hook itself (see `directory`).
            ReleaseBackend::Directory(s) => s.put_manifest(channel, envelope).await,
            ReleaseBackend::Postgres(s) => {
                let stored = s.store_manifest(channel.clone(), envelope).await?;
                if stored.new {
                    self.manifest_stored(&channel, stored.sequence);
                }
                Ok(stored.sequence)
            }
        }
    }

    async fn manifest(&self, channel: Channel) -> Result<Option<Vec<u8>>, Error> {
        dispatch!(self, s => s.manifest(channel))
    }

    async fn manifest_history(
        &self,
        channel: Channel,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        dispatch!(self, s => s.manifest_history(channel, limit))
    }

    async fn channels(&self) -> Result<Vec<ChannelInfo>, Error> {
        dispatch!(self, s => s.channels())
    }

    async fn builds(
        &self,
        channel: Channel,
        triple: String,
        limit: usize,
    ) -> Result<Vec<BuildInfo>, Error> {
        dispatch!(self, s => s.builds(channel, triple, limit))
    }

    async fn collect_garbage(&self, stored_before_unix: u64) -> Result<GcReport, Error> {
        dispatch!(self, s => s.collect_garbage(stored_before_unix))
    }
}

/// How often the node leading [`Job::ReleaseGc`](crate::backend::leader::Job::ReleaseGc)
/// collects unreferenced release blobs, by default.
pub const DEFAULT_RELEASE_GC_INTERVAL_SECS: u64 = 3600;

/// How long an unreferenced blob is kept after its last upload, by
/// default: the time an operator has between uploading a build and
/// publishing the manifest that names it.
pub const DEFAULT_RELEASE_GC_GRACE_SECS: u64 = 86_400;

/// The singleton job of a shared database: every `--release-gc-interval-secs`
/// (the first time at once), deletes the blobs no stored manifest
/// references that were last uploaded more than `--release-gc-grace-secs`
/// ago, until `cancel` (leadership lost or shutdown). A failed round is
/// logged and the next one runs on time.
pub async fn collect_garbage(state: Arc<AppState>, cancel: CancellationToken) {
    let every = Duration::from_secs(state.config.release_gc_interval_secs.max(1));
    let grace = state.config.release_gc_grace_secs;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let cutoff = now_unix().saturating_sub(grace);
        let round = tokio::select! {
            _ = cancel.cancelled() => return,
            round = state.releases.collect_garbage(cutoff) => round,
        };
        match round {
            Ok(GcReport { blobs: 0, .. }) => {}
            Ok(report) => info!(
                blobs = report.blobs,
                bytes = report.bytes,
                "deleted release blobs no manifest references"
            ),
            Err(e) => warn!("collecting unreferenced release blobs failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What a hook was called with: (channel, sequence) in order.
    type Calls = Arc<Mutex<Vec<(String, u64)>>>;

    /// A hook that records what it was called with.
    fn recorder() -> (Calls, ManifestHook) {
        let calls: Calls = Arc::default();
        let hook = {
            let calls = calls.clone();
            Box::new(move |channel: &Channel, sequence: u64| {
                calls
                    .lock()
                    .unwrap()
                    .push((channel.as_str().to_owned(), sequence));
            })
        };
        (calls, hook)
    }

    #[test]
    fn an_announced_manifest_runs_the_hook_set_first() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::directory(ReleaseStore::open(dir.path()).unwrap());
        let channel: Channel = "dev".parse().unwrap();
        // Before a hook is set: nothing to run, nothing fails.
        releases.manifest_stored(&channel, 1);
        let (calls, hook) = recorder();
        assert!(releases.set_manifest_hook(hook));
        let (other, second) = recorder();
        assert!(!releases.set_manifest_hook(second));
        releases.clone().manifest_stored(&channel, 2);
        assert_eq!(*calls.lock().unwrap(), [("dev".to_owned(), 2)]);
        assert!(other.lock().unwrap().is_empty());
    }
}
