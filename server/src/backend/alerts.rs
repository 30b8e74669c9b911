//! The alert engine's persisted state and its outbox: the contract between
//! the engine's driver (server/src/alerts.rs) and the notifier
//! (server/src/notify).
//!
//! Tables (server/src/store/alerts.sql and server/src/store/alert_outbox.sql
//! for SQLite, server/src/backend/postgres/migrations/0011_alerts.sql for
//! PostgreSQL): `alert_state`, one row, the JSON of `alerting::State`; and
//! `alert_outbox`, one row per `alerting::Action::Notify`, unique by its
//! `batch_key`, which the notifier routes (`routed_at_ms`). Saving also
//! reads the `agents` table of the agents area (`backend/agents.rs`): an
//! agent's tags.
//!
//! Rules (checked on both backends by `backend/alert_tests.rs`):
//! 1. [`AlertStore::save_alerts`] writes the state and the outbox rows
//!    decided before it in one transaction: a crash neither loses a
//!    decision (the state is never ahead of the outbox) nor makes it twice.
//! 2. A row is stored once per `batch_key`, whoever saves it (a retry after
//!    an unknown outcome, or a new leader deciding again what its
//!    predecessor stored): a row already stored is ignored, its first
//!    version kept.
//! 3. Each row's tags are its group's when saved ([`row_tags`]): the
//!    agent's effective tags, or the site's one tag.
//! 4. Alert evaluation is a singleton job ([`Job::AlertEvaluation`],
//!    `backend/leader.rs`): a save carries the saver's [`LeaderTerm`] and
//!    is refused with [`StoreError::Fenced`], writing nothing, unless that
//!    term is the job's newest. On PostgreSQL the save runs through
//!    `PgBackend::fenced`, so a paused old leader cannot overwrite the
//!    state of the one that took over; SQLite is one node, leading every
//!    job under [`SQLITE_TERM`], and admits that term only
//!    ([`sqlite_fence`]). A term of another job is a caller's bug, refused
//!    on both ([`StoreError::ForeignTerm`]).
//! 5. The outbox reads newest (highest id) first, at most
//!    [`MAX_OUTBOX_PAGE`] rows ([`outbox_page`]).

use std::future::Future;

use outrider_alerting::api::HistoryEntry;

use super::leader::{Job, LeaderTerm, SQLITE_TERM, fence_admits};
use super::{Backend, StoreError, dispatch};

/// Most outbox rows [`AlertStore::alert_outbox`] returns.
pub const MAX_OUTBOX_PAGE: u32 = 1000;

/// One `alerting::Action::Notify` as the driver hands it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxBatch {
    /// `<incident_key>#<seq>` of every notification, sorted, joined by ' '.
    pub batch_key: String,
    /// `agent/<fingerprint>` or `site/<tag>`.
    pub group_key: String,
    /// The worst status among the notifications, lowercase.
    pub severity: String,
    /// JSON array of `alerting::Notification`.
    pub notifications: String,
}

/// Whose tags a row carries, from its `group_key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group<'a> {
    /// `agent/<fingerprint>`: the agent's effective tags, read when saved.
    Agent(&'a str),
    /// `site/<tag>`: that one tag.
    Site(&'a str),
    /// Anything else: no tags.
    Other,
}

/// Rule 3: the group a `group_key` names.
pub fn group_of(group_key: &str) -> Group<'_> {
    match group_key.split_once('/') {
        Some(("agent", fp)) => Group::Agent(fp),
        Some(("site", tag)) => Group::Site(tag),
        _ => Group::Other,
    }
}

/// Rule 3: a row's tags, given its group and, for an agent group, the
/// agent's `(hello_tags, server_tags)` as stored (`None`: no such agent,
/// no tags).
pub fn row_tags(group: Group<'_>, agent: Option<(Vec<String>, Vec<String>)>) -> Vec<String> {
    match (group, agent) {
        (Group::Site(tag), _) => vec![tag.to_owned()],
        (Group::Agent(_), Some((hello, server))) => crate::store::effective_tags(&hello, &server),
        (Group::Agent(_), None) | (Group::Other, _) => Vec::new(),
    }
}

/// Rule 5: how many rows a request for `limit` reads.
pub fn outbox_page(limit: u32) -> u32 {
    limit.min(MAX_OUTBOX_PAGE)
}

/// Rule 4: `term` must be a term of alert evaluation.
pub fn check_job(term: &LeaderTerm) -> Result<(), StoreError> {
    if term.job == Job::AlertEvaluation {
        Ok(())
    } else {
        Err(StoreError::ForeignTerm {
            expected: Job::AlertEvaluation.name(),
            got: term.job.name(),
        })
    }
}

