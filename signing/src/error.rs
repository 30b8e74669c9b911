//! The one error type of this crate.
//!
//! Every security outcome of verification is its own variant, so callers (the
//! stub, the release store) and tests can tell a bad signature from a rollback
//! from an expired manifest without matching on strings.

use std::path::PathBuf;

use crate::key::{KeyId, KeyRole};
use crate::manifest::Channel;
use crate::sha::Sha256;

/// Everything that can go wrong while creating, reading or verifying keys and
/// signed metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input that does not parse as what it claims to be.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },

    /// Input larger than the limit for its kind; refused before parsing.
    #[error("{what} is {got} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        limit: u64,
        got: u64,
    },

    /// A signature by a trusted key does not verify over the payload.
    #[error("the signature by trusted key {keyid} does not verify")]
    BadSignature { keyid: KeyId },

    /// The same trusted key signed more than once; it would otherwise be
    /// counted twice toward a threshold.
    #[error("key {keyid} signed the metadata more than once")]
    DuplicateKey { keyid: KeyId },

    /// Fewer valid signatures by trusted, unexpired keys than the threshold.
    #[error("{have} valid {role} signature(s), {need} required")]
    BelowThreshold { role: KeyRole, have: u32, need: u32 },

    /// Metadata whose expiry time has passed (a freeze attack, or a stale
    /// repository that needs re-signing).
    #[error("{what} expired at unix time {expired_at} (now {now})")]
    Expired {
        what: &'static str,
        expired_at: u64,
        now: u64,
    },

    /// A manifest with a lower sequence (or a root with a lower or equal
    /// version) than one already seen.
    #[error("rollback refused: already saw {seen}, got {got}")]
    Rollback { seen: u64, got: u64 },

    /// A manifest with the sequence already seen but different content.
    #[error("replay refused: sequence {sequence} was already seen with different content")]
    Replay { sequence: u64 },

    /// A manifest signed for another channel (mix-and-match).
    #[error("manifest is for channel {got:?}, expected {expected:?}")]
    WrongChannel { expected: Channel, got: Channel },

    /// Signed metadata of another type, e.g. a root passed as a manifest.
    #[error("signed metadata has type {got:?}, expected {expected:?}")]
    WrongPayloadType { expected: String, got: String },

    /// Content whose SHA-256 is not the declared one.
    #[error("{what}: expected sha256 {expected}, got {actual}")]
    HashMismatch {
        what: String,
        expected: Sha256,
        actual: Sha256,
    },

    /// A manifest without an entry for the requested target triple.
    #[error("manifest has no build for target {triple:?}")]
    NoTarget { triple: String },

    /// A root that skips versions; roots must be walked one version at a time.
    #[error("root version {got} does not follow the trusted version {current} (expected {})", current + 1)]
    RootVersionSkipped { current: u64, got: u64 },

    /// A threshold of zero, or larger than the number of keys that could meet it.
    #[error("{role} threshold {threshold} is invalid with {keys} key(s)")]
    InvalidThreshold {
        role: KeyRole,
        threshold: u32,
        keys: usize,
    },

    /// A key of the wrong role for the job (a root key used to sign a manifest).
    #[error("key {keyid} has role {got}, expected a {expected} key")]
    WrongKeyRole {
        keyid: KeyId,
        expected: KeyRole,
        got: KeyRole,
    },

    /// Refused to overwrite an existing key file.
    #[error("key file {} already exists; refusing to overwrite it", path.display())]
    KeyFileExists { path: PathBuf },

    /// A private key file readable by group or others.
    #[error("key file {} has mode {mode:o}; it must not be readable by group or others (chmod 600)", path.display())]
    KeyFilePermissions { path: PathBuf, mode: u32 },

    /// The operating system's random number generator failed.
    #[error("cannot get randomness from the operating system: {reason}")]
    Entropy { reason: String },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// More root rotations to follow than a walk accepts in one go.
    #[error("more than {limit} root versions follow version {from}; refusing to walk further")]
    RootChainTooLong { from: u64, limit: u64 },
}
