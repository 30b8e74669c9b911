//! [`ReleaseStore`]: the release repository on disk.
//!
//! Layout of the store directory:
//! - `releases.db` — SQLite (WAL): `schema_version`, `roots` (every accepted
//!   root by version, so clients can walk the chain), `manifests` (every
//!   accepted manifest per channel and sequence; the highest is current).
//! - `blobs/<sha256>` — content-addressed zstd blobs, written as
//!   `blobs/.tmp-*` + fsync + rename; leftovers are removed on open.
//!
//! Invariants: every stored root verified (the first self-signed, each later
//! one as the successor of the previous); every stored manifest verified
//! against the current root, has a higher sequence than the one before it in
//! its channel, and references only blobs present in `blobs/` with their
//! declared sizes (artifact, previous build, deltas, stub).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use outrider_signing::{
    Artifact, Channel, Envelope, ManifestPolicy, ReleaseManifest, Sha256, TrustedRoot, now_unix,
    verify_manifest,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::artefacts::{
    BlobCaps, GcReport, ManifestDecision, RootDecision, check_blob, check_reference, check_total,
    manifest_decision, note_build, root_decision,
};

/// Largest blob accepted.
pub const MAX_BLOB_BYTES: u64 = 512 << 20;

/// The schema this build writes; bump with a migration in [`migrate`].
const SCHEMA_VERSION: i64 = 1;

const TMP_PREFIX: &str = ".tmp-";

/// A channel's current state, as listed by [`ReleaseStore::channels`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub channel: Channel,
    /// Sequence of the current manifest.
    pub sequence: u64,
    /// Target triple → version in the current manifest.
    pub versions: BTreeMap<String, String>,
    /// When the current manifest was uploaded, Unix seconds.
    pub published_unix: u64,
}

/// A build a channel has offered for one triple, as listed by
/// [`ReleaseStore::builds`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    pub abi_major: u32,
    pub artifact: Artifact,
    /// The newest manifest sequence in which this build was the target.
    pub sequence: u64,
}

/// The release repository: a directory with `releases.db` and `blobs/`.
/// Methods block (SQLite, file I/O); call them from `spawn_blocking` in async code.
#[derive(Debug)]
pub struct ReleaseStore {
    db: Mutex<Connection>,
    blobs: PathBuf,
    caps: BlobCaps,
    /// Called after a new manifest of a channel was stored.
    on_manifest: OnceLock<Hook>,
}

/// Called with the channel and the new sequence each time
/// [`ReleaseStore::put_manifest`] stores a new manifest (publish, promote,
/// rollout, pause and rollback all end in one), after the store's lock is
/// released. It must not block: the server uses it to schedule update
/// nudges of that channel's agents.
pub type ManifestHook = Box<dyn Fn(&Channel, u64) + Send + Sync>;

/// A [`ManifestHook`] that `ReleaseStore` can derive `Debug` through.
struct Hook(ManifestHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManifestHook")
    }
}

impl ReleaseStore {
    /// Opens (creating if needed) the store in `dir`: creates the directory
    /// and schema, and removes temp files left by an interrupted upload.
    /// Fails on I/O or database errors, or [`Error::SchemaTooNew`].
    pub fn open(dir: &Path) -> Result<ReleaseStore, Error> {
        ReleaseStore::open_with_caps(dir, BlobCaps::default())
    }

