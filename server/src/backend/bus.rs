//! The cross-node bus: requests to one node with a reply ("run now" for an
//! agent connected to another node) and broadcasts to every node (config
//! changed, nudge scheduled, live event), for the multi-node mode.
//!
//! This module is backend-neutral: the message types, the limits, the
//! typed [`BusError`] and the decisions as pure functions, tested by
//! table. `postgres/bus.rs` runs them over PostgreSQL (an outbox table,
//! coalesced `NOTIFY`, a dedicated `LISTEN` connection and a polling
//! fallback). A single SQLite node has no other node to reach, so it has
//! no bus: its calls stay local.
//!
//! Rules:
//! 1. A message is a row addressed to one node; the node takes it with
//!    `DELETE … RETURNING`, so it is delivered at most once, and, while the
//!    node lives and the deadline holds, exactly once.
//! 2. `NOTIFY` is only a wake-up: a node also polls every
//!    [`POLL_INTERVAL`] ([`BUSY_POLL`] while busy, [`next_poll`]) and at
//!    once after its `LISTEN` connection comes back, so a lost
//!    notification delays a message, never loses it.
//! 3. At most one `NOTIFY` per target node per [`COALESCE`], whatever the
//!    send rate ([`plan_notifies`]): `NOTIFY` takes a global lock at
//!    commit, so it must not scale with traffic. It is sent by one task on
//!    its own statement, never inside another transaction (ingest).
//! 4. A request is refused at once when its target is not alive
//!    ([`liveness`], the presence area's `nodes` heartbeat and
//!    [`NODE_SILENCE_MS`]), and a pending one fails as soon as its target
//!    is seen dead; otherwise it fails at its deadline. A message taken
//!    after its deadline is dropped, not executed late ([`expired`]).
//! 5. Bounded: payloads ([`BusConfig::max_payload_bytes`], also a `CHECK`
//!    in the table), pending requests per target node
//!    ([`BusConfig::max_pending_per_node`]), the incoming queue, and the
//!    table (every row has a deadline; expired rows are swept).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::StoreError;
use super::presence::{NODE_SILENCE_MS, NodeId};

/// Largest payload of a message (the table's `CHECK` says the same).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Largest error text of a reply (the table's `CHECK` says the same);
/// longer texts are cut.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Requests one node may have waiting on one target node.
pub const MAX_PENDING_PER_NODE: usize = 1024;
/// The shortest time between two `NOTIFY`s to one node.
pub const COALESCE: Duration = Duration::from_millis(100);
/// How often a node looks for its messages without being notified.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How soon a busy node looks for messages again ([`next_poll`]).
pub const BUSY_POLL: Duration = Duration::from_millis(10);
/// How long a broadcast waits to be taken before it is dropped.
pub const BROADCAST_TTL: Duration = Duration::from_secs(30);
/// How long after its deadline any node deletes a message nobody took
/// (its target died): the target itself drops expired messages it takes.
pub const SWEEP_GRACE_MS: i64 = 60_000;
/// Messages taken per statement; a node with more takes again at once.
pub const TAKE_BATCH: i64 = 256;
/// First delay before reconnecting the `LISTEN` connection; doubles up to
/// [`RECONNECT_CAP`].
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Largest delay between `LISTEN` reconnects.
pub const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// The limits and timing of one node's bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusConfig {
    pub max_payload_bytes: usize,
    pub max_pending_per_node: usize,
    /// How often the node looks for its messages without a notification
    /// ([`POLL_INTERVAL`]; tests set it long to prove the notified path).
    pub poll_interval: Duration,
    /// How soon the node looks again while busy ([`BUSY_POLL`],
    /// [`next_poll`]).
    pub busy_poll: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            max_pending_per_node: MAX_PENDING_PER_NODE,
            poll_interval: POLL_INTERVAL,
            busy_poll: BUSY_POLL,
        }
    }
}

/// What a request asks for ("run_now"): 1 to 64 of `a-z 0-9 . _ -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kind(String);

/// Why a request kind was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bus request kind {0:?} is not 1 to 64 of a-z, 0-9, '.', '_' or '-'")]
pub struct BadKind(String);

impl std::str::FromStr for Kind {
    type Err = BadKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(Kind(s.to_owned()))
        } else {
            Err(BadKind(s.to_owned()))
        }
    }
}

impl Kind {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a broadcast tells every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A check or collector config changed: reload and push to agents.
    ConfigChanged,
    /// An update nudge was scheduled: nudge the agents connected here.
    NudgeScheduled,
    /// A live event for the UI streams connected here.
    LiveEvent,
}

