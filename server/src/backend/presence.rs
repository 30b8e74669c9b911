//! Presence across nodes: which node holds each agent's session, fenced
//! by a generation, and which nodes are alive.
//!
//! Tables (`sessions`, `nodes`: server/src/store/presence.sql for SQLite,
//! server/src/backend/postgres/migrations/0001_presence.sql for
//! PostgreSQL):
//! - `sessions(agent_fp, node_id, generation, connected_at_ms,
//!   last_seen_ms, ended_at_ms)`: one row per agent, kept when the session
//!   ends (`ended_at_ms` set) so its generation never goes back.
//! - `nodes(node_id, last_seen_ms)`: each node's latest heartbeat.
//!
//! Rules (the pure functions below state them; the SQLite backend runs
//! them, the PostgreSQL backend writes them into its statements' `WHERE`
//! so they hold under concurrent nodes; the shared suite in
//! `backend/tests.rs` checks both):
//! 1. A connect, on any node, takes the session: `generation + 1`, the
//!    node becomes the owner, the session is up ([`next_generation`]).
//! 2. A disconnect is applied only by the owner of the same generation
//!    while it is up ([`fences`]): a node's late "socket lost" after the
//!    agent reconnected elsewhere changes nothing.
//! 3. A heartbeat refreshes the node and `last_seen_ms` of the sessions it
//!    still owns, in one batch; the ones it lost come back
//!    ([`Heartbeat::lost`]) so the node can close them.
//! 4. A sweep ends every up session whose `last_seen_ms` is older than the
//!    cutoff ([`swept`]): no live node's heartbeat carries it. It returns
//!    them, so the caller can report them down (unless the agent is up on
//!    another session by then).

use std::fmt;
use std::future::Future;

use outrider_protocol::Fingerprint;

use super::{Backend, StoreError, dispatch};

/// How long a node may stay silent before its sessions are swept.
pub const NODE_SILENCE_MS: i64 = 30_000;

/// Sessions refreshed per statement by a heartbeat: a node with more
/// sends several statements (in one transaction).
pub const HEARTBEAT_BATCH: usize = 5_000;

/// A server node's name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

/// Why a node id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "node id {0:?} is not 1 to 64 letters, digits, '.', '_' or '-'; choose another (--node-id)"
)]
pub struct BadNodeId(String);

impl std::str::FromStr for NodeId {
    type Err = BadNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(NodeId(s.to_owned()))
        } else {
            Err(BadNodeId(s.to_owned()))
        }
    }
}

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node holds for a session it opened: the fencing token of its
/// later disconnect and heartbeats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    pub agent: Fingerprint,
    pub node: NodeId,
    pub generation: u64,
}

/// An agent's stored session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub node: NodeId,
    pub generation: u64,
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
    /// `None` while up.
    pub ended_at_ms: Option<i64>,
}

impl Session {
    pub fn is_up(&self) -> bool {
        self.ended_at_ms.is_none()
    }
}

/// A session a sweep ended: its node went silent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Swept {
    pub agent: Fingerprint,
    pub node: NodeId,
    pub generation: u64,
}

/// What a heartbeat found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sessions refreshed: the node still owns them.
    pub refreshed: usize,
    /// Leases the node sent but no longer owns (the agent reconnected
    /// elsewhere, or a sweep ended them while the node was silent): the
    /// node should close those sessions.
    pub lost: Vec<Lease>,
}

/// Rule 1: the generation a connect gives, after `current` (`None`: the
/// agent never connected).
pub fn next_generation(current: Option<u64>) -> u64 {
    current.map_or(1, |g| g + 1)
}

/// Rule 2 (and the ownership test of rule 3): whether `lease` still owns
/// `stored`: same node, same generation, still up.
pub fn fences(stored: Option<&Session>, lease: &Lease) -> bool {
    stored.is_some_and(|s| s.is_up() && s.node == lease.node && s.generation == lease.generation)
}

