//! The notifier's tables: receivers, routes, the delivery queue routed
//! from the alerts area's `alert_outbox`, and the incidents each receiver
//! was told about (server/src/notify.rs runs the router and the workers).
//!
//! Tables: SQLite server/src/store/notify.sql (and `alert_outbox` of
//! server/src/store/alert_outbox.sql), unchanged; PostgreSQL
//! server/src/backend/postgres/migrations/0013_notify.sql (and
//! `alert_outbox` of 0011_alerts.sql), which adds each delivery's claim.
//!
//! Rules (checked on both backends by `backend/notify_tests.rs`):
//! 1. Routing an outbox row (inserting its deliveries, recording the
//!    incidents each receiver was told about, setting `routed_at_ms`) is
//!    one transaction; `(batch_key, receiver)` is unique, so a row is never
//!    delivered twice to a receiver by routing, even if routed again.
//!    Routing runs one at a time (SQLite's one writer; on PostgreSQL an
//!    advisory lock, [`ROUTING_LOCK`]), so a row is routed once whoever
//!    routes, delivery ids grow in routing order (a receiver's queue
//!    order) and the queue bound counts what the routing before left.
//! 2. A delivery leaves `pending` only after the receiver answered: `sent`
//!    once it accepted, `dead` once it refused for good. A crash in between
//!    leaves it `pending`, and it is sent again with the same key.
//! 3. A receiver's deliveries go out in order: only the head of its queue
//!    (oldest pending) is ever handed out, and only once it is due and not
//!    claimed ([`take`]). Handing it out claims it for
//!    [`CLAIM_LEASE_MS`] under a new claim number, a fencing token: on
//!    PostgreSQL, where several nodes may run a receiver's worker, no other
//!    node is handed it while the claim runs, and a mark carrying an older
//!    claim changes nothing. A node that dies mid-send leaves the claim to
//!    run out; then another node sends it again, with the same key. SQLite
//!    is one node with one worker per receiver: its claim is always
//!    [`SQLITE_CLAIM`] and not stored.
//! 4. Bounded: at most [`MAX_PENDING_PER_RECEIVER`] pending deliveries per
//!    receiver (more are dead-lettered as "queue full"), [`MAX_RECEIVERS`]
//!    receivers, [`MAX_ROUTES`] routes, [`ROUTE_BATCH_ROWS`] rows routed per
//!    call, [`MAX_ERROR_BYTES`] of error text, [`MAX_DEAD_LETTERS_PAGE`]
//!    dead letters per page; finished deliveries, routed outbox rows no
//!    delivery needs and the incident memory are pruned after
//!    [`RETENTION_MS`].

use std::collections::BTreeSet;
use std::future::Future;

use outrider_protocol::api::{DeadLetter, NewRoute, ReceiverConfig, ReceiverInfo, RouteInfo};

use super::presence::NodeId;
use super::{Backend, StoreError, dispatch};

/// Pending deliveries one receiver may have; a receiver that is down for a
/// long time cannot grow the queue without bound.
pub const MAX_PENDING_PER_RECEIVER: i64 = 10_000;

/// How long finished deliveries (and dead letters) are kept: a week.
pub const RETENTION_MS: i64 = 7 * 24 * 3_600 * 1_000;

/// Most receivers (each has a delivery worker) and routes.
pub const MAX_RECEIVERS: i64 = 100;
pub const MAX_ROUTES: i64 = 1_000;

/// Outbox rows routed per transaction.
pub const ROUTE_BATCH_ROWS: usize = 100;

/// Longest error kept with a delivery.
pub const MAX_ERROR_BYTES: usize = 512;

/// Most dead letters one page reads.
pub const MAX_DEAD_LETTERS_PAGE: u32 = 1_000;

/// How long a claim keeps a delivery from other nodes (rule 3). A send is
/// bounded by the receiver's timeout (`notify::receiver::SEND_TIMEOUT`,
/// 10 s) after a rate wait of at most a second, so a live node marks its
/// claim well within this; only a node that died or stalled (a paused
/// process) lets it run out, and the delivery then waits at most this
/// long for another node. Nodes compare it with their own clocks: clock
/// skew between them shortens or lengthens it by as much.
pub const CLAIM_LEASE_MS: i64 = 120_000;

/// The claim SQLite hands out: one node, nothing to fence (rule 3).
pub const SQLITE_CLAIM: i64 = 0;

/// The advisory lock key routing takes turns on, on PostgreSQL ("outrrout"
/// in ASCII).
pub const ROUTING_LOCK: i64 = 0x6f75_7472_726f_7574;

