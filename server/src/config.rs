//! Server configuration, from command-line flags (and their env variables).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Default listen address: loopback only, so a development server is never
/// exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// Default address of the web dashboard ([`crate::dashboard`]): the port
/// after the API's, loopback only like it.
pub const DEFAULT_DASHBOARD_LISTEN: &str = "127.0.0.1:8471";

/// Default seconds a dashboard login stays valid without being used.
pub const DEFAULT_DASHBOARD_IDLE_SECS: u64 = 12 * 3600;

/// Default seconds a dashboard login stays valid at most, used or not.
pub const DEFAULT_DASHBOARD_SESSION_SECS: u64 = 7 * 86_400;

/// How often the server pings each agent.
pub const DEFAULT_PING_INTERVAL_SECS: u64 = 15;

/// Silence after which an agent is declared down and its socket closed.
pub const DEFAULT_DOWN_AFTER_SECS: u64 = 45;

/// Agent sessions served at once; an agent over the cap is closed after its
/// hello with websocket code 1013 (try again later) and retries.
pub const DEFAULT_MAX_AGENT_CONNECTIONS: usize = 20_000;

/// Hellos answered at once; more wait their turn for at most
/// `agent_ws::HELLO_QUEUE_WAIT`, then are closed with 1013 and retry.
pub const DEFAULT_MAX_CONCURRENT_HELLOS: usize = 64;

/// Connections accepted per second (with a burst of as many).
pub const DEFAULT_ACCEPT_RATE_PER_SEC: u32 = 2_000;

/// Connections not (yet) carrying an authenticated agent session, at once.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 4_096;

/// Of those, from one client address (an IPv6 /64) at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 64;

/// New connections per second from one client address...
pub const DEFAULT_CONNECTION_RATE_PER_IP: u32 = 100;

/// ...bursting to this many.
pub const DEFAULT_CONNECTION_BURST_PER_IP: u32 = 200;

/// Seconds a client has to send a request's headers, counted from when the
/// server starts waiting for it (so also an idle keep-alive's life).
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECS: u64 = 10;

/// Seconds a response may wait for the client to read it.
pub const DEFAULT_HTTP_IDLE_TIMEOUT_SECS: u64 = 60;

/// Seconds a client has to complete the TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

/// Default window over which the agents of a channel are nudged to check
/// for updates after a release change (see [`crate::nudges`]).
pub const DEFAULT_NUDGE_WINDOW_SECS: u64 = 60;

