//! Startup configuration: the host's JSON envelope and `agent.toml`.
//!
//! The stub hands `HostApiV1.config` as UTF-8 JSON
//! `{"agent_toml": "<text>", "config_dir": "...", "log_dir": "..."}` (unknown
//! keys ignored). `agent.toml` is strict (`deny_unknown_fields`) so a typo is
//! reported instead of silently ignored. Everything is validated here, once:
//! an [`AgentSettings`] always carries at least one usable [`ServerEndpoint`]
//! (`server_url`, then each of `extra_server_urls`, none repeated) — `wss://`
//! for an `https://` server, plain `ws://` only to a loopback host or with
//! `allow_plain_ws = true` — valid tags, and the extra CA certificates of
//! `tls_ca_file` already parsed.
//!
//! Several server nodes: `server_url` stays one string and the other nodes
//! go into `extra_server_urls`, because the stub parses `server_url` too and
//! stubs of every age must keep starting (the stub's parser ignores fields
//! it does not know, see `stub/src/config.rs`). A library build older than
//! `extra_server_urls` refuses an agent.toml that has it (unknown field);
//! `docs/operations.md` says what that means for a rollback.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::AgentError;
use listeners::{ListenerSettings, ListenersToml};
use policy::{LocalPolicy, PolicyToml};
pub use timing::ConnectionTiming;

pub mod listeners;
pub mod policy;
pub mod timing;

/// Update channel used when `agent.toml` names none.
pub const DEFAULT_CHANNEL: &str = "stable";
/// Result spool cap in MiB when `agent.toml` names none.
pub const DEFAULT_SPOOL_MAX_MB: u64 = 64;
/// Smallest `spool_max_mb`: a few segments, so eviction is not constant.
pub const MIN_SPOOL_MAX_MB: u64 = 4;
/// Largest `spool_max_mb` (1 TiB): beyond it a typo is likelier than intent.
pub const MAX_SPOOL_MAX_MB: u64 = 1024 * 1024;
/// Most server URLs `server_url` and `extra_server_urls` name together:
/// a round over all of them stays short before the backoff applies.
pub const MAX_SERVER_URLS: usize = 16;

/// How often the stub's update events are polled (`update_events.rs`).
pub const UPDATE_EVENTS_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Default size cap of the whole spool (`spool_max_mb` in agent.toml).
pub const SPOOL_CAP_BYTES: u64 = DEFAULT_SPOOL_MAX_MB * 1024 * 1024;
/// Size at which the active spool segment is sealed and a new one started.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;

/// Size limits of a spool (`spool.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Most bytes of segments kept; beyond it the oldest segments go.
    pub cap_bytes: u64,
    /// Size at which a segment is sealed.
    pub segment_bytes: u64,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            cap_bytes: SPOOL_CAP_BYTES,
            segment_bytes: SEGMENT_BYTES,
        }
    }
}

/// A boxed future returned by [`Resolve::resolve`].
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a host name into socket addresses. The default is the system
/// resolver; tests pass one that fails on demand (the sockets stay real).
pub trait Resolve: Send + Sync + fmt::Debug + 'static {
    /// Resolves `host` for `port`. An empty list counts as a failure.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The operating system's resolver (`getaddrinfo` on tokio's blocking pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// The host's JSON envelope around `agent.toml`.
#[derive(Debug, Deserialize)]
struct HostConfig {
    /// Full text of `/etc/outrider/agent.toml`.
    agent_toml: String,
    /// Directory holding agent.toml and identity.key.
    config_dir: PathBuf,
    /// Directory for rolling logs (unused by the library for now).
    #[serde(default)]
    log_dir: Option<PathBuf>,
    /// The build the stub loaded: `{"sha256": "...", "version": "..."}`.
    #[serde(default)]
    build: Option<BuildInfo>,
    /// Update events (rollbacks) the stub asks us to report to the server.
    #[serde(default)]
    events: Vec<String>,
}

