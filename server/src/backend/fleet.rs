//! The dashboard's fleet list: one page of agents with their worst check
//! state, filtered by text and tag, and the latest state of each check of
//! a page's agents (the checks × agents matrix).
//!
//! Tables: it only reads. `agents` of the agents area (SQLite
//! server/src/store/schema.sql, PostgreSQL migrations/0005_agents.sql) and
//! `latest_results` of the results area (SQLite schema.sql; on PostgreSQL
//! the results area's migration 12, whose `latest_results (fingerprint,
//! check_name, seq, state, state_since_ms)` mirrors SQLite's column for
//! column).
//!
//! Rules (checked on both backends by `backend/fleet_tests.rs`):
//! 1. A bounded number of statements whatever the fleet size: a page is two
//!    (its rows, with the per-agent subqueries run for that page's agents
//!    only, and the count of all matching), the matrix one, a live row
//!    one. The dashboard holds a page to at most four
//!    (`crate::store::StatementCount`); PostgreSQL makes the same round
//!    trips.
//! 2. Order is host name then fingerprint, compared byte by byte (SQLite's
//!    order; `COLLATE "C"` on PostgreSQL, as the agents area lists), so a
//!    page holds the same agents on either backend.
//! 3. The text filter matches part of the host name or fingerprint, ASCII
//!    letters in either case (SQLite's `LIKE`; `lower(… COLLATE "C")` on
//!    PostgreSQL, which folds ASCII only), `%`, `_` and `\` only
//!    themselves ([`like_pattern`]). The tag filter matches one effective
//!    tag (the agent's or the server's).
//! 4. At most [`MAX_FLEET_PAGE`] rows a page, at least one
//!    ([`page_bounds`]); a matrix for at most [`MAX_MATRIX_AGENTS`] agents.

use std::future::Future;

use outrider_protocol::api::{Presence, host_version};
use outrider_protocol::{CheckState, Fingerprint};

use super::{Backend, StoreError, dispatch};

/// Agents on one page at most.
pub const MAX_FLEET_PAGE: u32 = 200;

/// Agents one matrix read covers at most (a page's).
pub const MAX_MATRIX_AGENTS: usize = MAX_FLEET_PAGE as usize;

/// What the fleet page asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetQuery {
    /// Part of the host name or fingerprint (case-insensitive for ASCII).
    pub text: Option<String>,
    /// One effective tag the agent must carry.
    pub tag: Option<String>,
    /// Page number, from 0.
    pub page: u32,
    /// Rows per page (at most [`MAX_FLEET_PAGE`]).
    pub per_page: u32,
}

/// One agent as the fleet list shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetRow {
    pub fingerprint: Fingerprint,
    pub hostname: String,
    pub presence: Presence,
    pub presence_since_ms: i64,
    /// The build it runs (its library's version, else its agent version).
    pub version: String,
    pub tags: Vec<String>,
    /// The worst latest state of its checks; `None` before any result.
    pub worst: Option<CheckState>,
    /// Checks whose latest state is not OK.
    pub problems: u32,
    /// Checks with a latest result.
    pub checks: u32,
}

/// One page of [`FleetRow`]s and how many agents match in all.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPage {
    pub rows: Vec<FleetRow>,
    pub total: u64,
}

/// The SQL rank of a state, worst highest: both backends' page statements
/// take the maximum of it over an agent's latest results ([`worst_of`]
/// reads it back).
pub const STATE_RANK: &str = "CASE l.state WHEN 'CRITICAL' THEN 3 WHEN 'UNKNOWN' THEN 2
                                           WHEN 'WARNING' THEN 1 WHEN 'OK' THEN 0 END";

/// The worst state from the maximum of [`STATE_RANK`].
pub fn worst_of(rank: Option<i64>) -> Option<CheckState> {
    match rank? {
        3 => Some(CheckState::Critical),
        2 => Some(CheckState::Unknown),
        1 => Some(CheckState::Warning),
        _ => Some(CheckState::Ok),
    }
}

/// Rule 3: `%text%` for LIKE, with LIKE's own characters escaped (by `\`).
pub fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Rule 4: the `(limit, offset)` of a query's page.
pub fn page_bounds(q: &FleetQuery) -> (u32, u64) {
    let per_page = q.per_page.clamp(1, MAX_FLEET_PAGE);
    (per_page, u64::from(q.page) * u64::from(per_page))
}

/// A stored value parsed into `T`, or [`StoreError::Malformed`] naming it.
pub(crate) fn parsed<T: std::str::FromStr>(
    what: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Malformed {
        what,
        value: text.chars().take(200).collect(),
    })
}

/// The columns of one fleet row as both backends read them, before
/// parsing.
pub(crate) struct RawFleetRow {
    pub fingerprint: String,
    pub hostname: String,
    pub presence: String,
    pub presence_since_ms: i64,
    pub agent_version: String,
    pub build_version: Option<String>,
    pub hello_tags: Vec<String>,
    pub server_tags: Vec<String>,
    pub worst_rank: Option<i64>,
    pub problems: i64,
    pub checks: i64,
}

