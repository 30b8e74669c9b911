//! The notifier's tables on PostgreSQL (migrations/0013_notify.sql, and
//! `alert_outbox` of 0011_alerts.sql).
//!
//! Several nodes may route and deliver at once (or one leader may, and an
//! old leader not yet aware it lost: `backend/leader.rs`, guarantee 2), so
//! nothing here relies on a single caller:
//!
//! - **Routing** takes turns on the transaction-scoped advisory lock
//!   [`ROUTING_LOCK`] and reads the unrouted rows only once it holds it.
//!   Under READ COMMITTED that read sees the routing committed before, so
//!   a row is routed once, its deliveries get ids in routing order (the
//!   order each receiver's worker sends them in), the per-receiver queue
//!   bound counts what the routing before left, and the incident memory a
//!   resolve follows is the one its trigger's routing wrote. The unique
//!   `(batch_key, receiver)` stays as the last word (`ON CONFLICT DO
//!   NOTHING`). The receivers routed to are read `FOR SHARE`, so a
//!   receiver's deletion waits for the routing and then dead-letters what
//!   it queued, instead of leaving a pending delivery nobody sends.
//! - **Delivery** hands out only the head of a receiver's queue. The head
//!   is read and locked with `FOR UPDATE SKIP LOCKED`: a node that finds
//!   another one claiming or marking it this very moment does not wait and
//!   does not skip to the next delivery (that would break the order); it
//!   gets nothing and asks again. Holding the lock it decides with
//!   [`take`]: a due head that is unclaimed, or whose claim ran out, is
//!   claimed (`claim + 1`, the node, the lease's end); otherwise it is
//!   reported with the time to ask again. The lock is what makes two
//!   nodes never both claim one head: the second reads the first's
//!   committed claim. A mark is an `UPDATE … WHERE claim = $claim AND
//!   state = 'pending'`: a node whose claim ran out and was taken over
//!   changes nothing.
//! - **Changes** of receivers and routes take turns on [`RECEIVERS_LOCK`],
//!   so [`MAX_RECEIVERS`] and [`MAX_ROUTES`] hold across nodes and a route
//!   is never added to a receiver being deleted.
//! - **Pruning** is idempotent: any node, any number at once.

use std::collections::BTreeSet;

use outrider_protocol::api::{DeadLetter, NewRoute, ReceiverConfig, ReceiverInfo, RouteInfo};

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::notify::{
    AddReceiver, AddRoute, CLAIM_LEASE_MS, DeliveryContent, DueDelivery, MAX_RECEIVERS, MAX_ROUTES,
    NotifyStore, RECEIVERS_LOCK, RETENTION_MS, ROUTE_BATCH_ROWS, ROUTING_LOCK, Routed,
    StoredReceiver, Take, bounded_error, config_text, dead_letters_page, kind_of, overflow,
    stored_config, take, titles_of,
};
use crate::backend::presence::NodeId;
use crate::notify::route::{self, ReceiverRoutes, RouteRule};

/// A stored integer, checked against the type it is reported in.
fn stored<T: TryFrom<i64>>(what: &'static str, value: i64) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Malformed {
        what,
        value: value.to_string(),
    })
}

/// A list as the worker reads it from a delivery's content (JSON text, as
/// SQLite stores it).
fn json_text(list: &[String]) -> String {
    serde_json::to_string(list).expect("a list of strings serialises")
}

