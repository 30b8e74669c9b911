//! The part of `agent.toml` the stub reads.
//!
//! Unlike everything else in the project, this parser does **not** deny
//! unknown fields: the stub never changes, while newer agent libraries may
//! add settings to `agent.toml`. The library validates the whole file.
//! That is why the other nodes of a server are a separate field,
//! `extra_server_urls`, and `server_url` stays one string: a stub of any
//! age still starts, and one from before the field fetches updates from
//! `server_url` alone. This one tries the list too (`update.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outrider_update_client::tls;

use serde::Deserialize;

use crate::StubError;

/// Channel used when `agent.toml` names none.
pub const DEFAULT_CHANNEL: &str = "stable";
/// Seconds between update checks when `agent.toml` names none.
pub const DEFAULT_UPDATE_INTERVAL_SECS: u64 = 900;
/// Seconds a new build has to report health OK.
pub const DEFAULT_PROBATION_SECS: u64 = 60;
/// Seconds a generation gets to return from `run()` after the stop signal.
pub const DEFAULT_STOP_TIMEOUT_SECS: u64 = 30;

/// What the stub needs to find its updates.
#[derive(Clone, Debug)]
pub struct StubConfig {
    /// Base URL of the server.
    pub server_url: String,
    /// `server_url`, then each of `extra_server_urls` (the server's other
    /// nodes), checked, without trailing slashes.
    pub server_urls: Vec<String>,
    /// Base URL of a static host or CDN serving the update repository
    /// (`<url>/v1/updates/...`); without it updates come from the server
    /// (see `update::update_base`).
    pub update_url: Option<String>,
    /// Release channel to follow.
    pub channel: outrider_signing::Channel,
    /// The whole text of `agent.toml`, handed to the library as-is.
    pub agent_toml: String,
    /// Time between update checks (±10% jitter, so a fleet does not poll in step).
    pub update_interval: Duration,
    /// Time a new build has to report health OK before it is rolled back.
    pub probation: Duration,
    /// Time a generation gets to stop before the stub re-execs past it.
    pub stop_timeout: Duration,
    /// What an `https://` update repository may present: the system's roots
    /// and the certificates of `tls_ca_file` (the library trusts the same
    /// for the server connection).
    pub tls: Arc<tls::ClientConfig>,
}

#[derive(Deserialize)]
struct Raw {
    server_url: String,
    #[serde(default)]
    extra_server_urls: Vec<String>,
    update_url: Option<String>,
    update_interval_secs: Option<u64>,
    probation_secs: Option<u64>,
    stop_timeout_secs: Option<u64>,
    channel: Option<String>,
    tls_ca_file: Option<PathBuf>,
}

impl StubConfig {
    /// Reads and checks `agent.toml`. Fails naming the file and the field.
    pub fn load(path: &Path) -> Result<StubConfig, StubError> {
        let err = |reason: String| StubError::Config {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let raw: Raw = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let url = checked_url("server_url", &raw.server_url).map_err(err)?;
        let mut server_urls = vec![url.clone()];
        for extra in &raw.extra_server_urls {
            server_urls.push(checked_url("extra_server_urls", extra).map_err(err)?);
        }
        let update_url = match &raw.update_url {
            Some(u) => Some(checked_url("update_url", u).map_err(err)?),
            None => None,
        };
        let channel = raw.channel.as_deref().unwrap_or(DEFAULT_CHANNEL);
        let channel = channel
            .parse()
            .map_err(|e| err(format!("channel {channel:?}: {e}")))?;
        let extra_roots = match &raw.tls_ca_file {
            Some(ca) => tls::read_ca_file(ca)
                .map_err(|reason| err(format!("tls_ca_file {}: {reason}", ca.display())))?,
            None => Vec::new(),
        };
        let tls = tls::client_config(&extra_roots).map_err(|e| err(e.to_string()))?;
        let secs = |field: &str, value: Option<u64>, default: u64, max: u64| match value
            .unwrap_or(default)
        {
            v @ 1.. if v <= max => Ok(Duration::from_secs(v)),
            v => Err(err(format!("{field} must be between 1 and {max}, got {v}"))),
        };
        Ok(StubConfig {
            server_url: url,
            server_urls,
            update_url,
            channel,
            update_interval: secs(
                "update_interval_secs",
                raw.update_interval_secs,
                DEFAULT_UPDATE_INTERVAL_SECS,
                86_400,
            )?,
            probation: secs(
                "probation_secs",
                raw.probation_secs,
                DEFAULT_PROBATION_SECS,
                3_600,
            )?,
            stop_timeout: secs(
                "stop_timeout_secs",
                raw.stop_timeout_secs,
                DEFAULT_STOP_TIMEOUT_SECS,
                600,
            )?,
            tls,
            agent_toml: text,
        })
    }
}

impl StubConfig {
    /// The update interval with ±10% random jitter.
    pub fn jittered_update_interval(&self) -> Duration {
        jittered(self.update_interval, 0.9, 1.1)
    }
}

/// `d` scaled by a random factor in `[low, high]`, so a fleet does not act
/// in step. Without randomness (unreadable `/dev/urandom`) the factor is
/// `low`: still correct, just in step.
pub fn jittered(d: Duration, low: f64, high: f64) -> Duration {
    let mut byte = [0u8; 1];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut byte))
        .map(|()| f64::from(byte[0]) / 255.0)
        .unwrap_or(0.0);
    d.mul_f64(low + (high - low) * random)
}

