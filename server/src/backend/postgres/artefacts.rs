//! Release artefacts on PostgreSQL: [`PgArtefacts`] implements
//! update-server's [`ArtefactStore`], so every node sharing the database
//! answers every update request.
//!
//! Blobs are `bytea` chunks (`release_blob_chunks`, one row per
//! [`DEFAULT_CHUNK_BYTES`] keyed by `(sha256, chunk_no)`) under a header
//! row (`release_blobs`), not large objects: chunks are ordinary rows, so
//! `pg_dump`, logical replication and `DELETE` treat them like every other
//! table (large objects need `pg_dump --large-objects` handling, are not
//! replicated logically, and leak unless every delete also calls
//! `lo_unlink`). A read fetches one chunk per query, on a pooled
//! connection taken per chunk, so serving a build holds one chunk in memory
//! and no connection while the client is slow.
//!
//! Concurrency, with several nodes writing:
//! - blob put: one transaction; chunks go in as the body arrives (`ON
//!   CONFLICT DO NOTHING`: a concurrent upload of the same blob waits on the
//!   same keys, then does nothing), then, with the hash verified, under the
//!   advisory lock [`BLOB_PUT_LOCK`] (so the total cap counts each blob
//!   once) the header; a blob is visible only with all its chunks, and an
//!   upload of a stored blob rolls back its chunks;
//! - manifest put: the channel's `release_channels` row is locked
//!   (`FOR UPDATE`) while the decision ([`manifest_decision`]) is made and
//!   the manifest stored, so two nodes never both take a sequence and none
//!   stores one below the current;
//! - root put: under the advisory lock [`ROOT_LOCK`];
//! - garbage collection holds [`GC_LOCK`] exclusively while a manifest put
//!   holds it shared: a blob is never deleted between a manifest's check of
//!   it and its commit.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use outrider_signing::{Channel, ManifestPolicy, Sha256, TrustedRoot, now_unix, verify_manifest};
use outrider_update_server::artefacts::{
    BlobIntake, ManifestDecision, RootDecision, body_piece, check_reference, check_total,
    clamp_range, manifest_decision, note_build, root_decision,
};
use outrider_update_server::{
    ArtefactStore, BlobCaps, BlobStream, BuildInfo, ChannelInfo, Error, GcReport, MAX_BLOB_BYTES,
    decode_manifest,
};

use super::PgBackend;
use crate::backend::StoreError;

/// Bytes per stored chunk of a blob: large enough that a build is a few
/// hundred rows, small enough that serving holds little memory.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// Most bytes all release blobs together take in the database by default.
pub const DEFAULT_MAX_TOTAL_BLOB_BYTES: u64 = 8 << 30;

/// Advisory lock keys ("outr" + area in ASCII).
pub const BLOB_PUT_LOCK: i64 = 0x6f75_7472_626c_6f62;
pub const ROOT_LOCK: i64 = 0x6f75_7472_726f_6f74;
pub const GC_LOCK: i64 = 0x6f75_7472_6763_6763;

/// Release artefacts in the PostgreSQL of a [`PgBackend`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct PgArtefacts {
    backend: PgBackend,
    caps: BlobCaps,
    chunk_bytes: usize,
}

/// What [`PgArtefacts::store_manifest`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    /// The channel's current sequence: the manifest's.
    pub sequence: u64,
    /// Whether this call stored it (false: the same bytes were current).
    pub new: bool,
}

/// Any database failure, as the release store's error.
fn db(e: impl Into<StoreError>) -> Error {
    Error::Backend(Box::new(e.into()))
}

/// A sequence, version or time as PostgreSQL's signed `BIGINT`; above
/// `i64::MAX` is refused as the directory store does.
fn to_i64(what: &'static str, v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::TooLarge {
        what,
        limit: i64::MAX as u64,
        got: v,
    })
}

/// A stored non-negative `BIGINT` back as `u64`.
fn stored_u64(what: &'static str, v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| {
        db(StoreError::Malformed {
            what,
            value: v.to_string(),
        })
    })
}

