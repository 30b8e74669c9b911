//! The storage seam of the release repository: [`ArtefactStore`].
//!
//! A release repository holds two kinds of artefacts: content-addressed
//! blobs (zstd builds, deltas, stubs; large, immutable, named by their
//! sha256) and small signed documents (root versions; per-channel manifests
//! with their history). [`ArtefactStore`] is what every backend offers, so
//! that several server nodes can share one: the directory store
//! ([`crate::ReleaseStore`], one node) implements it here, and the server
//! implements it on PostgreSQL (`server/src/backend/postgres/artefacts.rs`)
//! without this crate depending on the server.
//!
//! The rules of what is accepted are pure functions of this module
//! ([`root_decision`], [`manifest_decision`], [`check_blob`],
//! [`check_total`], [`check_reference`]) that every backend calls, so the
//! backends differ only in how they make a decision and its write atomic
//! against other writers, never in what they decide.

use std::future::Future;
use std::ops::Range;

use axum::body::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use outrider_signing::{Channel, ReleaseManifest, Sha256, TrustedRoot, sha256};
use sha2::Digest;

use crate::Error;
use crate::store::{BuildInfo, ChannelInfo};

/// A blob's bytes as a stream of chunks, so a build is served without
/// holding it whole in memory.
pub type BlobStream = BoxStream<'static, Result<Bytes, Error>>;

/// Limits on stored blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobCaps {
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
    /// Most bytes all stored blobs together may take.
    pub max_total_bytes: u64,
}

impl Default for BlobCaps {
    /// The directory store's limits: [`crate::MAX_BLOB_BYTES`] per blob and
    /// no total (the disk is the limit).
    fn default() -> BlobCaps {
        BlobCaps {
            max_blob_bytes: crate::MAX_BLOB_BYTES,
            max_total_bytes: u64::MAX,
        }
    }
}

/// What one garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: u64,
    pub bytes: u64,
}

/// What a store does with an uploaded root.
#[derive(Debug)]
pub enum RootDecision {
    /// The exact bytes of the current root: nothing to store.
    AlreadyCurrent,
    /// Store it as this verified root.
    Store(TrustedRoot),
}

/// What a store does with an uploaded (verified) manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestDecision {
    /// The exact bytes of the channel's current manifest at this sequence:
    /// nothing to store.
    AlreadyCurrent(u64),
    /// Store it: its sequence is above the channel's current one.
    Store,
}

/// Decides on an uploaded root given the `current` root's bytes. The first
/// root must be self-signed and unexpired at `now`; the current root's
/// exact bytes are a no-op; any other must be the verified successor of the
/// current one (version + 1, threshold of old and new keys), unexpired.
pub fn root_decision(
    current: Option<&[u8]>,
    envelope: &[u8],
    now: u64,
) -> Result<RootDecision, Error> {
    match current {
        None => Ok(RootDecision::Store(TrustedRoot::from_bytes_self_signed(
            envelope, now,
        )?)),
        Some(current) if current == envelope => Ok(RootDecision::AlreadyCurrent),
        Some(current) => {
            // The stored root verified when it was stored; time 0 skips its
            // expiry check so that an expired root can still be rotated.
            let current = TrustedRoot::from_bytes_self_signed(current, 0)?;
            let next = current.successor(envelope)?;
            next.check_expiry(now)?;
            Ok(RootDecision::Store(next))
        }
    }
}

/// Decides on a verified manifest of `channel` with `sequence` and bytes
/// `envelope`, given the channel's `current` (sequence, bytes): the same
/// bytes again are a no-op, a sequence not above the current one is refused
/// ([`Error::StaleSequence`]; this is what stops a replay of an older
/// manifest), anything else is stored.
pub fn manifest_decision(
    channel: &Channel,
    current: Option<(u64, &[u8])>,
    sequence: u64,
    envelope: &[u8],
) -> Result<ManifestDecision, Error> {
    match current {
        Some((current, bytes)) if bytes == envelope => {
            Ok(ManifestDecision::AlreadyCurrent(current))
        }
        Some((current, _)) if sequence <= current => Err(Error::StaleSequence {
            channel: channel.clone(),
            current,
            got: sequence,
        }),
        _ => Ok(ManifestDecision::Store),
    }
}

