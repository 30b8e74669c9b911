//! The connection's time limits, part of [`super::AgentSettings`].
//!
//! Defined here rather than in `connection.rs` so the configuration imports
//! nothing of the connection it configures (`config` is a leaf module).

use std::time::Duration;

/// Time allowed per address for TCP connect, TLS and the websocket upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for each handshake message from the server.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the system resolver.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between the agent's pings.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Silence (no frame at all, pongs included) after which the session is lost.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(45);
/// Time allowed for Goodbye plus the close handshake on stop.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for sending one frame before the session counts as lost.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the server to answer one `GetPlugin`.
pub const PLUGIN_CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// First retry ceiling of a plugin whose download failed (see
/// `PluginRetries` in `plugins.rs`); the ceiling doubles per failure.
pub const PLUGIN_RETRY: Duration = Duration::from_secs(60);
/// Largest retry ceiling of a plugin whose download keeps failing.
pub const PLUGIN_RETRY_CAP: Duration = Duration::from_secs(3600);
/// Shortest wait after the server rejected us.
pub const REJECTED_RETRY: Duration = Duration::from_secs(60);
/// The connection's time limits; [`Default`] is the named constants of this module.
/// Tests shorten them; production never changes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionTiming {
    /// Per address: TCP connect, TLS and the websocket upgrade.
    pub connect_timeout: Duration,
    /// Per handshake message from the server.
    pub handshake_timeout: Duration,
    /// The system resolver's answer.
    pub dns_timeout: Duration,
    /// Time between the agent's pings.
    pub keepalive_interval: Duration,
    /// Silence after which a session is lost.
    pub keepalive_timeout: Duration,
    /// Goodbye plus the close handshake.
    pub close_timeout: Duration,
    /// Sending one frame.
    pub send_timeout: Duration,
    /// The server's answer to one `GetPlugin`.
    pub plugin_chunk_timeout: Duration,
    /// First retry ceiling of a plugin that failed to download.
    pub plugin_retry: Duration,
    /// Largest retry ceiling of a plugin that keeps failing.
    pub plugin_retry_cap: Duration,
    /// Shortest wait after a `Rejected`.
    pub rejected_retry: Duration,
}

impl Default for ConnectionTiming {
    fn default() -> Self {
        ConnectionTiming {
            connect_timeout: CONNECT_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            dns_timeout: DNS_TIMEOUT,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            close_timeout: CLOSE_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
            plugin_chunk_timeout: PLUGIN_CHUNK_TIMEOUT,
            plugin_retry: PLUGIN_RETRY,
            plugin_retry_cap: PLUGIN_RETRY_CAP,
            rejected_retry: REJECTED_RETRY,
        }
    }
}
