//! Every way the stub can fail, one variant each, with the context an
//! operator needs (which file, which URL, which hash).

use std::path::PathBuf;

use outrider_signing::Sha256;

/// A stub failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StubError {
    #[error("configuration {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("trusted root {path} is unusable")]
    Root {
        path: PathBuf,
        source: outrider_signing::Error,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("fetching {url}")]
    Http {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("channel {channel} has no published manifest at {url}")]
    NoManifest { channel: String, url: String },
    #[error("manifest of channel {channel} refused")]
    Manifest {
        channel: String,
        source: outrider_signing::Error,
    },
    #[error("manifest of channel {channel} has no build for this platform ({triple})")]
    NoTarget { channel: String, triple: String },
    #[error("build {version} speaks ABI {got}, this stub speaks {ours}")]
    AbiMajor {
        version: String,
        got: u32,
        ours: u32,
    },
    #[error("download of {what} from {url} exceeds its declared size of {limit} bytes")]
    TooLarge {
        what: &'static str,
        url: String,
        limit: u64,
    },
    #[error("download of {what} from {url} ended after {got} of {expected} bytes")]
    Truncated {
        what: &'static str,
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("hash mismatch for {what}: expected sha256 {expected}, got {actual}")]
    HashMismatch {
        what: &'static str,
        expected: Sha256,
        actual: Sha256,
    },
    #[error("decompressing build {sha256}")]
    Decompress {
        sha256: Sha256,
        source: std::io::Error,
    },
    #[error("loading agent library {path}")]
    Load {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error("agent library {path} refused: {reason}")]
    BadLibrary { path: PathBuf, reason: String },
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("agent library did not stop within {secs} s")]
    StopTimeout { secs: u64 },
    #[error("agent library panicked outside its panic guard")]
    GenerationPanicked,
    #[error("agent library stopped with status {status}")]
    AgentFailed { status: i32 },
}

impl StubError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StubError {
        let path = path.into();
        move |source| StubError::Io {
            action,
            path,
            source,
        }
    }
}

/// Formats an error with its whole source chain on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
