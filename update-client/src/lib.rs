//! The client side of Outrider updates, used by the stub and tested alone.
//!
//! One update check, in the order of DESIGN.md §5 (each step a distinct
//! [`UpdateError`]):
//! 1. **Root chain** ([`UpdateClient::refresh_root`]): fetch
//!    `roots/<v+1>.json`, `roots/<v+2>.json`, … and accept each only if a
//!    threshold of the previous root *and* of itself signed it; the newest
//!    must not be expired.
//! 2. **Manifest** ([`UpdateClient::fetch_manifest`]): at most 1 MiB,
//!    verified against the root: signatures, threshold, type, channel,
//!    expiry, and the persisted sequence floor (rollback, replay).
//! 3. **Plan** ([`plan`]): this platform's target, this ABI major; the
//!    staged rollout decides by `bucket(fingerprint, salt) < basis points`,
//!    computed here so a static CDN can host the whole repository. Outside
//!    the cohort a client keeps what it runs (or takes `previous` on a fresh
//!    install); inside it takes the target, by delta when one exists for the
//!    build it runs.
//! 4. **Fetch** ([`UpdateClient::fetch`]): downloads are resumable (HTTP
//!    Range into `downloads/<sha>.part`), capped at the declared size while
//!    streaming, and hash-checked; a delta is applied with a memory cap from
//!    the declared sizes and the result must hash to the manifest's value,
//!    else the full artifact is fetched instead.
//!
//! Nothing is written outside `downloads/`; installing the verified bytes
//! is the caller's job.

mod download;
mod error;
mod output;
mod plan;
pub mod tls;
mod transport;

use std::path::{Path, PathBuf};

use outrider_signing::{
    Artifact, Channel, DeltaFormat, ManifestPolicy, SequenceFloor, Sha256, TrustedRoot,
    VerifiedManifest,
};
use tracing::{info, warn};

pub use crate::error::UpdateError;
pub use crate::plan::{ClientView, Install, Plan, plan};
pub use crate::transport::{Body, FileTransport, HttpTransport, Transport};

/// Largest manifest or root document fetched.
pub const MAX_METADATA_BYTES: u64 = outrider_signing::MAX_METADATA_BYTES as u64;
/// Longest root chain walked in one check (a bound, not an expectation).
pub const MAX_ROOT_STEPS: u64 = outrider_signing::MAX_ROOT_WALK;

/// How a build was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A delta of this format applied to the build the client runs.
    Delta(DeltaFormat),
    /// The full artifact.
    Full,
}

/// A verified library, written to the destination the caller chose.
#[derive(Debug)]
pub struct Fetched {
    /// How it was obtained.
    pub via: Via,
    /// Why the delta was not used, when one was planned but failed.
    pub delta_failure: Option<UpdateError>,
}

/// Talks to one update repository for one channel and platform.
#[derive(Debug)]
pub struct UpdateClient<T: Transport> {
    transport: T,
    channel: Channel,
    downloads: PathBuf,
}

impl<T: Transport> UpdateClient<T> {
    /// A client reading from `transport`, keeping partial downloads in
    /// `downloads` (created when needed).
    pub fn new(transport: T, channel: Channel, downloads: &Path) -> UpdateClient<T> {
        UpdateClient {
            transport,
            channel,
            downloads: downloads.to_owned(),
        }
    }

    /// Step 1: walks the root chain from `trusted` to the newest root the
    /// repository has. Returns `trusted` itself when nothing newer exists.
    ///
    /// Fails when a successor does not verify (each signing error is its own
    /// variant), the chain is longer than [`MAX_ROOT_STEPS`], or the newest
    /// root has expired.
    pub fn refresh_root(
        &self,
        trusted: &TrustedRoot,
        now_unix: u64,
    ) -> Result<TrustedRoot, UpdateError> {
        use outrider_signing::WalkError;
        let fetch = |version: u64| {
            download::small(
                &self.transport,
                &format!("roots/{version}.json"),
                MAX_METADATA_BYTES,
                "root",
            )
        };
        let newest =
            outrider_signing::walk_roots_with_limit(trusted, fetch, now_unix, MAX_ROOT_STEPS)
                .map_err(|e| match e {
                    WalkError::Fetch { source, .. } => source,
                    WalkError::Verify {
                        source: outrider_signing::Error::RootChainTooLong { .. },
                        ..
                    } => UpdateError::RootChainTooLong {
                        steps: MAX_ROOT_STEPS,
                    },
                    WalkError::Verify { source, .. } => UpdateError::Root(source),
                    // A variant added to signing later: refuse, naming it.
                    other => UpdateError::Transport {
                        url: "roots/".into(),
                        reason: other.to_string(),
                    },
                })?;
        if newest.root().version != trusted.root().version {
            info!(
                version = newest.root().version,
                "accepted a new update root"
            );
        }
        Ok(newest)
    }

