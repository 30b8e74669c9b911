//! `outrider-signing`: ed25519 keys, signed envelopes, update root and release
//! manifests, and their verification with typed errors (DESIGN §5).
//!
//! - [`KeyPair`]: a role (root or release) and a private key, stored as a
//!   0600 JSON key file.
//! - [`Envelope`]: `{payload, signatures[]}` over exact bytes; signatures are
//!   bound to the payload's type so a root never verifies as a manifest.
//! - [`TrustedRoot`]: the verified root (`root.json`); [`RootBuilder`] makes
//!   roots and rotations, [`walk_roots`] catches a client up with the chain.
//! - [`verify_manifest`]: the per-channel release manifest checks, each
//!   failure its own [`Error`] variant.
//!
//! No async, no network: callers fetch bytes and hand them in, together with
//! the current time.

mod envelope;
mod error;
mod key;
mod manifest;
mod root;
mod sha;

use std::time::{SystemTime, UNIX_EPOCH};

pub use envelope::{DOMAIN_PREFIX, Envelope, MAX_METADATA_BYTES, Signature};
pub use error::Error;
pub use key::{KEY_TYPE, KeyId, KeyPair, KeyRole};
pub use manifest::{
    Artifact, Channel, Delta, DeltaFormat, MAX_CHANNEL_LEN, ManifestPolicy, PreviousBuild,
    ReleaseManifest, Rollout, SequenceFloor, Target, VerifiedManifest, make_manifest,
    rollout_bucket, verify_manifest,
};
pub use root::{
    MAX_ROOT_WALK, ReleaseKey, Root, RootBuilder, TrustedRoot, WalkError, make_root, walk_roots,
    walk_roots_with_limit,
};
pub use sha::{Sha256, sha256};

/// This machine's target triple as used in manifests, e.g. `"x86_64-linux"`.
pub fn host_triple() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// The current time in Unix seconds (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
