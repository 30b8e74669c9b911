//! Plugin file storage as a seam: [`PluginFileStore`], implemented by the
//! directory of [`crate::plugins::PluginFiles`] (one node) and by
//! PostgreSQL ([`super::postgres::PgPluginFiles`], every node serves every
//! plugin). The names → hashes table stays in the store's plugins area.

use std::future::Future;

use axum::body::Bytes;
use futures_util::Stream;

use crate::plugins::{PluginFiles, UploadError};

/// Where plugin files are kept, content-addressed by their SHA-256 (hex).
pub trait PluginFileStore: Send + Sync {
    /// Streams `body` into the store, refusing it as soon as it passes
    /// [`outrider_protocol::MAX_PLUGIN_BYTES`] and leaving nothing of a
    /// refused or failed upload; returns its SHA-256 and size. Storing a
    /// stored file again is a no-op.
    fn store<S, E>(
        &self,
        body: S,
    ) -> impl Future<Output = Result<(String, u64), UploadError>> + Send
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display + Send;

    /// Up to [`outrider_protocol::PLUGIN_CHUNK_BYTES`] of file `sha256`
    /// from `offset`, and the file's size. `NotFound` for a file not
    /// stored, `InvalidInput` for a bad name or an offset past the end.
    fn read_chunk(
        &self,
        sha256: &str,
        offset: u64,
    ) -> impl Future<Output = std::io::Result<(Vec<u8>, u64)>> + Send;

    /// Removes file `sha256` (no longer named by any plugin); a failure is
    /// logged, a missing file ignored.
    fn remove(&self, sha256: &str) -> impl Future<Output = ()> + Send;
}

impl PluginFileStore for PluginFiles {
    async fn store<S, E>(&self, body: S) -> Result<(String, u64), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display + Send,
    {
        PluginFiles::store(self, body).await
    }

    async fn read_chunk(&self, sha256: &str, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
        PluginFiles::read_chunk(self, sha256, offset).await
    }

    async fn remove(&self, sha256: &str) {
        PluginFiles::remove(self, sha256).await;
    }
}