impl Topic {
    pub const ALL: [Topic; 3] = [
        Topic::ConfigChanged,
        Topic::NudgeScheduled,
        Topic::LiveEvent,
    ];

    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::ConfigChanged => "config_changed",
            Topic::NudgeScheduled => "nudge_scheduled",
            Topic::LiveEvent => "live_event",
        }
    }

    /// The topic stored as `s`; `None` for a name this server does not
    /// know (written by a newer one).
    pub fn parse(s: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A request taken by its target node, to be answered with
/// `PgBus::reply` before `deadline_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub from: NodeId,
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub deadline_ms: i64,
}

/// A broadcast taken by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broadcast {
    pub id: i64,
    pub from: NodeId,
    pub topic: Topic,
    pub payload: Vec<u8>,
}

/// What a node's bus hands to the rest of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Request(Request),
    Broadcast(Broadcast),
}

/// Why a bus call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The payload is larger than the bus carries; nothing was sent.
    #[error("bus payload of {size} bytes is over the limit of {max}; send less (or a reference)")]
    PayloadTooLarge { size: usize, max: usize },
    /// Too many requests of this node already wait on `node`; nothing was
    /// sent.
    #[error("{pending} requests already wait on node {node} (the limit); retry later")]
    TooManyPending { node: NodeId, pending: usize },
    /// `node` has never heartbeated: no such node in the cluster.
    #[error("node {node} is unknown (it never heartbeated)")]
    UnknownNode { node: NodeId },
    /// `node` has been silent for `silent_ms` (dead): its agents will
    /// reconnect to another node; retry there.
    #[error("node {node} is lost: silent for {silent_ms} ms; its agents will reconnect elsewhere")]
    NodeLost { node: NodeId, silent_ms: i64 },
    /// No reply from `node` before the deadline; the request will not be
    /// executed late.
    #[error("no reply from node {node} to {kind} within {timeout_ms} ms")]
    DeadlineExceeded {
        node: NodeId,
        kind: Kind,
        timeout_ms: i64,
    },
    /// The target node ran the request and it failed there.
    #[error("node {node} failed {kind}: {message}")]
    Remote {
        node: NodeId,
        kind: Kind,
        message: String,
    },
    /// The dedicated `LISTEN` connection ended (the bus reconnects).
    #[error("the LISTEN connection was lost: {0}")]
    ListenLost(String),
    /// This node's bus is shutting down.
    #[error("the bus is shutting down")]
    ShuttingDown,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for BusError {
    fn from(e: tokio_postgres::Error) -> Self {
        BusError::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for BusError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        BusError::Store(e.into())
    }
}

/// Whether a message may be sent: its payload fits and its target has
/// room for one more pending request (`pending`: those already waiting;
/// `None` for a broadcast, which waits on nobody).
pub fn admit(
    limits: &BusConfig,
    target: &NodeId,
    payload_len: usize,
    pending: Option<usize>,
) -> Result<(), BusError> {
    if payload_len > limits.max_payload_bytes {
        return Err(BusError::PayloadTooLarge {
            size: payload_len,
            max: limits.max_payload_bytes,
        });
    }
    match pending {
        Some(n) if n >= limits.max_pending_per_node => Err(BusError::TooManyPending {
            node: target.clone(),
            pending: n,
        }),
        _ => Ok(()),
    }
}

/// Whether a node is alive, from its `nodes.last_seen_ms` (`None`: no
/// row). Alive while silent for at most [`NODE_SILENCE_MS`], the presence
/// area's sweep rule, so the bus and the sweep agree on who is dead.
pub fn liveness(node: &NodeId, last_seen_ms: Option<i64>, now_ms: i64) -> Result<(), BusError> {
    match last_seen_ms {
        None => Err(BusError::UnknownNode { node: node.clone() }),
        Some(seen) if now_ms - seen > NODE_SILENCE_MS => Err(BusError::NodeLost {
            node: node.clone(),
            silent_ms: now_ms - seen,
        }),
        Some(_) => Ok(()),
    }
}

/// Whether a message taken at `now_ms` is past its deadline: dropped, not
/// executed late.
pub fn expired(deadline_ms: i64, now_ms: i64) -> bool {
    now_ms >= deadline_ms
}

/// What the `NOTIFY` task does now: which nodes to notify (each with a
/// signal waiting and no `NOTIFY` within `coalesce`), and when to look
/// again for the rest (`None`: nothing waits).
#[derive(Debug, PartialEq, Eq)]
pub struct NotifyPlan {
    pub now: Vec<NodeId>,
    pub wake_at_ms: Option<u64>,
}

