//! Startup configuration: the host's JSON envelope and `agent.toml`.
//!
//! The stub hands `HostApiV1.config` as UTF-8 JSON
//! `{"agent_toml": "<text>", "config_dir": "...", "log_dir": "..."}` (unknown
//! keys ignored). `agent.toml` is strict (`deny_unknown_fields`) so a typo is
//! reported instead of silently ignored. Everything is validated here, once:
//! an [`AgentSettings`] always carries a usable websocket URL.

use std::path::PathBuf;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::AgentError;

/// Update channel used when `agent.toml` names none.
pub const DEFAULT_CHANNEL: &str = "stable";

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
    /// Free-form labels for this host.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_channel() -> String {
    DEFAULT_CHANNEL.to_owned()
}

impl AgentToml {
    /// Parses agent.toml text; fails naming the offending field.
    pub fn parse(text: &str) -> Result<AgentToml, AgentError> {
        toml::from_str(text).map_err(AgentError::AgentToml)
    }
}

/// Everything the agent needs to start, validated.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The parsed agent.toml.
    pub agent: AgentToml,
    /// Websocket URL derived from `agent.server_url`.
    pub ws_url: String,
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
}

impl AgentSettings {
    /// Builds settings from agent.toml text and directories (the entry used by
    /// tests and by [`AgentSettings::from_host`]). Fails on a bad agent.toml
    /// or an unusable `server_url`.
    pub fn new(
        agent_toml: &str,
        config_dir: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
    ) -> Result<AgentSettings, AgentError> {
        let agent = AgentToml::parse(agent_toml)?;
        let ws_url = ws_url(&agent.server_url)?;
        Ok(AgentSettings {
            agent,
            ws_url,
            config_dir: config_dir.into(),
            log_dir: None,
            data_dir: data_dir.into(),
            state_in: Vec::new(),
            build: None,
            events: Vec::new(),
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

/// Derives the agent websocket URL from `server_url`: `http` → `ws`, any path
/// prefix kept, [`outrider_protocol::AGENT_WS_PATH`] appended.
pub fn ws_url(server_url: &str) -> Result<String, AgentError> {
    let bad = |reason: &str| AgentError::ServerUrl {
        url: server_url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = server_url
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(AgentError::TlsUnsupported {
                url: server_url.to_owned(),
            });
        }
        _ => return Err(bad("the scheme must be http:// or https://")),
    }
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
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!(
        "ws://{authority}{prefix}{}",
        outrider_protocol::AGENT_WS_PATH
    ))
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
            ws_url("http://mon.example/outrider/").unwrap(),
            "ws://mon.example/outrider/v1/agent/ws"
        );
    }

    #[test]
    fn unusable_server_urls_are_refused() {
        assert!(matches!(
            ws_url("https://mon.example"),
            Err(AgentError::TlsUnsupported { .. })
        ));
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
    fn host_envelope_ignores_unknown_keys_and_carries_state() {
        let json = br#"{"agent_toml":"server_url = \"http://h:1\"","config_dir":"/etc/o","log_dir":"/var/log/o","new":1}"#;
        let s = AgentSettings::from_host(json, "/var/lib/o", b"st").unwrap();
        assert_eq!(s.ws_url, "ws://h:1/v1/agent/ws");
        assert_eq!(s.config_dir, PathBuf::from("/etc/o"));
        assert_eq!(s.log_dir, Some(PathBuf::from("/var/log/o")));
        assert_eq!(s.state_in, b"st");
        assert!(matches!(
            AgentSettings::from_host(b"{}", "/d", b""),
            Err(AgentError::HostConfig(_))
        ));
    }
}