/// Checks an uploaded blob against the per-blob cap ([`Error::TooLarge`])
/// and its name ([`Error::HashMismatch`]), in that order, so that an
/// oversized upload is refused without hashing it.
pub fn check_blob(expected: &Sha256, bytes: &[u8], max_blob_bytes: u64) -> Result<(), Error> {
    if bytes.len() as u64 > max_blob_bytes {
        return Err(Error::TooLarge {
            what: "blob",
            limit: max_blob_bytes,
            got: bytes.len() as u64,
        });
    }
    let actual = sha256(bytes);
    if actual != *expected {
        return Err(Error::HashMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

/// A streamed blob upload being counted and hashed: refused as soon as it
/// passes the per-blob cap, so an oversized body is never read whole.
#[derive(Debug)]
pub struct BlobIntake {
    hasher: sha2::Sha256,
    size: u64,
    max_blob_bytes: u64,
}

impl BlobIntake {
    pub fn new(max_blob_bytes: u64) -> BlobIntake {
        BlobIntake {
            hasher: sha2::Sha256::new(),
            size: 0,
            max_blob_bytes,
        }
    }

    /// Counts and hashes the next piece; [`Error::TooLarge`] (with the
    /// bytes received so far) once past the cap.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), Error> {
        self.size = self.size.saturating_add(piece.len() as u64);
        if self.size > self.max_blob_bytes {
            return Err(Error::TooLarge {
                what: "blob",
                limit: self.max_blob_bytes,
                got: self.size,
            });
        }
        self.hasher.update(piece);
        Ok(())
    }

    /// The whole upload's size once it hashes to `expected`
    /// ([`Error::HashMismatch`] otherwise).
    pub fn finish(self, expected: &Sha256) -> Result<u64, Error> {
        let actual = Sha256::from_bytes(self.hasher.finalize().into());
        if actual != *expected {
            return Err(Error::HashMismatch {
                expected: *expected,
                actual,
            });
        }
        Ok(self.size)
    }
}

/// A body piece, or [`Error::Upload`] naming why reading it failed.
pub fn body_piece<E: std::fmt::Display>(piece: Result<Bytes, E>) -> Result<Bytes, Error> {
    piece.map_err(|e| Error::Upload(e.to_string()))
}

/// Checks that adding a blob of `adding` bytes to `used` stored bytes stays
/// within `max_total_bytes` ([`Error::StorageFull`] otherwise).
pub fn check_total(used: u64, adding: u64, max_total_bytes: u64) -> Result<(), Error> {
    match used.checked_add(adding) {
        Some(total) if total <= max_total_bytes => Ok(()),
        _ => Err(Error::StorageFull {
            limit: max_total_bytes,
            used,
            got: adding,
        }),
    }
}

/// Checks one blob a manifest references: it must be stored (`stored` is
/// its stored size) with the declared size.
pub fn check_reference(sha: Sha256, declared: u64, stored: Option<u64>) -> Result<(), Error> {
    match stored {
        None => Err(Error::MissingBlob { sha256: sha }),
        Some(actual) if actual != declared => Err(Error::BlobSize {
            sha256: sha,
            declared,
            actual,
        }),
        Some(_) => Ok(()),
    }
}

/// Adds the build `manifest` (stored with `sequence`) offers for `triple`
/// to `builds` unless it is already there: walking a channel's history
/// newest first, this lists each distinct build once, with the newest
/// sequence that made it the target.
pub fn note_build(
    builds: &mut Vec<BuildInfo>,
    sequence: u64,
    manifest: &ReleaseManifest,
    triple: &str,
) {
    let Some(target) = manifest.targets.get(triple) else {
        return;
    };
    if builds
        .iter()
        .all(|b| b.artifact.sha256 != target.artifact.sha256)
    {
        builds.push(BuildInfo {
            version: target.version.clone(),
            abi_major: target.abi_major,
            artifact: target.artifact.clone(),
            sequence,
        });
    }
}

/// `range` clamped to a blob of `len` bytes (an empty range when it starts
/// past the end).
pub fn clamp_range(range: Range<u64>, len: u64) -> Range<u64> {
    let end = range.end.min(len);
    range.start.min(end)..end
}

/// Where release artefacts are stored. Every method is safe to call from
/// several nodes sharing one store at once: two uploads of one blob both
/// succeed and store it once; two manifests racing on one channel never
/// both win one sequence, and none lands below the current one.
pub trait ArtefactStore: Send + Sync {
    /// Stores a root envelope as [`root_decision`] decides.
    fn put_root(&self, envelope: Vec<u8>) -> impl Future<Output = Result<(), Error>> + Send;

    /// The current root envelope, if any.
    fn root(&self) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// The root envelope of `version`, if stored.
    fn root_version(
        &self,
        version: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// Stores `bytes` as the blob `expected` after [`check_blob`] (and
    /// [`check_total`] when it is new); a stored blob again is a no-op.
    fn put_blob(
        &self,
        expected: Sha256,
        bytes: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stores the blob `expected` from a streamed `body`, holding one chunk
    /// in memory: refused as soon as it passes the per-blob cap
    /// ([`BlobIntake`]), verified against `expected` at its end, checked
    /// against the total cap when new; nothing of a refused or failed
    /// upload is kept. A stored blob again is a no-op. Returns its size.
    fn put_blob_stream<B, E>(
        &self,
        expected: Sha256,
        body: B,
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        B: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static;

    /// The stored size of blob `sha`, if stored.
    fn blob_len(&self, sha: Sha256) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// Bytes `range` (clamped to the blob, [`clamp_range`]) of blob `sha`
    /// as a stream, or `None` if it is not stored.
    fn read_blob(
        &self,
        sha: Sha256,
        range: Range<u64>,
    ) -> impl Future<Output = Result<Option<BlobStream>, Error>> + Send;

    /// Stores a manifest of `channel` (verified against the current root,
    /// [`manifest_decision`], every referenced blob checked with
    /// [`check_reference`]) and returns its sequence.
    fn put_manifest(
        &self,
        channel: Channel,
        envelope: Vec<u8>,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The current manifest envelope of `channel`, if any.
    fn manifest(
        &self,
        channel: Channel,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// The stored manifest envelopes of `channel`, newest first, at most
    /// `limit`.
    fn manifest_history(
        &self,
        channel: Channel,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, Error>> + Send;

    /// Every channel with its current manifest's sequence and versions, by
    /// name.
    fn channels(&self) -> impl Future<Output = Result<Vec<ChannelInfo>, Error>> + Send;

    /// The distinct builds `channel` has offered for `triple`, newest first
    /// ([`note_build`] over the stored history), at most `limit`.
    fn builds(
        &self,
        channel: Channel,
        triple: String,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<BuildInfo>, Error>> + Send;

    /// Deletes every blob no stored manifest (of any channel, history
    /// included: a rolled-back build is still a base clients may run)
    /// references and that was stored before `stored_before_unix` (the
    /// grace that keeps blobs uploaded for a manifest not yet published).
    fn collect_garbage(
        &self,
        stored_before_unix: u64,
    ) -> impl Future<Output = Result<GcReport, Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch() -> Channel {
        "stable".parse().unwrap()
    }

    #[test]
    fn manifest_decisions() {
        let a: &[u8] = b"manifest a";
        let b: &[u8] = b"manifest b";
        // (current, new sequence, new bytes, expected: Ok(decision) or Err(current, got))
        type Case<'a> = (
            Option<(u64, &'a [u8])>,
            u64,
            &'a [u8],
            Result<ManifestDecision, (u64, u64)>,
        );
        let cases: [Case; 6] = [
            (None, 1, a, Ok(ManifestDecision::Store)),
            (None, 0, a, Ok(ManifestDecision::Store)),
            (Some((1, a)), 1, a, Ok(ManifestDecision::AlreadyCurrent(1))),
            (Some((1, a)), 2, b, Ok(ManifestDecision::Store)),
            (Some((2, a)), 2, b, Err((2, 2))),
            (Some((5, a)), 3, b, Err((5, 3))),
        ];
        for (current, sequence, bytes, expected) in cases {
            let got = manifest_decision(&ch(), current, sequence, bytes);
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{current:?} {sequence}"),
                (
                    Err(Error::StaleSequence {
                        current: c, got, ..
                    }),
                    Err((ec, eg)),
                ) => {
                    assert_eq!((c, got), (ec, eg));
                }
                (got, expected) => panic!("{current:?} {sequence}: {got:?} vs {expected:?}"),
            }
        }
    }

    #[test]
    fn blob_checks() {
        let sha = sha256(b"abc");
        assert!(check_blob(&sha, b"abc", 3).is_ok());
        assert!(matches!(
            check_blob(&sha, b"abcd", 3),
            Err(Error::TooLarge {
                what: "blob",
                limit: 3,
                got: 4
            })
        ));
        assert!(matches!(
            check_blob(&sha, b"abd", 3),
            Err(Error::HashMismatch { .. })
        ));
        // (used, adding, cap, ok)
        for (used, adding, cap, ok) in [
            (0, 10, 10, true),
            (5, 6, 10, false),
            (u64::MAX, 1, u64::MAX, false),
            (0, 0, 0, true),
        ] {
            assert_eq!(
                check_total(used, adding, cap).is_ok(),
                ok,
                "{used} {adding} {cap}"
            );
        }
        let err = check_total(8, 4, 10).unwrap_err().to_string();
        assert!(err.contains("10 bytes"), "{err}");
    }

    #[test]
    fn intake_counts_hashes_and_stops_at_the_cap() {
        let mut intake = BlobIntake::new(6);
        intake.feed(b"abc").unwrap();
        intake.feed(b"def").unwrap();
        assert_eq!(intake.finish(&sha256(b"abcdef")).unwrap(), 6);

        let mut intake = BlobIntake::new(6);
        intake.feed(b"abc").unwrap();
        assert!(matches!(
            intake.finish(&sha256(b"abcdef")),
            Err(Error::HashMismatch { .. })
        ));

        let mut intake = BlobIntake::new(6);
        intake.feed(b"abcd").unwrap();
        assert!(matches!(
            intake.feed(b"efg"),
            Err(Error::TooLarge {
                limit: 6,
                got: 7,
                ..
            })
        ));
    }

    #[test]
    fn reference_checks() {
        let sha = sha256(b"x");
        assert!(check_reference(sha, 3, Some(3)).is_ok());
        assert!(matches!(
            check_reference(sha, 3, None),
            Err(Error::MissingBlob { .. })
        ));
        assert!(matches!(
            check_reference(sha, 3, Some(4)),
            Err(Error::BlobSize {
                declared: 3,
                actual: 4,
                ..
            })
        ));
    }

    #[test]
    fn ranges_are_clamped() {
        for (range, len, expected) in [
            (0..10, 5, 0..5),
            (2..4, 5, 2..4),
            (7..9, 5, 5..5),
            (0..u64::MAX, 0, 0..0),
        ] {
            assert_eq!(clamp_range(range.clone(), len), expected, "{range:?}");
        }
    }
}
