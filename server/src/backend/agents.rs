//! The agents registry: registration with key pinning, removal, the
//! presence an agent's sessions report, and its server-side settings.
//!
//! Table `agents` (server/src/store/schema.sql for SQLite,
//! server/src/backend/postgres/migrations/0005_agents.sql for PostgreSQL):
//! one row per agent identity, keyed by fingerprint, holding the pinned
//! public key, the labels and tags of its last `Hello`, its presence and
//! since when, and the enrollment token it came in with and that token's
//! tag allow-list.
//!
//! Rules (the pure functions below state the decisions; both backends run
//! them on the row as it is when they hold it, so they hold under
//! concurrent nodes too; the shared suite in `backend/agent_tests.rs`
//! checks both):
//! 1. An agent is admitted either by its pinned key or, the first time, by
//!    an enrollment token ([`Admission`], decided by [`admit`]). Only a
//!    token admission inserts a row (pinning the key, or replacing the key
//!    and token of a row a concurrent enrollment made); a pinned admission
//!    updates the existing row, and finds none when the agent was removed
//!    meanwhile: removal cannot be undone by a session that authenticated
//!    just before it.
//! 2. The token's tag allow-list is stored with the agent, and every
//!    Hello's tags are split against it ([`split_tags`]): tags outside it
//!    are stored as refused and do not select checks.
//! 3. A registration marks the agent connected; `presence_since_ms` moves
//!    only when the presence changes (a second session of a connected
//!    agent keeps the first's since-when). [`AgentStore::set_presence`]
//!    likewise reports a change only when there was one.
//! 4. Removal deletes the row: the key is unpinned, and coming back needs
//!    a new enrollment token.

use std::future::Future;

use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence};

use super::{Backend, StoreError, dispatch};
use crate::store::TokenGrant;

/// What a verified `Hello` tells the store.
#[derive(Clone, Debug)]
pub struct Registration {
    pub fingerprint: Fingerprint,
    pub public_key: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub build_sha256: Option<String>,
    pub build_version: Option<String>,
    /// Tags the agent announced (already validated and normalised).
    pub tags: Vec<String>,
    /// How the agent proved it may register.
    pub admission: Admission,
    /// Version of the agent's stub, when reported.
    pub stub_version: Option<String>,
    /// Update channel of the agent, when reported.
    pub channel: Option<String>,
    /// The protocol version negotiated for this session.
    pub protocol_version: u32,
}

/// How an agent was let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its key is pinned already: it keeps the allow-list it enrolled with.
    Pinned,
    /// First registration with an enrollment token.
    Enrolled(TokenGrant),
}

/// What [`AgentStore::register`] reports about a registered agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// Highest result sequence already stored for it.
    pub acked_seq: u64,
    /// Declared tags outside its allow-list, ignored.
    pub refused_tags: Vec<String>,
}

/// The pinning of a stored agent row, as [`admit`] decides on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The pinned public key (hex).
    pub public_key: String,
    /// The allow-list of the token it enrolled with; `None`: any tag.
    pub allowed_tags: Option<Vec<String>>,
}

/// What [`admit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Let in; its declared tags are split against `allowed` (`None`: any).
    Allowed { allowed: Option<Vec<String>> },
    /// A pinned admission whose row is gone (removed since the session
    /// authenticated) or holds another key: nothing is written.
    Refused,
}

/// Rule 1: whether a registration of `public_key` by `admission` is let in,
/// given the agent's row as stored now (`None`: no row), and the allow-list
/// its tags are held to. A token admission is always let in, with the
/// token's allow-list (it pins its key over whatever a concurrent
/// enrollment stored); a pinned one only while its own key is pinned, with
/// the allow-list stored at enrollment.
pub fn admit(admission: &Admission, public_key: &str, stored: Option<&Pinned>) -> Admit {
    match (admission, stored) {
        (Admission::Enrolled(grant), _) => Admit::Allowed {
            allowed: grant.allowed_tags.clone(),
        },
        (Admission::Pinned, Some(row)) if row.public_key == public_key => Admit::Allowed {
            allowed: row.allowed_tags.clone(),
        },
        (Admission::Pinned, _) => Admit::Refused,
    }
}

