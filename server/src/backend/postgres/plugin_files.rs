//! Plugin files on PostgreSQL: [`PgPluginFiles`] implements
//! [`PluginFileStore`] with the layout of the release blobs (`bytea`
//! chunks under a header row, see `artefacts.rs` for why not large
//! objects), in tables of their own.
//!
//! An upload's hash is known only at its end, so it streams into one
//! transaction: chunks go in under a temporary key (`upload-<nonce>`) as
//! they arrive (memory: one chunk), and at the end, under an advisory lock
//! on the hash, either the file is already stored (the transaction rolls
//! back: a no-op) or the chunks are renamed to the hash and the header
//! inserted. A refused or failed upload rolls back and leaves nothing;
//! two nodes storing one file both succeed and store it once.

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use outrider_protocol::{MAX_PLUGIN_BYTES, PLUGIN_CHUNK_BYTES, is_sha256_hex};
use sha2::{Digest, Sha256};

use super::artefacts::fetch_chunk;
use super::{PgBackend, chunk_spans};
use crate::backend::{PluginFileStore, StoreError};
use crate::plugins::UploadError;

/// The first key of the two-key advisory locks on a plugin file's hash
/// ("outp" in ASCII); two-key locks never collide with the single 64-bit
/// keys the other areas use.
pub const PLUGIN_LOCK_SPACE: i32 = 0x6f75_7470;

/// Plugin files in the PostgreSQL of a [`PgBackend`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct PgPluginFiles {
    backend: PgBackend,
    /// Bytes per stored chunk: [`PLUGIN_CHUNK_BYTES`] by default, so one
    /// agent download request is usually one row.
    chunk_bytes: usize,
}

impl PgPluginFiles {
    pub fn new(backend: PgBackend) -> PgPluginFiles {
        PgPluginFiles {
            backend,
            chunk_bytes: PLUGIN_CHUNK_BYTES,
        }
    }

    /// Stores new files in chunks of `chunk_bytes` (at least 1).
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> PgPluginFiles {
        self.chunk_bytes = chunk_bytes.clamp(1, i32::MAX as usize);
        self
    }
}

fn io_err(e: impl Into<StoreError>) -> std::io::Error {
    std::io::Error::other(e.into())
}

impl PluginFileStore for PgPluginFiles {
    async fn store<S, E>(&self, body: S) -> Result<(String, u64), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display + Send,
    {
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        let key = format!("upload-{}", hex::encode(nonce));
        let mut client = self.backend.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let insert = tx
            .prepare(
                "INSERT INTO plugin_file_chunks (file_key, chunk_no, data) VALUES ($1, $2, $3)",
            )
            .await
            .map_err(StoreError::from)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut pending: Vec<u8> = Vec::with_capacity(self.chunk_bytes);
        let mut chunk_no = 0i32;
        futures_util::pin_mut!(body);
        loop {
            let next = body.next().await;
            let done = next.is_none();
            if let Some(chunk) = next {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > MAX_PLUGIN_BYTES {
                    // Dropping `tx` rolls back every chunk written so far.
                    return Err(UploadError::TooLarge);
                }
                hasher.update(&chunk);
                pending.extend_from_slice(&chunk);
            }
            // Full chunks go in as they fill; the last, short one at the end.
            while pending.len() >= self.chunk_bytes || (done && !pending.is_empty()) {
                let take = pending.len().min(self.chunk_bytes);
                tx.execute(&insert, &[&key, &chunk_no, &&pending[..take]])
                    .await
                    .map_err(StoreError::from)?;
                pending.drain(..take);
                chunk_no += 1;
            }
            if done {
                break;
            }
        }
        if size == 0 {
            return Err(UploadError::Empty);
        }
        let sha256 = hex::encode(hasher.finalize());
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&PLUGIN_LOCK_SPACE, &sha256],
        )
        .await
        .map_err(StoreError::from)?;
        let stored = tx
            .query_opt("SELECT 1 FROM plugin_files WHERE sha256 = $1", &[&sha256])
            .await
            .map_err(StoreError::from)?
            .is_some();
        if stored {
            // Already there: drop this upload's chunks.
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok((sha256, size));
        }
        tx.execute(
            "UPDATE plugin_file_chunks SET file_key = $2 WHERE file_key = $1",
            &[&key, &sha256],
        )
        .await
        .map_err(StoreError::from)?;
        tx.execute(
            "INSERT INTO plugin_files (sha256, size, chunk_bytes) VALUES ($1, $2, $3)",
            &[&sha256, &(size as i64), &(self.chunk_bytes as i32)],
        )
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((sha256, size))
    }

    async fn read_chunk(&self, sha256: &str, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
        if !is_sha256_hex(sha256) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a sha256",
            ));
        }
        let client = self.backend.client().await.map_err(io_err)?;
        let header = client
            .prepare_cached("SELECT size, chunk_bytes FROM plugin_files WHERE sha256 = $1")
            .await
            .map_err(io_err)?;
        let Some(row) = client
            .query_opt(&header, &[&sha256])
            .await
            .map_err(io_err)?
        else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no plugin file {sha256}"),
            ));
        };
        let total = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let chunk_bytes = u64::try_from(row.get::<_, i32>(1)).unwrap_or(1);
        if offset > total {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end ({total} bytes)"),
            ));
        }
        let end = total.min(offset + PLUGIN_CHUNK_BYTES as u64);
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (n, part) in chunk_spans(offset..end, chunk_bytes) {
            let data = fetch_chunk(
                &client,
                "SELECT data FROM plugin_file_chunks WHERE file_key = $1 AND chunk_no = $2",
                "plugin file",
                sha256,
                n,
                part,
            )
            .await
            .map_err(io_err)?;
            out.extend_from_slice(&data);
        }
        Ok((out, total))
    }

    async fn remove(&self, sha256: &str) {
        if !is_sha256_hex(sha256) {
            return;
        }
        let removed = async {
            let mut client = self.backend.client().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&PLUGIN_LOCK_SPACE, &sha256],
            )
            .await?;
            // Another node may have named the file again since this one's
            // store called it orphaned (a plugin uploaded there with the
            // same bytes): a named file stays. A naming not yet committed
            // is not seen here (docs/architecture.md, "What remains").
            let deleted = tx
                .execute(
                    "DELETE FROM plugin_files WHERE sha256 = $1
                       AND NOT EXISTS (SELECT 1 FROM plugins WHERE sha256 = $1)",
                    &[&sha256],
                )
                .await?;
            if deleted == 0 {
                return Ok::<_, StoreError>(false);
            }
            tx.execute(
                "DELETE FROM plugin_file_chunks WHERE file_key = $1",
                &[&sha256],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        };
        match removed.await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(sha256, "plugin file kept: absent or named again"),
            Err(e) => tracing::warn!(sha256, "cannot remove unused plugin file: {e}"),
        }
    }
}
