//! [`ArtefactStore`] for the directory store ([`ReleaseStore`]): each call
//! runs the blocking store method on tokio's blocking pool; blobs stream
//! from their files.

use std::ops::Range;
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use outrider_signing::{Channel, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::Error;
use crate::artefacts::{ArtefactStore, BlobIntake, BlobStream, GcReport, body_piece, clamp_range};
use crate::store::{BuildInfo, ChannelInfo, ReleaseStore};

/// Runs `f` on the store off the async workers.
async fn blocking<T, F>(store: &Arc<ReleaseStore>, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(&ReleaseStore) -> Result<T, Error> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| Error::Backend(Box::new(e)))?
}

/// Streams `body` into the new file `tmp` through a [`BlobIntake`] and
/// syncs it; the upload's size once it hashes to `expected`.
async fn write_upload<B, E>(
    tmp: &std::path::Path,
    expected: Sha256,
    max_blob_bytes: u64,
    body: B,
) -> Result<u64, Error>
where
    B: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let io_err = |source| Error::Io {
        path: tmp.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::create_new(tmp).await.map_err(io_err)?;
    let mut intake = BlobIntake::new(max_blob_bytes);
    futures_util::pin_mut!(body);
    while let Some(piece) = body.next().await {
        let piece = body_piece(piece)?;
        intake.feed(&piece)?;
        file.write_all(&piece).await.map_err(io_err)?;
    }
    file.sync_all().await.map_err(io_err)?;
    intake.finish(&expected)
}

impl ArtefactStore for Arc<ReleaseStore> {
    async fn put_root(&self, envelope: Vec<u8>) -> Result<(), Error> {
        blocking(self, move |s| s.put_root(&envelope)).await
    }

    async fn root(&self) -> Result<Option<Vec<u8>>, Error> {
        blocking(self, |s| s.root()).await
    }

    async fn root_version(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        blocking(self, move |s| s.root_version(version)).await
    }

    async fn put_blob(&self, expected: Sha256, bytes: Bytes) -> Result<(), Error> {
        blocking(self, move |s| s.put_blob(&expected, &bytes)).await
    }

    async fn put_blob_stream<B, E>(&self, expected: Sha256, body: B) -> Result<u64, Error>
    where
        B: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let tmp = self.temp_blob_path(&expected);
        let written = write_upload(&tmp, expected, self.caps().max_blob_bytes, body).await;
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        blocking(self, move |s| s.commit_blob_file(&tmp, &expected, size)).await?;
        Ok(size)
    }

    async fn blob_len(&self, sha: Sha256) -> Result<Option<u64>, Error> {
        let Some(path) = self.blob_path(&sha) else {
            return Ok(None);
        };
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    async fn read_blob(&self, sha: Sha256, range: Range<u64>) -> Result<Option<BlobStream>, Error> {
        let Some(path) = self.blob_path(&sha) else {
            return Ok(None);
        };
        let io_err = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().await.map_err(io_err)?.len();
        let range = clamp_range(range, len);
        file.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(io_err)?;
        let stream = ReaderStream::new(file.take(range.end - range.start)).map(move |chunk| {
            chunk.map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })
        });
        Ok(Some(stream.boxed()))
    }

    async fn put_manifest(&self, channel: Channel, envelope: Vec<u8>) -> Result<u64, Error> {
        blocking(self, move |s| s.put_manifest(&channel, &envelope)).await
    }

    async fn manifest(&self, channel: Channel) -> Result<Option<Vec<u8>>, Error> {
        blocking(self, move |s| s.manifest(&channel)).await
    }

    async fn manifest_history(
        &self,
        channel: Channel,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        blocking(self, move |s| s.manifest_history(&channel, limit)).await
    }

    async fn channels(&self) -> Result<Vec<ChannelInfo>, Error> {
        blocking(self, |s| s.channels()).await
    }

    async fn builds(
        &self,
        channel: Channel,
        triple: String,
        limit: usize,
    ) -> Result<Vec<BuildInfo>, Error> {
        blocking(self, move |s| s.builds(&channel, &triple, limit)).await
    }

    async fn collect_garbage(&self, stored_before_unix: u64) -> Result<GcReport, Error> {
        blocking(self, move |s| s.collect_garbage(stored_before_unix)).await
    }
}