/// The chunks holding bytes `range` of a blob stored in chunks of
/// `chunk_bytes`: the chunk numbers, and for each the part of it inside
/// `range`. Empty for an empty range.
pub fn chunk_spans(range: Range<u64>, chunk_bytes: u64) -> Vec<(u64, Range<usize>)> {
    if range.is_empty() || chunk_bytes == 0 {
        return Vec::new();
    }
    let first = range.start / chunk_bytes;
    let last = (range.end - 1) / chunk_bytes;
    (first..=last)
        .map(|n| {
            let at = n * chunk_bytes;
            let from = range.start.max(at) - at;
            let to = range.end.min(at + chunk_bytes) - at;
            (n, from as usize..to as usize)
        })
        .collect()
}

/// Bytes `part` of chunk `n` of the stored object `key`, read with `sql`
/// (one `data` column, parameters key and chunk number). A chunk that is
/// missing or shorter than `part` is `Malformed`, naming `what` (the
/// object's rows are damaged: its header promised the chunk).
pub(super) async fn fetch_chunk(
    client: &deadpool_postgres::Client,
    sql: &str,
    what: &'static str,
    key: &str,
    n: u64,
    part: Range<usize>,
) -> Result<Bytes, StoreError> {
    let missing = || StoreError::Malformed {
        what,
        value: format!("{key} has no chunk {n}"),
    };
    let stmt = client.prepare_cached(sql).await?;
    let n32 = i32::try_from(n).map_err(|_| missing())?;
    let row = client
        .query_opt(&stmt, &[&key, &n32])
        .await?
        .ok_or_else(missing)?;
    let data = Bytes::from(row.get::<_, Vec<u8>>(0));
    if part.end > data.len() {
        return Err(missing());
    }
    Ok(data.slice(part))
}

impl PgArtefacts {
    /// Artefacts in `backend`'s database (migrated by
    /// [`PgBackend::connect`]), within `caps`.
    pub fn new(backend: PgBackend, caps: BlobCaps) -> PgArtefacts {
        PgArtefacts {
            backend,
            caps,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }

    /// The default caps of the PostgreSQL store: the directory store's
    /// per-blob cap, [`DEFAULT_MAX_TOTAL_BLOB_BYTES`] in all.
    pub fn default_caps() -> BlobCaps {
        BlobCaps {
            max_blob_bytes: MAX_BLOB_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BLOB_BYTES,
        }
    }

    /// Stores new blobs in chunks of `chunk_bytes` (at least 1); blobs
    /// already stored keep their own, recorded in their header.
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> PgArtefacts {
        self.chunk_bytes = chunk_bytes.clamp(1, i32::MAX as usize);
        self
    }

    /// [`ArtefactStore::put_manifest`], telling also whether the manifest
    /// was stored by this call (`new`) or was the channel's current one
    /// already: only a new one is announced (update nudges,
    /// `server/src/releases.rs`).
    pub async fn store_manifest(
        &self,
        channel: Channel,
        envelope: Vec<u8>,
    ) -> Result<StoredManifest, Error> {
        let now = now_unix();
        let mut client = self.backend.client().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let root: Vec<u8> = tx
            .query_opt(
                "SELECT envelope FROM release_roots ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(db)?
            .ok_or(Error::NoRoot)?
            .get(0);
        let root = TrustedRoot::from_bytes_self_signed(&root, now)?;
        let policy = ManifestPolicy {
            channel: &channel,
            now_unix: now,
            floor: None,
        };
        let manifest = verify_manifest(&root, &envelope, &policy)?.manifest;

        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&GC_LOCK])
            .await
            .map_err(db)?;
        // The channel's row exists (a first publish racing another waits
        // here for it to commit), then is locked until this commits.
        tx.execute(
            "INSERT INTO release_channels (channel, sequence) VALUES ($1, NULL) ON CONFLICT DO NOTHING",
            &[&channel.as_str()],
        )
        .await
        .map_err(db)?;
        let current: Option<i64> = tx
            .query_one(
                "SELECT sequence FROM release_channels WHERE channel = $1 FOR UPDATE",
                &[&channel.as_str()],
            )
            .await
            .map_err(db)?
            .get(0);
        let current = match current {
            None => None,
            Some(seq) => {
                let bytes: Vec<u8> = tx
                    .query_one(
                        "SELECT envelope FROM release_manifests WHERE channel = $1 AND sequence = $2",
                        &[&channel.as_str(), &seq],
                    )
                    .await
                    .map_err(db)?
                    .get(0);
                Some((stored_u64("manifest sequence", seq)?, bytes))
            }
        };
        let current = current.as_ref().map(|(seq, b)| (*seq, b.as_slice()));
        if let ManifestDecision::AlreadyCurrent(seq) =
            manifest_decision(&channel, current, manifest.sequence, &envelope)?
        {
            return Ok(StoredManifest {
                sequence: seq,
                new: false,
            });
        }
        for (sha, declared) in manifest.referenced_blobs() {
            let stored: Option<i64> = tx
                .query_opt(
                    "SELECT size FROM release_blobs WHERE sha256 = $1",
                    &[&sha.to_string()],
                )
                .await
                .map_err(db)?
                .map(|row| row.get(0));
            let stored = stored.map(|s| stored_u64("blob size", s)).transpose()?;
            check_reference(sha, declared, stored)?;
        }
        let versions: BTreeMap<&str, &str> = manifest
            .targets
            .iter()
            .map(|(triple, t)| (triple.as_str(), t.version.as_str()))
            .collect();
        // A map of strings always serializes.
        let versions = serde_json::to_string(&versions).expect("versions serialize");
        let sequence = to_i64("manifest sequence", manifest.sequence)?;
        tx.execute(
            "INSERT INTO release_manifests (channel, sequence, envelope, versions, published_unix)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &channel.as_str(),
                &sequence,
                &envelope,
                &versions,
                &to_i64("time", now)?,
            ],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "UPDATE release_channels SET sequence = $2 WHERE channel = $1",
            &[&channel.as_str(), &sequence],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(%channel, sequence = manifest.sequence, "stored release manifest");
        Ok(StoredManifest {
            sequence: manifest.sequence,
            new: true,
        })
    }
}

