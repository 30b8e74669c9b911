//! The notifier's tables (`notify.sql`): receivers, routes, and the
//! delivery queue routed from `alert_outbox` (`alert_outbox.sql`).
//!
//! Invariants:
//! - Routing an outbox row (inserting its deliveries, recording the
//!   incidents each receiver was told about, setting `routed_at_ms`) is one
//!   transaction; `(batch_key, receiver)` is unique, so a row is never
//!   delivered twice to a receiver by routing, even if routed again.
//! - A delivery leaves `pending` only after the receiver answered: `sent`
//!   once it accepted, `dead` once it refused for good. A crash in between
//!   leaves it `pending`, and it is sent again with the same key.
//! - Bounded: at most [`MAX_PENDING_PER_RECEIVER`] pending deliveries per
//!   receiver (more are dead-lettered as "queue full"); finished
//!   deliveries, their outbox rows and the incident memory are pruned after
//!   [`RETENTION_MS`].

use std::collections::BTreeSet;

use anyhow::Context;
use outrider_protocol::api::{DeadLetter, NewRoute, ReceiverConfig, ReceiverInfo, RouteInfo};
use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::notify::route::{self, ReceiverRoutes, RouteRule};

/// Pending deliveries one receiver may have; a receiver that is down for a
/// long time cannot grow the queue without bound.
pub const MAX_PENDING_PER_RECEIVER: i64 = 10_000;

/// How long finished deliveries (and dead letters) are kept: a week.
pub const RETENTION_MS: i64 = 7 * 24 * 3_600 * 1_000;

/// Most receivers (each has a delivery worker) and routes.
pub const MAX_RECEIVERS: i64 = 100;
pub const MAX_ROUTES: i64 = 1_000;

/// What [`Store::add_receiver`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddReceiver {
    Added,
    /// One of that name exists.
    Exists,
    /// [`MAX_RECEIVERS`] exist.
    Full,
}

/// What [`Store::add_route`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddRoute {
    Added(RouteInfo),
    /// Its receiver does not exist.
    NoReceiver,
    /// [`MAX_ROUTES`] exist.
    Full,
}

/// Outbox rows routed per transaction.
pub const ROUTE_BATCH_ROWS: usize = 100;

/// Longest error kept with a delivery.
const MAX_ERROR_BYTES: usize = 512;

/// A receiver as stored, secrets included (never sent to API clients).
#[derive(Clone, Debug)]
pub struct StoredReceiver {
    pub name: String,
    pub config: ReceiverConfig,
    pub rate_per_sec: u32,
}

/// The oldest pending delivery of a receiver with what it carries.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    pub id: i64,
    pub batch_key: String,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub created_at_ms: i64,
    /// `None` when its outbox row is gone (cannot be sent: dead-lettered).
    pub content: Option<DeliveryContent>,
}