    /// Step 2: fetches and verifies the channel manifest.
    pub fn fetch_manifest(
        &self,
        root: &TrustedRoot,
        floor: Option<SequenceFloor>,
        now_unix: u64,
    ) -> Result<VerifiedManifest, UpdateError> {
        let path = format!("channels/{}/manifest.json", self.channel);
        let bytes = download::small(&self.transport, &path, MAX_METADATA_BYTES, "manifest")?
            .ok_or_else(|| UpdateError::NoManifest {
                channel: self.channel.to_string(),
            })?;
        let policy = ManifestPolicy {
            channel: &self.channel,
            now_unix,
            floor,
        };
        outrider_signing::verify_manifest(root, &bytes, &policy).map_err(UpdateError::Manifest)
    }

    /// Step 4: writes the planned build to `dest`, by delta from `base`
    /// (the library the client runs) when the plan has one, else — or when
    /// the delta fails in any way — from the full artifact. On success
    /// `dest` holds exactly the library the manifest names, fsynced; on
    /// failure it does not exist.
    pub fn fetch(
        &self,
        install: &Install,
        base: Option<&[u8]>,
        dest: &Path,
    ) -> Result<Fetched, UpdateError> {
        let mut delta_failure = None;
        if let (Some(delta), Some(base)) = (&install.delta, base) {
            match self.fetch_delta(&install.artifact, delta, base, dest) {
                Ok(()) => {
                    return Ok(Fetched {
                        via: Via::Delta(delta.format),
                        delta_failure: None,
                    });
                }
                Err(e) => {
                    warn!("delta update failed, falling back to the full build: {e}");
                    delta_failure = Some(e);
                }
            }
        }
        self.fetch_full(&install.artifact, dest)?;
        Ok(Fetched {
            via: Via::Full,
            delta_failure,
        })
    }

    /// Downloads a full artifact and writes the verified library to `dest`.
    pub fn fetch_full(&self, artifact: &Artifact, dest: &Path) -> Result<(), UpdateError> {
        let blob = download::blob(
            &self.transport,
            &self.downloads,
            &artifact.zstd_sha256,
            artifact.zstd_size,
            "compressed build",
        )?;
        output::write_verified(dest, artifact, "agent library", |out| {
            decompress_to(&blob, artifact.size, &artifact.sha256, out)
        })
    }

    /// Downloads a delta, applies it to `base` and writes the verified
    /// result to `dest`.
    pub fn fetch_delta(
        &self,
        artifact: &Artifact,
        delta: &outrider_signing::Delta,
        base: &[u8],
        dest: &Path,
    ) -> Result<(), UpdateError> {
        let patch = download::blob(
            &self.transport,
            &self.downloads,
            &delta.sha256,
            delta.size,
            "delta",
        )?;
        output::write_verified(dest, artifact, "library rebuilt from delta", |out| {
            outrider_delta::apply_to(delta.format, base, &patch, artifact.size, out).map_err(
                |source| UpdateError::Delta {
                    format: delta.format,
                    source,
                },
            )
        })
    }
}

/// The time to verify expiry against: the later of the system clock and the
/// client's time floor (see [`next_time_floor`]).
///
/// A clock set back (by mistake or by an attacker who controls NTP) must not
/// revive a manifest that has already expired for this client: the freeze
/// attack.
pub fn trusted_now(system_now_unix: u64, time_floor: Option<u64>) -> u64 {
    system_now_unix.max(time_floor.unwrap_or(0))
}

/// The time floor to persist after a check made at `now`: it only grows,
/// and never beyond the expiry of the newest manifest this client verified.
/// That cap matters when the clock runs far *ahead*: the floor stops at the
/// current manifest's expiry, so once the clock is fixed the next re-signed
/// manifest (with a later expiry) is accepted again instead of every
/// manifest looking expired until that future date.
pub fn next_time_floor(
    time_floor: Option<u64>,
    now: u64,
    newest_expiry: Option<u64>,
) -> Option<u64> {
    match newest_expiry {
        Some(expiry) => Some(time_floor.unwrap_or(0).max(now.min(expiry))),
        None => time_floor,
    }
}

/// Streams the decompression of a zstd blob into `out`, refusing output
/// beyond `size` bytes (a zstd bomb stops at the cap instead of filling the
/// disk or memory).
pub fn decompress_to(
    compressed: &[u8],
    size: u64,
    sha256: &Sha256,
    out: &mut dyn std::io::Write,
) -> Result<(), UpdateError> {
    use std::io::Read;
    let fail = |reason: String| UpdateError::Decompress {
        sha256: *sha256,
        reason,
    };
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(|e| fail(e.to_string()))?;
    let written =
        std::io::copy(&mut decoder.take(size + 1), out).map_err(|e| fail(e.to_string()))?;
    if written > size {
        return Err(UpdateError::TooLarge {
            what: "decompressed build",
            limit: size,
        });
    }
    Ok(())
}

/// Checks that `bytes` hash to `expected`.
pub fn check_hash(what: &'static str, expected: &Sha256, bytes: &[u8]) -> Result<(), UpdateError> {
    let actual = outrider_signing::sha256(bytes);
    if &actual != expected {
        return Err(UpdateError::HashMismatch {
            what,
            expected: *expected,
            actual,
        });
    }
    Ok(())
}