/// `url` without a trailing slash, if it is http(s).
pub(crate) fn checked_url(field: &str, url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "{field} {url:?} must start with http:// or https://"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<StubConfig, StubError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        StubConfig::load(&path)
    }

    #[test]
    fn reads_url_and_channel_and_tolerates_fields_of_newer_agents() {
        let c = load("server_url = \"http://127.0.0.1:1/\"\nchannel = \"dev\"\nfuture_knob = 3\n")
            .unwrap();
        assert_eq!(c.server_url, "http://127.0.0.1:1");
        assert_eq!(c.channel.to_string(), "dev");
        assert_eq!(
            load("server_url = \"https://x\"")
                .unwrap()
                .channel
                .to_string(),
            DEFAULT_CHANNEL
        );
        assert_eq!(
            c.update_url, None,
            "updates come from the server by default"
        );
        let cdn = load("server_url = \"http://s\"\nupdate_url = \"https://cdn.example/outrider/\"")
            .unwrap();
        assert_eq!(
            cdn.update_url.as_deref(),
            Some("https://cdn.example/outrider")
        );
        let nodes =
            load("server_url = \"https://a/\"\nextra_server_urls = [\"https://b/\"]").unwrap();
        assert_eq!(nodes.server_urls, ["https://a", "https://b"]);
        let bad =
            load("server_url = \"https://a\"\nextra_server_urls = [\"ftp://b\"]").unwrap_err();
        assert!(bad.to_string().contains("extra_server_urls"), "{bad}");
        // The library's `[policy]` table reaches it untouched.
        let text = "server_url = \"http://s\"\n[policy]\nallow_adhoc = true\n";
        assert_eq!(load(text).unwrap().agent_toml, text);
        let bad = load("server_url = \"http://s\"\nupdate_url = \"file:///x\"").unwrap_err();
        assert!(bad.to_string().contains("update_url"), "{bad}");
    }

    #[test]
    fn tls_ca_file_is_read_or_the_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, ca.cert.pem()).unwrap();
        let text = format!(
            "server_url = \"https://s\"\ntls_ca_file = {:?}\n",
            pem.display()
        );
        // Whether the update transport then trusts it is tested over TLS in
        // update-client/tests/it/attacks.rs.
        load(&text).unwrap();
        let missing = dir.path().join("missing.pem");
        let text = format!(
            "server_url = \"https://s\"\ntls_ca_file = {:?}\n",
            missing.display()
        );
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains("tls_ca_file") && err.contains("missing.pem"),
            "{err}"
        );
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let base = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..64).map(|_| jittered(base, 0.5, 1.0)).collect();
        assert!(samples.iter().all(|d| *d >= base / 2 && *d <= base));
        assert!(
            samples.iter().any(|d| *d != samples[0]),
            "random, not constant"
        );
    }

    #[test]
    fn bad_input_names_the_problem() {
        let e = load("server_url = \"ftp://x\"").unwrap_err().to_string();
        assert!(e.contains("must start with http"), "{e}");
        let e = load("channel = \"dev\"").unwrap_err().to_string();
        assert!(e.contains("server_url"), "{e}");
        let e = load("server_url = \"http://x\"\nchannel = \"Bad Channel\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("channel"), "{e}");
    }
}
