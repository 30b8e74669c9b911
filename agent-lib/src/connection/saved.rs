//! What the connection remembers across restarts and hot swaps.
//!
//! `<data_dir>/connection.json`, written temp file + fsync + rename:
//! `{"version":1,"host":"mon.example","last_good_ip":"192.0.2.7",
//! "server_addrs":["192.0.2.8"],"enrolled_as":"<fingerprint>",
//! "last_url":"https://mon.example"}`; the same data travels in the state
//! blob's `connection` section. A file written for a host that no
//! configured server URL names is ignored, so changing `server_url` starts
//! afresh.
//!
//! - `last_url`: the configured URL (`server_url` or one of
//!   `extra_server_urls`, without a trailing slash) the last session was
//!   welcomed at; the next round dials it first (`endpoints.rs`). Added
//!   without a format change: older libraries ignore the key, and a URL no
//!   longer configured is ignored. It is also written alone, one line, to
//!   `<data_dir>/last_server_url` ([`LAST_SERVER_URL_FILE`]), where the stub
//!   reads it to take its update downloads to the same node
//!   (`stub/src/update.rs`) without parsing JSON or the URL list.
//! - `last_good_ip` / `server_addrs`: steps 2 and 3 of the DNS fallback
//!   chain (see `dns.rs`).
//! - `enrolled_as`: the fingerprint the server welcomed. The organisation's
//!   enrollment token is sent only until then, so it does not travel on
//!   every reconnect; a `Rejected` clears it, so an agent the server forgot
//!   (a reset database) enrols again on its next attempt.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use outrider_protocol::Fingerprint;
use serde::{Deserialize, Serialize};

use crate::config::ServerEndpoint;
use crate::dns::AddrSource;
use crate::error::AgentError;

/// File (in the data dir) holding a [`SavedConnection`].
pub const CONNECTION_FILE: &str = "connection.json";
/// File (in the data dir) holding `last_url` alone, for the stub.
pub const LAST_SERVER_URL_FILE: &str = "last_server_url";
/// Format version of [`CONNECTION_FILE`].
const CONNECTION_FILE_VERSION: u32 = 1;
/// Most server-provided fallback addresses kept.
pub const MAX_SERVER_ADDRS: usize = 8;

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConnection {
    /// Host the addresses belong to (that of `last_url`).
    #[serde(default)]
    pub host: String,
    /// Configured URL of the endpoint last welcomed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_url: Option<String>,
    /// Address of the last established session.
    #[serde(default)]
    pub last_good_ip: Option<IpAddr>,
    /// `Welcome.server_addrs` of the last session.
    #[serde(default)]
    pub server_addrs: Vec<IpAddr>,
    /// The fingerprint the server welcomed (enrollment done).
    #[serde(default)]
    pub enrolled_as: Option<Fingerprint>,
}

/// On-disk form of [`SavedConnection`].
#[derive(Debug, Serialize, Deserialize)]
struct ConnectionFile {
    version: u32,
    #[serde(flatten)]
    saved: SavedConnection,
}