    /// [`ReleaseStore::open`] with blob limits other than the default
    /// ([`MAX_BLOB_BYTES`] per blob, no total).
    pub fn open_with_caps(dir: &Path, caps: BlobCaps) -> Result<ReleaseStore, Error> {
        let blobs = dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(|source| Error::Io {
            path: blobs.clone(),
            source,
        })?;
        remove_leftovers(&blobs)?;
        let db = Connection::open(dir.join("releases.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&db)?;
        Ok(ReleaseStore {
            db: Mutex::new(db),
            blobs,
            caps,
            on_manifest: OnceLock::new(),
        })
    }

    /// Sets the hook called after each newly stored manifest; only the first
    /// call has an effect (returns false for later ones).
    pub fn on_manifest_stored(&self, hook: ManifestHook) -> bool {
        self.on_manifest.set(Hook(hook)).is_ok()
    }

    /// Stores a root envelope. The first root is accepted if it is
    /// self-signed and unexpired; the current root's exact bytes again are
    /// accepted as a no-op; any other root must be the verified successor of
    /// the current one (version + 1, signed by a threshold of the old and the
    /// new root keys) and unexpired. A root several versions ahead is refused
    /// ([`outrider_signing::Error::RootVersionSkipped`]) until every version
    /// in between is stored, so the chain clients walk has no gaps. Fails
    /// with [`Error::Signing`] naming the failed check.
    pub fn put_root(&self, envelope: &[u8]) -> Result<(), Error> {
        let now = now_unix();
        let mut db = self.lock();
        // IMMEDIATE: another process on the same directory waits for the
        // decision and the write together, never interleaves them.
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<Vec<u8>> = latest_root(&tx)?;
        let accepted = match root_decision(current.as_deref(), envelope, now)? {
            RootDecision::AlreadyCurrent => return Ok(()),
            RootDecision::Store(root) => root,
        };
        tx.execute(
            "INSERT INTO roots (version, envelope, created_unix) VALUES (?1, ?2, ?3)",
            params![
                to_sql_u64("root version", accepted.root().version)?,
                envelope,
                to_sql_u64("time", now)?
            ],
        )?;
        tx.commit()?;
        tracing::info!(version = accepted.root().version, "stored update root");
        Ok(())
    }

    /// The current root envelope, if any.
    pub fn root(&self) -> Result<Option<Vec<u8>>, Error> {
        latest_root(&self.lock())
    }

    /// The root envelope of `version`, if stored. Every version from the
    /// first to the current is stored, since [`ReleaseStore::put_root`]
    /// accepts only the successor of the current root: a client several
    /// versions behind walks them one by one, and an operator several
    /// versions ahead (`outrider keys publish-root`) uploads them in order.
    pub fn root_version(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        // No stored version is above i64::MAX (see `to_sql_u64`).
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        Ok(self
            .lock()
            .query_row(
                "SELECT envelope FROM roots WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores `bytes` as the blob named `expected`. Fails with
    /// [`Error::TooLarge`] above the per-blob cap ([`MAX_BLOB_BYTES`] by
    /// default), [`Error::HashMismatch`] if the content does not hash to
    /// `expected`, and [`Error::StorageFull`] when a new blob would take the
    /// stored ones above the total cap. Storing a present blob again is a
    /// no-op.
    pub fn put_blob(&self, expected: &Sha256, bytes: &[u8]) -> Result<(), Error> {
        check_blob(expected, bytes, self.caps.max_blob_bytes)?;
        if self.touch_if_stored(expected) {
            return Ok(());
        }
        let tmp = self.temp_blob_path(expected);
        let written = (|| {
            let mut file = File::create_new(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Io { path: tmp, source });
        }
        self.commit_blob_file(&tmp, expected, bytes.len() as u64)
    }

    /// The caps this store enforces.
    pub(crate) fn caps(&self) -> BlobCaps {
        self.caps
    }

    /// Whether blob `sha` is stored; if so, refreshes its time: uploading
    /// it again restarts its grace against `collect_garbage` (a manifest
    /// naming it may follow). Only the file's time changes, so a failure
    /// to refresh loses nothing and is only logged.
    pub(crate) fn touch_if_stored(&self, sha: &Sha256) -> bool {
        let path = self.blobs.join(sha.to_string());
        if !path.is_file() {
            return false;
        }
        let touched = File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if let Err(e) = touched {
            tracing::warn!(path = %path.display(), "cannot refresh a release blob's time: {e}");
        }
        true
    }

    /// A fresh temporary file name in `blobs/` for an upload of `sha`;
    /// removed on open if an upload is interrupted.
    pub(crate) fn temp_blob_path(&self, sha: &Sha256) -> PathBuf {
        // One counter per process, not per store: two stores opened on one
        // directory in one process must not pick the same temp name.
        static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.blobs
            .join(format!("{TMP_PREFIX}{sha}-{}-{n}", std::process::id()))
    }

    /// Makes the complete, verified, synced temp file `tmp` of `size` bytes
    /// the blob `sha`, unless it is stored by now or the total cap refuses
    /// it ([`Error::StorageFull`]); `tmp` is gone afterwards either way.
    pub(crate) fn commit_blob_file(
        &self,
        tmp: &Path,
        sha: &Sha256,
        size: u64,
    ) -> Result<(), Error> {
        let committed = (|| {
            if self.touch_if_stored(sha) {
                return Ok(());
            }
            if self.caps.max_total_bytes != u64::MAX {
                // Only with a total cap set: the sum costs a directory listing.
                check_total(self.stored_bytes()?, size, self.caps.max_total_bytes)?;
            }
            let path = self.blobs.join(sha.to_string());
            fs::rename(tmp, &path)
                .and_then(|()| sync_dir(&self.blobs))
                .map_err(|source| Error::Io { path, source })
        })();
        let _ = fs::remove_file(tmp);
        committed
    }

    /// Where the blob named `sha` is stored, if it is.
    pub fn blob_path(&self, sha: &Sha256) -> Option<PathBuf> {
        let path = self.blobs.join(sha.to_string());
        path.is_file().then_some(path)
    }

    /// Stores a release manifest for `channel` and returns its sequence. The
    /// envelope must verify against the current root ([`Error::NoRoot`] if
    /// none) for this channel, have a higher sequence than the current one
    /// ([`Error::StaleSequence`]; the current manifest's exact bytes are
    /// accepted again as a no-op), and reference only stored blobs of the
    /// declared size ([`Error::MissingBlob`], [`Error::BlobSize`]).
    pub fn put_manifest(&self, channel: &Channel, envelope: &[u8]) -> Result<u64, Error> {
        let now = now_unix();
        let mut db = self.lock();
        // IMMEDIATE: another process on the same directory waits for the
        // decision and the insert together, so two publishes never both
        // take a sequence or land one below the other.
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let root = latest_root(&tx)?.ok_or(Error::NoRoot)?;
        let root = TrustedRoot::from_bytes_self_signed(&root, now)?;
        let policy = ManifestPolicy {
            channel,
            now_unix: now,
            floor: None,
        };
        let verified = verify_manifest(&root, envelope, &policy)?;
        let manifest = verified.manifest;

        let current = latest_manifest(&tx, channel)?;
        let current = current
            .as_ref()
            .map(|(seq, bytes)| (*seq, bytes.as_slice()));
        if let ManifestDecision::AlreadyCurrent(current) =
            manifest_decision(channel, current, manifest.sequence, envelope)?
        {
            return Ok(current);
        }
        for (sha, declared) in manifest.referenced_blobs() {
            check_reference(sha, declared, self.stored_len(&sha)?)?;
        }
        let versions: BTreeMap<&str, &str> = manifest
            .targets
            .iter()
            .map(|(triple, t)| (triple.as_str(), t.version.as_str()))
            .collect();
        // A map of strings always serializes.
        let versions = serde_json::to_string(&versions).expect("versions serialize");
        tx.execute(
            "INSERT INTO manifests (channel, sequence, envelope, versions, published_unix) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                channel.as_str(),
                to_sql_u64("manifest sequence", manifest.sequence)?,
                envelope,
                versions,
                to_sql_u64("time", now)?
            ],
        )?;
        tx.commit()?;
        drop(db);
        tracing::info!(%channel, sequence = manifest.sequence, "stored release manifest");
        if let Some(Hook(hook)) = self.on_manifest.get() {
            hook(channel, manifest.sequence);
        }
        Ok(manifest.sequence)
    }

    /// The current manifest envelope of `channel`, if any.
    pub fn manifest(&self, channel: &Channel) -> Result<Option<Vec<u8>>, Error> {
        Ok(latest_manifest(&self.lock(), channel)?.map(|(_, bytes)| bytes))
    }

    /// Every channel with its current manifest's sequence and versions, by name.
    pub fn channels(&self) -> Result<Vec<ChannelInfo>, Error> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT channel, sequence, versions, published_unix FROM manifests m \
             WHERE sequence = (SELECT MAX(sequence) FROM manifests WHERE channel = m.channel) ORDER BY channel",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (channel, sequence, versions, published) = row?;
            let corrupt = |reason: String| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    reason.into(),
                )
            };
            out.push(ChannelInfo {
                channel: channel
                    .parse()
                    .map_err(|e: outrider_signing::Error| corrupt(e.to_string()))?,
                sequence: sequence as u64,
                versions: serde_json::from_str(&versions).map_err(|e| corrupt(e.to_string()))?,
                published_unix: published as u64,
            });
        }
        Ok(out)
    }

    /// The distinct builds `channel` has offered for `triple`, newest first
    /// (by the sequence of the manifest that last made each its target), at
    /// most `limit`. Derived from the stored manifest history, so a build
    /// that was rolled back still counts: it is a base clients may run.
    pub fn builds(
        &self,
        channel: &Channel,
        triple: &str,
        limit: usize,
    ) -> Result<Vec<BuildInfo>, Error> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT sequence, envelope FROM manifests WHERE channel = ?1 ORDER BY sequence DESC",
        )?;
        let mut rows = stmt.query([channel.as_str()])?;
        let mut out: Vec<BuildInfo> = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next()? else { break };
            let sequence: i64 = row.get(0)?;
            let envelope: Vec<u8> = row.get(1)?;
            // Every stored envelope verified when it was stored; only decode.
            let manifest = decode_manifest(&envelope).map_err(|reason| {
                Error::Database(rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Blob,
                    format!("stored manifest {channel}#{sequence}: {reason}").into(),
                ))
            })?;
            note_build(&mut out, sequence as u64, &manifest, triple);
        }
        Ok(out)
    }

    /// The stored manifest envelopes of `channel`, newest first, at most
    /// `limit`, as the exact bytes that were uploaded. The CLI verifies each
    /// against its own root before it signs anything taken from one, so a
    /// tampered store cannot make an operator sign a build nobody signed.
    pub fn manifest_history(&self, channel: &Channel, limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        let db = self.lock();
        let mut stmt = db.prepare(
            "SELECT envelope FROM manifests WHERE channel = ?1 ORDER BY sequence DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![channel.as_str(), limit as i64], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes every blob no stored manifest references whose file was
    /// last modified before `stored_before_unix`. Holds the database lock
    /// throughout, so no manifest referencing a blob is stored while it is
    /// deleted.
    pub fn collect_garbage(&self, stored_before_unix: u64) -> Result<GcReport, Error> {
        let mut db = self.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let referenced = referenced_blobs(&tx)?;
        let cutoff = std::time::UNIX_EPOCH + std::time::Duration::from_secs(stored_before_unix);
        let mut report = GcReport::default();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        for entry in fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let entry = entry.map_err(io_err(&self.blobs))?;
            let Ok(sha) = entry.file_name().to_string_lossy().parse::<Sha256>() else {
                continue; // temp files and strangers
            };
            let path = entry.path();
            let meta = entry.metadata().map_err(io_err(&path))?;
            let modified = meta.modified().map_err(io_err(&path))?;
            if referenced.contains(&sha) || modified >= cutoff {
                continue;
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
            report.blobs += 1;
            report.bytes += meta.len();
        }
        sync_dir(&self.blobs).map_err(io_err(&self.blobs))?;
        drop(tx);
        if report.blobs > 0 {
            tracing::info!(
                blobs = report.blobs,
                bytes = report.bytes,
                "deleted unreferenced release blobs"
            );
        }
        Ok(report)
    }

    /// The size of the stored blob `sha`, if stored.
    fn stored_len(&self, sha: &Sha256) -> Result<Option<u64>, Error> {
        let path = self.blobs.join(sha.to_string());
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// The bytes all stored blobs take.
    fn stored_bytes(&self) -> Result<u64, Error> {
        let io_err = |source| Error::Io {
            path: self.blobs.clone(),
            source,
        };
        let mut total = 0u64;
        for entry in fs::read_dir(&self.blobs).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            if entry
                .file_name()
                .to_string_lossy()
                .parse::<Sha256>()
                .is_ok()
            {
                total = total.saturating_add(entry.metadata().map_err(io_err)?.len());
            }
        }
        Ok(total)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: every
        // write is a single statement, so there is no half-done state to fear.
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every blob some stored manifest (of any channel, any sequence) references.
fn referenced_blobs(db: &Connection) -> Result<std::collections::HashSet<Sha256>, Error> {
    let mut stmt = db.prepare("SELECT channel, sequence, envelope FROM manifests")?;
    let mut rows = stmt.query([])?;
    let mut out = std::collections::HashSet::new();
    while let Some(row) = rows.next()? {
        let envelope: Vec<u8> = row.get(2)?;
        let manifest = decode_manifest(&envelope).map_err(|reason| {
            Error::Database(rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Blob,
                format!(
                    "stored manifest {}#{}: {reason}",
                    row.get::<_, String>(0).unwrap_or_default(),
                    row.get::<_, i64>(1).unwrap_or_default()
                )
                .into(),
            ))
        })?;
        out.extend(manifest.referenced_blobs().into_iter().map(|(sha, _)| sha));
    }
    Ok(out)
}

/// The payload of a stored (already verified) manifest envelope. The
/// payload's `"type"` tag lands in `extra`, which is harmless here.
pub fn decode_manifest(envelope: &[u8]) -> Result<ReleaseManifest, String> {
    let envelope = Envelope::from_bytes(envelope).map_err(|e| e.to_string())?;
    serde_json::from_slice(envelope.payload()).map_err(|e| e.to_string())
}

fn migrate(db: &Connection) -> Result<(), Error> {
    db.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<i64> =
        db.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
    match found {
        Some(v) if v > SCHEMA_VERSION => Err(Error::SchemaTooNew {
            found: v,
            supported: SCHEMA_VERSION,
        }),
        Some(_) => Ok(()),
        None => {
            db.execute_batch(
                "BEGIN;
                 CREATE TABLE roots (
                     version INTEGER PRIMARY KEY,
                     envelope BLOB NOT NULL,
                     created_unix INTEGER NOT NULL
                 );
                 CREATE TABLE manifests (
                     channel TEXT NOT NULL,
                     sequence INTEGER NOT NULL,
                     envelope BLOB NOT NULL,
                     versions TEXT NOT NULL,
                     published_unix INTEGER NOT NULL,
                     PRIMARY KEY (channel, sequence)
                 );
                 INSERT INTO schema_version (version) VALUES (1);
                 COMMIT;",
            )?;
            Ok(())
        }
    }
}

fn latest_root(db: &Connection) -> Result<Option<Vec<u8>>, Error> {
    Ok(db
        .query_row(
            "SELECT envelope FROM roots ORDER BY version DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

fn latest_manifest(db: &Connection, channel: &Channel) -> Result<Option<(u64, Vec<u8>)>, Error> {
    let row = db
        .query_row(
            "SELECT sequence, envelope FROM manifests WHERE channel = ?1 ORDER BY sequence DESC LIMIT 1",
            [channel.as_str()],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .optional()?;
    Ok(row)
}

/// SQLite integers are signed: a sequence or version above `i64::MAX` is
/// refused rather than stored negative, which would break `ORDER BY`.
fn to_sql_u64(what: &'static str, v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::TooLarge {
        what,
        limit: i64::MAX as u64,
        got: v,
    })
}

fn remove_leftovers(blobs: &Path) -> Result<(), Error> {
    let io_err = |source| Error::Io {
        path: blobs.to_owned(),
        source,
    };
    for entry in fs::read_dir(blobs).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|source| Error::Io { path, source })?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
