//! `agent.toml` `[listeners]`: the loopback metric listeners
//! (`listeners.rs`).
//!
//! ```toml
//! [listeners]
//! statsd = "127.0.0.1:8125"     # UDP; "off" disables it
//! graphite = "127.0.0.1:2003"   # TCP; "off" disables it
//! flush_secs = 10               # aggregation interval, 1..=3600
//! max_series = 10000            # series kept per interval; more are dropped (counted)
//! max_connections = 64          # Graphite connections at once; more are refused (counted)
//! ```
//!
//! Every key is optional; the defaults are the ones shown. An address must
//! be a loopback `ip:port` (`127.0.0.0/8` or `[::1]`): the listeners take
//! unauthenticated input and must never face the network, so anything else
//! is refused with [`AgentError::ListenerAddress`] naming the key.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::error::AgentError;

/// StatsD's conventional address.
pub const DEFAULT_STATSD: &str = "127.0.0.1:8125";
/// Graphite plaintext's conventional address (collectd's `write_graphite`
/// is pointed at it, `collectors/render.rs`).
pub const DEFAULT_GRAPHITE: &str = "127.0.0.1:2003";
/// Default aggregation interval.
pub const DEFAULT_FLUSH_SECS: u64 = 10;
/// Longest aggregation interval accepted.
pub const MAX_FLUSH_SECS: u64 = 3600;
/// Default bound on series per interval (the aggregator's own default).
pub const DEFAULT_MAX_SERIES: usize = outrider_local_metrics::aggregate::DEFAULT_MAX_SERIES;
/// Largest `max_series` accepted.
pub const MAX_MAX_SERIES: usize = 1_000_000;
/// Default bound on simultaneous Graphite connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Largest `max_connections` accepted.
pub const MAX_MAX_CONNECTIONS: usize = 4096;
/// The value that disables a listener.
pub const OFF: &str = "off";

/// The `[listeners]` table as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersToml {
    #[serde(default)]
    pub statsd: Option<String>,
    #[serde(default)]
    pub graphite: Option<String>,
    #[serde(default)]
    pub flush_secs: Option<u64>,
    #[serde(default)]
    pub max_series: Option<usize>,
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// The listeners' settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    /// UDP address of the StatsD listener; `None`: off.
    pub statsd: Option<SocketAddr>,
    /// TCP address of the Graphite listener; `None`: off.
    pub graphite: Option<SocketAddr>,
    /// Aggregation interval.
    pub flush: Duration,
    /// Series kept per interval.
    pub max_series: usize,
    /// Graphite connections served at once.
    pub max_connections: usize,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings::from_toml(&ListenersToml::default()).expect("the defaults are valid")
    }
}

impl ListenerSettings {
    /// Both listeners off (tests, and hosts that want none).
    pub fn off() -> ListenerSettings {
        ListenerSettings {
            statsd: None,
            graphite: None,
            ..ListenerSettings::default()
        }
    }

    /// Validates the table; fails naming the key and the reason.
    pub fn from_toml(toml: &ListenersToml) -> Result<ListenerSettings, AgentError> {
        let flush_secs = toml.flush_secs.unwrap_or(DEFAULT_FLUSH_SECS);
        let max_series = toml.max_series.unwrap_or(DEFAULT_MAX_SERIES);
        let max_connections = toml.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let range = |key: &'static str, value: u64, max: u64| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(AgentError::ListenerSetting {
                    key,
                    reason: format!("{value} is outside 1..={max}"),
                })
            }
        };
        range("flush_secs", flush_secs, MAX_FLUSH_SECS)?;
        range("max_series", max_series as u64, MAX_MAX_SERIES as u64)?;
        range(
            "max_connections",
            max_connections as u64,
            MAX_MAX_CONNECTIONS as u64,
        )?;
        Ok(ListenerSettings {
            statsd: address("statsd", toml.statsd.as_deref().unwrap_or(DEFAULT_STATSD))?,
            graphite: address(
                "graphite",
                toml.graphite.as_deref().unwrap_or(DEFAULT_GRAPHITE),
            )?,
            flush: Duration::from_secs(flush_secs),
            max_series,
            max_connections,
        })
    }
}

/// Reads one listener address: [`OFF`], or a loopback `ip:port`.
pub fn address(key: &'static str, value: &str) -> Result<Option<SocketAddr>, AgentError> {
    if value == OFF {
        return Ok(None);
    }
    let refuse = |reason: &str| AgentError::ListenerAddress {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| refuse("is not an ip:port address (or \"off\")"))?;
    if !addr.ip().is_loopback() {
        return Err(refuse(
            "is not a loopback address; the listeners accept unauthenticated metrics and only \
             listen on 127.0.0.0/8 or [::1]",
        ));
    }
    if addr.port() == 0 {
        return Err(refuse("has port 0"));
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_judged_by_table() {
        let cases: [(&str, Result<Option<&str>, &str>); 8] = [
            ("127.0.0.1:8125", Ok(Some("127.0.0.1:8125"))),
            ("127.1.2.3:9", Ok(Some("127.1.2.3:9"))),
            ("[::1]:2003", Ok(Some("[::1]:2003"))),
            ("off", Ok(None)),
            ("0.0.0.0:8125", Err("not a loopback")),
            ("192.0.2.7:8125", Err("not a loopback")),
            ("localhost:8125", Err("not an ip:port")),
            ("127.0.0.1:0", Err("port 0")),
        ];
        for (value, want) in cases {
            let got = address("statsd", value);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want.map(|w| w.parse().unwrap()), "{value}");
                }
                (Err(e), Err(want)) => {
                    let text = e.to_string();
                    assert!(text.contains(want) && text.contains("statsd"), "{text}");
                }
                (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn defaults_and_ranges() {
        let d = ListenerSettings::default();
        assert_eq!(d.statsd, Some(DEFAULT_STATSD.parse().unwrap()));
        assert_eq!(d.graphite, Some(DEFAULT_GRAPHITE.parse().unwrap()));
        assert_eq!(d.flush, Duration::from_secs(10));
        let bad = ListenersToml {
            flush_secs: Some(0),
            ..ListenersToml::default()
        };
        let e = ListenerSettings::from_toml(&bad).unwrap_err().to_string();
        assert!(
            e.contains("flush_secs") && e.contains("0 is outside"),
            "{e}"
        );
        let bad = ListenersToml {
            max_connections: Some(MAX_MAX_CONNECTIONS + 1),
            ..ListenersToml::default()
        };
        assert!(ListenerSettings::from_toml(&bad).is_err());
    }
}