impl ArtefactStore for PgArtefacts {
    async fn put_root(&self, envelope: Vec<u8>) -> Result<(), Error> {
        let now = now_unix();
        let mut client = self.backend.client().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROOT_LOCK])
            .await
            .map_err(db)?;
        let current: Option<Vec<u8>> = tx
            .query_opt(
                "SELECT envelope FROM release_roots ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(db)?
            .map(|row| row.get(0));
        let root = match root_decision(current.as_deref(), &envelope, now)? {
            RootDecision::AlreadyCurrent => return Ok(()),
            RootDecision::Store(root) => root,
        };
        tx.execute(
            "INSERT INTO release_roots (version, envelope, created_unix) VALUES ($1, $2, $3)",
            &[
                &to_i64("root version", root.root().version)?,
                &envelope,
                &to_i64("time", now)?,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(version = root.root().version, "stored update root");
        Ok(())
    }

    async fn root(&self) -> Result<Option<Vec<u8>>, Error> {
        let client = self.backend.client().await.map_err(db)?;
        let stmt = client
            .prepare_cached("SELECT envelope FROM release_roots ORDER BY version DESC LIMIT 1")
            .await
            .map_err(db)?;
        Ok(client
            .query_opt(&stmt, &[])
            .await
            .map_err(db)?
            .map(|row| row.get(0)))
    }

    async fn root_version(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        let client = self.backend.client().await.map_err(db)?;
        let stmt = client
            .prepare_cached("SELECT envelope FROM release_roots WHERE version = $1")
            .await
            .map_err(db)?;
        Ok(client
            .query_opt(&stmt, &[&version])
            .await
            .map_err(db)?
            .map(|row| row.get(0)))
    }

    async fn put_blob(&self, expected: Sha256, bytes: Bytes) -> Result<(), Error> {
        // Refused before anything is hashed or written, as the directory
        // store does.
        if bytes.len() as u64 > self.caps.max_blob_bytes {
            return Err(Error::TooLarge {
                what: "blob",
                limit: self.caps.max_blob_bytes,
                got: bytes.len() as u64,
            });
        }
        let pieces: Vec<Bytes> = (0..bytes.len())
            .step_by(self.chunk_bytes)
            .map(|at| bytes.slice(at..bytes.len().min(at + self.chunk_bytes)))
            .collect();
        let body = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, Error>));
        self.put_blob_stream(expected, body).await.map(|_| ())
    }

    async fn put_blob_stream<B, E>(&self, expected: Sha256, body: B) -> Result<u64, Error>
    where
        B: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let now = to_i64("time", now_unix())?;
        let sha = expected.to_string();
        let mut client = self.backend.client().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        // Stored already: the body is still read and verified, but nothing
        // is written.
        let stored_before = tx
            .query_opt("SELECT 1 FROM release_blobs WHERE sha256 = $1", &[&sha])
            .await
            .map_err(db)?
            .is_some();
        // A concurrent upload of the same blob holds the same chunk keys:
        // this one waits on them and then does nothing (it committed) or
        // writes them (it rolled back).
        let insert = tx
            .prepare(
                "INSERT INTO release_blob_chunks (sha256, chunk_no, data) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(db)?;
        let mut intake = BlobIntake::new(self.caps.max_blob_bytes);
        let mut pending: Vec<u8> = Vec::with_capacity(self.chunk_bytes);
        let mut chunk_no = 0i32;
        futures_util::pin_mut!(body);
        loop {
            let next = body.next().await;
            let done = next.is_none();
            if let Some(piece) = next {
                let piece = body_piece(piece)?;
                // Dropping `tx` on an error rolls back every chunk so far.
                intake.feed(&piece)?;
                if !stored_before {
                    pending.extend_from_slice(&piece);
                }
            }
            // Full chunks go in as they fill; the last, short one at the end.
            while pending.len() >= self.chunk_bytes || (done && !pending.is_empty()) {
                let take = pending.len().min(self.chunk_bytes);
                tx.execute(&insert, &[&sha, &chunk_no, &&pending[..take]])
                    .await
                    .map_err(db)?;
                pending.drain(..take);
                chunk_no = chunk_no.checked_add(1).ok_or(Error::TooLarge {
                    what: "blob chunk count",
                    limit: i32::MAX as u64,
                    got: i32::MAX as u64 + 1,
                })?;
            }
            if done {
                break;
            }
        }
        let size = intake.finish(&expected)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BLOB_PUT_LOCK])
            .await
            .map_err(db)?;
        // Stored by now (before, or by a concurrent upload): keep the stored
        // one, roll back this one's chunks, and restart the stored one's
        // grace against garbage collection (a manifest naming it may follow).
        let stored_now = tx
            .query_opt("SELECT 1 FROM release_blobs WHERE sha256 = $1", &[&sha])
            .await
            .map_err(db)?
            .is_some();
        if stored_now {
            tx.rollback().await.map_err(db)?;
            client
                .execute(
                    "UPDATE release_blobs SET stored_unix = GREATEST(stored_unix, $2) WHERE sha256 = $1",
                    &[&sha, &now],
                )
                .await
                .map_err(db)?;
            return Ok(size);
        }
        let used: i64 = tx
            .query_one(
                "SELECT COALESCE(SUM(size), 0)::BIGINT FROM release_blobs",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        check_total(
            stored_u64("blob total", used)?,
            size,
            self.caps.max_total_bytes,
        )?;
        tx.execute(
            "INSERT INTO release_blobs (sha256, size, chunk_bytes, stored_unix) VALUES ($1, $2, $3, $4)",
            &[
                &sha,
                &to_i64("blob size", size)?,
                &(self.chunk_bytes as i32),
                &now,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(size)
    }

    async fn blob_len(&self, sha: Sha256) -> Result<Option<u64>, Error> {
        Ok(self.blob_header(&sha).await?.map(|(size, _)| size))
    }

    async fn read_blob(&self, sha: Sha256, range: Range<u64>) -> Result<Option<BlobStream>, Error> {
        let Some((size, chunk_bytes)) = self.blob_header(&sha).await? else {
            return Ok(None);
        };
        let spans = chunk_spans(clamp_range(range, size), chunk_bytes);
        let backend = self.backend.clone();
        let sha = sha.to_string();
        let stream = futures_util::stream::iter(spans).then(move |(n, part)| {
            let backend = backend.clone();
            let sha = sha.clone();
            async move {
                let client = backend.client().await.map_err(db)?;
                fetch_chunk(
                    &client,
                    "SELECT data FROM release_blob_chunks WHERE sha256 = $1 AND chunk_no = $2",
                    "release blob",
                    &sha,
                    n,
                    part,
                )
                .await
                .map_err(db)
            }
        });
        Ok(Some(stream.boxed()))
    }

    async fn put_manifest(&self, channel: Channel, envelope: Vec<u8>) -> Result<u64, Error> {
        self.store_manifest(channel, envelope)
            .await
            .map(|stored| stored.sequence)
    }

    async fn manifest(&self, channel: Channel) -> Result<Option<Vec<u8>>, Error> {
        let client = self.backend.client().await.map_err(db)?;
        let stmt = client
            .prepare_cached(
                "SELECT m.envelope FROM release_channels c
                 JOIN release_manifests m ON m.channel = c.channel AND m.sequence = c.sequence
                 WHERE c.channel = $1",
            )
            .await
            .map_err(db)?;
        Ok(client
            .query_opt(&stmt, &[&channel.as_str()])
            .await
            .map_err(db)?
            .map(|row| row.get(0)))
    }

    async fn manifest_history(
        &self,
        channel: Channel,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let client = self.backend.client().await.map_err(db)?;
        let stmt = client
            .prepare_cached(
                "SELECT envelope FROM release_manifests WHERE channel = $1
                 ORDER BY sequence DESC LIMIT $2",
            )
            .await
            .map_err(db)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(client
            .query(&stmt, &[&channel.as_str(), &limit])
            .await
            .map_err(db)?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    async fn channels(&self) -> Result<Vec<ChannelInfo>, Error> {
        let client = self.backend.client().await.map_err(db)?;
        let stmt = client
            .prepare_cached(
                "SELECT c.channel, c.sequence, m.versions, m.published_unix FROM release_channels c
                 JOIN release_manifests m ON m.channel = c.channel AND m.sequence = c.sequence
                 ORDER BY c.channel",
            )
            .await
            .map_err(db)?;
        let mut out = Vec::new();
        for row in client.query(&stmt, &[]).await.map_err(db)? {
            let channel: String = row.get(0);
            let malformed = |what: &'static str, e: String| {
                db(StoreError::Malformed {
                    what,
                    value: format!("{channel}: {e}"),
                })
            };
            out.push(ChannelInfo {
                channel: channel
                    .parse()
                    .map_err(|e: outrider_signing::Error| malformed("channel", e.to_string()))?,
                sequence: stored_u64("manifest sequence", row.get(1))?,
                versions: serde_json::from_str(row.get(2))
                    .map_err(|e| malformed("channel versions", e.to_string()))?,
                published_unix: stored_u64("time", row.get(3))?,
            });
        }
        Ok(out)
    }

    async fn builds(
        &self,
        channel: Channel,
        triple: String,
        limit: usize,
    ) -> Result<Vec<BuildInfo>, Error> {
        let client = self.backend.client().await.map_err(db)?;
        let stmt = client
            .prepare_cached(
                "SELECT sequence, envelope FROM release_manifests WHERE channel = $1
                 ORDER BY sequence DESC",
            )
            .await
            .map_err(db)?;
        // Rows arrive as a stream and are read only until `limit` builds.
        let rows = client
            .query_raw(&stmt, [channel.as_str()])
            .await
            .map_err(db)?;
        futures_util::pin_mut!(rows);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next().await.transpose().map_err(db)? else {
                break;
            };
            let sequence: i64 = row.get(0);
            // Every stored envelope verified when it was stored; only decode.
            let manifest = decode_manifest(row.get(1)).map_err(|reason| {
                db(StoreError::Malformed {
                    what: "release manifest",
                    value: format!("{channel}#{sequence}: {reason}"),
                })
            })?;
            note_build(
                &mut out,
                stored_u64("manifest sequence", sequence)?,
                &manifest,
                &triple,
            );
        }
        Ok(out)
    }

    async fn collect_garbage(&self, stored_before_unix: u64) -> Result<GcReport, Error> {
        let cutoff = i64::try_from(stored_before_unix).unwrap_or(i64::MAX);
        let mut client = self.backend.client().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GC_LOCK])
            .await
            .map_err(db)?;
        let mut referenced = HashSet::new();
        for row in tx
            .query(
                "SELECT channel, sequence, envelope FROM release_manifests",
                &[],
            )
            .await
            .map_err(db)?
        {
            let manifest = decode_manifest(row.get(2)).map_err(|reason| {
                db(StoreError::Malformed {
                    what: "release manifest",
                    value: format!(
                        "{}#{}: {reason}",
                        row.get::<_, String>(0),
                        row.get::<_, i64>(1)
                    ),
                })
            })?;
            referenced.extend(manifest.referenced_blobs().into_iter().map(|(sha, _)| sha));
        }
        let mut report = GcReport::default();
        for row in tx
            .query(
                "SELECT sha256, size FROM release_blobs WHERE stored_unix < $1",
                &[&cutoff],
            )
            .await
            .map_err(db)?
        {
            let sha: String = row.get(0);
            if sha
                .parse::<Sha256>()
                .is_ok_and(|sha| referenced.contains(&sha))
            {
                continue;
            }
            // The cutoff again: PostgreSQL re-checks it on the row's newest
            // version, so a blob uploaded again meanwhile (its time
            // refreshed by a put, which does not take GC_LOCK) stays.
            let deleted = tx
                .execute(
                    "DELETE FROM release_blobs WHERE sha256 = $1 AND stored_unix < $2",
                    &[&sha, &cutoff],
                )
                .await
                .map_err(db)?;
            if deleted == 0 {
                continue;
            }
            tx.execute("DELETE FROM release_blob_chunks WHERE sha256 = $1", &[&sha])
                .await
                .map_err(db)?;
            report.blobs += 1;
            report.bytes += stored_u64("blob size", row.get(1))?;
        }
        tx.commit().await.map_err(db)?;
        if report.blobs > 0 {
            tracing::info!(
                blobs = report.blobs,
                bytes = report.bytes,
                "deleted unreferenced release blobs"
            );
        }
        Ok(report)
    }
}