/// Rule 4 on SQLite: one node, leading every job under [`SQLITE_TERM`].
pub fn sqlite_fence(term: &LeaderTerm) -> Result<(), StoreError> {
    check_job(term)?;
    if fence_admits(term.term, Some(SQLITE_TERM)) {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            job: term.job.name(),
            term: term.term,
            current: Some(SQLITE_TERM),
        })
    }
}

/// The stored notifications of a row as the API shows them.
pub(crate) fn stored_notifications(
    text: &str,
) -> Result<Vec<outrider_alerting::Notification>, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Malformed {
        what: "notification list of an outbox row",
        value: text.chars().take(200).collect(),
    })
}

/// The alert engine's state and outbox. Times are Unix milliseconds given
/// by the caller.
pub trait AlertStore {
    /// The engine state stored by the latest [`AlertStore::save_alerts`].
    fn alert_state(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Stores the engine `state` (JSON) and `batches`, at `now_ms`, in one
    /// transaction fenced by `term` (rules 1 to 4). Returns how many rows
    /// were new. Nothing is stored when it fails.
    fn save_alerts(
        &self,
        term: &LeaderTerm,
        state: String,
        batches: Vec<OutboxBatch>,
        now_ms: i64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// The newest `limit` outbox rows (at most [`MAX_OUTBOX_PAGE`]), newest
    /// first.
    fn alert_outbox(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>, StoreError>> + Send;
}

impl AlertStore for Backend {
    async fn alert_state(&self) -> Result<Option<String>, StoreError> {
        dispatch!(self, b => b.alert_state())
    }

    async fn save_alerts(
        &self,
        term: &LeaderTerm,
        state: String,
        batches: Vec<OutboxBatch>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        dispatch!(self, b => b.save_alerts(term, state, batches, now_ms))
    }

    async fn alert_outbox(&self, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        dispatch!(self, b => b.alert_outbox(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn group_keys_name_an_agent_a_site_or_nothing() {
        let cases = [
            ("agent/abc", Group::Agent("abc")),
            ("site/dc1", Group::Site("dc1")),
            ("site/a/b", Group::Site("a/b")),
            ("agent/", Group::Agent("")),
            ("host/x", Group::Other),
            ("agent", Group::Other),
            ("", Group::Other),
        ];
        for (key, group) in cases {
            assert_eq!(group_of(key), group, "{key}");
        }
    }

    #[test]
    fn rows_carry_the_agents_effective_tags_or_the_site_tag() {
        let agent = || Some((tags(&["web", "prod"]), tags(&["prod", "eu"])));
        // (group, agent's tags, row's tags)
        let cases = [
            (Group::Agent("fp"), agent(), tags(&["eu", "prod", "web"])),
            (Group::Agent("fp"), None, tags(&[])),
            (Group::Site("dc1"), None, tags(&["dc1"])),
            (Group::Site("dc1"), agent(), tags(&["dc1"])),
            (Group::Other, agent(), tags(&[])),
        ];
        for (group, stored, expected) in cases {
            assert_eq!(
                row_tags(group, stored.clone()),
                expected,
                "{group:?} {stored:?}"
            );
        }
    }

    #[test]
    fn pages_are_bounded() {
        let cases = [
            (0, 0),
            (1, 1),
            (MAX_OUTBOX_PAGE, MAX_OUTBOX_PAGE),
            (MAX_OUTBOX_PAGE + 1, MAX_OUTBOX_PAGE),
            (u32::MAX, MAX_OUTBOX_PAGE),
        ];
        for (limit, page) in cases {
            assert_eq!(outbox_page(limit), page, "{limit}");
        }
    }

    #[test]
    fn sqlite_admits_its_one_term_of_alert_evaluation_only() {
        let term = |job, term| LeaderTerm {
            job,
            node: "solo".parse().unwrap(),
            term,
        };
        // (term, admitted)
        let cases = [
            (term(Job::AlertEvaluation, SQLITE_TERM), true),
            (term(Job::AlertEvaluation, SQLITE_TERM + 1), false),
            (term(Job::AlertEvaluation, 0), false),
            (term(Job::Retention, SQLITE_TERM), false),
        ];
        for (t, admitted) in cases {
            assert_eq!(sqlite_fence(&t).is_ok(), admitted, "{t:?}");
        }
        assert!(matches!(
            sqlite_fence(&term(Job::AlertEvaluation, 2)),
            Err(StoreError::Fenced {
                job: "alert-evaluation",
                term: 2,
                current: Some(SQLITE_TERM)
            })
        ));
        assert!(matches!(
            sqlite_fence(&term(Job::Nudges, 1)),
            Err(StoreError::ForeignTerm {
                expected: "alert-evaluation",
                got: "nudges"
            })
        ));
    }

    #[test]
    fn unreadable_notifications_are_malformed() {
        assert!(stored_notifications("[]").unwrap().is_empty());
        assert!(matches!(
            stored_notifications("{"),
            Err(StoreError::Malformed {
                what: "notification list of an outbox row",
                ..
            })
        ));
    }
}