impl SavedConnection {
    /// Reads `<data_dir>/connection.json` for the configured `endpoints`
    /// (at least one). A missing file, or one for a host no endpoint names,
    /// gives an empty memory for the first endpoint's host; fails, naming
    /// the file, when it cannot be read or parsed (the caller logs and
    /// starts empty).
    pub fn load(
        data_dir: &Path,
        endpoints: &[ServerEndpoint],
    ) -> Result<SavedConnection, AgentError> {
        let host = endpoints.first().map_or("", |e| e.host.as_str());
        let path = data_dir.join(CONNECTION_FILE);
        let bad = |reason: String| AgentError::ConnectionMemory {
            path: path.clone(),
            reason,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(SavedConnection::empty(host));
            }
            Err(e) => return Err(bad(format!("cannot be read: {e}"))),
        };
        let file: ConnectionFile = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("is not valid JSON of this format: {e}")))?;
        if file.version != CONNECTION_FILE_VERSION || !file.saved.belongs_to(endpoints) {
            return Ok(SavedConnection::empty(host));
        }
        Ok(file.saved)
    }

    /// Whether this memory is of a host one of `endpoints` names.
    pub fn belongs_to(&self, endpoints: &[ServerEndpoint]) -> bool {
        endpoints.iter().any(|e| e.host == self.host)
    }

    /// The index in `endpoints` of the one last welcomed at, if still
    /// configured.
    pub fn remembered(&self, endpoints: &[ServerEndpoint]) -> Option<usize> {
        let url = self.last_url.as_deref()?;
        endpoints.iter().position(|e| e.url == url)
    }

    /// Nothing remembered for `host`.
    pub fn empty(host: &str) -> SavedConnection {
        SavedConnection {
            host: host.to_owned(),
            ..SavedConnection::default()
        }
    }

    /// Writes `<data_dir>/connection.json`, then `last_server_url` when a
    /// URL is known (each temp file + fsync + rename).
    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        let file = ConnectionFile {
            version: CONNECTION_FILE_VERSION,
            saved: self.clone(),
        };
        // Plain data with string keys: serialising cannot fail.
        let bytes = serde_json::to_vec(&file).expect("connection file serialises");
        write_atomically(&data_dir.join(CONNECTION_FILE), &bytes)?;
        match &self.last_url {
            Some(url) => write_atomically(
                &data_dir.join(LAST_SERVER_URL_FILE),
                format!("{url}\n").as_bytes(),
            ),
            None => Ok(()),
        }
    }

    /// The fallback candidates in order, each address once.
    pub fn candidates(&self, port: u16) -> Vec<(SocketAddr, AddrSource)> {
        let mut out: Vec<(SocketAddr, AddrSource)> = Vec::new();
        let last_good = self.last_good_ip.map(|ip| (ip, AddrSource::LastGood));
        let listed = self
            .server_addrs
            .iter()
            .map(|ip| (*ip, AddrSource::ServerListed));
        for (ip, source) in last_good.into_iter().chain(listed) {
            let addr = SocketAddr::new(ip, port);
            if !out.iter().any(|(a, _)| *a == addr) {
                out.push((addr, source));
            }
        }
        out
    }

    /// Records a session welcomed at `endpoint`; returns whether anything
    /// changed.
    pub fn record(
        &mut self,
        endpoint: &ServerEndpoint,
        connected: IpAddr,
        server_addrs: &[String],
        enrolled_as: &Fingerprint,
    ) -> bool {
        let listed: Vec<IpAddr> = server_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .take(MAX_SERVER_ADDRS)
            .collect();
        let before = self.clone();
        self.host.clone_from(&endpoint.host);
        self.last_url = Some(endpoint.url.clone());
        self.last_good_ip = Some(connected);
        self.server_addrs = listed;
        self.enrolled_as = Some(enrolled_as.clone());
        *self != before
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory,
/// fsyncing the file and the directory, so a crash leaves old or new.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        "0123456789abcdef0123".parse().unwrap()
    }

    fn endpoint(url: &str) -> ServerEndpoint {
        crate::config::server_endpoint(url).unwrap()
    }

    #[test]
    fn candidates_put_last_good_first_without_duplicates() {
        let mon = endpoint("https://mon.example");
        let mut f = SavedConnection::empty("mon.example");
        assert!(f.candidates(443).is_empty());
        let addrs = [
            "192.0.2.2".to_owned(),
            "192.0.2.1".into(),
            "not-an-ip".into(),
        ];
        assert!(f.record(&mon, "192.0.2.1".parse().unwrap(), &addrs, &fp()));
        assert!(!f.record(&mon, "192.0.2.1".parse().unwrap(), &addrs, &fp()));
        assert_eq!(
            f.candidates(443),
            [
                ("192.0.2.1:443".parse().unwrap(), AddrSource::LastGood),
                ("192.0.2.2:443".parse().unwrap(), AddrSource::ServerListed),
            ]
        );
    }

    #[test]
    fn file_round_trips_and_a_foreign_host_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mon, other) = (
            endpoint("https://mon.example"),
            endpoint("https://other.example"),
        );
        let mut f = SavedConnection::empty("mon.example");
        f.record(
            &mon,
            "192.0.2.1".parse().unwrap(),
            &["2001:db8::1".into()],
            &fp(),
        );
        f.save(dir.path()).unwrap();
        let both = [other, mon];
        let loaded = SavedConnection::load(dir.path(), &both).unwrap();
        assert_eq!(loaded, f);
        assert_eq!(loaded.remembered(&both), Some(1));
        assert_eq!(loaded.remembered(&both[1..]), Some(0));
        // The stub's copy of the URL, one line.
        let line = std::fs::read_to_string(dir.path().join(LAST_SERVER_URL_FILE)).unwrap();
        assert_eq!(line, "https://mon.example\n");
        assert_eq!(
            SavedConnection::load(dir.path(), &both[..1]).unwrap(),
            SavedConnection::empty("other.example")
        );
        // Same host, another port: the addresses stay, the URL is not ours.
        let moved = [endpoint("https://mon.example:8443")];
        assert_eq!(
            SavedConnection::load(dir.path(), &moved)
                .unwrap()
                .remembered(&moved),
            None
        );
        assert!(!dir.path().join("connection.json.tmp").exists());
        std::fs::write(dir.path().join(CONNECTION_FILE), "garbage").unwrap();
        let err = SavedConnection::load(dir.path(), &both).unwrap_err();
        assert!(matches!(err, AgentError::ConnectionMemory { .. }), "{err}");
        assert!(err.to_string().contains("connection.json"), "{err}");
    }
}