impl PgArtefacts {
    /// A stored blob's size and chunk size.
    async fn blob_header(&self, sha: &Sha256) -> Result<Option<(u64, u64)>, Error> {
        let client = self.backend.client().await.map_err(db)?;
        let stmt = client
            .prepare_cached("SELECT size, chunk_bytes FROM release_blobs WHERE sha256 = $1")
            .await
            .map_err(db)?;
        let Some(row) = client
            .query_opt(&stmt, &[&sha.to_string()])
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let size = stored_u64("blob size", row.get(0))?;
        let chunk = stored_u64("blob chunk size", i64::from(row.get::<_, i32>(1)))?;
        Ok(Some((size, chunk)))
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_spans;

    #[test]
    fn chunk_spans_cover_exactly_the_range() {
        // (range, chunk size, expected spans)
        type Case = (
            std::ops::Range<u64>,
            u64,
            &'static [(u64, std::ops::Range<usize>)],
        );
        let cases: [Case; 6] = [
            (0..0, 4, &[]),
            (0..4, 4, &[(0, 0..4)]),
            (0..5, 4, &[(0, 0..4), (1, 0..1)]),
            (3..9, 4, &[(0, 3..4), (1, 0..4), (2, 0..1)]),
            (4..8, 4, &[(1, 0..4)]),
            (5..6, 4, &[(1, 1..2)]),
        ];
        for (range, chunk, expected) in cases {
            assert_eq!(
                chunk_spans(range.clone(), chunk),
                expected,
                "{range:?}/{chunk}"
            );
        }
    }
}
