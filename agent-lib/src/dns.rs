//! Finding the server's address, with a fallback chain for broken DNS.
//!
//! Order of candidates for one connection attempt (DESIGN §6):
//! 1. the system resolver, bounded by `ConnectionTiming::dns_timeout`
//!    (an IP literal in `server_url` skips DNS entirely);
//! 2. if it fails: the last IP address a session was established with;
//! 3. then the addresses the server listed in its last `Welcome`.
//!
//! When the resolver fails but a fallback address connects, the agent queues
//! a CRITICAL result for [`DNS_CHECK`] naming the host, the resolver error
//! and the address used, so the server shows "DNS broken" instead of "agent
//! down"; once the resolver works again an OK result follows. Only changes
//! are reported, so a long outage is one result, not one per reconnect.
//!
//! The fallback addresses survive restarts in `<data_dir>/connection.json`
//! (format below, written temp file + fsync + rename) and hot swaps in the
//! state blob's `connection` section:
//! `{"version":1,"host":"mon.example","last_good_ip":"192.0.2.7","server_addrs":["192.0.2.8"]}`.
//! A file written for another host is ignored.

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use outrider_protocol::CheckState;
use serde::{Deserialize, Serialize};

use crate::runner::RunOutcome;

/// Name of the synthetic check reporting resolver health.
pub const DNS_CHECK: &str = "outrider.dns";
/// File (in the data dir) remembering the fallback addresses.
pub const CONNECTION_FILE: &str = "connection.json";
/// Format version of [`CONNECTION_FILE`].
const CONNECTION_FILE_VERSION: u32 = 1;
/// Most server-provided fallback addresses kept.
pub const MAX_SERVER_ADDRS: usize = 8;

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

/// Where a candidate address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSource {
    /// `server_url` names an IP address.
    Literal,
    /// The system resolver answered.
    Resolver,
    /// The address of the last established session.
    LastGood,
    /// An address from the last `Welcome.server_addrs`.
    ServerListed,
}

impl AddrSource {
    /// Whether this address came from the fallback chain.
    pub fn is_fallback(self) -> bool {
        matches!(self, AddrSource::LastGood | AddrSource::ServerListed)
    }

    fn describe(self) -> &'static str {
        match self {
            AddrSource::Literal => "the address in server_url",
            AddrSource::Resolver => "the resolver's answer",
            AddrSource::LastGood => "the last good IP",
            AddrSource::ServerListed => "an address the server listed",
        }
    }
}

/// The fallback addresses and the resolver's last known health; carried in
/// the state blob and (without `dns_broken` and the token) on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallbacks {
    /// Host the addresses belong to.
    #[serde(default)]
    pub host: String,
    /// Address of the last established session.
    #[serde(default)]
    pub last_good_ip: Option<IpAddr>,
    /// `Welcome.server_addrs` of the last session.
    #[serde(default)]
    pub server_addrs: Vec<IpAddr>,
}

/// On-disk form of [`Fallbacks`].
#[derive(Debug, Serialize, Deserialize)]
struct ConnectionFile {
    version: u32,
    #[serde(flatten)]
    fallbacks: Fallbacks,
}

impl Fallbacks {
    /// Reads `<data_dir>/connection.json` for `host`. A missing, unreadable
    /// or foreign file gives empty fallbacks: they are an optimisation, and
    /// the caller logs nothing for a first start.
    pub fn load(data_dir: &Path, host: &str) -> Result<Fallbacks, String> {
        let path = data_dir.join(CONNECTION_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Fallbacks::empty(host)),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: ConnectionFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not readable: {e}", path.display()))?;
        if file.version != CONNECTION_FILE_VERSION || file.fallbacks.host != host {
            return Ok(Fallbacks::empty(host));
        }
        Ok(file.fallbacks)
    }

    /// No fallback addresses for `host`.
    pub fn empty(host: &str) -> Fallbacks {
        Fallbacks {
            host: host.to_owned(),
            ..Fallbacks::default()
        }
    }