/// Rule 2: splits declared `tags` into those `allowed` (`None` = any) and
/// those refused, both in the order given.
pub fn split_tags(tags: &[String], allowed: Option<&[String]>) -> (Vec<String>, Vec<String>) {
    match allowed {
        None => (tags.to_vec(), Vec::new()),
        Some(allowed) => tags.iter().cloned().partition(|t| allowed.contains(t)),
    }
}

/// The agents area of the store. Times are Unix milliseconds given by the
/// caller (the clock is an argument, so tests set it).
pub trait AgentStore {
    /// The pinned public key (hex) of `agent`, if the agent is known.
    fn pinned_key(
        &self,
        agent: &Fingerprint,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Records a successful registration at `now_ms` and marks the agent
    /// connected (rules 1 to 3): an [`Admission::Enrolled`] agent is
    /// inserted (pinning its key, or refreshing a row a concurrent
    /// enrollment made), an [`Admission::Pinned`] one is updated. `None`:
    /// the pinned agent's row is gone or holds another key (removed since
    /// it authenticated); nothing was written. Concurrent registrations of
    /// one agent, on any nodes, give what running them one after the other
    /// gives.
    fn register(
        &self,
        reg: Registration,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<Registered>, StoreError>> + Send;

    /// Removes `agent` (rule 4): unpins its key and drops its latest
    /// results where the backend stores them, so it no longer shows among
    /// the checks; older results and metrics age out with retention. False
    /// when no such agent exists.
    fn remove_agent(
        &self,
        agent: &Fingerprint,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets the presence of `agent` at `now_ms`. Returns `now_ms`, or
    /// `None` when it already was in that state or is unknown.
    ///
    /// `Down` and `Deregistered` are not written while the agent has an up
    /// session (`backend/presence.rs`): with several nodes, the node an
    /// agent left may report it gone after it reconnected elsewhere, and
    /// the new node's `Connected` (written after its session was taken)
    /// must stand. The check and the write are one statement, so either
    /// the new session is seen, or the new node's `Connected` comes after.
    fn set_presence(
        &self,
        agent: &Fingerprint,
        presence: Presence,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Replaces the server-assigned tags of `agent`; false when unknown.
    fn set_server_tags(
        &self,
        agent: &Fingerprint,
        tags: &[String],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Allows or forbids ad-hoc scripts on `agent`; false when unknown.
    fn set_allow_adhoc(
        &self,
        agent: &Fingerprint,
        allow: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One agent, if known.
    fn agent(
        &self,
        agent: &Fingerprint,
    ) -> impl Future<Output = Result<Option<AgentInfo>, StoreError>> + Send;

    /// Marks every connected agent down at `now_ms`; returns how many.
    /// A single node calls it at start: the agents connected to its
    /// previous process are not connected to this one until they come
    /// back. (With several nodes a node's start must not mark the others'
    /// agents down; the presence area's sweep is the multi-node answer.)
    fn mark_connected_down(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Every agent, ordered by hostname then fingerprint, both compared
    /// byte by byte.
    fn agents(&self) -> impl Future<Output = Result<Vec<AgentInfo>, StoreError>> + Send;
}

impl AgentStore for Backend {
    async fn pinned_key(&self, agent: &Fingerprint) -> Result<Option<String>, StoreError> {
        dispatch!(self, b => b.pinned_key(agent))
    }

    async fn register(
        &self,
        reg: Registration,
        now_ms: i64,
    ) -> Result<Option<Registered>, StoreError> {
        dispatch!(self, b => b.register(reg, now_ms))
    }

    async fn remove_agent(&self, agent: &Fingerprint) -> Result<bool, StoreError> {
        dispatch!(self, b => b.remove_agent(agent))
    }

    async fn set_presence(
        &self,
        agent: &Fingerprint,
        presence: Presence,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self, b => b.set_presence(agent, presence, now_ms))
    }

    async fn set_server_tags(
        &self,
        agent: &Fingerprint,
        tags: &[String],
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.set_server_tags(agent, tags))
    }

    async fn set_allow_adhoc(&self, agent: &Fingerprint, allow: bool) -> Result<bool, StoreError> {
        dispatch!(self, b => b.set_allow_adhoc(agent, allow))
    }

    async fn agent(&self, agent: &Fingerprint) -> Result<Option<AgentInfo>, StoreError> {
        dispatch!(self, b => b.agent(agent))
    }

    async fn mark_connected_down(&self, now_ms: i64) -> Result<usize, StoreError> {
        dispatch!(self, b => b.mark_connected_down(now_ms))
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        dispatch!(self, b => b.agents())
    }
}

/// A stored presence, checked.
pub(crate) fn stored_presence(value: String) -> Result<Presence, StoreError> {
    value.parse().map_err(|_| StoreError::Malformed {
        what: "agent presence",
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn declared_tags_are_split_by_the_allow_list() {
        // (declared, allowed, kept, refused)
        type Case<'a> = (
            &'a [&'a str],
            Option<&'a [&'a str]>,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (&["web", "db"], None, &["web", "db"], &[]),
            (&["web", "db"], Some(&["web"]), &["web"], &["db"]),
            (&["db"], Some(&[]), &[], &["db"]),
            (&[], Some(&["web"]), &[], &[]),
            (&["web"], Some(&["web", "db"]), &["web"], &[]),
        ];
        for (declared, allowed, kept, refused) in cases {
            let allowed = allowed.map(tags);
            assert_eq!(
                split_tags(&tags(declared), allowed.as_deref()),
                (tags(kept), tags(refused)),
                "{declared:?} within {allowed:?}"
            );
        }
    }

    #[test]
    fn a_registration_is_admitted_by_its_token_or_by_its_own_pinned_key() {
        let enrolled = |allowed: Option<&[&str]>| {
            Admission::Enrolled(TokenGrant {
                id: "t".into(),
                allowed_tags: allowed.map(tags),
            })
        };
        let row = |key: &str, allowed: Option<&[&str]>| Pinned {
            public_key: key.into(),
            allowed_tags: allowed.map(tags),
        };
        let allowed = |a: Option<&[&str]>| Admit::Allowed {
            allowed: a.map(tags),
        };
        // (admission, key, stored row, decision)
        let cases = [
            // First enrollment: the token's allow-list.
            (
                enrolled(Some(&["web"])),
                "aa",
                None,
                allowed(Some(&["web"])),
            ),
            (enrolled(None), "aa", None, allowed(None)),
            // A concurrent enrollment stored a row first: the token still
            // decides, whatever that row holds.
            (
                enrolled(None),
                "aa",
                Some(row("aa", Some(&["db"]))),
                allowed(None),
            ),
            (
                enrolled(Some(&["web"])),
                "aa",
                Some(row("bb", None)),
                allowed(Some(&["web"])),
            ),
            // Pinned: the allow-list it enrolled with.
            (
                Admission::Pinned,
                "aa",
                Some(row("aa", Some(&["db"]))),
                allowed(Some(&["db"])),
            ),
            (
                Admission::Pinned,
                "aa",
                Some(row("aa", None)),
                allowed(None),
            ),
            // Removed meanwhile, or another key pinned: refused.
            (Admission::Pinned, "aa", None, Admit::Refused),
            (
                Admission::Pinned,
                "aa",
                Some(row("bb", None)),
                Admit::Refused,
            ),
        ];
        for (admission, key, stored, decision) in cases {
            assert_eq!(
                admit(&admission, key, stored.as_ref()),
                decision,
                "{admission:?} {key} {stored:?}"
            );
        }
    }

    #[test]
    fn stored_presences_are_checked() {
        assert_eq!(stored_presence("down".into()).unwrap(), Presence::Down);
        assert!(matches!(
            stored_presence("gone".into()),
            Err(StoreError::Malformed {
                what: "agent presence",
                ..
            })
        ));
    }
}
