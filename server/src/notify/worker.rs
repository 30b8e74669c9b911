//! One receiver's delivery worker: takes the receiver's oldest pending
//! delivery, waits until it is due and the rate allows, sends it, and
//! records what [`policy`] makes of the answer. The
//! decisions are pure functions there; this loop only waits and performs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::message::Batch;
use super::policy::{self, Outcome, RateLimiter};
use super::receiver;
use crate::store::notify::{DeliveryContent, DueDelivery, StoredReceiver};
use crate::store::{Store, now_ms};

/// How long an idle worker sleeps when nobody wakes it (a safety net: the
/// router wakes it on every new delivery).
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Pause after a store error before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The outbox row as a [`Batch`]; an error names what is unreadable.
fn batch_of(batch_key: &str, content: &DeliveryContent) -> Result<Batch, String> {
    Ok(Batch {
        batch_key: batch_key.to_owned(),
        group: content.group.clone(),
        tags: serde_json::from_str(&content.tags)
            .map_err(|e| format!("the outbox row's tags are not a JSON list of strings: {e}"))?,
        severity: content.severity.clone(),
        notifications: serde_json::from_str(&content.notifications).map_err(|e| {
            format!("the outbox row's notifications are not alerting::Notification JSON: {e}")
        })?,
    })
}

/// A random number for retry jitter. Jitter need not be secret: without
/// the OS generator, the clock's nanoseconds do.
fn random() -> u64 {
    let mut buf = [0u8; 8];
    match getrandom::fill(&mut buf) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        ),
    }
}

/// Sleeps for `d`; `true` when `stop` came first.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Runs until `stop` (server shutdown, or the receiver deleted).
pub async fn run(
    store: Store,
    http: reqwest::Client,
    receiver: StoredReceiver,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let name = receiver.name.clone();
    let mut limiter = RateLimiter::new(receiver.rate_per_sec);
    while !stop.is_cancelled() {
        let due = match store.next_delivery(name.clone()).await {
            Ok(d) => d,
            Err(e) => {
                warn!(receiver = %name, "reading the delivery queue failed: {e:#}");
                if sleep_or_stop(STORE_RETRY, &stop).await {
                    return;
                }
                continue;
            }
        };
        let Some(due) = due else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        };
        let Some(claim) = due.claim else {
            // Not due yet (or, with several nodes, another node's claim
            // runs): ask again then, when it may be ours.
            let wait = Duration::from_millis((due.next_attempt_ms - now_ms()).max(1) as u64);
            if sleep_or_stop(wait, &stop).await {
                return;
            }
            continue;
        };
        let mut busy = Duration::ZERO;
        let outcome = match due.content.as_ref().map(|c| batch_of(&due.batch_key, c)) {
            None => Outcome::Permanent("its alert_outbox row is gone".to_owned()),
            Some(Err(e)) => Outcome::Permanent(e),
            Some(Ok(batch)) => {
                tokio::select! {
                    // Cut short by shutdown: it stays pending and is sent
                    // again (same key) by the next server.
                    () = stop.cancelled() => return,
                    o = receiver::send(&http, &name, &receiver.config, &batch, &mut limiter, &mut busy) => o,
                }
            }
        };
        if let Err(e) = record(&store, &name, &due, claim, outcome, busy).await {
            // Still pending: it is sent again with the same key.
            warn!(receiver = %name, delivery = due.id, "recording a delivery failed: {e:#}");
            if sleep_or_stop(STORE_RETRY, &stop).await {
                return;
            }
        }
    }
}

/// Stores what an attempt came to.
async fn record(
    store: &Store,
    name: &str,
    due: &DueDelivery,
    claim: i64,
    outcome: Outcome,
    busy: Duration,
) -> anyhow::Result<()> {
    let send_us = busy.as_micros() as u64;
    let now = now_ms();
    // `false`: the claim was taken over (it ran out) or the delivery
    // finished meanwhile (its receiver deleted); nothing to record.
    let recorded = match outcome {
        Outcome::Accepted => {
            // The crash test waits for this line to kill the server between
            // the receiver's acceptance and the mark.
            // `send_us` (time on the wire, not waiting for the rate) is what
            // bench/notify.sh reads.
            info!(receiver = %name, delivery = due.id, send_us, key = %due.batch_key, "accepted by the receiver; marking it sent");
            store.mark_sent(due.id, claim, now).await?
        }
        Outcome::Retry { after, error } => {
            let attempts = due.attempts + 1;
            let age = Duration::from_millis((now - due.created_at_ms).max(0) as u64);
            if policy::give_up(attempts, age) {
                let error = format!("gave up after {attempts} attempts: {error}");
                warn!(receiver = %name, delivery = due.id, "{error}");
                store.mark_dead(due.id, claim, &error, now).await?
            } else {
                let jitter = random();
                let delay = policy::retry_delay(due.attempts, after, jitter);
                warn!(receiver = %name, delivery = due.id, attempts, send_us, retry_in_ms = delay.as_millis() as u64, "delivery failed, will retry: {error}");
                store
                    .mark_retry(due.id, claim, now + delay.as_millis() as i64, &error)
                    .await?
            }
        }
        Outcome::Permanent(error) => {
            warn!(receiver = %name, delivery = due.id, "delivery refused for good, dead-lettered: {error}");
            store.mark_dead(due.id, claim, &error, now).await?
        }
    };
    if !recorded {
        info!(receiver = %name, delivery = due.id, claim, "the delivery was finished or claimed again meanwhile; outcome not recorded");
    }
    Ok(())
}
