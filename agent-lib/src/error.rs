//! The crate's one error type.
//!
//! Variants are named after what failed and carry the input that failed
//! (path, URL, field) plus the source, so the message logged through the host
//! is one clear sentence an operator can act on. [`AgentError::is_config`]
//! separates "the configuration is unusable" (`status::BAD_CONFIG`) from
//! runtime failures (`status::FAILED`).

use std::io;
use std::path::PathBuf;

use tokio_tungstenite::tungstenite;

/// Everything that can go wrong inside the agent library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// `HostApiV1.config` is not the JSON object the stub promised.
    #[error("host config is not valid JSON with `agent_toml` and `config_dir`: {0}")]
    HostConfig(#[source] serde_json::Error),

    /// `agent.toml` does not parse or has an unknown/mistyped field; the
    /// source names the field and line.
    #[error("agent.toml is invalid: {0}")]
    AgentToml(#[source] toml::de::Error),

    /// `server_url` in agent.toml is not a usable `http://` URL.
    #[error("agent.toml field `server_url` = {url:?} is invalid: {reason}")]
    ServerUrl { url: String, reason: String },

    /// `server_url` asks for TLS, which this skeleton build cannot speak yet.
    #[error(
        "agent.toml field `server_url` = {url:?} uses https, but this agent build speaks only \
         plain ws://; wss support comes with the agent connection issue — use http:// for now"
    )]
    TlsUnsupported { url: String },

    /// The identity key could not be read, created or written.
    #[error("identity key {path}: {source}")]
    IdentityIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The identity key file exists but does not hold a 32-byte hex seed.
    #[error(
        "identity key {path} is malformed ({reason}); restore it from backup, or delete it to \
         register this host as a new agent"
    )]
    IdentityMalformed { path: PathBuf, reason: String },

    /// The tokio runtime (or the stop-fd watcher) could not be set up.
    #[error("cannot start the agent runtime: {0}")]
    Runtime(#[source] io::Error),

    /// The websocket could not be opened.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tungstenite::Error>,
    },

    /// The websocket failed during a session.
    #[error("websocket error: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),

    /// The server broke the session protocol (unexpected or undecodable frame).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The server did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),

    /// The server refused the registration.
    #[error("server rejected this agent: {reason}")]
    Rejected { reason: String },

    /// The server closed the connection.
    #[error("server closed the connection{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
}

impl AgentError {
    /// True when the error means the configuration handed in is unusable
    /// (`status::BAD_CONFIG`); identity key problems count, since an operator
    /// has to fix a file before the agent can start.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AgentError::HostConfig(_)
                | AgentError::AgentToml(_)
                | AgentError::ServerUrl { .. }
                | AgentError::TlsUnsupported { .. }
                | AgentError::IdentityIo { .. }
                | AgentError::IdentityMalformed { .. }
        )
    }
}

impl From<tungstenite::Error> for AgentError {
    fn from(e: tungstenite::Error) -> Self {
        AgentError::WebSocket(Box::new(e))
    }
}