/// Which verified build the stub loaded us from; reported to the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BuildInfo {
    /// SHA-256 of the library file.
    pub sha256: String,
    /// Release version from the signed manifest.
    pub version: String,
}

/// `agent.toml`: everything an operator configures on a host.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToml {
    /// Base URL of the Outrider server, `http://host:port[/prefix]`; the
    /// websocket URL is derived from it.
    pub server_url: String,
    /// Further URLs of the same server (its other nodes), same rules as
    /// `server_url`. The agent tries all of them, `server_url` included, in
    /// an order shuffled per agent, the one that last worked first
    /// (`connection/endpoints.rs`). Absent: `server_url` alone; an empty
    /// list is refused as a likely mistake.
    #[serde(default)]
    pub extra_server_urls: Option<Vec<String>>,
    /// Organisation enrollment token, needed only for the first registration.
    #[serde(default)]
    pub enrollment_token: Option<String>,
    /// Base URL of the update repository (used by the stub): the server by
    /// default, or a static host / CDN serving `outrider release export`.
    #[serde(default)]
    pub update_url: Option<String>,
    /// Seconds between the stub's update checks (used by the stub).
    #[serde(default)]
    pub update_interval_secs: Option<u64>,
    /// Seconds a new build has to report health OK (used by the stub).
    #[serde(default)]
    pub probation_secs: Option<u64>,
    /// Seconds a generation gets to stop before the stub re-execs (used by the stub).
    #[serde(default)]
    pub stop_timeout_secs: Option<u64>,
    /// Update channel (used by the stub), [`DEFAULT_CHANNEL`] when absent.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Labels for this host, sent in every Hello; the server adds its own
    /// and may pick checks by them. Same rule as check names.
    #[serde(default)]
    pub tags: Vec<String>,
    /// PEM file of extra CA certificates trusted for the server's
    /// certificate (a private CA), on top of the system and bundled roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Allows plain `http://` (unencrypted websocket) to a host that is not
    /// loopback. Off by default: identity proofs and results would travel in
    /// clear text.
    #[serde(default)]
    pub allow_plain_ws: bool,
    /// Most disk space, in MiB, the spool may use while the server is
    /// unreachable: three quarters for check results, one for metric
    /// samples (`outbox/samples.rs`); beyond either share the oldest
    /// un-acked records of that kind are evicted (and the eviction reported). [`DEFAULT_SPOOL_MAX_MB`] when absent;
    /// [`MIN_SPOOL_MAX_MB`]..=[`MAX_SPOOL_MAX_MB`].
    #[serde(default = "default_spool_max_mb")]
    pub spool_max_mb: u64,
    /// The host's limits on what the server may make it run
    /// ([`policy`]); the server can neither see nor change them.
    #[serde(default)]
    pub policy: PolicyToml,
    /// The loopback metric listeners ([`listeners`]).
    #[serde(default)]
    pub listeners: ListenersToml,
}

fn default_spool_max_mb() -> u64 {
    DEFAULT_SPOOL_MAX_MB
}

fn default_channel() -> String {
    DEFAULT_CHANNEL.to_owned()
}

impl AgentToml {
    /// Parses agent.toml text; fails naming the offending field, or the
    /// first tag that breaks the naming rule.
    pub fn parse(text: &str) -> Result<AgentToml, AgentError> {
        let toml: AgentToml = toml::from_str(text).map_err(AgentError::AgentToml)?;
        if let Some(tag) = toml
            .tags
            .iter()
            .find(|t| !outrider_protocol::is_valid_name(t))
        {
            return Err(AgentError::BadTag { tag: tag.clone() });
        }
        if !(MIN_SPOOL_MAX_MB..=MAX_SPOOL_MAX_MB).contains(&toml.spool_max_mb) {
            return Err(AgentError::SpoolMaxMb {
                min: MIN_SPOOL_MAX_MB,
                max: MAX_SPOOL_MAX_MB,
                value: toml.spool_max_mb,
            });
        }
        Ok(toml)
    }