/// The advisory lock key changes of receivers and routes take turns on, on
/// PostgreSQL ("outrrcvr" in ASCII): the bounds count what the change
/// before left.
pub const RECEIVERS_LOCK: i64 = 0x6f75_7472_7263_7672;

/// What [`NotifyStore::add_receiver`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddReceiver {
    Added,
    /// One of that name exists.
    Exists,
    /// [`MAX_RECEIVERS`] exist.
    Full,
}

/// What [`NotifyStore::add_route`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddRoute {
    Added(RouteInfo),
    /// Its receiver does not exist.
    NoReceiver,
    /// [`MAX_ROUTES`] exist.
    Full,
}

/// A receiver as stored, secrets included (never sent to API clients).
#[derive(Clone, Debug)]
pub struct StoredReceiver {
    pub name: String,
    pub config: ReceiverConfig,
    pub rate_per_sec: u32,
}

/// The head of a receiver's queue: the oldest pending delivery with what
/// it carries.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    pub id: i64,
    pub batch_key: String,
    pub attempts: u32,
    /// When it may be sent: its next attempt, or when another node's claim
    /// runs out.
    pub next_attempt_ms: i64,
    pub created_at_ms: i64,
    /// `Some(claim)`: it is due and this caller's to send, until
    /// [`CLAIM_LEASE_MS`] from now; every mark carries the claim. `None`:
    /// not to be sent now; ask again at `next_attempt_ms` (rule 3).
    pub claim: Option<i64>,
    /// `None` when its outbox row is gone (cannot be sent: dead-lettered).
    pub content: Option<DeliveryContent>,
}

/// The outbox row of a delivery.
#[derive(Clone, Debug)]
pub struct DeliveryContent {
    pub group: String,
    /// JSON array of the row's tags.
    pub tags: String,
    pub severity: String,
    /// JSON array of `alerting::Notification`.
    pub notifications: String,
}

/// What one routing pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// Outbox rows routed.
    pub rows: usize,
    /// Receivers that got new deliveries (to wake their workers).
    pub receivers: BTreeSet<String>,
    /// Rows no receiver got (none configured, or no route matched).
    pub unrouted: Vec<String>,
}

/// Kind name of a receiver config (the `kind` column).
pub fn kind_of(config: &ReceiverConfig) -> &'static str {
    match config {
        ReceiverConfig::Webhook { .. } => "webhook",
        ReceiverConfig::Slack { .. } => "slack",
        ReceiverConfig::Pagerduty { .. } => "pagerduty",
        ReceiverConfig::Email { .. } => "email",
        // A kind this server does not know (from a newer protocol crate).
        _ => "unknown",
    }
}

/// Rule 4: an error cut to [`MAX_ERROR_BYTES`] on a character boundary.
pub fn bounded_error(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

/// A stored JSON list of strings; unreadable is empty (SQLite's routes).
pub(crate) fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A stored receiver config.
pub(crate) fn stored_config(name: &str, config: &str) -> Result<ReceiverConfig, StoreError> {
    serde_json::from_str(config).map_err(|_| StoreError::Malformed {
        what: "receiver config",
        value: format!("{name:?}: {}", config.chars().take(200).collect::<String>()),
    })
}

/// A receiver config as stored (always serialises: plain data).
pub(crate) fn config_text(config: &ReceiverConfig) -> String {
    serde_json::to_string(config).expect("a receiver config serialises")
}

/// The titles of a dead letter's notifications (its outbox row may be gone
/// or unreadable: none then).
pub(crate) fn titles_of(notifications: Option<&str>) -> Vec<String> {
    notifications
        .and_then(|n| serde_json::from_str::<Vec<serde_json::Value>>(n).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.get("title").and_then(|t| t.as_str()).map(str::to_owned))
        .collect()
}

/// Rule 4: what a routed delivery becomes, given its receiver's pending
/// count: `None` pending, or `Some(error)` dead-lettered at once.
pub fn overflow(pending: i64) -> Option<String> {
    (pending >= MAX_PENDING_PER_RECEIVER)
        .then(|| format!("queue full: {MAX_PENDING_PER_RECEIVER} deliveries already pending"))
}

/// Rule 4: how many dead letters a request for `limit` reads.
pub fn dead_letters_page(limit: u32) -> u32 {
    limit.min(MAX_DEAD_LETTERS_PAGE)
}

/// What may be done with the head of a receiver's queue (rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Due and unclaimed (or its claim ran out): claim it now.
    Claim,
    /// Not yet: it is retried later, or another node's claim runs, until
    /// this time.
    WaitUntil(i64),
}