/// Settings of one server process.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerConfig {
    /// Directory holding the SQLite database, the release store, plugins and tokens.
    #[arg(long, env = "OUTRIDER_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "OUTRIDER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Bootstrap enrollment token agents may present on first registration
    /// (more can be created with `outrider tokens create`). Generated into
    /// `<data-dir>/enrollment.token` when not given.
    #[arg(long, env = "OUTRIDER_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enrollment_token: Option<String>,
    /// File holding the bootstrap enrollment token (mode 0600 or stricter),
    /// instead of `--enrollment-token`, whose value other users can read in
    /// the process list.
    #[arg(
        long,
        env = "OUTRIDER_ENROLLMENT_TOKEN_FILE",
        conflicts_with = "enrollment_token"
    )]
    pub enrollment_token_file: Option<PathBuf>,
    /// Lifetime in seconds of the bootstrap enrollment token, counted from
    /// the first start that saw it (a day by default; at most a year).
    /// Later starts with the same token keep its expiry; a new token (the
    /// file deleted, another `--enrollment-token`) starts a new lifetime.
    #[arg(long, env = "OUTRIDER_ENROLLMENT_TOKEN_EXPIRES_IN_SECS",
          default_value_t = outrider_protocol::api::DEFAULT_TOKEN_EXPIRES_IN_SECS,
          value_parser = clap::value_parser!(u64).range(1..=outrider_protocol::api::MAX_TOKEN_EXPIRES_IN_SECS))]
    pub enrollment_token_expires_in_secs: u64,
    /// Registrations the bootstrap enrollment token allows; unlimited when
    /// not given.
    #[arg(long, env = "OUTRIDER_ENROLLMENT_TOKEN_MAX_USES",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub enrollment_token_max_uses: Option<u32>,
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
    /// PEM certificate chain; with `--tls-key`, the server speaks HTTPS only.
    #[arg(long, env = "OUTRIDER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "OUTRIDER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (a trusted network, or TLS
    /// terminated by a proxy in front). Without it, that is a config error.
    #[arg(long)]
    pub insecure_plain_http: bool,
    /// The URL agents and operators reach this server at (a load balancer,
    /// a TLS-terminating proxy): `/install.sh` names it instead of the
    /// Host of each request.
    #[arg(long, env = "OUTRIDER_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<PublicUrl>,
    /// A proxy in front of this server whose `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` are believed (repeatable); from any other peer
    /// those headers are ignored. Unused with --public-url.
    #[arg(long = "trusted-proxy", value_name = "IP")]
    pub trusted_proxies: Vec<IpAddr>,
    /// IP addresses agents may dial when their DNS fails (sent in every
    /// welcome); default: the address each agent reached.
    #[arg(long = "advertise-addr", value_name = "IP")]
    pub advertise_addrs: Vec<IpAddr>,
    /// Agent sessions served at once.
    #[arg(long, default_value_t = DEFAULT_MAX_AGENT_CONNECTIONS)]
    pub max_agent_connections: usize,
    /// With several nodes (`--database`), agent hellos answered at once
    /// (each costs a few round trips to PostgreSQL): a fleet connecting at
    /// once takes turns, and an agent that waited too long for its turn is
    /// asked to come back (1013) rather than answered after it gave up.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_HELLOS)]
    pub max_concurrent_hellos: usize,
    /// New connections admitted per second, after the per-address limits
    /// (0: unlimited).
    #[arg(long, default_value_t = DEFAULT_ACCEPT_RATE_PER_SEC)]
    pub accept_rate_per_sec: u32,
    /// Connections open at once that do not (yet) carry an authenticated
    /// agent session: admin and API requests, downloads, TLS handshakes,
    /// agents before their hello is verified. Beyond it new connections are
    /// closed at once (`docs/security.md`).
    #[arg(long, default_value_t = DEFAULT_MAX_HTTP_CONNECTIONS)]
    pub max_http_connections: usize,
    /// Of those, from one client address (IPv6: one /64) at once (0: no limit).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: u32,
    /// New connections per second from one client address, so also TLS
    /// handshakes and websocket upgrades (0: no limit).
    #[arg(long, default_value_t = DEFAULT_CONNECTION_RATE_PER_IP)]
    pub connection_rate_per_ip: u32,
    /// New connections one client address may open at once before
    /// `--connection-rate-per-ip` applies.
    #[arg(long, default_value_t = DEFAULT_CONNECTION_BURST_PER_IP)]
    pub connection_burst_per_ip: u32,
    /// Seconds a client has to send a request's headers, counted from when
    /// the server starts waiting for the request: closes slowloris clients
    /// and idle keep-alive connections.
    #[arg(long, default_value_t = DEFAULT_HTTP_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout_secs: u64,
    /// Seconds a response may wait for the client to read it before the
    /// connection is closed.
    #[arg(long, default_value_t = DEFAULT_HTTP_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_idle_timeout_secs: u64,
    /// Seconds a client has to complete the TLS handshake.
    #[arg(long, default_value_t = DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tls_handshake_timeout_secs: u64,
    /// Metric storage and export settings ([`crate::metrics`]).
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsConfig,
    /// The multi-node mode: a shared PostgreSQL database ([`crate::cluster`]).
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterConfig,
    /// Lowest agent protocol version accepted (see `docs/protocol.md`);
    /// raise it only when no agent in the field still needs the old one.
    #[arg(long, default_value_t = outrider_protocol::PROTOCOL_MIN)]
    pub protocol_min: u32,
    /// Highest agent protocol version spoken; lower it to run as an older
    /// server would (tests of mixed fleets).
    #[arg(long, default_value_t = outrider_protocol::PROTOCOL_MAX)]
    pub protocol_max: u32,
    /// Capabilities announced in every welcome and honoured in sessions of
    /// protocol 3 and later; all of [`outrider_protocol::capability::ALL`]
    /// unless a test runs the server as an older one.
    #[arg(skip = default_capabilities())]
    pub capabilities: Vec<String>,
    /// Seconds over which the connected agents of a channel are nudged to
    /// check for updates after a release change of that channel, spread
    /// uniformly so the fleet does not arrive at once (0: all at once).
    #[arg(long, default_value_t = DEFAULT_NUDGE_WINDOW_SECS)]
    pub nudge_window_secs: u64,
    /// Largest release blob (zstd build, delta, stub) an upload may store,
    /// in bytes; at most the upload route's limit of 512 MiB.
    #[arg(long, env = "OUTRIDER_RELEASE_BLOB_MAX_BYTES",
          default_value_t = outrider_update_server::MAX_BLOB_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=outrider_update_server::MAX_BLOB_BYTES))]
    pub release_blob_max_bytes: u64,
    /// Most bytes all release blobs together may take; an upload past it
    /// is refused naming it (HTTP 507). Unset: no cap on the release
    /// directory (its disk is the limit); 8 GiB on a shared `--database`.
    #[arg(long, env = "OUTRIDER_RELEASE_BLOBS_MAX_TOTAL_BYTES")]
    pub release_blobs_max_total_bytes: Option<u64>,
    /// On a shared `--database`: seconds between two collections of the
    /// release blobs no manifest references (one node collects at a time).
    /// The release directory of a single node is not collected.
    #[arg(long, default_value_t = crate::releases::DEFAULT_RELEASE_GC_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub release_gc_interval_secs: u64,
    /// On a shared `--database`: seconds an unreferenced release blob is
    /// kept after its last upload (the time between uploading a build and
    /// publishing the manifest that names it).
    #[arg(long, default_value_t = crate::releases::DEFAULT_RELEASE_GC_GRACE_SECS)]
    pub release_gc_grace_secs: u64,
    /// Alerting settings file: JSON of `outrider_alerting::Config` (gates,
    /// `down_for_ms`, grouping timers…, see `alerting/src/config.rs`);
    /// without it the documented defaults apply.
    #[arg(long, env = "OUTRIDER_ALERTING_CONFIG")]
    pub alerting_config: Option<PathBuf>,
    /// Alerting settings when no `--alerting-config` is given (tests set
    /// them directly).
    #[arg(skip)]
    pub alerting: outrider_alerting::Config,
    /// Milliseconds between two ticks of the alert engine: the resolution
    /// of its timers.
    #[arg(long, default_value_t = crate::alerts::DEFAULT_TICK_MS,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub alert_tick_ms: u64,
    /// Milliseconds a Goodbye waits for the agent to come back (a hot swap
    /// says Goodbye too) before alerting counts it as deregistered.
    #[arg(long, default_value_t = crate::alerts::DEFAULT_GOODBYE_GRACE_MS)]
    pub alert_goodbye_grace_ms: u64,
    /// Which check names agents' results may carry (see
    /// `server/src/ingest/names.rs`); not a flag: only tests that speak for
    /// agents without configuring their checks relax it.
    #[arg(skip)]
    pub result_names: ResultNames,
    /// Address of the web dashboard (its own port; HTTPS with the same
    /// certificate when `--tls-cert` is given).
    #[arg(long, env = "OUTRIDER_DASHBOARD_LISTEN", default_value = DEFAULT_DASHBOARD_LISTEN)]
    pub dashboard_listen: SocketAddr,
    /// Serves no dashboard.
    #[arg(long)]
    pub no_dashboard: bool,
    /// Seconds a dashboard login stays valid without a request.
    #[arg(long, default_value_t = DEFAULT_DASHBOARD_IDLE_SECS,
          value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub dashboard_idle_secs: u64,
    /// Seconds a dashboard login stays valid at most, however it is used.
    #[arg(long, default_value_t = DEFAULT_DASHBOARD_SESSION_SECS,
          value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub dashboard_session_secs: u64,
    /// Runs without the alert engine: no alert decisions, no notifications.
    /// For measuring what alerting costs (`bench/alerting.sh`); to stop
    /// pages, add a silence instead.
    #[arg(long)]
    pub no_alerting: bool,
}