/// The outbox row of a delivery.
#[derive(Clone, Debug)]
pub struct DeliveryContent {
    pub group: String,
    pub tags: String,
    pub severity: String,
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

fn bounded_error(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

impl Store {
    /// Adds a receiver, unless one of that name exists or there are
    /// [`MAX_RECEIVERS`] already (each has a worker task).
    pub async fn add_receiver(
        &self,
        receiver: StoredReceiver,
        now: i64,
    ) -> anyhow::Result<AddReceiver> {
        let config = serde_json::to_string(&receiver.config)?;
        self.call(move |c| {
            let tx = c.transaction()?;
            let (exists, count): (bool, i64) = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM notify_receivers WHERE name = ?1), COUNT(*) FROM notify_receivers",
                [&receiver.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if exists {
                return Ok(AddReceiver::Exists);
            }
            if count >= MAX_RECEIVERS {
                return Ok(AddReceiver::Full);
            }
            tx.execute(
                "INSERT INTO notify_receivers (name, kind, config, rate_per_sec, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![receiver.name, kind_of(&receiver.config), config, receiver.rate_per_sec, now],
            )?;
            tx.commit()?;
            Ok(AddReceiver::Added)
        })
        .await
    }

    /// Every receiver with its secrets, by name.
    pub async fn stored_receivers(&self) -> anyhow::Result<Vec<StoredReceiver>> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT name, config, rate_per_sec FROM notify_receivers ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, config, rate_per_sec) = row?;
                let config = serde_json::from_str(&config)
                    .with_context(|| format!("stored config of receiver {name:?}"))?;
                out.push(StoredReceiver {
                    name,
                    config,
                    rate_per_sec,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Receivers for the API: `target` describes each without secrets.
    pub async fn receivers(
        &self,
        target: fn(&ReceiverConfig) -> String,
    ) -> anyhow::Result<Vec<ReceiverInfo>> {
        let stored = self.stored_receivers().await?;
        let counts = self
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT r.name, r.created_at_ms,
                            COUNT(d.id) FILTER (WHERE d.state = 'pending'),
                            COUNT(d.id) FILTER (WHERE d.state = 'sent'),
                            COUNT(d.id) FILTER (WHERE d.state = 'dead')
                     FROM notify_receivers r LEFT JOIN notify_deliveries d ON d.receiver = r.name
                     GROUP BY r.name ORDER BY r.name",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, u64>(2)?,
                        r.get::<_, u64>(3)?,
                        r.get::<_, u64>(4)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        // Two reads: a receiver added or deleted in between is matched by
        // name, not by position.
        let counts: std::collections::BTreeMap<String, (i64, u64, u64, u64)> = counts
            .into_iter()
            .map(|(name, created, pending, sent, dead)| (name, (created, pending, sent, dead)))
            .collect();
        Ok(stored
            .into_iter()
            .filter_map(|r| {
                let &(created_at_ms, pending, sent, dead) = counts.get(&r.name)?;
                Some(ReceiverInfo {
                    kind: kind_of(&r.config).to_owned(),
                    target: target(&r.config),
                    name: r.name,
                    rate_per_sec: r.rate_per_sec,
                    created_at_ms,
                    pending,
                    sent,
                    dead,
                })
            })
            .collect())
    }

    /// Deletes a receiver and its routes; its pending deliveries become
    /// dead letters ("receiver deleted"). `false` when there was none.
    pub async fn delete_receiver(&self, name: String, now: i64) -> anyhow::Result<bool> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let deleted = tx.execute("DELETE FROM notify_receivers WHERE name = ?1", [&name])?;
            tx.execute(
                "UPDATE notify_deliveries SET state = 'dead', last_error = 'receiver deleted', done_at_ms = ?2
                 WHERE receiver = ?1 AND state = 'pending'",
                params![name, now],
            )?;
            tx.execute("DELETE FROM notify_incidents WHERE receiver = ?1", [&name])?;
            tx.commit()?;
            Ok(deleted == 1)
        })
        .await
    }

