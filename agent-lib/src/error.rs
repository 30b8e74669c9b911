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

    /// A URL of `server_url` or `extra_server_urls` (named by `field`) is
    /// not a usable `http://` or `https://` URL.
    #[error("agent.toml field `{field}` = {url:?} is invalid: {reason}")]
    ServerUrl {
        field: &'static str,
        url: String,
        reason: String,
    },

    /// `extra_server_urls` as a whole is unusable: empty, too long, or it
    /// repeats a URL.
    #[error("agent.toml field `extra_server_urls` is invalid: {reason}")]
    ServerUrlList { reason: String },

    /// A URL of `server_url` or `extra_server_urls` (named by `field`) is
    /// plain `http://` to a host that is not loopback, and `allow_plain_ws`
    /// is not set.
    #[error(
        "agent.toml field `{field}` = {url:?} is plain http:// to a host that is not loopback; \
         use https://, or set `allow_plain_ws = true` if the network path is trusted"
    )]
    PlainWsRefused { field: &'static str, url: String },

    /// `tls_ca_file` cannot be read or holds no usable PEM certificate.
    #[error("agent.toml field `tls_ca_file` = {path}: {reason}")]
    TlsCaFile { path: PathBuf, reason: String },

    /// A tag in agent.toml breaks the naming rule.
    #[error("agent.toml field `tags`: {tag:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'")]
    BadTag { tag: String },

    /// `spool_max_mb` in agent.toml is outside its range.
    #[error("agent.toml field `spool_max_mb` = {value} is out of range; use {min} to {max} (MiB)")]
    SpoolMaxMb { value: u64, min: u64, max: u64 },

    /// A `[listeners]` address in agent.toml is unusable or not loopback.
    #[error("agent.toml field `[listeners] {key}` = {value:?} {reason}")]
    ListenerAddress {
        key: &'static str,
        value: String,
        reason: String,
    },

    /// A `[listeners]` number in agent.toml is out of range.
    #[error("agent.toml field `[listeners] {key}`: {reason}")]
    ListenerSetting { key: &'static str, reason: String },

    /// An `allowed_commands` entry of agent.toml `[policy]` is unusable.
    #[error("agent.toml field `[policy] allowed_commands`: {entry:?} {reason}")]
    PolicyEntry { entry: String, reason: String },

    /// A cached plugin no longer hashes to its name (changed after it
    /// was downloaded); it was removed and is downloaded again.
    #[error(
        "plugin {name} ({}) was modified after download (it now hashes to {actual}); it was \
         removed and not run, and is downloaded again",
        path.display()
    )]
    PluginModified {
        name: String,
        path: PathBuf,
        actual: String,
    },

    /// The TLS client could not be set up (no usable protocol version or root).
    #[error("cannot set up TLS: {0}")]
    TlsSetup(#[source] rustls::Error),

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

    /// A metric sample handed to the outbox cannot be stored (see
    /// `outbox/samples.rs`); nothing of its batch was stored.
    #[error("metric sample {name:?} {reason}; the samples pushed with it were not stored")]
    MetricSample { name: String, reason: String },

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

    /// No frame (not even a pong) arrived for the keepalive timeout.
    #[error("the server sent nothing for {silent_ms} ms despite pings; the connection is dead")]
    KeepaliveTimeout { silent_ms: u128 },

    /// The server name did not resolve and no fallback address answered.
    #[error("cannot resolve {host} ({reason}); no fallback address answered")]
    Resolve { host: String, reason: String },

    /// The server sent a configuration that fails validation; the previous
    /// configuration keeps running.
    #[error("refusing config version {version} from the server: {source}")]
    BadConfig {
        version: u64,
        #[source]
        source: outrider_protocol::CheckSpecError,
    },

    /// A downloaded plugin does not hash to the value the config names.
    #[error("plugin {name}: downloaded bytes hash to {actual}, the config says {expected}")]
    PluginHashMismatch {
        name: String,
        expected: String,
        actual: String,
    },

    /// The server sent more plugin bytes than the config declares.
    #[error("plugin {name}: the server sent more than the declared {declared} bytes")]
    PluginTooLarge { name: String, declared: u64 },

    /// A plugin chunk is malformed or out of order.
    #[error("plugin {name}: bad chunk: {reason}")]
    PluginChunk { name: String, reason: String },

    /// The server does not have the plugin.
    #[error("plugin {name}: the server has no file {sha256}: {reason}")]
    PluginMissing {
        name: String,
        sha256: String,
        reason: String,
    },

    /// A plugin file could not be written or installed.
    #[error("plugin file {path}: {source}")]
    PluginIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The state blob handed over by the previous generation is unusable;
    /// the agent starts without it (the spool still holds every result).
    #[error("the previous generation's state blob {reason}")]
    StateBlob { reason: String },

    /// `<data_dir>/connection.json` cannot be read or parsed; the agent
    /// starts without DNS fallback addresses.
    #[error("connection memory {path}: {reason}")]
    ConnectionMemory { path: PathBuf, reason: String },

    /// A collector definition breaks a rule; `field` names the offending
    /// field (`argv[0]`, `plugins[1].mount_points[0]`…), `reason` the rule.
    #[error("collector {collector:?}: field `{field}` {reason}")]
    CollectorSpec {
        collector: String,
        field: String,
        reason: String,
    },

    /// The last collector set received (`collectors/assigned.json`) could
    /// not be read, parsed or written.
    #[error("{}: {reason}", path.display())]
    AssignedCollectors { path: PathBuf, reason: String },

    /// A collector's rendered configuration or log file could not be written.
    #[error("collector {collector:?}: {path}: {source}")]
    CollectorIo {
        collector: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The result spool directory cannot be created or listed.
    #[error("result spool {path}: {source}")]
    Spool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
                | AgentError::ServerUrlList { .. }
                | AgentError::PlainWsRefused { .. }
                | AgentError::TlsCaFile { .. }
                | AgentError::BadTag { .. }
                | AgentError::SpoolMaxMb { .. }
                | AgentError::ListenerAddress { .. }
                | AgentError::ListenerSetting { .. }
                | AgentError::PolicyEntry { .. }
                | AgentError::TlsSetup(_)
                | AgentError::IdentityIo { .. }
                | AgentError::IdentityMalformed { .. }
                | AgentError::Spool { .. }
        )
    }
}

impl From<tungstenite::Error> for AgentError {
    fn from(e: tungstenite::Error) -> Self {
        AgentError::WebSocket(Box::new(e))
    }
}