/// Which names [`crate::ingest`] accepts for results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResultNames {
    /// Checks configured for the agent (or removed moments ago) and the
    /// agent library's own reports: the production rule.
    #[default]
    Configured,
    /// Any well-formed name.
    AnyValid,
}

/// Every capability this server implements.
pub fn default_capabilities() -> Vec<String> {
    outrider_protocol::capability::ALL
        .iter()
        .map(|c| (*c).to_owned())
        .collect()
}

/// `--public-url`: `https://host[:port][/path]`, or `http://` to such a
/// host; no user info, query or fragment, no trailing slash, and only
/// characters a shell leaves alone inside single quotes (it is pasted into
/// `install.sh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// The URL, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for PublicUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<PublicUrl, String> {
        let url = text.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("{text:?} is not an https:// (or http://) URL"))?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        let path_ok = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
        if !host_ok || !path_ok || url.len() > 512 {
            return Err(format!(
                "{text:?} is not a plain URL: scheme, host[:port] and an optional path of letters, digits and -._~/"
            ));
        }
        Ok(PublicUrl(url.to_owned()))
    }
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(
        "refusing to serve plain HTTP on {0}, which is not a loopback address: give --tls-cert and --tls-key, or --insecure-plain-http for a trusted network"
    )]
    PlainOnNetwork(SocketAddr),
    #[error("--max-agent-connections must be at least 1")]
    NoConnections,
    #[error("--max-concurrent-hellos must be at least 1")]
    NoHellos,
    #[error("--max-http-connections must be at least 1")]
    NoHttpConnections,
    #[error("--connection-burst-per-ip must be at least 1 when --connection-rate-per-ip is set")]
    NoBurst,
    #[error(
        "--protocol-min {min} and --protocol-max {max} must satisfy {floor} <= min <= max <= {ceiling}"
    )]
    ProtocolRange {
        min: u32,
        max: u32,
        floor: u32,
        ceiling: u32,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsConfigError),
}

