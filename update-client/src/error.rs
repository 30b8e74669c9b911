//! Every way an update check can fail, one variant per outcome so callers
//! (and the attack tests) can tell a tampered download from a network
//! hiccup.

use outrider_signing::{DeltaFormat, Sha256};

/// An update-check failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The transport failed (connection refused, timeout, HTTP 5xx …).
    #[error("fetching {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The TLS client configuration could not be built (an unusable extra
    /// CA certificate).
    #[error("setting up TLS for updates: {reason}")]
    TlsSetup { reason: String },
    /// The server answered 429/503 and asked to wait.
    #[error("{url} asked us to back off")]
    Backoff {
        url: String,
        retry_after_secs: Option<u64>,
    },
    #[error("channel {channel} has no published manifest")]
    NoManifest { channel: String },
    #[error("blob {sha256} ({what}) is not in the repository")]
    MissingBlob { what: &'static str, sha256: Sha256 },
    /// A download went past its declared size (endless data).
    #[error("{what} exceeds its declared size of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("{what} ended after {got} of {expected} bytes")]
    Truncated {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("hash mismatch for {what}: expected sha256 {expected}, got {actual}")]
    HashMismatch {
        what: &'static str,
        expected: Sha256,
        actual: Sha256,
    },
    #[error("decompressing build {sha256}: {reason}")]
    Decompress { sha256: Sha256, reason: String },
    #[error("update root refused")]
    Root(#[source] outrider_signing::Error),
    #[error("the root chain is longer than {steps} versions")]
    RootChainTooLong { steps: u64 },
    #[error("manifest refused")]
    Manifest(#[source] outrider_signing::Error),
    #[error("the manifest has no build for this platform ({triple})")]
    NoTarget { triple: String },
    #[error("build {version} implements ABI {got}, this client speaks {ours}")]
    AbiMajor {
        version: String,
        got: u32,
        ours: u32,
    },
    #[error("applying the {format:?} delta")]
    Delta {
        format: DeltaFormat,
        #[source]
        source: outrider_delta::DeltaError,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl UpdateError {
    /// Whether retrying later may help without anything changing on the
    /// server (network trouble, back-off), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            UpdateError::Transport { .. }
                | UpdateError::Backoff { .. }
                | UpdateError::Truncated { .. }
        )
    }
}