    /// The spool limits `spool_max_mb` asks for.
    pub fn spool_limits(&self) -> SpoolLimits {
        SpoolLimits {
            cap_bytes: self.spool_max_mb * 1024 * 1024,
            ..SpoolLimits::default()
        }
    }
}

/// Whether the websocket runs inside TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `wss://`, certificate verified against the host name.
    Tls,
    /// `ws://`: loopback, or allowed by `allow_plain_ws`.
    Plain,
}

/// Where the agent connects, derived from `server_url` or one of
/// `extra_server_urls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEndpoint {
    /// The URL as configured, without a trailing slash (remembered, and
    /// read by the stub for its update downloads: `connection/saved.rs`).
    pub url: String,
    /// The websocket URL (`ws://` or `wss://`, path included).
    pub ws_url: String,
    /// Host name or IP literal (no brackets), used for DNS and TLS (SNI).
    pub host: String,
    /// TCP port (explicit, or 80 / 443 by scheme).
    pub port: u16,
    /// TLS or plain.
    pub transport: Transport,
}

impl ServerEndpoint {
    /// The host as an IP address when `server_url` names one (no DNS then).
    pub fn ip_literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether the host is loopback (`localhost` or a loopback IP literal).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.ip_literal().is_some_and(|ip| ip.is_loopback())
    }
}

/// Everything the agent needs to start, validated.
#[derive(Clone)]
pub struct AgentSettings {
    /// The parsed agent.toml.
    pub agent: AgentToml,
    /// Where to connect: `agent.server_url`, then each of
    /// `agent.extra_server_urls`, in the configured order (never empty, no
    /// two alike; the dialing order is decided in `connection/endpoints.rs`).
    pub endpoints: Vec<ServerEndpoint>,
    /// `agent.policy`, validated: what checks and ad-hoc scripts may run.
    pub policy: LocalPolicy,
    /// `agent.listeners`, validated.
    pub listeners: ListenerSettings,
    /// Certificates of `agent.tls_ca_file`, parsed.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// How server names are resolved: the system resolver, or a
    /// fault-injecting one in tests.
    pub resolver: Arc<dyn Resolve>,
    /// Timeouts and keepalive periods of the connection.
    pub timing: ConnectionTiming,
    /// Directory holding `identity.key`.
    pub config_dir: PathBuf,
    /// Directory for logs, if the host named one.
    pub log_dir: Option<PathBuf>,
    /// Data directory (spool, plugins) handed by the host.
    pub data_dir: PathBuf,
    /// State blob from the previous generation; empty on a cold start.
    pub state_in: Vec<u8>,
    /// The build the stub loaded, when run by a stub.
    pub build: Option<BuildInfo>,
    /// Update events (rollbacks) to report as `outrider.update` results.
    pub events: Vec<String>,
    /// Version of the stub running the library (`HostApiV1.stub_version`),
    /// sent in every Hello; `None` without a stub.
    pub stub_version: Option<String>,
    /// Protocol versions offered in Hello: all this build speaks; tests
    /// narrow it to act as an older agent (see `docs/protocol.md`).
    pub protocol: outrider_protocol::ProtocolRange,
    /// Capabilities announced in Hello: all this build implements; tests
    /// empty it to act as an older agent.
    pub capabilities: Vec<String>,
    /// How often the host is asked for update events
    /// ([`UPDATE_EVENTS_POLL_INTERVAL`]; tests shorten it).
    pub update_events_poll: std::time::Duration,
}

