//! Which check names an agent's results may carry: the decision, pure.
//!
//! A result is stored only under a name that is well formed (the check
//! name rule of `outrider_protocol::is_valid_name`: 1–64 bytes of `a-z`,
//! `0-9`, `_`, `.`, `-`) and that the agent has reason to use: a check of
//! its configuration, a check its configuration held until less than
//! [`REMOVED_GRACE_MS`] ago (a result already running or spooled when an
//! operator removed or renamed the check), or one of the reports the agent
//! library sends of its own ([`AGENT_REPORTS`]). Names the server writes
//! itself ([`SERVER_REPORTS`]) are never taken from an agent. Everything
//! else is refused, so the set of names (and with it the rows of
//! `latest_results`, the series and every output) stays bounded by what
//! operators configured, whatever an agent sends.
//!
//! Ad-hoc and run-now results travel as RPC answers, not in result
//! batches (`agent-lib/src/rpc.rs`), and are not subject to this.

use crate::config::ResultNames;
use crate::store::metrics::SERIES_LIMIT_CHECK;
use crate::store::samples::SAMPLES_CHECK;

/// How long a check stays accepted after it left the agent's
/// configuration: covers config propagation and runs in flight.
pub const REMOVED_GRACE_MS: i64 = 10 * 60 * 1000;

/// Longest check name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Reports the agent library sends under its own names: DNS failures
/// (`agent-lib/src/dns.rs`), spool losses (`agent-lib/src/outbox.rs`) and
/// update events (`agent-lib/src/agent.rs`). A newer agent's new report is
/// refused (and counted) by this server until it learns the name.
pub const AGENT_REPORTS: &[&str] = &["outrider.dns", "outrider.spool", "outrider.update"];

/// Names only the server writes: its series-limit report, and the check
/// metric samples are stored under (`store/samples.rs`).
pub const SERVER_REPORTS: &[&str] = &[SERIES_LIMIT_CHECK, SAMPLES_CHECK];

/// Why a result's name was refused; each is counted on `/metrics` under
/// its [`Refusal::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("the check name is empty")]
    Empty,
    #[error("the check name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("the check name has characters other than a-z, 0-9, '_', '.', '-'")]
    BadCharacters,
    #[error("the name is reserved for results the server writes")]
    Reserved,
    #[error("no check of this name is configured for the agent")]
    NotConfigured,
}

impl Refusal {
    /// Every refusal, in the order `/metrics` lists them.
    pub const ALL: [Refusal; 5] = [
        Refusal::Empty,
        Refusal::TooLong,
        Refusal::BadCharacters,
        Refusal::Reserved,
        Refusal::NotConfigured,
    ];

    /// The `reason` label of `outrider_refused_results_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::TooLong => "too_long",
            Refusal::BadCharacters => "bad_characters",
            Refusal::Reserved => "reserved",
            Refusal::NotConfigured => "not_configured",
        }
    }

    /// Index into [`Refusal::ALL`].
    pub fn index(self) -> usize {
        Refusal::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

/// What the agent's configuration says about a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The agent's current configuration has a check of this name.
    pub configured: bool,
    /// When the name left the agent's configuration, if it did recently
    /// (the configuration before the current one had it).
    pub removed_at_ms: Option<i64>,
    /// The server's clock.
    pub now_ms: i64,
}

/// Whether a result named `name` may be stored.
pub fn judge(name: &str, membership: Membership, policy: ResultNames) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err(Refusal::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Refusal::TooLong);
    }
    if !outrider_protocol::is_valid_name(name) {
        return Err(Refusal::BadCharacters);
    }
    if SERVER_REPORTS.contains(&name) {
        return Err(Refusal::Reserved);
    }
    let recently_removed = membership
        .removed_at_ms
        .is_some_and(|at| membership.now_ms.saturating_sub(at) <= REMOVED_GRACE_MS);
    if AGENT_REPORTS.contains(&name)
        || membership.configured
        || recently_removed
        || policy == ResultNames::AnyValid
    {
        Ok(())
    } else {
        Err(Refusal::NotConfigured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_judged_by_form_then_by_configuration() {
        const NOW: i64 = 1_000_000_000;
        let configured = Membership {
            configured: true,
            removed_at_ms: None,
            now_ms: NOW,
        };
        let unknown = Membership {
            configured: false,
            ..configured
        };
        let removed = |ago: i64| Membership {
            removed_at_ms: Some(NOW - ago),
            ..unknown
        };
        let long = "a".repeat(65);
        let max = "a".repeat(64);
        use ResultNames::{AnyValid, Configured};
        let table: &[(&str, Membership, ResultNames, Result<(), Refusal>)] = &[
            ("load", configured, Configured, Ok(())),
            ("load", unknown, Configured, Err(Refusal::NotConfigured)),
            ("load", unknown, AnyValid, Ok(())),
            ("load", removed(60_000), Configured, Ok(())),
            ("load", removed(REMOVED_GRACE_MS), Configured, Ok(())),
            (
                "load",
                removed(REMOVED_GRACE_MS + 1),
                Configured,
                Err(Refusal::NotConfigured),
            ),
            ("outrider.dns", unknown, Configured, Ok(())),
            ("outrider.spool", unknown, Configured, Ok(())),
            ("outrider.update", unknown, Configured, Ok(())),
            (
                "outrider.anything",
                unknown,
                Configured,
                Err(Refusal::NotConfigured),
            ),
            (
                "outrider.series_limit",
                configured,
                AnyValid,
                Err(Refusal::Reserved),
            ),
            (&max, configured, Configured, Ok(())),
            (&long, configured, AnyValid, Err(Refusal::TooLong)),
            ("", configured, AnyValid, Err(Refusal::Empty)),
            ("Load", configured, AnyValid, Err(Refusal::BadCharacters)),
            ("a/b", configured, AnyValid, Err(Refusal::BadCharacters)),
            ("a b", configured, AnyValid, Err(Refusal::BadCharacters)),
            ("é", configured, AnyValid, Err(Refusal::BadCharacters)),
        ];
        for (name, membership, policy, want) in table {
            assert_eq!(
                judge(name, *membership, *policy),
                *want,
                "{name:?} {membership:?} {policy:?}"
            );
        }
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
