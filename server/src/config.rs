//! Server configuration, from command-line flags (and their env variables).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default listen address: loopback only, so a development server is never
/// exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// How often the server pings each agent.
pub const DEFAULT_PING_INTERVAL_SECS: u64 = 15;

/// Silence after which an agent is declared down and its socket closed.
pub const DEFAULT_DOWN_AFTER_SECS: u64 = 45;

/// Settings of one server process.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerConfig {
    /// Directory holding the SQLite database, the release store and tokens.
    #[arg(long, env = "OUTRIDER_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "OUTRIDER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Enrollment token agents present on first registration. Generated into
    /// `<data-dir>/enrollment.token` when not given.
    #[arg(long, env = "OUTRIDER_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,
    /// Seconds between keepalive pings to each agent.
    #[arg(long, default_value_t = DEFAULT_PING_INTERVAL_SECS)]
    pub ping_interval_secs: u64,
    /// Seconds without any frame from an agent before it is declared down.
    #[arg(long, default_value_t = DEFAULT_DOWN_AFTER_SECS)]
    pub down_after_secs: u64,
    /// Write the bound address to this file once listening (for supervisors
    /// and tests that listen on port 0).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Metric retention and outputs (Prometheus, Graphite).
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsConfig,
}

/// `$OUTRIDER_HOME/server`, else `~/.outrider/server` — the place the CLI
/// looks for the admin token by default.
pub fn default_data_dir() -> PathBuf {
    let home = match std::env::var_os("OUTRIDER_HOME") {
        Some(h) => PathBuf::from(h),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".outrider"),
    };
    home.join("server")
}
