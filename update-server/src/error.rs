//! The one error type of the release store.

use std::path::PathBuf;

use outrider_signing::{Channel, Sha256};

/// Everything the release store can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Signed metadata failed verification or did not parse; the inner error
    /// says which check failed.
    #[error(transparent)]
    Signing(#[from] outrider_signing::Error),

    /// A manifest was uploaded before any root.
    #[error("no root has been uploaded yet; upload root.json first")]
    NoRoot,

    /// A manifest whose sequence is not above the channel's current one.
    #[error(
        "channel {channel} is already at sequence {current}; a new manifest needs a higher sequence than {got}"
    )]
    StaleSequence {
        channel: Channel,
        current: u64,
        got: u64,
    },

    /// A manifest that references a blob the store does not hold.
    #[error("the manifest references blob {sha256}, which has not been uploaded")]
    MissingBlob { sha256: Sha256 },

    /// A manifest whose declared blob size differs from the stored blob.
    #[error(
        "the manifest declares blob {sha256} as {declared} bytes, but the stored blob has {actual}"
    )]
    BlobSize {
        sha256: Sha256,
        declared: u64,
        actual: u64,
    },

    /// An uploaded blob whose content does not hash to its name.
    #[error("the uploaded blob hashes to {actual}, not to its name {expected}")]
    HashMismatch { expected: Sha256, actual: Sha256 },

    /// Reading an uploaded body failed (the client went away, or sent a
    /// malformed body); nothing of it was kept.
    #[error("reading the upload failed: {0}")]
    Upload(String),

    /// An upload above the size limit.
    #[error("the {what} is {got} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        limit: u64,
        got: u64,
    },

    /// A new blob would take the stored blobs above the total cap.
    #[error(
        "storing {got} more bytes would take the release blobs to {} bytes, above the total cap of {limit} bytes; delete unreferenced blobs or raise the cap", used.saturating_add(*got)
    )]
    StorageFull { limit: u64, used: u64, got: u64 },

    /// A storage backend other than the directory store failed (for
    /// example PostgreSQL); the inner error says how.
    #[error("release storage: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The database was written by a newer version of this software.
    #[error(
        "the release database has schema version {found}; this build supports up to {supported}"
    )]
    SchemaTooNew { found: i64, supported: i64 },

    /// SQLite failed.
    #[error("release database: {0}")]
    Database(#[from] rusqlite::Error),

    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