/// Rule 3: the head with its next attempt at `next_attempt_ms` and a claim
/// running until `claim_until_ms` (if any), at `now_ms`.
pub fn take(next_attempt_ms: i64, claim_until_ms: Option<i64>, now_ms: i64) -> Take {
    let free_at = claim_until_ms.map_or(next_attempt_ms, |until| until.max(next_attempt_ms));
    if free_at <= now_ms {
        Take::Claim
    } else {
        Take::WaitUntil(free_at)
    }
}

/// The notifier's store. Times are Unix milliseconds given by the caller.
pub trait NotifyStore {
    /// Adds a receiver, unless one of that name exists or there are
    /// [`MAX_RECEIVERS`] already (each has a worker task).
    fn add_receiver(
        &self,
        receiver: StoredReceiver,
        now_ms: i64,
    ) -> impl Future<Output = Result<AddReceiver, StoreError>> + Send;

    /// Every receiver with its secrets, by name (byte order).
    fn stored_receivers(
        &self,
    ) -> impl Future<Output = Result<Vec<StoredReceiver>, StoreError>> + Send;

    /// Receivers for the API, by name, with their deliveries counted:
    /// `target` describes each without secrets.
    fn receivers(
        &self,
        target: fn(&ReceiverConfig) -> String,
    ) -> impl Future<Output = Result<Vec<ReceiverInfo>, StoreError>> + Send;

