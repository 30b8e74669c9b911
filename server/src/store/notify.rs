//! The notifier's tables (`notify.sql`): receivers, routes, and the
//! delivery queue routed from `alert_outbox` (`alert_outbox.sql`).
//!
//! The area's interface, rules and types are `crate::backend::notify`
//! ([`NotifyStore`]); its SQLite statements live in
//! server/src/backend/sqlite/notify.rs, its PostgreSQL ones in
//! server/src/backend/postgres/notify.rs.
//!
//! Invariants (rules 1 to 4 there):
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
//!
//! The `Store` methods below are kept, each a call of the trait on
//! [`SqliteBackend`] over this same store, as server/src/store/alerts.rs
//! does: the callers (the router, the workers, the API) are unchanged but
//! for the claim the marks carry.

use anyhow::Context;
use outrider_protocol::api::{DeadLetter, NewRoute, ReceiverConfig, ReceiverInfo, RouteInfo};

use super::Store;
use crate::backend::Backend;
use crate::backend::notify::NotifyStore;
pub use crate::backend::notify::{
    AddReceiver, AddRoute, DeliveryContent, DueDelivery, MAX_PENDING_PER_RECEIVER, MAX_RECEIVERS,
    MAX_ROUTES, RETENTION_MS, ROUTE_BATCH_ROWS, Routed, StoredReceiver, kind_of,
};

impl Store {
    /// The notify area of this store behind its trait.
    fn notify_area(&self) -> Backend {
        self.backend()
    }

    /// Adds a receiver, unless one of that name exists or there are
    /// [`MAX_RECEIVERS`] already (each has a worker task).
    pub async fn add_receiver(
        &self,
        receiver: StoredReceiver,
        now: i64,
    ) -> anyhow::Result<AddReceiver> {
        Ok(self.notify_area().add_receiver(receiver, now).await?)
    }

    /// Every receiver with its secrets, by name.
    pub async fn stored_receivers(&self) -> anyhow::Result<Vec<StoredReceiver>> {
        Ok(self.notify_area().stored_receivers().await?)
    }

    /// Receivers for the API: `target` describes each without secrets.
    pub async fn receivers(
        &self,
        target: fn(&ReceiverConfig) -> String,
    ) -> anyhow::Result<Vec<ReceiverInfo>> {
        Ok(self.notify_area().receivers(target).await?)
    }

    /// Deletes a receiver and its routes; its pending deliveries become
    /// dead letters ("receiver deleted"). `false` when there was none.
    pub async fn delete_receiver(&self, name: String, now: i64) -> anyhow::Result<bool> {
        Ok(self.notify_area().delete_receiver(&name, now).await?)
    }

    /// Adds a route, unless its receiver does not exist or there are
    /// [`MAX_ROUTES`] already.
    pub async fn add_route(&self, route: NewRoute, now: i64) -> anyhow::Result<AddRoute> {
        Ok(self.notify_area().add_route(route, now).await?)
    }

    /// Every route, by id.
    pub async fn routes(&self) -> anyhow::Result<Vec<RouteInfo>> {
        Ok(self.notify_area().routes().await?)
    }

    /// Deletes a route; `false` when there was none.
    pub async fn delete_route(&self, id: i64) -> anyhow::Result<bool> {
        Ok(self.notify_area().delete_route(id).await?)
    }

    /// Routes up to a batch of unrouted outbox rows (oldest first), each
    /// in the same transaction as its deliveries (see the module invariants).
    pub async fn route_outbox(&self, now: i64) -> anyhow::Result<Routed> {
        self.notify_area()
            .route_outbox(now)
            .await
            .context("routing the alert outbox")
    }

    /// The oldest pending delivery of `receiver`: deliveries of a receiver
    /// go out in order (a resolve never overtakes its trigger). Its
    /// `claim` is set when it is due now.
    pub async fn next_delivery(&self, receiver: String) -> anyhow::Result<Option<DueDelivery>> {
        Ok(self
            .notify_area()
            .next_delivery(self.node(), &receiver, super::now_ms())
            .await?)
    }

    /// The receiver accepted delivery `id` (sent under `claim`).
    pub async fn mark_sent(&self, id: i64, claim: i64, now: i64) -> anyhow::Result<bool> {
        Ok(self.notify_area().mark_sent(id, claim, now).await?)
    }

    /// Delivery `id` failed for now; try again at `next_attempt_ms`.
    pub async fn mark_retry(
        &self,
        id: i64,
        claim: i64,
        next_attempt_ms: i64,
        error: &str,
    ) -> anyhow::Result<bool> {
        Ok(self
            .notify_area()
            .mark_retry(id, claim, next_attempt_ms, error)
            .await?)
    }

    /// Delivery `id` failed for good: it becomes a dead letter.
    pub async fn mark_dead(
        &self,
        id: i64,
        claim: i64,
        error: &str,
        now: i64,
    ) -> anyhow::Result<bool> {
        Ok(self.notify_area().mark_dead(id, claim, error, now).await?)
    }

    /// The newest `limit` dead letters.
    pub async fn dead_letters(&self, limit: u32) -> anyhow::Result<Vec<DeadLetter>> {
        Ok(self.notify_area().dead_letters(limit).await?)
    }

    /// Forgets finished deliveries, routed outbox rows without pending
    /// deliveries, and incident memory older than [`RETENTION_MS`].
    pub async fn prune_notifications(&self, now: i64) -> anyhow::Result<usize> {
        Ok(self.notify_area().prune_notifications(now).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use outrider_protocol::api::{ReceiverConfig, SmtpTls};
    use rusqlite::params;

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
        store
            .mark_retry(first.id, first.claim.unwrap(), 500, "HTTP 503")
            .await
            .unwrap();
        // Still the head of the queue: a retried trigger holds back its resolve.
        let again = store.next_delivery("ops".into()).await.unwrap().unwrap();
        assert_eq!(
            (again.id, again.attempts, again.next_attempt_ms),
            (first.id, 1, 500)
        );
        store
            .mark_sent(first.id, again.claim.unwrap(), 600)
            .await
            .unwrap();
        let second = store.next_delivery("ops".into()).await.unwrap().unwrap();
        assert_eq!(second.batch_key, "agent/ab@1#2");
        store
            .mark_dead(second.id, second.claim.unwrap(), "HTTP 400: bad", 700)
            .await
            .unwrap();
        assert!(store.next_delivery("ops".into()).await.unwrap().is_none());
        // A late mark of a finished delivery changes nothing.
        assert!(!store.mark_retry(second.id, 0, 900, "late").await.unwrap());

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
        store
            .mark_sent(first.id, first.claim.unwrap(), 0)
            .await
            .unwrap();
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