impl NotifyStore for PgBackend {
    async fn add_receiver(
        &self,
        receiver: StoredReceiver,
        now_ms: i64,
    ) -> Result<AddReceiver, StoreError> {
        let config = config_text(&receiver.config);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECEIVERS_LOCK])
            .await?;
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM notify_receivers WHERE name = $1),
                        (SELECT COUNT(*) FROM notify_receivers)",
                &[&receiver.name],
            )
            .await?;
        if row.get::<_, bool>(0) {
            return Ok(AddReceiver::Exists);
        }
        if row.get::<_, i64>(1) >= MAX_RECEIVERS {
            return Ok(AddReceiver::Full);
        }
        tx.execute(
            "INSERT INTO notify_receivers (name, kind, config, rate_per_sec, created_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &receiver.name,
                &kind_of(&receiver.config),
                &config,
                &i32::try_from(receiver.rate_per_sec).unwrap_or(i32::MAX),
                &now_ms,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(AddReceiver::Added)
    }

    async fn stored_receivers(&self) -> Result<Vec<StoredReceiver>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT name, config, rate_per_sec FROM notify_receivers
                 ORDER BY name COLLATE \"C\"",
            )
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                Ok(StoredReceiver {
                    config: stored_config(&name, r.get(1))?,
                    rate_per_sec: stored("receiver rate", i64::from(r.get::<_, i32>(2)))?,
                    name,
                })
            })
            .collect()
    }

    async fn receivers(
        &self,
        target: fn(&ReceiverConfig) -> String,
    ) -> Result<Vec<ReceiverInfo>, StoreError> {
        // One statement: the configs and the counts of one snapshot.
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT r.name, r.config, r.rate_per_sec, r.created_at_ms,
                        COUNT(d.id) FILTER (WHERE d.state = 'pending'),
                        COUNT(d.id) FILTER (WHERE d.state = 'sent'),
                        COUNT(d.id) FILTER (WHERE d.state = 'dead')
                 FROM notify_receivers r LEFT JOIN notify_deliveries d ON d.receiver = r.name
                 GROUP BY r.name ORDER BY r.name COLLATE \"C\"",
            )
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                let config = stored_config(&name, r.get(1))?;
                Ok(ReceiverInfo {
                    kind: kind_of(&config).to_owned(),
                    target: target(&config),
                    rate_per_sec: stored("receiver rate", i64::from(r.get::<_, i32>(2)))?,
                    created_at_ms: r.get(3),
                    pending: stored("delivery count", r.get(4))?,
                    sent: stored("delivery count", r.get(5))?,
                    dead: stored("delivery count", r.get(6))?,
                    name,
                })
            })
            .collect()
    }

    async fn delete_receiver(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECEIVERS_LOCK])
            .await?;
        // Waits for a routing that read the receiver (FOR SHARE); the
        // statements below then see what it queued.
        let deleted = tx
            .execute("DELETE FROM notify_receivers WHERE name = $1", &[&name])
            .await?;
        tx.execute(
            "UPDATE notify_deliveries
             SET state = 'dead', last_error = 'receiver deleted', done_at_ms = $2,
                 claimed_by = NULL, claim_until_ms = NULL
             WHERE receiver = $1 AND state = 'pending'",
            &[&name, &now_ms],
        )
        .await?;
        tx.execute("DELETE FROM notify_incidents WHERE receiver = $1", &[&name])
            .await?;
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn add_route(&self, route: NewRoute, now_ms: i64) -> Result<AddRoute, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RECEIVERS_LOCK])
            .await?;
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM notify_receivers WHERE name = $1),
                        (SELECT COUNT(*) FROM notify_routes)",
                &[&route.receiver],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Ok(AddRoute::NoReceiver);
        }
        if row.get::<_, i64>(1) >= MAX_ROUTES {
            return Ok(AddRoute::Full);
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO notify_routes (receiver, tags, severities, created_at_ms)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&route.receiver, &route.tags, &route.severities, &now_ms],
            )
            .await?
            .get(0);
        tx.commit().await?;
        Ok(AddRoute::Added(RouteInfo {
            id,
            receiver: route.receiver,
            tags: route.tags,
            severities: route.severities,
            created_at_ms: now_ms,
        }))
    }

    async fn routes(&self) -> Result<Vec<RouteInfo>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, receiver, tags, severities, created_at_ms FROM notify_routes ORDER BY id",
            )
            .await?;
        Ok(client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|r| RouteInfo {
                id: r.get(0),
                receiver: r.get(1),
                tags: r.get(2),
                severities: r.get(3),
                created_at_ms: r.get(4),
            })
            .collect())
    }

    async fn delete_route(&self, id: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute("DELETE FROM notify_routes WHERE id = $1", &[&id])
            .await?
            == 1)
    }

    async fn route_outbox(&self, now_ms: i64) -> Result<Routed, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One routing at a time (module comment); what follows reads after
        // the routing before committed.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROUTING_LOCK])
            .await?;
        let mut receivers: Vec<ReceiverRoutes> = Vec::new();
        for row in tx
            .query(
                "SELECT r.name, t.tags, t.severities FROM notify_receivers r
                 LEFT JOIN notify_routes t ON t.receiver = r.name
                 ORDER BY r.name COLLATE \"C\", t.id FOR SHARE OF r",
                &[],
            )
            .await?
        {
            let name: String = row.get(0);
            if receivers.last().is_none_or(|r| r.name != name) {
                receivers.push(ReceiverRoutes {
                    name,
                    routes: Vec::new(),
                });
            }
            if let Some(tags) = row.get::<_, Option<Vec<String>>>(1) {
                // Just pushed above: `last` exists.
                receivers
                    .last_mut()
                    .expect("a receiver")
                    .routes
                    .push(RouteRule {
                        tags,
                        severities: row.get(2),
                    });
            }
        }
        let rows = tx
            .query(
                "SELECT id, batch_key, tags, severity FROM alert_outbox
                 WHERE routed_at_ms IS NULL ORDER BY id LIMIT $1",
                &[&(ROUTE_BATCH_ROWS as i64)],
            )
            .await?;
        let told_stmt = tx
            .prepare("SELECT receiver FROM notify_incidents WHERE incident_key = ANY($1)")
            .await?;
        let pending_stmt = tx
            .prepare(
                "SELECT COUNT(*) FROM notify_deliveries WHERE receiver = $1 AND state = 'pending'",
            )
            .await?;
        let insert = tx
            .prepare(
                "INSERT INTO notify_deliveries
                     (outbox_id, batch_key, receiver, state, next_attempt_ms, last_error,
                      created_at_ms, done_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $5, $7)
                 ON CONFLICT (batch_key, receiver) DO NOTHING",
            )
            .await?;
        let remember = tx
            .prepare(
                "INSERT INTO notify_incidents (receiver, incident_key, seen_at_ms)
                 SELECT $1, k, $3 FROM unnest($2::text[]) AS k
                 ON CONFLICT (receiver, incident_key) DO UPDATE SET seen_at_ms = excluded.seen_at_ms",
            )
            .await?;
        let mut routed = Routed::default();
        for row in rows {
            let (id, batch_key, tags, severity): (i64, String, Vec<String>, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let incidents: Vec<String> = route::incidents_of(&batch_key)
                .into_iter()
                .map(str::to_owned)
                .collect();
            let told: BTreeSet<String> = tx
                .query(&told_stmt, &[&incidents])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let selected = route::select(&receivers, &tags, &severity, &told);
            if selected.is_empty() {
                routed.unrouted.push(batch_key.clone());
            }
            for name in selected {
                let pending: i64 = tx.query_one(&pending_stmt, &[&name]).await?.get(0);
                let full = overflow(pending);
                let state = if full.is_some() { "dead" } else { "pending" };
                let done = full.is_some().then_some(now_ms);
                let inserted = tx
                    .execute(
                        &insert,
                        &[&id, &batch_key, &name, &state, &now_ms, &full, &done],
                    )
                    .await?;
                tx.execute(&remember, &[&name, &incidents, &now_ms]).await?;
                if inserted == 1 && full.is_none() {
                    routed.receivers.insert(name);
                }
            }
            tx.execute(
                "UPDATE alert_outbox SET routed_at_ms = $2 WHERE id = $1",
                &[&id, &now_ms],
            )
            .await?;
            routed.rows += 1;
        }
        tx.commit().await?;
        Ok(routed)
    }

    async fn next_delivery(
        &self,
        node: &NodeId,
        receiver: &str,
        now_ms: i64,
    ) -> Result<Option<DueDelivery>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The head, locked; if another node holds its lock, nothing (not
        // the next one: the order). `state` is re-checked on the newest
        // version of the row the lock was taken on.
        let head = tx
            .query_opt(
                "SELECT d.id, d.batch_key, d.attempts, d.next_attempt_ms, d.created_at_ms,
                        d.claim, d.claim_until_ms,
                        o.group_key, o.tags, o.severity, o.notifications
                 FROM notify_deliveries d LEFT JOIN alert_outbox o ON o.id = d.outbox_id
                 WHERE d.id = (SELECT min(id) FROM notify_deliveries
                               WHERE receiver = $1 AND state = 'pending')
                   AND d.state = 'pending'
                 FOR UPDATE OF d SKIP LOCKED",
                &[&receiver],
            )
            .await?;
        let Some(r) = head else {
            return Ok(None);
        };
        let id: i64 = r.get(0);
        let next_attempt_ms: i64 = r.get(3);
        let (claim, until) = match take(next_attempt_ms, r.get(6), now_ms) {
            Take::Claim => {
                let claim: i64 = tx
                    .query_one(
                        "UPDATE notify_deliveries
                         SET claim = claim + 1, claimed_by = $2, claim_until_ms = $3
                         WHERE id = $1 RETURNING claim",
                        &[&id, &node.as_str(), &(now_ms + CLAIM_LEASE_MS)],
                    )
                    .await?
                    .get(0);
                (Some(claim), next_attempt_ms)
            }
            Take::WaitUntil(at) => (None, at),
        };
        let group: Option<String> = r.get(7);
        let delivery = DueDelivery {
            id,
            batch_key: r.get(1),
            attempts: stored("delivery attempts", i64::from(r.get::<_, i32>(2)))?,
            next_attempt_ms: until,
            created_at_ms: r.get(4),
            claim,
            content: group.map(|group| DeliveryContent {
                group,
                tags: json_text(&r.get::<_, Vec<String>>(8)),
                severity: r.get(9),
                notifications: r.get(10),
            }),
        };
        tx.commit().await?;
        Ok(Some(delivery))
    }

    async fn mark_sent(&self, id: i64, claim: i64, now_ms: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE notify_deliveries
                 SET state = 'sent', attempts = attempts + 1, last_error = NULL, done_at_ms = $3,
                     claim_until_ms = NULL
                 WHERE id = $1 AND claim = $2 AND state = 'pending'",
            )
            .await?;
        Ok(client.execute(&stmt, &[&id, &claim, &now_ms]).await? == 1)
    }

    async fn mark_retry(
        &self,
        id: i64,
        claim: i64,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let error = bounded_error(error);
        let client = self.client().await?;
        // The claim ends: the next attempt is claimed again, by any node.
        let stmt = client
            .prepare_cached(
                "UPDATE notify_deliveries
                 SET attempts = attempts + 1, next_attempt_ms = $3, last_error = $4,
                     claim_until_ms = NULL
                 WHERE id = $1 AND claim = $2 AND state = 'pending'",
            )
            .await?;
        Ok(client
            .execute(&stmt, &[&id, &claim, &next_attempt_ms, &error])
            .await?
            == 1)
    }

    async fn mark_dead(
        &self,
        id: i64,
        claim: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let error = bounded_error(error);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE notify_deliveries
                 SET state = 'dead', attempts = attempts + 1, last_error = $3, done_at_ms = $4,
                     claim_until_ms = NULL
                 WHERE id = $1 AND claim = $2 AND state = 'pending'",
            )
            .await?;
        Ok(client
            .execute(&stmt, &[&id, &claim, &error, &now_ms])
            .await?
            == 1)
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = i64::from(dead_letters_page(limit));
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT d.id, d.receiver, d.batch_key, o.group_key, o.notifications, d.attempts,
                        d.last_error, d.created_at_ms, d.done_at_ms
                 FROM notify_deliveries d LEFT JOIN alert_outbox o ON o.id = d.outbox_id
                 WHERE d.state = 'dead' ORDER BY d.done_at_ms DESC, d.id DESC LIMIT $1",
            )
            .await?;
        client
            .query(&stmt, &[&limit])
            .await?
            .iter()
            .map(|r| {
                Ok(DeadLetter {
                    id: r.get(0),
                    receiver: r.get(1),
                    batch_key: r.get(2),
                    group: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    titles: titles_of(r.get::<_, Option<&str>>(4)),
                    attempts: stored("delivery attempts", i64::from(r.get::<_, i32>(5)))?,
                    error: r.get::<_, Option<String>>(6).unwrap_or_default(),
                    created_at_ms: r.get(7),
                    failed_at_ms: r.get::<_, Option<i64>>(8).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn prune_notifications(&self, now_ms: i64) -> Result<usize, StoreError> {
        let before = now_ms - RETENTION_MS;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut n = tx
            .execute(
                "DELETE FROM notify_deliveries WHERE state <> 'pending' AND done_at_ms < $1",
                &[&before],
            )
            .await?;
        // A routed row's deliveries were committed with its routing, so
        // "none left" cannot change under this statement.
        n += tx
            .execute(
                "DELETE FROM alert_outbox o WHERE o.routed_at_ms < $1
                   AND NOT EXISTS (SELECT 1 FROM notify_deliveries d WHERE d.outbox_id = o.id)",
                &[&before],
            )
            .await?;
        n += tx
            .execute(
                "DELETE FROM notify_incidents WHERE seen_at_ms < $1",
                &[&before],
            )
            .await?;
        tx.commit().await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