impl fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSettings")
            .field("agent", &self.agent)
            .field("endpoints", &self.endpoints)
            .field("policy", &self.policy)
            .field("listeners", &self.listeners)
            .field("extra_roots", &self.extra_roots.len())
            .field("resolver", &self.resolver)
            .field("timing", &self.timing)
            .field("config_dir", &self.config_dir)
            .field("data_dir", &self.data_dir)
            .field("state_in_bytes", &self.state_in.len())
            .field("build", &self.build)
            .field("stub_version", &self.stub_version)
            .field("protocol", &self.protocol)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl AgentSettings {
    /// Builds settings from agent.toml text and directories (the entry used by
    /// tests and by [`AgentSettings::from_host`]). Fails on a bad agent.toml,
    /// an unusable or unsafe server URL (see [`server_endpoints`]), or an
    /// unreadable `tls_ca_file`.
    pub fn new(
        agent_toml: &str,
        config_dir: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
    ) -> Result<AgentSettings, AgentError> {
        let agent = AgentToml::parse(agent_toml)?;
        let endpoints = server_endpoints(&agent)?;
        let policy = LocalPolicy::from_toml(&agent.policy)?;
        let listeners = ListenerSettings::from_toml(&agent.listeners)?;
        let extra_roots = match &agent.tls_ca_file {
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        Ok(AgentSettings {
            agent,
            endpoints,
            policy,
            listeners,
            extra_roots,
            resolver: Arc::new(SystemResolver),
            timing: ConnectionTiming::default(),
            config_dir: config_dir.into(),
            log_dir: None,
            data_dir: data_dir.into(),
            state_in: Vec::new(),
            build: None,
            events: Vec::new(),
            stub_version: None,
            protocol: outrider_protocol::ProtocolRange::SUPPORTED,
            capabilities: outrider_protocol::capability::ALL
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            update_events_poll: UPDATE_EVENTS_POLL_INTERVAL,
        })
    }

    /// Builds settings from the raw `HostApiV1` fields. Fails when the JSON
    /// envelope or agent.toml is unusable.
    pub fn from_host(
        config_json: &[u8],
        data_dir: &str,
        state_in: &[u8],
    ) -> Result<AgentSettings, AgentError> {
        let host: HostConfig =
            serde_json::from_slice(config_json).map_err(AgentError::HostConfig)?;
        let mut settings = AgentSettings::new(&host.agent_toml, host.config_dir, data_dir)?;
        settings.log_dir = host.log_dir;
        settings.build = host.build;
        settings.events = host.events;
        settings.state_in = state_in.to_vec();
        Ok(settings)
    }
}

/// Reads every certificate of a PEM file. Fails when the file cannot be
/// read, a PEM block is malformed, or it holds no certificate at all.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let bad = |reason: String| AgentError::TlsCaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no `BEGIN CERTIFICATE` block".into()));
    }
    Ok(certs)
}