/// The coalescing rule: a node with a signal waiting is notified now if
/// its last `NOTIFY` (`last_ms`, on a monotonic clock in ms) is at least
/// `coalesce_ms` old, else at `last + coalesce_ms`. However many signals
/// arrive, a node gets at most one `NOTIFY` per `coalesce_ms`, and a
/// signal waits at most `coalesce_ms`.
pub fn plan_notifies(
    waiting: &BTreeSet<NodeId>,
    last_ms: &BTreeMap<NodeId, u64>,
    now_ms: u64,
    coalesce_ms: u64,
) -> NotifyPlan {
    let mut plan = NotifyPlan {
        now: Vec::new(),
        wake_at_ms: None,
    };
    for node in waiting {
        match last_ms.get(node) {
            Some(&last) if now_ms < last.saturating_add(coalesce_ms) => {
                let at = last + coalesce_ms;
                plan.wake_at_ms = Some(plan.wake_at_ms.map_or(at, |w| w.min(at)));
            }
            _ => plan.now.push(node.clone()),
        }
    }
    plan
}

/// How long the receive task waits for a notification before it takes
/// again anyway: `busy_poll` within [`COALESCE`] of its last take that
/// found messages (`since_took`), else `poll_interval`. Why: coalescing
/// holds a node's next `NOTIFY` up to `COALESCE` after the previous one,
/// and a node that was just notified has just taken messages, so the
/// window in which a `NOTIFY` to it can be held back is the window in
/// which it polls every `busy_poll` (a cheap indexed take, no global
/// lock). Outside it a `NOTIFY` is sent at once, so an idle node — or
/// one waiting seconds for a slow check's reply — only polls every
/// `poll_interval`.
pub fn next_poll(since_took: Option<Duration>, config: &BusConfig) -> Duration {
    if since_took.is_some_and(|d| d < COALESCE) {
        config.busy_poll.min(config.poll_interval)
    } else {
        config.poll_interval
    }
}

/// The delay before `LISTEN` reconnect attempt `attempt` (0 first):
/// doubling from [`RECONNECT_BASE`] up to [`RECONNECT_CAP`]; the caller
/// adds jitter. Polling goes on meanwhile.
pub fn reconnect_delay(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    RECONNECT_BASE.saturating_mul(factor).min(RECONNECT_CAP)
}

/// The `NOTIFY`/`LISTEN` channel of a node. Node ids are checked
/// (`NodeId`: letters, digits, `.`, `_`, `-`, ≤ 64), so the name is quoted
/// as an identifier; PostgreSQL keeps channel names up to 63 bytes, so a
/// long id is cut to fit (ids equal in their first 51 bytes share a
/// channel, which only wakes both: each takes its own rows).
pub fn channel(node: &NodeId) -> String {
    let id = node.as_str();
    let cut = &id[..id.len().min(63 - "outrider_node_".len())];
    format!("outrider_node_{cut}")
}

