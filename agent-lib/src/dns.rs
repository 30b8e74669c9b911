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
//! The fallback addresses survive restarts and hot swaps in
//! `crate::connection::saved` (`<data_dir>/connection.json` and the state
//! blob).

use std::net::SocketAddr;

use outrider_protocol::CheckState;

use crate::runner::RunOutcome;

/// Name of the synthetic check reporting resolver health.
pub const DNS_CHECK: &str = "outrider.dns";

pub use crate::config::{Resolve, ResolveFuture, SystemResolver};

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

    /// How the DNS report names the source.
    pub fn describe(self) -> &'static str {
        match self {
            AddrSource::Literal => "the address in server_url",
            AddrSource::Resolver => "the resolver's answer",
            AddrSource::LastGood => "the last good IP",
            AddrSource::ServerListed => "an address the server listed",
        }
    }
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
    RunOutcome::note(state, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

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