/// Every configured server URL as an endpoint: `server_url`, then each of
/// `extra_server_urls`. Fails naming the field and the URL for one that is
/// unusable or plain `http://` off loopback without `allow_plain_ws`; fails
/// for an empty `extra_server_urls`, more than [`MAX_SERVER_URLS`] in all,
/// or a URL given twice (compared by the websocket URL it gives, so
/// `https://a/` repeats `https://a`).
pub fn server_endpoints(agent: &AgentToml) -> Result<Vec<ServerEndpoint>, AgentError> {
    let extra = match &agent.extra_server_urls {
        Some(list) if list.is_empty() => {
            return Err(AgentError::ServerUrlList {
                reason: "the list is empty; name at least one more URL or remove the line".into(),
            });
        }
        Some(list) => list.as_slice(),
        None => &[],
    };
    if extra.len() >= MAX_SERVER_URLS {
        return Err(AgentError::ServerUrlList {
            reason: format!(
                "{} URLs with server_url, more than the {MAX_SERVER_URLS} allowed",
                extra.len() + 1
            ),
        });
    }
    let urls = std::iter::once(("server_url", &agent.server_url))
        .chain(extra.iter().map(|url| ("extra_server_urls", url)));
    let mut endpoints: Vec<ServerEndpoint> = Vec::with_capacity(extra.len() + 1);
    for (field, url) in urls {
        let endpoint = endpoint_of(field, url)?;
        if endpoint.transport == Transport::Plain
            && !endpoint.is_loopback()
            && !agent.allow_plain_ws
        {
            return Err(AgentError::PlainWsRefused {
                field,
                url: url.clone(),
            });
        }
        if endpoints.iter().any(|e| e.ws_url == endpoint.ws_url) {
            return Err(AgentError::ServerUrlList {
                reason: format!("{url:?} is named twice (counting server_url)"),
            });
        }
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

/// Derives the agent websocket endpoint from `server_url`: `http` → `ws`,
/// `https` → `wss`, any path prefix kept,
/// [`outrider_protocol::AGENT_WS_PATH`] appended.
pub fn server_endpoint(server_url: &str) -> Result<ServerEndpoint, AgentError> {
    endpoint_of("server_url", server_url)
}

/// [`server_endpoint`] for the URL `server_url` of agent.toml field `field`.
fn endpoint_of(field: &'static str, server_url: &str) -> Result<ServerEndpoint, AgentError> {
    let bad = |reason: &str| AgentError::ServerUrl {
        field,
        url: server_url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = server_url
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e})")))?;
    let (transport, scheme, default_port) = match uri.scheme_str() {
        Some("http") => (Transport::Plain, "ws", 80),
        Some("https") => (Transport::Tls, "wss", 443),
        _ => return Err(bad("the scheme must be http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("the host is missing"))?;
    if authority.host().is_empty() {
        return Err(bad("the host is missing"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let prefix = uri.path().trim_end_matches('/');
    Ok(ServerEndpoint {
        url: server_url.trim_end_matches('/').to_owned(),
        ws_url: format!(
            "{scheme}://{authority}{prefix}{}",
            outrider_protocol::AGENT_WS_PATH
        ),
        host,
        port: authority.port_u16().unwrap_or(default_port),
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_agent_toml_gets_defaults() {
        let a = AgentToml::parse("server_url = \"http://127.0.0.1:8470\"\n").unwrap();
        assert_eq!(a.channel, "stable");
        assert_eq!(a.enrollment_token, None);
        assert!(a.tags.is_empty());
        assert_eq!(a.spool_limits(), SpoolLimits::default());
    }

    #[test]
    fn spool_max_mb_sets_the_cap_within_its_range() {
        let with =
            |mb: &str| AgentToml::parse(&format!("server_url = \"http://x\"\nspool_max_mb = {mb}"));
        let a = with("512").unwrap();
        assert_eq!(a.spool_limits().cap_bytes, 512 * 1024 * 1024);
        for bad in ["0", "3", "1048577"] {
            let e = with(bad).unwrap_err();
            assert!(matches!(e, AgentError::SpoolMaxMb { .. }), "{e}");
            assert!(e.to_string().contains("spool_max_mb"), "{e}");
            assert!(e.is_config());
        }
        let typed = with("\"64\"").unwrap_err();
        assert!(typed.to_string().contains("spool_max_mb"), "{typed}");
    }

    #[test]
    fn full_agent_toml_parses() {
        let text = r#"
            server_url = "http://mon.example:8470"
            enrollment_token = "tok"
            channel = "dev"
            tags = ["a", "b"]
        "#;
        let a = AgentToml::parse(text).unwrap();
        assert_eq!(a.enrollment_token.as_deref(), Some("tok"));
        assert_eq!(a.channel, "dev");
        assert_eq!(a.tags, ["a", "b"]);
    }

    #[test]
    fn bad_agent_toml_names_the_field() {
        let unknown =
            AgentToml::parse("server_url = \"http://x\"\nserver_ulr = \"y\"").unwrap_err();
        assert!(unknown.to_string().contains("server_ulr"), "{unknown}");
        let missing = AgentToml::parse("channel = \"dev\"").unwrap_err();
        assert!(missing.to_string().contains("server_url"), "{missing}");
        let typed = AgentToml::parse("server_url = \"http://x\"\ntags = \"a\"").unwrap_err();
        assert!(typed.to_string().contains("tags"), "{typed}");
        assert!(unknown.is_config());
    }

    fn ws_url(server_url: &str) -> Result<String, AgentError> {
        server_endpoint(server_url).map(|e| e.ws_url)
    }

    #[test]
    fn ws_url_is_derived_from_server_url() {
        assert_eq!(
            ws_url("http://127.0.0.1:8470").unwrap(),
            "ws://127.0.0.1:8470/v1/agent/ws"
        );
        assert_eq!(
            ws_url("http://mon.example/").unwrap(),
            "ws://mon.example/v1/agent/ws"
        );
        assert_eq!(
            ws_url("https://mon.example/outrider/").unwrap(),
            "wss://mon.example/outrider/v1/agent/ws"
        );
        let e = server_endpoint("https://mon.example").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.transport),
            ("mon.example", 443, Transport::Tls)
        );
        let e = server_endpoint("http://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert!(e.is_loopback());
        assert_eq!(server_endpoint("http://x").unwrap().port, 80);
    }

    #[test]
    fn unusable_server_urls_are_refused() {
        for bad in [
            "ftp://x",
            "mon.example:8470",
            "",
            "http://u:p@x",
            "http://x/?a=b",
        ] {
            let err = ws_url(bad).unwrap_err();
            assert!(matches!(err, AgentError::ServerUrl { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("server_url"), "{err}");
        }
    }

    #[test]
    fn plain_ws_only_to_loopback_unless_allowed() {
        for ok in [
            "http://127.0.0.1:1",
            "http://localhost:1",
            "http://[::1]:1",
            "https://mon.example",
        ] {
            let toml = format!("server_url = \"{ok}\"");
            AgentSettings::new(&toml, "/c", "/d").unwrap();
        }
        let toml = "server_url = \"http://mon.example:8470\"";
        let err = AgentSettings::new(toml, "/c", "/d").unwrap_err();
        assert!(matches!(err, AgentError::PlainWsRefused { .. }), "{err}");
        assert!(err.is_config());
        assert!(err.to_string().contains("allow_plain_ws"), "{err}");
        let allowed = format!("{toml}\nallow_plain_ws = true");
        let s = AgentSettings::new(&allowed, "/c", "/d").unwrap();
        assert_eq!(s.endpoints[0].transport, Transport::Plain);
    }

    #[test]
    fn extra_server_urls_are_validated_like_server_url() {
        let settings = |extra: &str| {
            let text = format!("server_url = \"https://a.example\"\n{extra}");
            AgentSettings::new(&text, "/c", "/d")
        };
        // (extra lines, the websocket URLs in configured order)
        let valid: &[(&str, &[&str])] = &[
            ("", &["wss://a.example/v1/agent/ws"]),
            (
                "extra_server_urls = [\"https://b.example:8443/o/\"]",
                &[
                    "wss://a.example/v1/agent/ws",
                    "wss://b.example:8443/o/v1/agent/ws",
                ],
            ),
            (
                "extra_server_urls = [\"http://127.0.0.1:9\", \"https://c.example\"]",
                &[
                    "wss://a.example/v1/agent/ws",
                    "ws://127.0.0.1:9/v1/agent/ws",
                    "wss://c.example/v1/agent/ws",
                ],
            ),
            (
                "allow_plain_ws = true\nextra_server_urls = [\"http://b.example\"]",
                &["wss://a.example/v1/agent/ws", "ws://b.example/v1/agent/ws"],
            ),
        ];
        for (extra, expected) in valid {
            let s = settings(extra).unwrap_or_else(|e| panic!("{extra}: {e}"));
            let got: Vec<&str> = s.endpoints.iter().map(|e| e.ws_url.as_str()).collect();
            assert_eq!(&got, expected, "{extra}");
        }
        // (extra lines, what the one-sentence error must name)
        let sixteen = (0..16)
            .map(|i| format!("\"https://n{i}.example\""))
            .collect::<Vec<_>>()
            .join(",");
        let invalid = [
            ("extra_server_urls = []", "is empty"),
            (
                "extra_server_urls = \"https://b.example\"",
                "extra_server_urls",
            ),
            (
                "extra_server_urls = [\"ftp://b.example\"]",
                "\"ftp://b.example\"",
            ),
            (
                "extra_server_urls = [\"http://b.example\"]",
                "\"http://b.example\"",
            ),
            (
                "extra_server_urls = [\"https://a.example/\"]",
                "named twice",
            ),
            (
                "extra_server_urls = [\"https://b.example\", \"https://b.example\"]",
                "named twice",
            ),
            (
                &format!("extra_server_urls = [{sixteen}]"),
                "more than the 16",
            ),
        ];
        for (extra, needle) in invalid {
            let err = settings(extra).unwrap_err();
            let text = err.to_string();
            assert!(err.is_config(), "{extra}: {text}");
            assert!(text.contains(needle), "{extra}: {text}");
            assert!(text.contains("extra_server_urls"), "{extra}: {text}");
        }
    }

    #[test]
    fn policy_table_is_optional_strict_and_validated() {
        let s = AgentSettings::new("server_url = \"http://127.0.0.1:1\"", "/c", "/d").unwrap();
        assert_eq!(s.policy, LocalPolicy::default());
        assert_eq!(s.policy.adhoc, policy::AdhocScripts::Refused);
        // The installer's `--allow-adhoc` writes exactly this.
        let text = "server_url = \"http://127.0.0.1:1\"\n[policy]\nallow_adhoc = true\n";
        let s = AgentSettings::new(text, "/c", "/d").unwrap();
        assert_eq!(s.policy.adhoc, policy::AdhocScripts::Allowed);
        assert_eq!(s.policy.allowed, LocalPolicy::default().allowed);
        let typo = AgentToml::parse("server_url = \"http://x\"\n[policy]\nallow_adhok = true")
            .unwrap_err();
        assert!(typo.to_string().contains("allow_adhok"), "{typo}");
        let relative =
            "server_url = \"http://127.0.0.1:1\"\n[policy]\nallowed_commands = [\"bin\"]";
        let err = AgentSettings::new(relative, "/c", "/d").unwrap_err();
        assert!(matches!(err, AgentError::PolicyEntry { .. }), "{err}");
    }

    #[test]
    fn tags_follow_the_check_name_rule() {
        let err =
            AgentToml::parse("server_url = \"http://x\"\ntags = [\"ok\", \"Not OK\"]").unwrap_err();
        assert!(
            matches!(&err, AgentError::BadTag { tag } if tag == "Not OK"),
            "{err}"
        );
        assert!(err.is_config());
    }

    #[test]
    fn tls_ca_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["mon.example".into()]).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, ca.cert.pem()).unwrap();
        let toml = |path: &std::path::Path| {
            format!(
                "server_url = \"https://mon.example\"\ntls_ca_file = \"{}\"",
                path.display()
            )
        };
        let s = AgentSettings::new(&toml(&pem), "/c", "/d").unwrap();
        assert_eq!(s.extra_roots.len(), 1);
        let missing = AgentSettings::new(&toml(&dir.path().join("nope.pem")), "/c", "/d");
        assert!(matches!(missing, Err(AgentError::TlsCaFile { .. })));
        std::fs::write(&pem, "no certificates here").unwrap();
        let empty = AgentSettings::new(&toml(&pem), "/c", "/d").unwrap_err();
        assert!(empty.to_string().contains("BEGIN CERTIFICATE"), "{empty}");
    }

    #[test]
    fn host_envelope_ignores_unknown_keys_and_carries_state() {
        let json = br#"{"agent_toml":"server_url = \"http://h:1\"\nallow_plain_ws = true","config_dir":"/etc/o","log_dir":"/var/log/o","new":1}"#;
        let s = AgentSettings::from_host(json, "/var/lib/o", b"st").unwrap();
        assert_eq!(s.endpoints[0].ws_url, "ws://h:1/v1/agent/ws");
        assert_eq!(s.config_dir, PathBuf::from("/etc/o"));
        assert_eq!(s.log_dir, Some(PathBuf::from("/var/log/o")));
        assert_eq!(s.state_in, b"st");
        assert!(matches!(
            AgentSettings::from_host(b"{}", "/d", b""),
            Err(AgentError::HostConfig(_))
        ));
    }
}