impl ServerConfig {
    /// Defaults for a server on `listen` keeping its state in `data_dir`.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen,
            enrollment_token: None,
            enrollment_token_file: None,
            enrollment_token_expires_in_secs: outrider_protocol::api::DEFAULT_TOKEN_EXPIRES_IN_SECS,
            enrollment_token_max_uses: None,
            ping_interval_secs: DEFAULT_PING_INTERVAL_SECS,
            down_after_secs: DEFAULT_DOWN_AFTER_SECS,
            ready_file: None,
            tls_cert: None,
            tls_key: None,
            insecure_plain_http: false,
            public_url: None,
            trusted_proxies: Vec::new(),
            advertise_addrs: Vec::new(),
            max_agent_connections: DEFAULT_MAX_AGENT_CONNECTIONS,
            max_concurrent_hellos: DEFAULT_MAX_CONCURRENT_HELLOS,
            accept_rate_per_sec: DEFAULT_ACCEPT_RATE_PER_SEC,
            max_http_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            connection_rate_per_ip: DEFAULT_CONNECTION_RATE_PER_IP,
            connection_burst_per_ip: DEFAULT_CONNECTION_BURST_PER_IP,
            http_header_timeout_secs: DEFAULT_HTTP_HEADER_TIMEOUT_SECS,
            http_idle_timeout_secs: DEFAULT_HTTP_IDLE_TIMEOUT_SECS,
            tls_handshake_timeout_secs: DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
            metrics: Default::default(),
            cluster: Default::default(),
            protocol_min: outrider_protocol::PROTOCOL_MIN,
            protocol_max: outrider_protocol::PROTOCOL_MAX,
            capabilities: default_capabilities(),
            nudge_window_secs: DEFAULT_NUDGE_WINDOW_SECS,
            release_blob_max_bytes: outrider_update_server::MAX_BLOB_BYTES,
            release_blobs_max_total_bytes: None,
            release_gc_interval_secs: crate::releases::DEFAULT_RELEASE_GC_INTERVAL_SECS,
            release_gc_grace_secs: crate::releases::DEFAULT_RELEASE_GC_GRACE_SECS,
            alerting_config: None,
            alerting: outrider_alerting::Config::default(),
            alert_tick_ms: crate::alerts::DEFAULT_TICK_MS,
            alert_goodbye_grace_ms: crate::alerts::DEFAULT_GOODBYE_GRACE_MS,
            result_names: ResultNames::default(),
            no_alerting: false,
            // Tests pass their own dashboard listener to
            // `run_with_dashboard`; this address is not bound by `run`.
            dashboard_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            no_dashboard: false,
            dashboard_idle_secs: DEFAULT_DASHBOARD_IDLE_SECS,
            dashboard_session_secs: DEFAULT_DASHBOARD_SESSION_SECS,
        }
    }

    /// The release blob caps of `--release-blob-max-bytes` and
    /// `--release-blobs-max-total-bytes` for the directory store.
    pub fn release_caps(&self) -> outrider_update_server::BlobCaps {
        outrider_update_server::BlobCaps {
            max_blob_bytes: self.release_blob_max_bytes,
            max_total_bytes: self.release_blobs_max_total_bytes.unwrap_or(u64::MAX),
        }
    }

    /// The same caps for release blobs in a shared `--database`, where the
    /// total defaults to
    /// [`DEFAULT_MAX_TOTAL_BLOB_BYTES`](crate::backend::postgres::DEFAULT_MAX_TOTAL_BLOB_BYTES).
    pub fn shared_release_caps(&self) -> outrider_update_server::BlobCaps {
        outrider_update_server::BlobCaps {
            max_blob_bytes: self.release_blob_max_bytes,
            max_total_bytes: self
                .release_blobs_max_total_bytes
                .unwrap_or(crate::backend::postgres::DEFAULT_MAX_TOTAL_BLOB_BYTES),
        }
    }

    /// The protocol versions this server speaks; [`ServerConfig::validate`]
    /// made sure the range is not empty.
    pub fn protocol_range(&self) -> outrider_protocol::ProtocolRange {
        outrider_protocol::ProtocolRange::new(self.protocol_min, self.protocol_max)
            .unwrap_or(outrider_protocol::ProtocolRange::SUPPORTED)
    }

    /// The connection limits of [`crate::limits`].
    pub fn limit_settings(&self) -> crate::limits::LimitSettings {
        crate::limits::LimitSettings {
            max_connections: self.max_http_connections,
            per_ip_connections: self.max_connections_per_ip,
            per_ip_rate: f64::from(self.connection_rate_per_ip),
            per_ip_burst: f64::from(self.connection_burst_per_ip),
        }
    }

    /// Whether TLS files are configured.
    pub fn tls(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.tls_cert.as_ref().zip(self.tls_key.as_ref())
    }

    /// Checks the settings that cannot be expressed as flag types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls().is_none() && !self.listen.ip().is_loopback() && !self.insecure_plain_http {
            return Err(ConfigError::PlainOnNetwork(self.listen));
        }
        if !self.no_dashboard
            && self.tls().is_none()
            && !self.dashboard_listen.ip().is_loopback()
            && !self.insecure_plain_http
        {
            return Err(ConfigError::PlainOnNetwork(self.dashboard_listen));
        }
        if self.max_agent_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.max_concurrent_hellos == 0 {
            return Err(ConfigError::NoHellos);
        }
        if self.max_http_connections == 0 {
            return Err(ConfigError::NoHttpConnections);
        }
        if self.connection_rate_per_ip > 0 && self.connection_burst_per_ip == 0 {
            return Err(ConfigError::NoBurst);
        }
        let (floor, ceiling) = (
            outrider_protocol::PROTOCOL_MIN,
            outrider_protocol::PROTOCOL_MAX,
        );
        if !(floor <= self.protocol_min
            && self.protocol_min <= self.protocol_max
            && self.protocol_max <= ceiling)
        {
            return Err(ConfigError::ProtocolRange {
                min: self.protocol_min,
                max: self.protocol_max,
                floor,
                ceiling,
            });
        }
        self.metrics.validate()?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_release_cap_defaults_to_none_on_disk_and_8_gib_in_a_shared_database() {
        let mut config = ServerConfig::new("/tmp/x".into(), "127.0.0.1:8470".parse().unwrap());
        let max = outrider_update_server::MAX_BLOB_BYTES;
        assert_eq!(
            (config.release_caps(), config.shared_release_caps()),
            (
                outrider_update_server::BlobCaps {
                    max_blob_bytes: max,
                    max_total_bytes: u64::MAX,
                },
                outrider_update_server::BlobCaps {
                    max_blob_bytes: max,
                    max_total_bytes: 8 << 30,
                }
            )
        );
        config.release_blob_max_bytes = 100;
        config.release_blobs_max_total_bytes = Some(150);
        let given = outrider_update_server::BlobCaps {
            max_blob_bytes: 100,
            max_total_bytes: 150,
        };
        assert_eq!(
            (config.release_caps(), config.shared_release_caps()),
            (given, given)
        );
    }

    #[test]
    fn plain_http_off_loopback_needs_an_explicit_flag() {
        let mut config = ServerConfig::new("/tmp/x".into(), "0.0.0.0:8470".parse().unwrap());
        let err = config.validate().unwrap_err();
        assert!(matches!(err, ConfigError::PlainOnNetwork(_)));
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        config.insecure_plain_http = true;
        config.validate().unwrap();
        let local = ServerConfig::new("/tmp/x".into(), "[::1]:8470".parse().unwrap());
        local.validate().unwrap();
        let mut tls = ServerConfig::new("/tmp/x".into(), "0.0.0.0:8470".parse().unwrap());
        tls.tls_cert = Some("c".into());
        tls.tls_key = Some("k".into());
        tls.validate().unwrap();
        // The dashboard's own port follows the same rule.
        let mut dashboard = ServerConfig::new("/tmp/x".into(), "127.0.0.1:8470".parse().unwrap());
        dashboard.dashboard_listen = "0.0.0.0:8471".parse().unwrap();
        let err = dashboard.validate().unwrap_err();
        assert!(err.to_string().contains("0.0.0.0:8471"), "{err}");
        dashboard.no_dashboard = true;
        dashboard.validate().unwrap();
    }

    #[test]
    fn public_urls_are_plain_urls() {
        for (text, want) in [
            (
                "https://outrider.example.com",
                Some("https://outrider.example.com"),
            ),
            (
                "https://outrider.example.com/",
                Some("https://outrider.example.com"),
            ),
            (
                "https://[2001:db8::1]:8470/mon",
                Some("https://[2001:db8::1]:8470/mon"),
            ),
            ("http://10.0.0.5:8470", Some("http://10.0.0.5:8470")),
            ("outrider.example.com", None),
            ("ftp://outrider.example.com", None),
            ("https://", None),
            ("https://user@host", None),
            ("https://host/a?b", None),
            ("https://host/'$(reboot)'", None),
        ] {
            let got = text.parse::<PublicUrl>().ok();
            assert_eq!(got.as_ref().map(PublicUrl::as_str), want, "{text}");
        }
    }

    #[test]
    fn protocol_range_must_be_one_this_server_speaks() {
        let base = ServerConfig::new("/tmp/x".into(), "127.0.0.1:8470".parse().unwrap());
        for (min, max, ok) in [
            (2, 3, true),
            (2, 2, true),
            (3, 3, true),
            (3, 2, false),
            (1, 3, false),
            (2, 4, false),
        ] {
            let config = ServerConfig {
                protocol_min: min,
                protocol_max: max,
                ..base.clone()
            };
            match config.validate() {
                Ok(()) => assert!(ok, "[{min}, {max}] accepted"),
                Err(e) => {
                    assert!(!ok, "[{min}, {max}] refused: {e}");
                    assert!(e.to_string().contains("--protocol-min"), "{e}");
                }
            }
        }
    }
}