/// Milliseconds since the Unix epoch: deadlines are wall-clock times, so
/// that another node can check them (skew between nodes' clocks shortens
/// or lengthens them by as much).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        n.parse().unwrap()
    }

    #[test]
    fn kinds_and_topics_are_checked() {
        for ok in ["run_now", "a", "x.y-z_9"] {
            assert_eq!(ok.parse::<Kind>().unwrap().as_str(), ok);
        }
        for bad in ["", "Run", "a b", "é", &"a".repeat(65)] {
            assert!(bad.parse::<Kind>().is_err(), "{bad:?}");
        }
        for t in Topic::ALL {
            assert_eq!(Topic::parse(t.as_str()), Some(t));
        }
        assert_eq!(Topic::parse("new_topic"), None);
    }

    #[test]
    fn a_message_is_admitted_within_its_limits() {
        let limits = BusConfig {
            max_payload_bytes: 10,
            max_pending_per_node: 2,
            ..BusConfig::default()
        };
        let b = node("b");
        // (payload length, pending, admitted)
        let cases = [
            (10, Some(1), "ok"),
            (11, Some(0), "too large"),
            (0, Some(2), "too many"),
            (10, None, "ok"),
            (11, None, "too large"),
        ];
        for (len, pending, want) in cases {
            let got = match admit(&limits, &b, len, pending) {
                Ok(()) => "ok",
                Err(BusError::PayloadTooLarge { size, max: 10 }) if size == len => "too large",
                Err(BusError::TooManyPending { pending: 2, .. }) => "too many",
                Err(e) => panic!("{e}"),
            };
            assert_eq!(got, want, "{len} {pending:?}");
        }
    }

    #[test]
    fn a_node_silent_for_more_than_the_sweep_limit_is_lost() {
        let b = node("b");
        let now = 1_000_000;
        // (last seen, outcome)
        let cases = [
            (Some(now), "alive"),
            (Some(now - NODE_SILENCE_MS), "alive"),
            (Some(now - NODE_SILENCE_MS - 1), "lost"),
            (Some(now + 5), "alive"), // its clock is ahead
            (None, "unknown"),
        ];
        for (seen, want) in cases {
            let got = match liveness(&b, seen, now) {
                Ok(()) => "alive",
                Err(BusError::NodeLost { silent_ms, .. }) => {
                    assert_eq!(Some(now - silent_ms), seen);
                    "lost"
                }
                Err(BusError::UnknownNode { .. }) => "unknown",
                Err(e) => panic!("{e}"),
            };
            assert_eq!(got, want, "{seen:?}");
        }
    }

    #[test]
    fn a_message_at_or_past_its_deadline_is_expired() {
        assert!(!expired(100, 99));
        assert!(expired(100, 100));
        assert!(expired(100, 101));
    }

    #[test]
    fn notifies_are_coalesced_to_one_per_node_per_interval() {
        let set = |ns: &[&str]| ns.iter().map(|n| node(n)).collect::<BTreeSet<_>>();
        let last = |ls: &[(&str, u64)]| {
            ls.iter()
                .map(|(n, t)| (node(n), *t))
                .collect::<BTreeMap<_, _>>()
        };
        // (waiting, last NOTIFY per node, now, notify now, wake at)
        type Case<'a> = (
            &'a [&'a str],
            &'a [(&'a str, u64)],
            u64,
            &'a [&'a str],
            Option<u64>,
        );
        let cases: [Case; 7] = [
            (&[], &[], 1000, &[], None),
            (&["a"], &[], 1000, &["a"], None),
            (&["a"], &[("a", 950)], 1000, &[], Some(1050)),
            (&["a"], &[("a", 900)], 1000, &["a"], None),
            (
                &["a", "b"],
                &[("a", 990), ("b", 960)],
                1000,
                &[],
                Some(1060),
            ),
            (
                &["a", "b", "c"],
                &[("a", 990), ("b", 800)],
                1000,
                &["b", "c"],
                Some(1090),
            ),
            // A node notified long ago but with nothing waiting: nothing.
            (&[], &[("a", 0)], 1000, &[], None),
        ];
        for (waiting, last_ms, now, want_now, want_wake) in cases {
            let plan = plan_notifies(&set(waiting), &last(last_ms), now, 100);
            let got: Vec<&str> = plan.now.iter().map(NodeId::as_str).collect();
            assert_eq!(got, want_now, "{waiting:?} {last_ms:?}");
            assert_eq!(plan.wake_at_ms, want_wake, "{waiting:?} {last_ms:?}");
        }
    }

    #[test]
    fn the_plan_never_notifies_a_node_twice_within_the_interval_under_load() {
        // A signal every ms for 1 s to three nodes: each is notified once
        // per 100 ms at most, and a signal waits at most 100 ms.
        let nodes = [node("a"), node("b"), node("c")];
        let mut last = BTreeMap::new();
        let mut sent: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        let mut waiting_since: BTreeMap<NodeId, u64> = BTreeMap::new();
        for now in 0..1000u64 {
            for n in &nodes {
                waiting_since.entry(n.clone()).or_insert(now);
            }
            let waiting = waiting_since.keys().cloned().collect();
            for n in plan_notifies(&waiting, &last, now, 100).now {
                let since = waiting_since.remove(&n).unwrap();
                assert!(now - since <= 100, "{n} waited {}", now - since);
                last.insert(n.clone(), now);
                sent.entry(n).or_default().push(now);
            }
        }
        for n in &nodes {
            let times = &sent[n];
            assert_eq!(times.len(), 10, "{n}: {times:?}");
            assert!(times.windows(2).all(|w| w[1] - w[0] >= 100), "{times:?}");
        }
    }

    #[test]
    fn a_busy_node_polls_soon_and_an_idle_one_waits_for_notifications() {
        let c = BusConfig::default();
        let ms = |m| Some(Duration::from_millis(m));
        // (since the last take that found messages, next take in ms)
        let cases = [
            (None, 200),
            (ms(500), 200),
            (ms(100), 200),
            (ms(99), 10),
            (ms(0), 10),
        ];
        for (since, want) in cases {
            assert_eq!(next_poll(since, &c).as_millis(), want, "{since:?}");
        }
        // Never later than the plain poll interval.
        let slow_busy = BusConfig {
            busy_poll: Duration::from_secs(1),
            ..c
        };
        assert_eq!(next_poll(ms(0), &slow_busy), POLL_INTERVAL);
    }

    #[test]
    fn reconnects_back_off_doubling_to_a_cap() {
        let ms: Vec<u128> = (0..8).map(|a| reconnect_delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(reconnect_delay(u32::MAX), RECONNECT_CAP);
    }

    #[test]
    fn channels_are_per_node_and_fit_postgres_identifiers() {
        assert_eq!(channel(&node("a-1")), "outrider_node_a-1");
        let long = node(&"x".repeat(64));
        assert_eq!(channel(&long).len(), 63);
    }
}