    /// Writes `<data_dir>/connection.json` (temp file + fsync + rename).
    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        let path = data_dir.join(CONNECTION_FILE);
        let file = ConnectionFile {
            version: CONNECTION_FILE_VERSION,
            fallbacks: self.clone(),
        };
        // Plain data with string keys: serialising cannot fail.
        let bytes = serde_json::to_vec(&file).expect("connection file serialises");
        write_atomically(&path, &bytes)
    }

    /// The fallback candidates in order, each address once.
    pub fn candidates(&self, port: u16) -> Vec<(SocketAddr, AddrSource)> {
        let mut out: Vec<(SocketAddr, AddrSource)> = Vec::new();
        let listed = self
            .server_addrs
            .iter()
            .map(|ip| (*ip, AddrSource::ServerListed));
        for (ip, source) in self
            .last_good_ip
            .map(|ip| (ip, AddrSource::LastGood))
            .into_iter()
            .chain(listed)
        {
            let addr = SocketAddr::new(ip, port);
            if !out.iter().any(|(a, _)| *a == addr) {
                out.push((addr, source));
            }
        }
        out
    }

    /// Records a successful session; returns whether anything changed.
    pub fn record(&mut self, connected: IpAddr, server_addrs: &[String]) -> bool {
        let listed: Vec<IpAddr> = server_addrs
            .iter()
            .filter_map(|a| a.parse().ok())
            .take(MAX_SERVER_ADDRS)
            .collect();
        let changed = self.last_good_ip != Some(connected) || self.server_addrs != listed;
        self.last_good_ip = Some(connected);
        self.server_addrs = listed;
        changed
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory,
/// fsyncing the file and the directory, so a crash leaves old or new.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = path.with_extension("json.tmp");
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

/// A result for [`DNS_CHECK`]: CRITICAL when `resolver_error` is set (the
/// session came up through `used` from the fallback chain), else OK.
pub fn dns_outcome(
    host: &str,
    resolver_error: Option<&str>,
    used: SocketAddr,
    source: AddrSource,
) -> RunOutcome {
    let (state, summary) = match resolver_error {
        Some(err) => (
            CheckState::Critical,
            format!(
                "DNS CRITICAL - cannot resolve {host} ({err}); connected through {} {}",
                source.describe(),
                used.ip()
            ),
        ),
        None => (
            CheckState::Ok,
            format!(
                "DNS OK - {host} resolves again (connected to {})",
                used.ip()
            ),
        ),
    };
    RunOutcome {
        state,
        summary,
        long_output: String::new(),
        perfdata: Vec::new(),
        started_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        duration_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_put_last_good_first_without_duplicates() {
        let mut f = Fallbacks::empty("mon.example");
        assert!(f.candidates(443).is_empty());
        assert!(f.record(
            "192.0.2.1".parse().unwrap(),
            &["192.0.2.2".into(), "192.0.2.1".into(), "not-an-ip".into()]
        ));
        assert!(!f.record(
            "192.0.2.1".parse().unwrap(),
            &["192.0.2.2".into(), "192.0.2.1".into()]
        ));
        let c = f.candidates(443);
        assert_eq!(
            c,
            [
                ("192.0.2.1:443".parse().unwrap(), AddrSource::LastGood),
                ("192.0.2.2:443".parse().unwrap(), AddrSource::ServerListed),
            ]
        );
    }

    #[test]
    fn file_round_trips_and_a_foreign_host_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fallbacks::empty("mon.example");
        f.record("192.0.2.1".parse().unwrap(), &["2001:db8::1".into()]);
        f.save(dir.path()).unwrap();
        assert_eq!(Fallbacks::load(dir.path(), "mon.example").unwrap(), f);
        assert_eq!(
            Fallbacks::load(dir.path(), "other.example").unwrap(),
            Fallbacks::empty("other.example")
        );
        assert!(!dir.path().join("connection.json.tmp").exists());
        std::fs::write(dir.path().join(CONNECTION_FILE), "garbage").unwrap();
        assert!(Fallbacks::load(dir.path(), "mon.example").is_err());
    }

    #[test]
    fn dns_results_name_host_error_and_address() {
        let used = "192.0.2.1:443".parse().unwrap();
        let bad = dns_outcome(
            "mon.example",
            Some("no such host"),
            used,
            AddrSource::LastGood,
        );
        assert_eq!(bad.state, CheckState::Critical);
        for part in ["mon.example", "no such host", "192.0.2.1", "last good IP"] {
            assert!(bad.summary.contains(part), "{}", bad.summary);
        }
        let good = dns_outcome("mon.example", None, used, AddrSource::Resolver);
        assert_eq!(good.state, CheckState::Ok);
    }
}