impl RawFleetRow {
    /// The row as the dashboard shows it; fails on a malformed stored
    /// value.
    pub(crate) fn parse(self) -> Result<FleetRow, StoreError> {
        let count = |what, n: i64| {
            u32::try_from(n).map_err(|_| StoreError::Malformed {
                what,
                value: n.to_string(),
            })
        };
        Ok(FleetRow {
            fingerprint: parsed("agent fingerprint", &self.fingerprint)?,
            presence: parsed("agent presence", &self.presence)?,
            presence_since_ms: self.presence_since_ms,
            version: host_version(self.build_version.as_deref(), &self.agent_version).to_owned(),
            tags: crate::store::effective_tags(&self.hello_tags, &self.server_tags),
            worst: worst_of(self.worst_rank),
            problems: count("problem count", self.problems)?,
            checks: count("check count", self.checks)?,
            hostname: self.hostname,
        })
    }
}

/// The fleet pages' reads.
pub trait FleetStore {
    /// One page of the fleet: agents matching `q`, ordered by host name
    /// then fingerprint (rule 2), and the number matching in all. Two
    /// statements.
    fn fleet_page(
        &self,
        q: FleetQuery,
    ) -> impl Future<Output = Result<FleetPage, StoreError>> + Send;

    /// The latest state of every check of `agents` (at most
    /// [`MAX_MATRIX_AGENTS`], the rest ignored), as `(agent, check,
    /// state)` ordered by agent and check, byte order: the cells of the
    /// checks × agents matrix for one page of agents. One statement.
    fn check_states(
        &self,
        agents: Vec<Fingerprint>,
    ) -> impl Future<Output = Result<Vec<(Fingerprint, String, CheckState)>, StoreError>> + Send;

    /// One agent's fleet row (for a live update), if it is known. One
    /// statement.
    fn fleet_row(
        &self,
        fingerprint: &Fingerprint,
    ) -> impl Future<Output = Result<Option<FleetRow>, StoreError>> + Send;
}

impl FleetStore for Backend {
    async fn fleet_page(&self, q: FleetQuery) -> Result<FleetPage, StoreError> {
        dispatch!(self, b => b.fleet_page(q))
    }

    async fn check_states(
        &self,
        agents: Vec<Fingerprint>,
    ) -> Result<Vec<(Fingerprint, String, CheckState)>, StoreError> {
        dispatch!(self, b => b.check_states(agents))
    }

    async fn fleet_row(&self, fingerprint: &Fingerprint) -> Result<Option<FleetRow>, StoreError> {
        dispatch!(self, b => b.fleet_row(fingerprint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_likes_own_characters() {
        let cases = [
            ("web", "%web%"),
            ("", "%%"),
            ("50%", "%50\\%%"),
            ("a_b", "%a\\_b%"),
            ("c:\\x", "%c:\\\\x%"),
            ("é", "%é%"),
        ];
        for (text, pattern) in cases {
            assert_eq!(like_pattern(text), pattern, "{text}");
        }
    }

    #[test]
    fn pages_hold_one_to_the_maximum_rows() {
        let q = |page, per_page| FleetQuery {
            page,
            per_page,
            ..FleetQuery::default()
        };
        let cases = [
            (q(0, 0), (1, 0)),
            (q(0, 50), (50, 0)),
            (q(3, 50), (50, 150)),
            (q(1, 10_000), (MAX_FLEET_PAGE, u64::from(MAX_FLEET_PAGE))),
            (
                q(u32::MAX, u32::MAX),
                (
                    MAX_FLEET_PAGE,
                    u64::from(u32::MAX) * u64::from(MAX_FLEET_PAGE),
                ),
            ),
        ];
        for (query, bounds) in cases {
            assert_eq!(page_bounds(&query), bounds, "{query:?}");
        }
    }

    #[test]
    fn the_worst_state_reads_back_from_its_rank() {
        let cases = [
            (None, None),
            (Some(3), Some(CheckState::Critical)),
            (Some(2), Some(CheckState::Unknown)),
            (Some(1), Some(CheckState::Warning)),
            (Some(0), Some(CheckState::Ok)),
        ];
        for (rank, state) in cases {
            assert_eq!(worst_of(rank), state, "{rank:?}");
        }
    }

    #[test]
    fn a_malformed_stored_value_is_named() {
        let raw = RawFleetRow {
            fingerprint: "not hex".into(),
            hostname: "h".into(),
            presence: "connected".into(),
            presence_since_ms: 0,
            agent_version: "0.1.0".into(),
            build_version: None,
            hello_tags: vec![],
            server_tags: vec![],
            worst_rank: None,
            problems: 0,
            checks: 0,
        };
        assert!(matches!(
            raw.parse(),
            Err(StoreError::Malformed {
                what: "agent fingerprint",
                ..
            })
        ));
    }
}