    /// Adds a route, unless its receiver does not exist or there are
    /// [`MAX_ROUTES`] already.
    pub async fn add_route(&self, route: NewRoute, now: i64) -> anyhow::Result<AddRoute> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let (exists, count): (bool, i64) = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM notify_receivers WHERE name = ?1),
                        (SELECT COUNT(*) FROM notify_routes)",
                [&route.receiver],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if !exists {
                return Ok(AddRoute::NoReceiver);
            }
            if count >= MAX_ROUTES {
                return Ok(AddRoute::Full);
            }
            tx.execute(
                "INSERT INTO notify_routes (receiver, tags, severities, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    route.receiver,
                    serde_json::to_string(&route.tags)?,
                    serde_json::to_string(&route.severities)?,
                    now
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(AddRoute::Added(RouteInfo {
                id,
                receiver: route.receiver,
                tags: route.tags,
                severities: route.severities,
                created_at_ms: now,
            }))
        })
        .await
    }

    /// Every route, by id.
    pub async fn routes(&self) -> anyhow::Result<Vec<RouteInfo>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id, receiver, tags, severities, created_at_ms FROM notify_routes ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(RouteInfo {
                    id: r.get(0)?,
                    receiver: r.get(1)?,
                    tags: json_list(&r.get::<_, String>(2)?),
                    severities: json_list(&r.get::<_, String>(3)?),
                    created_at_ms: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Deletes a route; `false` when there was none.
    pub async fn delete_route(&self, id: i64) -> anyhow::Result<bool> {
        self.call(move |c| Ok(c.execute("DELETE FROM notify_routes WHERE id = ?1", [id])? == 1))
            .await
    }

    /// Routes up to a batch of unrouted outbox rows (oldest first), each
    /// in the same transaction as its deliveries (see the module invariants).
    pub async fn route_outbox(&self, now: i64) -> anyhow::Result<Routed> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let receivers = {
                let mut stmt = tx.prepare(
                    "SELECT r.name, t.tags, t.severities FROM notify_receivers r
                     LEFT JOIN notify_routes t ON t.receiver = r.name ORDER BY r.name, t.id",
                )?;
                let mut rows = stmt.query([])?;
                let mut receivers: Vec<ReceiverRoutes> = Vec::new();
                while let Some(row) = rows.next()? {
                    let name: String = row.get(0)?;
                    if receivers.last().is_none_or(|r| r.name != name) {
                        receivers.push(ReceiverRoutes {
                            name,
                            routes: Vec::new(),
                        });
                    }
                    if let Some(tags) = row.get::<_, Option<String>>(1)? {
                        let severities: String = row.get(2)?;
                        // Just pushed above: `last` exists.
                        receivers.last_mut().expect("a receiver").routes.push(RouteRule {
                            tags: json_list(&tags),
                            severities: json_list(&severities),
                        });
                    }
                }
                receivers
            };
            let rows = {
                let mut stmt = tx.prepare(
                    "SELECT id, batch_key, tags, severity FROM alert_outbox
                     WHERE routed_at_ms IS NULL ORDER BY id LIMIT ?1",
                )?;
                let rows = stmt.query_map([ROUTE_BATCH_ROWS as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let mut routed = Routed::default();
            for (id, batch_key, tags, severity) in rows {
                let incidents = route::incidents_of(&batch_key);
                let mut told = BTreeSet::new();
                {
                    let mut stmt =
                        tx.prepare_cached("SELECT receiver FROM notify_incidents WHERE incident_key = ?1")?;
                    for incident in &incidents {
                        for name in stmt.query_map([incident], |r| r.get::<_, String>(0))? {
                            told.insert(name?);
                        }
                    }
                }
                let selected = route::select(&receivers, &json_list(&tags), &severity, &told);
                if selected.is_empty() {
                    routed.unrouted.push(batch_key.clone());
                }
                for name in selected {
                    let pending: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM notify_deliveries WHERE receiver = ?1 AND state = 'pending'",
                        [&name],
                        |r| r.get(0),
                    )?;
                    let full = pending >= MAX_PENDING_PER_RECEIVER;
                    let inserted = tx.execute(
                        "INSERT OR IGNORE INTO notify_deliveries
                             (outbox_id, batch_key, receiver, state, next_attempt_ms, last_error, created_at_ms, done_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7)",
                        params![
                            id,
                            batch_key,
                            name,
                            if full { "dead" } else { "pending" },
                            now,
                            full.then(|| format!("queue full: {MAX_PENDING_PER_RECEIVER} deliveries already pending")),
                            full.then_some(now),
                        ],
                    )?;
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO notify_incidents (receiver, incident_key, seen_at_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO UPDATE SET seen_at_ms = excluded.seen_at_ms",
                    )?;
                    for incident in &incidents {
                        stmt.execute(params![name, incident, now])?;
                    }
                    if inserted == 1 && !full {
                        routed.receivers.insert(name);
                    }
                }
                tx.execute(
                    "UPDATE alert_outbox SET routed_at_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                routed.rows += 1;
            }
            tx.commit()?;
            Ok(routed)
        })
        .await
    }

    /// The oldest pending delivery of `receiver`: deliveries of a receiver
    /// go out in order (a resolve never overtakes its trigger).
    pub async fn next_delivery(&self, receiver: String) -> anyhow::Result<Option<DueDelivery>> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT d.id, d.batch_key, d.attempts, d.next_attempt_ms, d.created_at_ms,
                        o.group_key, o.tags, o.severity, o.notifications
                 FROM notify_deliveries d LEFT JOIN alert_outbox o ON o.id = d.outbox_id
                 WHERE d.receiver = ?1 AND d.state = 'pending' ORDER BY d.id LIMIT 1",
                [receiver],
                |r| {
                    let group: Option<String> = r.get(5)?;
                    Ok(DueDelivery {
                        id: r.get(0)?,
                        batch_key: r.get(1)?,
                        attempts: r.get(2)?,
                        next_attempt_ms: r.get(3)?,
                        created_at_ms: r.get(4)?,
                        content: match group {
                            Some(group) => Some(DeliveryContent {
                                group,
                                tags: r.get(6)?,
                                severity: r.get(7)?,
                                notifications: r.get(8)?,
                            }),
                            None => None,
                        },
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// The receiver accepted delivery `id`.
    pub async fn mark_sent(&self, id: i64, now: i64) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE notify_deliveries SET state = 'sent', attempts = attempts + 1, last_error = NULL, done_at_ms = ?2
                 WHERE id = ?1 AND state = 'pending'",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Delivery `id` failed for now; try again at `next_attempt_ms`.
    pub async fn mark_retry(
        &self,
        id: i64,
        next_attempt_ms: i64,
        error: &str,
    ) -> anyhow::Result<()> {
        let error = bounded_error(error);
        self.call(move |c| {
            c.execute(
                "UPDATE notify_deliveries SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3
                 WHERE id = ?1 AND state = 'pending'",
                params![id, next_attempt_ms, error],
            )?;
            Ok(())
        })
        .await
    }

    /// Delivery `id` failed for good: it becomes a dead letter.
    pub async fn mark_dead(&self, id: i64, error: &str, now: i64) -> anyhow::Result<()> {
        let error = bounded_error(error);
        self.call(move |c| {
            c.execute(
                "UPDATE notify_deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?2, done_at_ms = ?3
                 WHERE id = ?1 AND state = 'pending'",
                params![id, error, now],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest `limit` dead letters.
    pub async fn dead_letters(&self, limit: u32) -> anyhow::Result<Vec<DeadLetter>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT d.id, d.receiver, d.batch_key, o.group_key, o.notifications, d.attempts,
                        d.last_error, d.created_at_ms, d.done_at_ms
                 FROM notify_deliveries d LEFT JOIN alert_outbox o ON o.id = d.outbox_id
                 WHERE d.state = 'dead' ORDER BY d.done_at_ms DESC, d.id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                let notifications: Option<String> = r.get(4)?;
                let titles = notifications
                    .and_then(|n| serde_json::from_str::<Vec<serde_json::Value>>(&n).ok())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|n| n.get("title").and_then(|t| t.as_str()).map(str::to_owned))
                    .collect();
                Ok(DeadLetter {
                    id: r.get(0)?,
                    receiver: r.get(1)?,
                    batch_key: r.get(2)?,
                    group: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    titles,
                    attempts: r.get(5)?,
                    error: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                    created_at_ms: r.get(7)?,
                    failed_at_ms: r.get::<_, Option<i64>>(8)?.unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Forgets finished deliveries, routed outbox rows without pending
    /// deliveries, and incident memory older than [`RETENTION_MS`].
    pub async fn prune_notifications(&self, now: i64) -> anyhow::Result<usize> {
        self.call(move |c| {
            let before = now - RETENTION_MS;
            let tx = c.transaction()?;
            let mut n = tx.execute(
                "DELETE FROM notify_deliveries WHERE state != 'pending' AND done_at_ms < ?1",
                [before],
            )?;
            n += tx.execute(
                "DELETE FROM alert_outbox WHERE routed_at_ms < ?1
                   AND NOT EXISTS (SELECT 1 FROM notify_deliveries d WHERE d.outbox_id = alert_outbox.id)",
                [before],
            )?;
            n += tx.execute("DELETE FROM notify_incidents WHERE seen_at_ms < ?1", [before])?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use outrider_protocol::api::SmtpTls;

    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("test.db")).await.unwrap();
        (dir, store)
    }

    fn hook(name: &str) -> StoredReceiver {
        StoredReceiver {
            name: name.into(),
            config: ReceiverConfig::Webhook {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "0123456789abcdef".into(),
            },
            rate_per_sec: 10,
        }
    }

    /// Inserts an outbox row as the alert driver does.
    async fn outbox(store: &Store, batch_key: &str, tags: &[&str], severity: &str) {
        let (batch_key, tags, severity) = (
            batch_key.to_owned(),
            serde_json::to_string(tags).unwrap(),
            severity.to_owned(),
        );
        store
            .call(move |c| {
                c.execute(
                    "INSERT INTO alert_outbox (batch_key, group_key, tags, severity, notifications, created_at_ms)
                     VALUES (?1, 'agent/ab', ?2, ?3, '[]', 1)",
                    params![batch_key, tags, severity],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn deliveries(store: &Store) -> Vec<(String, String, String)> {
        store
            .call(|c| {
                let mut stmt = c.prepare(
                    "SELECT batch_key, receiver, state FROM notify_deliveries ORDER BY id",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap()
    }

    fn row(key: &str, receiver: &str, state: &str) -> (String, String, String) {
        (key.into(), receiver.into(), state.into())
    }

    #[tokio::test]
    async fn routing_delivers_once_per_receiver_and_resolves_follow_their_trigger() {
        let (_dir, store) = store().await;
        // No receiver: the row is routed to nobody, and reported.
        outbox(&store, "check/ab/x@1#1", &["db"], "warning").await;
        let routed = store.route_outbox(10).await.unwrap();
        assert_eq!(routed.rows, 1);
        assert_eq!(routed.unrouted, vec!["check/ab/x@1#1".to_owned()]);
        assert!(deliveries(&store).await.is_empty());

        assert_eq!(
            store.add_receiver(hook("all"), 1).await.unwrap(),
            AddReceiver::Added
        );
        assert_eq!(
            store.add_receiver(hook("all"), 1).await.unwrap(),
            AddReceiver::Exists,
            "a second add of one name"
        );
        assert_eq!(
            store.add_receiver(hook("pager"), 1).await.unwrap(),
            AddReceiver::Added
        );
        let route = NewRoute {
            receiver: "pager".into(),
            tags: vec!["db".into()],
            severities: vec!["critical".into()],
        };
        assert!(matches!(
            store.add_route(route, 2).await.unwrap(),
            AddRoute::Added(_)
        ));
        let nobody = NewRoute {
            receiver: "nobody".into(),
            ..NewRoute::default()
        };
        assert_eq!(
            store.add_route(nobody, 2).await.unwrap(),
            AddRoute::NoReceiver
        );

        outbox(&store, "check/ab/disk@5#1", &["db", "prod"], "critical").await;
        outbox(&store, "check/ab/load@6#1", &["db"], "warning").await;
        outbox(&store, "check/ab/disk@5#2", &["db", "prod"], "ok").await;
        let routed = store.route_outbox(20).await.unwrap();
        assert_eq!(routed.rows, 3);
        assert_eq!(
            routed.receivers,
            BTreeSet::from(["all".to_owned(), "pager".to_owned()])
        );
        assert_eq!(
            deliveries(&store).await,
            vec![
                row("check/ab/disk@5#1", "all", "pending"),
                row("check/ab/disk@5#1", "pager", "pending"),
                row("check/ab/load@6#1", "all", "pending"),
                // The resolve ('ok') follows the trigger to the pager.
                row("check/ab/disk@5#2", "all", "pending"),
                row("check/ab/disk@5#2", "pager", "pending"),
            ]
        );
        // Routed rows are not routed again.
        assert_eq!(store.route_outbox(30).await.unwrap(), Routed::default());
        assert_eq!(deliveries(&store).await.len(), 5);
    }

    #[tokio::test]
    async fn deliveries_go_in_order_and_end_sent_or_dead() {
        let (_dir, store) = store().await;
        store.add_receiver(hook("ops"), 1).await.unwrap();
        outbox(&store, "agent/ab@1#1", &[], "critical").await;
        outbox(&store, "agent/ab@1#2", &[], "ok").await;
        store.route_outbox(10).await.unwrap();

        let first = store.next_delivery("ops".into()).await.unwrap().unwrap();
        assert_eq!(first.batch_key, "agent/ab@1#1");
        assert_eq!(first.content.as_ref().unwrap().group, "agent/ab");
        store.mark_retry(first.id, 500, "HTTP 503").await.unwrap();
        // Still the head of the queue: a retried trigger holds back its resolve.
        let again = store.next_delivery("ops".into()).await.unwrap().unwrap();
        assert_eq!(
            (again.id, again.attempts, again.next_attempt_ms),
            (first.id, 1, 500)
        );
        store.mark_sent(first.id, 600).await.unwrap();
        let second = store.next_delivery("ops".into()).await.unwrap().unwrap();
        assert_eq!(second.batch_key, "agent/ab@1#2");
        store
            .mark_dead(second.id, "HTTP 400: bad", 700)
            .await
            .unwrap();
        assert!(store.next_delivery("ops".into()).await.unwrap().is_none());
        // A late mark of a finished delivery changes nothing.
        store.mark_retry(second.id, 900, "late").await.unwrap();

        let dead = store.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (
                dead[0].receiver.as_str(),
                dead[0].batch_key.as_str(),
                dead[0].error.as_str(),
                dead[0].attempts,
                dead[0].failed_at_ms
            ),
            ("ops", "agent/ab@1#2", "HTTP 400: bad", 1, 700)
        );
        let info = store.receivers(|_| String::new()).await.unwrap();
        assert_eq!((info[0].pending, info[0].sent, info[0].dead), (0, 1, 1));
    }

    #[tokio::test]
    async fn deleting_a_receiver_dead_letters_its_queue_and_full_queues_overflow_to_dead_letters() {
        let (_dir, store) = store().await;
        store.add_receiver(hook("ops"), 1).await.unwrap();
        outbox(&store, "agent/ab@1#1", &[], "critical").await;
        store.route_outbox(10).await.unwrap();
        assert!(store.delete_receiver("ops".into(), 20).await.unwrap());
        assert!(!store.delete_receiver("ops".into(), 20).await.unwrap());
        assert_eq!(
            deliveries(&store).await,
            vec![row("agent/ab@1#1", "ops", "dead")]
        );
        assert_eq!(
            store.dead_letters(10).await.unwrap()[0].error,
            "receiver deleted"
        );

        let mut mail = hook("mail");
        mail.config = ReceiverConfig::Email {
            host: "127.0.0.1".into(),
            port: None,
            tls: SmtpTls::None,
            username: None,
            password: Some("hunter2".into()),
            from: "a@b.c".into(),
            to: vec!["d@e.f".into()],
            ca_pem: None,
        };
        store.add_receiver(mail.clone(), 1).await.unwrap();
        store
            .call(|c| {
                c.execute(
                    "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < ?1)
                     INSERT INTO notify_deliveries (outbox_id, batch_key, receiver, state, next_attempt_ms, created_at_ms)
                     SELECT v, 'filler#' || v, 'mail', 'pending', 0, 0 FROM n",
                    [MAX_PENDING_PER_RECEIVER],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        outbox(&store, "agent/ab@2#1", &[], "critical").await;
        let routed = store.route_outbox(30).await.unwrap();
        assert!(routed.receivers.is_empty(), "{routed:?}");
        let dead = store.dead_letters(1).await.unwrap();
        assert_eq!(dead[0].batch_key, "agent/ab@2#1");
        assert!(dead[0].error.starts_with("queue full"), "{}", dead[0].error);
        // The stored config keeps its secret for sending.
        let stored = store.stored_receivers().await.unwrap();
        assert_eq!(stored[0].config, mail.config);
    }

    #[tokio::test]
    async fn receivers_and_routes_are_bounded() {
        let (_dir, store) = store().await;
        for i in 0..MAX_RECEIVERS {
            let added = store.add_receiver(hook(&format!("r{i}")), 0).await.unwrap();
            assert_eq!(added, AddReceiver::Added);
        }
        assert_eq!(
            store.add_receiver(hook("one-more"), 0).await.unwrap(),
            AddReceiver::Full
        );
        store
            .call(|c| {
                c.execute(
                    "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < ?1)
                     INSERT INTO notify_routes (receiver, tags, severities, created_at_ms)
                     SELECT 'r0', '[]', '[]', 0 FROM n",
                    [MAX_ROUTES],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let route = NewRoute {
            receiver: "r1".into(),
            ..NewRoute::default()
        };
        assert_eq!(store.add_route(route, 0).await.unwrap(), AddRoute::Full);
    }

    #[tokio::test]
    async fn old_finished_deliveries_and_rows_are_pruned_pending_ones_kept() {
        let (_dir, store) = store().await;
        store.add_receiver(hook("ops"), 0).await.unwrap();
        outbox(&store, "agent/ab@1#1", &[], "critical").await;
        outbox(&store, "agent/ab@1#2", &[], "ok").await;
        store.route_outbox(0).await.unwrap();
        let first = store.next_delivery("ops".into()).await.unwrap().unwrap();
        store.mark_sent(first.id, 0).await.unwrap();
        let later = RETENTION_MS + 1;
        assert!(store.prune_notifications(later).await.unwrap() >= 2);
        assert_eq!(
            deliveries(&store).await,
            vec![row("agent/ab@1#2", "ops", "pending")]
        );
        let pending = store.next_delivery("ops".into()).await.unwrap().unwrap();
        assert!(
            pending.content.is_some(),
            "the pending delivery's row is kept"
        );
    }
}
