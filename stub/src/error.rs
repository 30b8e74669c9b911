//! Every way the stub can fail, one variant each, with the context an
//! operator needs (which file, which URL, which hash).

use std::path::PathBuf;

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
    #[error(
        "trusted root {path} is version {got}, older than version {trusted} this host trusted before; updates are refused until a root of version {trusted} or later is installed"
    )]
    RootRollback {
        path: PathBuf,
        trusted: u64,
        got: u64,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("update check failed")]
    Update(#[from] outrider_update_client::UpdateError),
    #[error("loading agent library {path}")]
    Load {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error(
        "the run copy {path} hashes to {actual}, not to the verified {expected}; it was not loaded"
    )]
    CopyMismatch {
        path: PathBuf,
        expected: outrider_signing::Sha256,
        actual: outrider_signing::Sha256,
    },
    #[error(
        "directory {path} is unsafe: {reason}; the stub loads code from it and refuses to start"
    )]
    UnsafeDirectory { path: PathBuf, reason: String },
    #[error("agent library {path} refused: {reason}")]
    BadLibrary { path: PathBuf, reason: String },
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("another outrider-agent is running (it holds {lock})")]
    AlreadyRunning { lock: PathBuf },
    #[error("re-executing the stub")]
    Reexec(#[source] std::io::Error),
    #[error("no agent build can run")]
    NoBuild,
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
