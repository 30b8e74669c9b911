//! Plugin files on disk, content-addressed: `<data-dir>/plugins/<sha256>`.
//!
//! Uploads stream into a temporary file in the same directory while being
//! hashed and counted, and are refused as soon as they pass
//! [`MAX_PLUGIN_BYTES`]; only a complete file is renamed to its hash, so a
//! file named by a hash always has that hash. Names → hashes live in the
//! store (`plugins` table); a file is removed when no name points at it.
//!
//! On a shared `--database` the files are in PostgreSQL instead
//! ([`PgPluginFiles`]); [`PluginFileBackend`] is whichever the node runs.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use outrider_protocol::{MAX_PLUGIN_BYTES, PLUGIN_CHUNK_BYTES, is_sha256_hex};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::backend::{PgPluginFiles, PluginFileStore};

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    #[error("the plugin is larger than the limit of {MAX_PLUGIN_BYTES} bytes")]
    TooLarge,
    #[error("the plugin is empty")]
    Empty,
    #[error("reading the upload failed: {0}")]
    Body(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database holding plugin files failed (multi-node storage).
    #[error("storing the plugin: {0}")]
    Store(#[from] crate::backend::StoreError),
}

/// The directory of plugin files.
#[derive(Clone, Debug)]
pub struct PluginFiles {
    dir: PathBuf,
}

impl PluginFiles {
    /// Opens (creating) `dir` and removes uploads a crash left behind.
    pub fn open(dir: &Path) -> anyhow::Result<PluginFiles> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".upload-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(PluginFiles {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Streams `body` into the store; returns its SHA-256 and size.
    pub async fn store<S, E>(&self, body: S) -> Result<(String, u64), UploadError>
    where
        S: Stream<Item = Result<axum::body::Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        let tmp = self.dir.join(format!(".upload-{}", hex::encode(nonce)));
        let result = self.store_to(&tmp, body).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn store_to<S, E>(&self, tmp: &Path, body: S) -> Result<(String, u64), UploadError>
    where
        S: Stream<Item = Result<axum::body::Bytes, E>>,
        E: std::fmt::Display,
    {
        let write_err = |source| UploadError::Write {
            path: tmp.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::create(tmp).await.map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        futures_util::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > MAX_PLUGIN_BYTES {
                return Err(UploadError::TooLarge);
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_err)?;
        }
        if size == 0 {
            return Err(UploadError::Empty);
        }
        file.sync_all().await.map_err(write_err)?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        let dest = self.path(&sha256);
        tokio::fs::rename(tmp, &dest)
            .await
            .map_err(|source| UploadError::Write { path: dest, source })?;
        Ok((sha256, size))
    }

    /// Up to [`PLUGIN_CHUNK_BYTES`] of file `sha256` from `offset`, and the
    /// file's size.
    pub async fn read_chunk(&self, sha256: &str, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
        if !is_sha256_hex(sha256) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a sha256",
            ));
        }
        let mut file = tokio::fs::File::open(self.path(sha256)).await?;
        let total = file.metadata().await?.len();
        if offset > total {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end ({total} bytes)"),
            ));
        }
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let want = (total - offset).min(PLUGIN_CHUNK_BYTES as u64) as usize;
        let mut buf = vec![0u8; want];
        file.read_exact(&mut buf).await?;
        Ok((buf, total))
    }

    /// Removes file `sha256` (no longer named by any plugin).
    pub async fn remove(&self, sha256: &str) {
        if is_sha256_hex(sha256)
            && let Err(e) = tokio::fs::remove_file(self.path(sha256)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sha256, "cannot remove unused plugin file: {e}");
        }
    }
}

/// Where this node's plugin files are: the directory `<data-dir>/plugins`
/// (one node) or the shared `--database` (every node serves every plugin),
/// chosen once at start-up; [`PluginFileStore`] by matching, as
/// [`crate::backend::Backend`] does.
#[derive(Clone, Debug)]
pub enum PluginFileBackend {
    Directory(PluginFiles),
    Postgres(PgPluginFiles),
}

impl PluginFileStore for PluginFileBackend {
    async fn store<S, E>(&self, body: S) -> Result<(String, u64), UploadError>
    where
        S: Stream<Item = Result<axum::body::Bytes, E>> + Send,
        E: std::fmt::Display + Send,
    {
        match self {
            PluginFileBackend::Directory(files) => files.store(body).await,
            PluginFileBackend::Postgres(files) => PluginFileStore::store(files, body).await,
        }
    }

    async fn read_chunk(&self, sha256: &str, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
        match self {
            PluginFileBackend::Directory(files) => files.read_chunk(sha256, offset).await,
            PluginFileBackend::Postgres(files) => {
                PluginFileStore::read_chunk(files, sha256, offset).await
            }
        }
    }

    async fn remove(&self, sha256: &str) {
        match self {
            PluginFileBackend::Directory(files) => files.remove(sha256).await,
            PluginFileBackend::Postgres(files) => PluginFileStore::remove(files, sha256).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;

    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn an_upload_over_the_limit_is_refused_while_streaming_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = PluginFiles::open(dir.path()).unwrap();
        let mib = Bytes::from(vec![7u8; 1 << 20]);
        let chunks = (MAX_PLUGIN_BYTES >> 20) + 1;
        let body = futures_util::stream::iter(
            (0..chunks).map(|_| Ok::<_, std::convert::Infallible>(mib.clone())),
        )
        // One more chunk than allowed, then one the server must never ask for.
        .chain(futures_util::stream::once(async {
            panic!("read past the limit")
        }));
        assert!(matches!(
            files.store(body).await,
            Err(UploadError::TooLarge)
        ));
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    #[tokio::test]
    async fn a_stored_file_is_named_by_its_hash_and_read_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let files = PluginFiles::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..PLUGIN_CHUNK_BYTES + 10).map(|i| i as u8).collect();
        let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(
            bytes.clone(),
        ))]);
        let (sha, size) = files.store(body).await.unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(size, bytes.len() as u64);
        let (first, total) = files.read_chunk(&sha, 0).await.unwrap();
        assert_eq!((first.len(), total), (PLUGIN_CHUNK_BYTES, size));
        let (rest, _) = files.read_chunk(&sha, first.len() as u64).await.unwrap();
        assert_eq!([first, rest].concat(), bytes);
        assert!(files.read_chunk(&sha, size + 1).await.is_err());
        assert!(files.read_chunk("../etc/passwd", 0).await.is_err());
        files.remove(&sha).await;
        assert!(leftovers(dir.path()).is_empty());
    }
}
