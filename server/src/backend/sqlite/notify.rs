//! The notifier's tables on SQLite: the statements the server has always
//! run (moved here from server/src/store/notify.rs), on the tables of
//! server/src/store/notify.sql and server/src/store/alert_outbox.sql.
//! One writer: routing, and each change, is one immediate transaction, so
//! routing runs one at a time (`backend/notify.rs`, rule 1). One node with
//! one worker per receiver: the head of a queue is handed out under
//! [`SQLITE_CLAIM`] once due, and nothing of the claim is stored (rule 3).

use std::collections::{BTreeMap, BTreeSet};

use outrider_protocol::api::{DeadLetter, NewRoute, ReceiverConfig, ReceiverInfo, RouteInfo};
use rusqlite::{OptionalExtension, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::notify::{
    AddReceiver, AddRoute, DeliveryContent, DueDelivery, MAX_RECEIVERS, MAX_ROUTES, NotifyStore,
    ROUTE_BATCH_ROWS, Routed, SQLITE_CLAIM, StoredReceiver, Take, bounded_error, config_text,
    dead_letters_page, json_list, kind_of, overflow, stored_config, take, titles_of,
};
use crate::backend::presence::NodeId;
use crate::notify::route::{self, ReceiverRoutes, RouteRule};

impl NotifyStore for SqliteBackend {
    async fn add_receiver(
        &self,
        receiver: StoredReceiver,
        now_ms: i64,
    ) -> Result<AddReceiver, StoreError> {
        let config = config_text(&receiver.config);
        self.write(move |tx| {
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
                params![receiver.name, kind_of(&receiver.config), config, receiver.rate_per_sec, now_ms],
            )?;
            Ok(AddReceiver::Added)
        })
        .await
    }

    async fn stored_receivers(&self) -> Result<Vec<StoredReceiver>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, config, rate_per_sec FROM notify_receivers ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, config, rate_per_sec) = row?;
                out.push(StoredReceiver {
                    config: stored_config(&name, &config)?,
                    name,
                    rate_per_sec,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn receivers(
        &self,
        target: fn(&ReceiverConfig) -> String,
    ) -> Result<Vec<ReceiverInfo>, StoreError> {
        let stored = self.stored_receivers().await?;
        let counts = self
            .read(|c| {
                let mut stmt = c.prepare_cached(
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
                        (
                            r.get::<_, i64>(1)?,
                            r.get::<_, u64>(2)?,
                            r.get::<_, u64>(3)?,
                            r.get::<_, u64>(4)?,
                        ),
                    ))
                })?;
                Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
            })
            .await?;
        // Two reads: a receiver added or deleted in between is matched by
        // name, not by position.
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

    async fn delete_receiver(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| {
            let deleted = tx.execute("DELETE FROM notify_receivers WHERE name = ?1", [&name])?;
            tx.execute(
                "UPDATE notify_deliveries SET state = 'dead', last_error = 'receiver deleted', done_at_ms = ?2
                 WHERE receiver = ?1 AND state = 'pending'",
                params![name, now_ms],
            )?;
            tx.execute("DELETE FROM notify_incidents WHERE receiver = ?1", [&name])?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn add_route(&self, route: NewRoute, now_ms: i64) -> Result<AddRoute, StoreError> {
        self.write(move |tx| {
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
            let list = |l: &[String]| serde_json::to_string(l).expect("a list of strings serialises");
            tx.execute(
                "INSERT INTO notify_routes (receiver, tags, severities, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![route.receiver, list(&route.tags), list(&route.severities), now_ms],
            )?;
            Ok(AddRoute::Added(RouteInfo {
                id: tx.last_insert_rowid(),
                receiver: route.receiver,
                tags: route.tags,
                severities: route.severities,
                created_at_ms: now_ms,
            }))
        })
        .await
    }

    async fn routes(&self) -> Result<Vec<RouteInfo>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
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

    async fn delete_route(&self, id: i64) -> Result<bool, StoreError> {
        self.write(move |tx| Ok(tx.execute("DELETE FROM notify_routes WHERE id = ?1", [id])? == 1))
            .await
    }

    async fn route_outbox(&self, now_ms: i64) -> Result<Routed, StoreError> {
        self.write(move |tx| {
            let receivers = {
                let mut stmt = tx.prepare_cached(
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
                let mut stmt = tx.prepare_cached(
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
                    let full = overflow(pending);
                    let inserted = tx.execute(
                        "INSERT OR IGNORE INTO notify_deliveries
                             (outbox_id, batch_key, receiver, state, next_attempt_ms, last_error, created_at_ms, done_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7)",
                        params![
                            id,
                            batch_key,
                            name,
                            if full.is_some() { "dead" } else { "pending" },
                            now_ms,
                            full,
                            full.is_some().then_some(now_ms),
                        ],
                    )?;
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO notify_incidents (receiver, incident_key, seen_at_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO UPDATE SET seen_at_ms = excluded.seen_at_ms",
                    )?;
                    for incident in &incidents {
                        stmt.execute(params![name, incident, now_ms])?;
                    }
                    if inserted == 1 && full.is_none() {
                        routed.receivers.insert(name);
                    }
                }
                tx.execute(
                    "UPDATE alert_outbox SET routed_at_ms = ?2 WHERE id = ?1",
                    params![id, now_ms],
                )?;
                routed.rows += 1;
            }
            Ok(routed)
        })
        .await
    }

    async fn next_delivery(
        &self,
        _node: &NodeId,
        receiver: &str,
        now_ms: i64,
    ) -> Result<Option<DueDelivery>, StoreError> {
        let receiver = receiver.to_owned();
        self.write(move |tx| {
            Ok(tx
                .query_row(
                    "SELECT d.id, d.batch_key, d.attempts, d.next_attempt_ms, d.created_at_ms,
                            o.group_key, o.tags, o.severity, o.notifications
                     FROM notify_deliveries d LEFT JOIN alert_outbox o ON o.id = d.outbox_id
                     WHERE d.receiver = ?1 AND d.state = 'pending' ORDER BY d.id LIMIT 1",
                    [receiver],
                    |r| {
                        let next_attempt_ms: i64 = r.get(3)?;
                        let group: Option<String> = r.get(5)?;
                        Ok(DueDelivery {
                            id: r.get(0)?,
                            batch_key: r.get(1)?,
                            attempts: r.get(2)?,
                            next_attempt_ms,
                            created_at_ms: r.get(4)?,
                            claim: match take(next_attempt_ms, None, now_ms) {
                                Take::Claim => Some(SQLITE_CLAIM),
                                Take::WaitUntil(_) => None,
                            },
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

    async fn mark_sent(&self, id: i64, _claim: i64, now_ms: i64) -> Result<bool, StoreError> {
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE notify_deliveries SET state = 'sent', attempts = attempts + 1, last_error = NULL, done_at_ms = ?2
                 WHERE id = ?1 AND state = 'pending'",
                params![id, now_ms],
            )? == 1)
        })
        .await
    }

    async fn mark_retry(
        &self,
        id: i64,
        _claim: i64,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let error = bounded_error(error);
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE notify_deliveries SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3
                 WHERE id = ?1 AND state = 'pending'",
                params![id, next_attempt_ms, error],
            )? == 1)
        })
        .await
    }

    async fn mark_dead(
        &self,
        id: i64,
        _claim: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let error = bounded_error(error);
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE notify_deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?2, done_at_ms = ?3
                 WHERE id = ?1 AND state = 'pending'",
                params![id, error, now_ms],
            )? == 1)
        })
        .await
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = dead_letters_page(limit);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.id, d.receiver, d.batch_key, o.group_key, o.notifications, d.attempts,
                        d.last_error, d.created_at_ms, d.done_at_ms
                 FROM notify_deliveries d LEFT JOIN alert_outbox o ON o.id = d.outbox_id
                 WHERE d.state = 'dead' ORDER BY d.done_at_ms DESC, d.id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    receiver: r.get(1)?,
                    batch_key: r.get(2)?,
                    group: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    titles: titles_of(r.get::<_, Option<String>>(4)?.as_deref()),
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

    async fn prune_notifications(&self, now_ms: i64) -> Result<usize, StoreError> {
        let before = now_ms - crate::backend::notify::RETENTION_MS;
        self.write(move |tx| {
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
            Ok(n)
        })
        .await
    }
}
