//! The notifier: everything after `alert_outbox` (`store/alert_outbox.sql`).
//! The alert engine's driver commits its decisions there; this module
//! routes each row to receivers and delivers it, durably and at most once
//! per receiver as far as the receiver can tell.
//!
//! # Pipeline
//!
//! 1. **Route** (the router task, [`Notifier::run`]): unrouted outbox rows,
//!    oldest first, go to the receivers [`route::select`] picks; in one
//!    transaction it inserts one delivery per receiver, unique by
//!    `(batch_key, receiver)`, and sets `routed_at_ms`
//!    (`store/notify.rs`). With no routes, every receiver gets everything.
//! 2. **Deliver** (one worker per receiver, [`worker`]): the receiver's
//!    oldest pending delivery is sent when due, no faster than the
//!    receiver's rate (measured from the end of the previous request) (Slack 1/s, PagerDuty 2/s, webhook and email as
//!    configured). The answer decides ([`policy`]): accepted → `sent`;
//!    429, 408, 5xx, timeouts, connection and SMTP 4xx failures → retried
//!    after the receiver's `Retry-After` or jittered exponential backoff
//!    (1 s doubling to 5 min); other 4xx, SMTP 5xx (bad address), a gone
//!    outbox row, or a day of failures → `dead` with the error (the
//!    dead-letter list, `GET /api/v1/dead-letters`).
//! 3. **Order**: a worker sends its deliveries strictly in routing order;
//!    one being retried holds back the later ones of that receiver, so a
//!    resolve never overtakes its trigger.
//! 4. **Claims**: a worker sends only the head of its receiver's queue
//!    that the store handed it under a claim, and marks it under that
//!    claim. With one SQLite node that is every due head; on PostgreSQL,
//!    where several nodes may run a receiver's worker, no other node gets
//!    the head while the claim's lease runs, and a late mark of a claim
//!    that ran out changes nothing (`backend/notify.rs`, rule 3).
//!
//! # What "exactly once" means here
//!
//! A network send and a database write cannot be one atomic step, so the
//! guarantee is built from two halves:
//!
//! - **Never lost.** A delivery is marked sent only after the receiver
//!   accepted it. A crash (SIGKILL, power loss) at any point — after
//!   routing, while a receiver is slow to answer, after it accepted but
//!   before the mark committed — leaves the delivery `pending`, and the
//!   next server sends it again.
//! - **Never twice, after dedupe by key.** Every attempt of a delivery
//!   carries the same idempotency key, and no other delivery carries it:
//!   webhooks get it in the `Idempotency-Key` header and the body's
//!   `idempotency_key` (hex SHA-256 of the batch key: the notifications'
//!   `<incident>#<seq>`), email in the `Message-ID`, PagerDuty as
//!   `dedup_key` (the subject) plus the event action, which PagerDuty
//!   itself deduplicates (a second trigger of an open alert or a second
//!   resolve changes nothing). So the only duplicates a receiver can see
//!   are resends of the very same message with the same key, and only
//!   after a crash, a lost answer (timeout after the receiver acted) or a
//!   failed write of the mark. Slack has no idempotency key: after such an
//!   event a Slack channel can show a message twice.
//!
//! The crash test (`tests/it/notify_crash.rs`) SIGKILLs the real server
//! binary at each of these steps and checks exactly this: every
//! notification arrives, and duplicates only ever repeat a key.
//!
//! # Bounds
//!
//! Pending deliveries per receiver, outbox rows routed per transaction,
//! stored error text, request time ([`receiver::SEND_TIMEOUT`]),
//! retention of finished deliveries (`store/notify.rs`); the router and the
//! workers run on the server's shutdown tree and stop with it (a send cut
//! short by shutdown stays pending).

pub mod api;
pub mod message;
pub mod policy;
pub mod receiver;
pub mod route;
pub mod smtp;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_alerting::model::ResolveCause;
use outrider_alerting::{Notification, NotificationKind, Status, Subject};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::notify::{ROUTE_BATCH_ROWS, StoredReceiver};
use crate::store::{Store, now_ms};
use message::Batch;
use policy::{Outcome, RateLimiter};

/// How often the router looks for new outbox rows when nobody woke it.
pub const ROUTE_POLL: Duration = Duration::from_millis(500);

/// How often finished deliveries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

/// The router and the receiver workers; one per server, in `AppState`.
#[derive(Debug)]
pub struct Notifier {
    http: reqwest::Client,
    wake: Arc<Notify>,
}

/// A running worker: its stop token, its wake-up, and the config it was
/// started with (a receiver deleted and added again restarts it).
#[derive(Debug)]
struct WorkerHandle {
    stop: CancellationToken,
    wake: Arc<Notify>,
    config: String,
}