    /// Deletes a receiver and its routes; its pending deliveries become
    /// dead letters ("receiver deleted"). `false` when there was none.
    fn delete_receiver(
        &self,
        name: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds a route, unless its receiver does not exist or there are
    /// [`MAX_ROUTES`] already.
    fn add_route(
        &self,
        route: NewRoute,
        now_ms: i64,
    ) -> impl Future<Output = Result<AddRoute, StoreError>> + Send;

    /// Every route, by id.
    fn routes(&self) -> impl Future<Output = Result<Vec<RouteInfo>, StoreError>> + Send;

    /// Deletes a route; `false` when there was none.
    fn delete_route(&self, id: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Routes up to [`ROUTE_BATCH_ROWS`] unrouted outbox rows, oldest first
    /// (rule 1).
    fn route_outbox(&self, now_ms: i64) -> impl Future<Output = Result<Routed, StoreError>> + Send;

    /// The head of `receiver`'s queue, claimed for `node` when it is due
    /// and unclaimed (rule 3); `None` when the queue is empty (or, on
    /// PostgreSQL, another node is claiming or marking the head this very
    /// moment: ask again later).
    fn next_delivery(
        &self,
        node: &NodeId,
        receiver: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<DueDelivery>, StoreError>> + Send;

    /// The receiver accepted delivery `id` sent under `claim`. `false`
    /// when that changed nothing: the delivery is finished, or another
    /// claim took it over (rule 3).
    fn mark_sent(
        &self,
        id: i64,
        claim: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Delivery `id` failed for now under `claim`; it may be claimed again
    /// from `next_attempt_ms`. `false` as for [`NotifyStore::mark_sent`].
    fn mark_retry(
        &self,
        id: i64,
        claim: i64,
        next_attempt_ms: i64,
        error: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Delivery `id` failed for good under `claim`: a dead letter. `false`
    /// as for [`NotifyStore::mark_sent`].
    fn mark_dead(
        &self,
        id: i64,
        claim: i64,
        error: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The newest `limit` dead letters (at most [`MAX_DEAD_LETTERS_PAGE`]).
    fn dead_letters(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, StoreError>> + Send;

    /// Forgets finished deliveries, routed outbox rows without deliveries,
    /// and incident memory older than [`RETENTION_MS`]; how many rows.
    fn prune_notifications(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

impl NotifyStore for Backend {
    async fn add_receiver(
        &self,
        receiver: StoredReceiver,
        now_ms: i64,
    ) -> Result<AddReceiver, StoreError> {
        dispatch!(self, b => b.add_receiver(receiver, now_ms))
    }

    async fn stored_receivers(&self) -> Result<Vec<StoredReceiver>, StoreError> {
        dispatch!(self, b => b.stored_receivers())
    }

    async fn receivers(
        &self,
        target: fn(&ReceiverConfig) -> String,
    ) -> Result<Vec<ReceiverInfo>, StoreError> {
        dispatch!(self, b => b.receivers(target))
    }

    async fn delete_receiver(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, b => b.delete_receiver(name, now_ms))
    }

    async fn add_route(&self, route: NewRoute, now_ms: i64) -> Result<AddRoute, StoreError> {
        dispatch!(self, b => b.add_route(route, now_ms))
    }

    async fn routes(&self) -> Result<Vec<RouteInfo>, StoreError> {
        dispatch!(self, b => b.routes())
    }

    async fn delete_route(&self, id: i64) -> Result<bool, StoreError> {
        dispatch!(self, b => b.delete_route(id))
    }

    async fn route_outbox(&self, now_ms: i64) -> Result<Routed, StoreError> {
        dispatch!(self, b => b.route_outbox(now_ms))
    }

    async fn next_delivery(
        &self,
        node: &NodeId,
        receiver: &str,
        now_ms: i64,
    ) -> Result<Option<DueDelivery>, StoreError> {
        dispatch!(self, b => b.next_delivery(node, receiver, now_ms))
    }

    async fn mark_sent(&self, id: i64, claim: i64, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, b => b.mark_sent(id, claim, now_ms))
    }

    async fn mark_retry(
        &self,
        id: i64,
        claim: i64,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.mark_retry(id, claim, next_attempt_ms, error))
    }

    async fn mark_dead(
        &self,
        id: i64,
        claim: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.mark_dead(id, claim, error, now_ms))
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        dispatch!(self, b => b.dead_letters(limit))
    }

    async fn prune_notifications(&self, now_ms: i64) -> Result<usize, StoreError> {
        dispatch!(self, b => b.prune_notifications(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_due_unclaimed_head_is_claimed() {
        let now = 1_000;
        // (next attempt, claim until, what)
        let cases = [
            (0, None, Take::Claim),
            (now, None, Take::Claim),
            (now + 1, None, Take::WaitUntil(now + 1)),
            // Another node's claim runs: wait for its end.
            (0, Some(now + 50), Take::WaitUntil(now + 50)),
            // A claim that ran out is taken over.
            (0, Some(now), Take::Claim),
            (0, Some(now - 1), Take::Claim),
            // Both: the later of the two.
            (now + 70, Some(now + 50), Take::WaitUntil(now + 70)),
            (now + 30, Some(now + 50), Take::WaitUntil(now + 50)),
            (now - 5, Some(now - 10), Take::Claim),
        ];
        for (next, until, expected) in cases {
            assert_eq!(take(next, until, now), expected, "{next} {until:?}");
        }
    }

    #[test]
    fn a_claim_outlasts_a_bounded_send() {
        let send = crate::notify::receiver::SEND_TIMEOUT.as_millis() as i64;
        // The send's timeout, a rate wait of a second, and room to mark.
        assert!(CLAIM_LEASE_MS >= 4 * (send + 1_000), "{CLAIM_LEASE_MS}");
    }

    #[test]
    fn queues_overflow_at_their_bound() {
        assert_eq!(overflow(0), None);
        assert_eq!(overflow(MAX_PENDING_PER_RECEIVER - 1), None);
        assert_eq!(
            overflow(MAX_PENDING_PER_RECEIVER).as_deref(),
            Some("queue full: 10000 deliveries already pending")
        );
        assert!(overflow(MAX_PENDING_PER_RECEIVER + 1).is_some());
    }

    #[test]
    fn errors_and_pages_are_bounded() {
        assert_eq!(bounded_error("short"), "short");
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = bounded_error(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES && cut.len() >= MAX_ERROR_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(dead_letters_page(5), 5);
        assert_eq!(dead_letters_page(u32::MAX), MAX_DEAD_LETTERS_PAGE);
    }

    #[test]
    fn dead_letter_titles_come_from_readable_notifications_only() {
        assert_eq!(
            titles_of(Some(r#"[{"title":"a"},{"x":1},{"title":"b"}]"#)),
            ["a", "b"]
        );
        assert!(titles_of(Some("{")).is_empty());
        assert!(titles_of(None).is_empty());
    }

    #[test]
    fn an_unreadable_config_is_malformed() {
        assert!(matches!(
            stored_config("ops", "{"),
            Err(StoreError::Malformed {
                what: "receiver config",
                ..
            })
        ));
    }

    #[test]
    fn lock_keys_are_pinned_ascii_names() {
        // Two versions with different keys would route at once during a
        // rolling upgrade.
        assert_eq!(ROUTING_LOCK.to_be_bytes(), *b"outrrout");
        assert_eq!(RECEIVERS_LOCK.to_be_bytes(), *b"outrrcvr");
        assert_ne!(ROUTING_LOCK, super::super::MIGRATION_LOCK);
    }
}