/// Rule 4: whether a sweep at `cutoff_ms` (now minus [`NODE_SILENCE_MS`])
/// ends `session`: it is up and was neither connected nor refreshed since
/// the cutoff. A node's heartbeat refreshes every session it holds, so a
/// session silent that long is held by no live node: its node is silent,
/// or it is alive but no longer carries it (it restarted under the same
/// `--node-id` and lost its sockets with its memory). The node's own row
/// therefore does not enter the rule; a session that just connected to a
/// node that has not heartbeated yet stays by its own `last_seen_ms`.
pub fn swept(session: &Session, cutoff_ms: i64) -> bool {
    session.is_up() && session.last_seen_ms < cutoff_ms
}

/// Rule 3: the leases of `sent` not among `refreshed`. A lease is the
/// agent and its generation: a node can hold two of one agent (it came back
/// to the same node before the old socket was noticed gone), and only the
/// newer is refreshed.
pub fn lost_leases(sent: &[Lease], refreshed: &[Lease]) -> Vec<Lease> {
    let refreshed: std::collections::HashSet<&Lease> = refreshed.iter().collect();
    sent.iter()
        .filter(|l| !refreshed.contains(l))
        .cloned()
        .collect()
}

/// The presence area of the store. Every time is Unix milliseconds, given
/// by the caller (the clock is an argument, so tests set it).
pub trait PresenceStore {
    /// An agent's session opened on `node` at `now_ms` (rule 1). Returns
    /// the session's lease. The node's row is left to its heartbeat (the
    /// session's own `last_seen_ms` keeps it from a sweep until then), so
    /// a connect locks one row only.
    fn connect(
        &self,
        agent: &Fingerprint,
        node: &NodeId,
        now_ms: i64,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// The session of `lease` ended at `now_ms` (rule 2). True when this
    /// ended it; false when the lease was stale (the agent is on a newer
    /// session) or the session had ended already.
    fn disconnect(
        &self,
        lease: &Lease,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// `node` is alive at `now_ms` and holds `live` (rule 3). Fails, and
    /// changes nothing, when a lease is of another node.
    fn heartbeat(
        &self,
        node: &NodeId,
        live: &[Lease],
        now_ms: i64,
    ) -> impl Future<Output = Result<Heartbeat, StoreError>> + Send;

    /// Ends the up sessions of nodes silent since `now_ms - silence_ms`
    /// (rule 4), and returns them. Concurrent sweeps on several nodes
    /// return each ended session once.
    fn sweep(
        &self,
        now_ms: i64,
        silence_ms: i64,
    ) -> impl Future<Output = Result<Vec<Swept>, StoreError>> + Send;

    /// The stored session of `agent`, if it ever connected.
    fn session(
        &self,
        agent: &Fingerprint,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;
}

impl PresenceStore for Backend {
    async fn connect(
        &self,
        agent: &Fingerprint,
        node: &NodeId,
        now_ms: i64,
    ) -> Result<Lease, StoreError> {
        dispatch!(self, b => b.connect(agent, node, now_ms))
    }

    async fn disconnect(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, b => b.disconnect(lease, now_ms))
    }

    async fn heartbeat(
        &self,
        node: &NodeId,
        live: &[Lease],
        now_ms: i64,
    ) -> Result<Heartbeat, StoreError> {
        dispatch!(self, b => b.heartbeat(node, live, now_ms))
    }

    async fn sweep(&self, now_ms: i64, silence_ms: i64) -> Result<Vec<Swept>, StoreError> {
        dispatch!(self, b => b.sweep(now_ms, silence_ms))
    }

    async fn session(&self, agent: &Fingerprint) -> Result<Option<Session>, StoreError> {
        dispatch!(self, b => b.session(agent))
    }
}

/// A lease of another node in a heartbeat: a bug of the caller.
pub(crate) fn foreign_lease(node: &NodeId, live: &[Lease]) -> Option<StoreError> {
    live.iter()
        .find(|l| &l.node != node)
        .map(|l| StoreError::ForeignLease {
            node: node.to_string(),
            lease_node: l.node.to_string(),
        })
}

/// A stored generation (a `BIGINT`/`INTEGER`) as the `u64` it was written from.
pub(crate) fn stored_generation(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .ok()
        .filter(|g| *g > 0)
        .ok_or(StoreError::Malformed {
            what: "session generation",
            value: value.to_string(),
        })
}

/// A stored node id, checked.
pub(crate) fn stored_node(value: String) -> Result<NodeId, StoreError> {
    value.parse().map_err(|_| StoreError::Malformed {
        what: "node id",
        value,
    })
}

/// A stored agent fingerprint, checked.
pub(crate) fn stored_agent(value: String) -> Result<Fingerprint, StoreError> {
    value.parse().map_err(|_| StoreError::Malformed {
        what: "agent fingerprint",
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        n.parse().unwrap()
    }

    fn lease(n: &str, generation: u64) -> Lease {
        Lease {
            agent: crate::store::test_support::TEST_FP.parse().unwrap(),
            node: node(n),
            generation,
        }
    }

    fn session(n: &str, generation: u64, last_seen_ms: i64, ended: Option<i64>) -> Session {
        Session {
            node: node(n),
            generation,
            connected_at_ms: 0,
            last_seen_ms,
            ended_at_ms: ended,
        }
    }

    #[test]
    fn node_ids_are_checked() {
        let long = "n".repeat(64);
        let too_long = "n".repeat(65);
        // (id, accepted)
        let cases = [
            ("node-a", true),
            ("10.0.0.7_b", true),
            (long.as_str(), true),
            ("", false),
            (too_long.as_str(), false),
            ("a b", false),
            ("nœud", false),
            ("a/b", false),
        ];
        for (id, accepted) in cases {
            assert_eq!(id.parse::<NodeId>().is_ok(), accepted, "{id:?}");
        }
    }

    #[test]
    fn a_connect_bumps_the_generation() {
        // (current, next)
        for (current, next) in [(None, 1), (Some(1), 2), (Some(41), 42)] {
            assert_eq!(next_generation(current), next, "{current:?}");
        }
    }

    #[test]
    fn only_the_owner_of_the_same_generation_ends_an_up_session() {
        // (stored, lease, applies)
        let cases = [
            (Some(session("a", 1, 0, None)), lease("a", 1), true),
            // The agent reconnected on b: a's late disconnect is stale.
            (Some(session("b", 2, 0, None)), lease("a", 1), false),
            // Reconnected on a itself: the old session's lease is stale.
            (Some(session("a", 2, 0, None)), lease("a", 1), false),
            // Same generation, other node (cannot happen; still fenced).
            (Some(session("b", 1, 0, None)), lease("a", 1), false),
            // Ended already (a disconnect or a sweep).
            (Some(session("a", 1, 0, Some(5))), lease("a", 1), false),
            // Never connected.
            (None, lease("a", 1), false),
        ];
        for (stored, lease, applies) in cases {
            assert_eq!(
                fences(stored.as_ref(), &lease),
                applies,
                "{stored:?} {lease:?}"
            );
        }
    }

    #[test]
    fn a_sweep_ends_only_sessions_silent_since_the_cutoff() {
        let cutoff = 1_000;
        // (session, swept)
        let cases = [
            (session("a", 1, 999, None), true),
            // Connected or refreshed since the cutoff.
            (session("a", 1, 1_000, None), false),
            (session("a", 1, 5_000, None), false),
            // Ended already.
            (session("a", 1, 5, Some(6)), false),
        ];
        for (s, expected) in cases {
            assert_eq!(swept(&s, cutoff), expected, "{s:?}");
        }
    }

    #[test]
    fn leases_not_refreshed_are_lost() {
        let l = |i: u8, generation: u64| Lease {
            agent: format!("{i:020x}").parse().unwrap(),
            node: node("a"),
            generation,
        };
        // (sent, refreshed, lost)
        let cases: [(Vec<Lease>, Vec<Lease>, Vec<Lease>); 5] = [
            (vec![], vec![], vec![]),
            (vec![l(1, 1), l(2, 1)], vec![l(1, 1), l(2, 1)], vec![]),
            (
                vec![l(1, 1), l(2, 1), l(3, 1)],
                vec![l(2, 1)],
                vec![l(1, 1), l(3, 1)],
            ),
            (vec![l(1, 1)], vec![], vec![l(1, 1)]),
            // Two leases of one agent: only the refreshed generation stays.
            (vec![l(1, 1), l(1, 2)], vec![l(1, 2)], vec![l(1, 1)]),
        ];
        for (sent, refreshed, lost) in cases {
            assert_eq!(lost_leases(&sent, &refreshed), lost, "{sent:?}");
        }
    }
}