impl Notifier {
    /// A notifier that also routes as soon as `wake` is notified (the alert
    /// driver rings it after committing outbox rows, see
    /// [`crate::alerts::Alerts::start`]).
    ///
    /// Fails only when the TLS backend cannot be initialised.
    pub fn new(wake: Arc<Notify>) -> anyhow::Result<Notifier> {
        Ok(Notifier {
            http: receiver::http_client()?,
            wake,
        })
    }

    /// Routes new outbox rows now instead of at the next poll: for the alert
    /// driver after it committed rows, and for the API after a change of
    /// receivers or routes.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the router and the workers until `shutdown`, then waits for
    /// the workers to stop.
    pub async fn run(&self, store: Store, shutdown: CancellationToken) {
        let mut workers: BTreeMap<String, WorkerHandle> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        let mut last_prune: Option<Instant> = None;
        loop {
            self.sync_workers(&store, &shutdown, &mut workers, &mut tasks)
                .await;
            self.route_pending(&store, &workers).await;
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                match store.prune_notifications(now_ms()).await {
                    Ok(n) if n > 0 => info!(rows = n, "pruned old deliveries"),
                    Ok(_) => {}
                    Err(e) => warn!("pruning deliveries failed: {e:#}"),
                }
            }
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(ROUTE_POLL) => {}
            }
        }
        for worker in workers.values() {
            worker.stop.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Starts a worker for each new receiver and stops those of deleted ones.
    async fn sync_workers(
        &self,
        store: &Store,
        shutdown: &CancellationToken,
        workers: &mut BTreeMap<String, WorkerHandle>,
        tasks: &mut JoinSet<()>,
    ) {
        let receivers = match store.stored_receivers().await {
            Ok(r) => r,
            Err(e) => {
                warn!("reading receivers failed: {e:#}");
                return;
            }
        };
        let mut seen = BTreeMap::new();
        for r in receivers {
            let config = serde_json::to_string(&r.config).unwrap_or_default();
            seen.insert(r.name.clone(), ());
            if workers.get(&r.name).is_some_and(|w| w.config == config) {
                continue;
            }
            if let Some(old) = workers.remove(&r.name) {
                old.stop.cancel();
            }
            let handle = WorkerHandle {
                stop: shutdown.child_token(),
                wake: Arc::new(Notify::new()),
                config,
            };
            info!(receiver = %r.name, "starting the receiver's delivery worker");
            tasks.spawn(worker::run(
                store.clone(),
                self.http.clone(),
                r.clone(),
                handle.wake.clone(),
                handle.stop.clone(),
            ));
            workers.insert(r.name, handle);
        }
        workers.retain(|name, w| {
            let keep = seen.contains_key(name);
            if !keep {
                w.stop.cancel();
            }
            keep
        });
    }

    /// Routes every unrouted outbox row and wakes the workers concerned.
    async fn route_pending(&self, store: &Store, workers: &BTreeMap<String, WorkerHandle>) {
        loop {
            let routed = match store.route_outbox(now_ms()).await {
                Ok(r) => r,
                Err(e) => {
                    warn!("routing alert notifications failed: {e:#}");
                    return;
                }
            };
            for name in &routed.receivers {
                if let Some(w) = workers.get(name) {
                    w.wake.notify_one();
                }
            }
            for batch_key in &routed.unrouted {
                warn!(%batch_key, "no receiver gets this notification: add one (outrider receivers add) or a route that matches");
            }
            if routed.rows < ROUTE_BATCH_ROWS {
                return;
            }
        }
    }

    /// Sends a test message to `receiver` now, outside the queue: a warning
    /// and its resolve about the synthetic subject `site/outrider-test`.
    pub async fn test(&self, receiver: &StoredReceiver) -> Outcome {
        let now = now_ms().max(0) as u64;
        let subject = Subject::Site {
            tag: "outrider-test".into(),
        };
        let notification = |kind, status, seq| Notification {
            subject: subject.clone(),
            kind,
            status,
            title: format!(
                "Test notification from Outrider to receiver {}",
                receiver.name
            ),
            summary: "Sent by `outrider receivers test`; nothing is wrong.".into(),
            resolve_cause: (kind == NotificationKind::Resolved).then_some(ResolveCause::Recovered),
            incident_started_ms: now,
            seq,
        };
        let notifications = vec![
            notification(NotificationKind::Firing, Status::Warning, 1),
            notification(NotificationKind::Resolved, Status::Ok, 2),
        ];
        let batch = Batch {
            batch_key: notifications
                .iter()
                .map(|n| format!("{}#{}", n.incident_key(), n.seq))
                .collect::<Vec<_>>()
                .join(" "),
            group: subject.to_string(),
            tags: vec![],
            severity: "warning".into(),
            notifications,
        };
        let mut limiter = RateLimiter::new(receiver.rate_per_sec);
        let mut busy = Duration::ZERO;
        receiver::send(
            &self.http,
            &receiver.name,
            &receiver.config,
            &batch,
            &mut limiter,
            &mut busy,
        )
        .await
    }
}
