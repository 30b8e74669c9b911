//! The cross-node bus over PostgreSQL (rules in `backend/bus.rs`; table
//! in `migrations/0004_bus.sql`).
//!
//! Three parts, each on its own connection use:
//! - senders ([`PgBus::request`], [`PgBus::reply`], [`PgBus::broadcast`])
//!   insert rows with a pooled connection, then only *signal* the target
//!   node in memory;
//! - the notify task turns signals into `NOTIFY`s: at most one per target
//!   node per `COALESCE` ([`plan_notifies`]), all due ones in one
//!   `SELECT pg_notify(…)` statement of their own, so `NOTIFY` (a global
//!   lock at commit) never rides in another transaction and never scales
//!   with the send rate. That statement is the one place the bus notifies
//!   (`Inner::send_notifies`), where [`BusStats`] counts them;
//! - the receive task holds a dedicated connection, not from the pool
//!   (a pooled one would be recycled, and LISTEN fails behind
//!   transaction-pooling proxies), that `LISTEN`s on the node's channel.
//!   It takes the node's rows (`DELETE … RETURNING`, `FOR UPDATE SKIP
//!   LOCKED`) on every notification, every `POLL_INTERVAL`, and at once
//!   after (re)connecting, since notifications sent while it was away are
//!   lost. A lost connection is re-opened with a doubling, jittered
//!   backoff while polling goes on. The same task fails pending requests
//!   whose target node is seen dead and sweeps rows nobody took.
//!
//! Delivery is at most once: a row is deleted as it is taken; a node that
//! dies between taking and answering leaves its callers to their deadline
//! (or to the dead-node check, whichever comes first).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Connection, Row};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{PgBackend, PgTls};
use crate::backend::bus::{
    BROADCAST_TTL, Broadcast, BusConfig, BusError, COALESCE, Incoming, Kind, MAX_ERROR_BYTES,
    POLL_INTERVAL, Request, SWEEP_GRACE_MS, TAKE_BATCH, Topic, admit, channel, expired, liveness,
    next_poll, now_ms, plan_notifies, reconnect_delay,
};
use crate::backend::outage::OutageLog;
use crate::backend::presence::{NODE_SILENCE_MS, NodeId, stored_node};

/// Messages handed to the node and not yet read; when full, the receive
/// task waits (and takes nothing more) until the node catches up.
pub const INCOMING_QUEUE: usize = 1024;
/// The longest a request waits for its reply; longer timeouts are cut
/// to it (its row, and its place among the pending, live that long).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// Distinct nodes with a signal waiting (and notify records kept); more
/// are not signalled (their rows are found by polling).
const MAX_SIGNALLED: usize = 4096;
/// How often the receive task sweeps rows nobody took.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long opening the `LISTEN` connection may take; polling waits
/// meanwhile, so this is short.
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows swept per statement.
const SWEEP_BATCH: i64 = 1000;

/// Where the dedicated `LISTEN` connection goes: the same database as the
/// pool, its own connection.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

/// What a node's bus did, for tests and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    /// `NOTIFY`s sent, one per target node per statement.
    pub notifies: u64,
    /// Per target node: the `NOTIFY`s sent to it.
    pub notified: BTreeMap<NodeId, NotifyRecord>,
    /// Take statements run (notified, polled or after a reconnect).
    pub takes: u64,
    /// Requests and broadcasts handed to the node.
    pub delivered: u64,
    /// Requests and broadcasts taken past their deadline and dropped.
    pub expired_dropped: u64,
    /// Replies that came after their caller stopped waiting.
    pub late_replies: u64,
    /// `LISTEN` connections opened, and lost.
    pub listen_connects: u64,
    pub listen_lost: u64,
}

/// The `NOTIFY`s sent to one node, on the notify task's monotonic clock
/// (ms since the task started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyRecord {
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// The shortest time between two of them (`None`: only one).
    pub min_gap_ms: Option<u64>,
}

/// One node's bus; cheap to clone.
#[derive(Clone)]
pub struct PgBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBus")
            .field("node", &self.inner.node)
            .finish()
    }
}

/// The bus's tasks; [`BusTasks::join`] waits for them to stop (after the
/// shutdown token given to [`PgBus::start`] is cancelled).
#[derive(Debug)]
pub struct BusTasks {
    set: JoinSet<()>,
}

impl BusTasks {
    pub async fn join(mut self) {
        while let Some(r) = self.set.join_next().await {
            if let Err(e) = r {
                warn!("bus task failed: {e}");
            }
        }
    }
}

struct Inner {
    node: NodeId,
    backend: PgBackend,
    config: BusConfig,
    /// Nodes with rows sent to them and no `NOTIFY` yet.
    signals: Mutex<BTreeSet<NodeId>>,
    signalled: Notify,
    pending: Mutex<Pending>,
    stats: Mutex<BusStats>,
    /// Cancelled when the node stops; requests then fail with
    /// `ShuttingDown` instead of waiting for a reply nobody will take.
    shutdown: CancellationToken,
}

/// Requests of this node waiting for their reply.
#[derive(Default)]
struct Pending {
    calls: HashMap<i64, Call>,
    per_node: HashMap<NodeId, usize>,
}

struct Call {
    target: NodeId,
    kind: Kind,
    reply: oneshot::Sender<Result<Vec<u8>, BusError>>,
}

impl Pending {
    fn remove(&mut self, id: i64) -> Option<Call> {
        let call = self.calls.remove(&id)?;
        if let Some(n) = self.per_node.get_mut(&call.target) {
            *n -= 1;
            if *n == 0 {
                self.per_node.remove(&call.target);
            }
        }
        Some(call)
    }
}

/// Removes a request from [`Pending`] however its caller stops waiting
/// (reply, deadline, or the caller's future dropped).
struct PendingGuard<'a> {
    inner: &'a Inner,
    id: i64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(self.id);
    }
}

/// Locks a mutex that is only held for map updates (never across an
/// `.await`, never while panicking), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PgBus {
    /// Starts node `node`'s bus on `backend`'s database: its notify and
    /// receive tasks run until `shutdown` is cancelled. The node must
    /// heartbeat through the presence area (`PresenceStore::heartbeat`) to
    /// be reachable: requests and broadcasts go only to nodes alive there.
    /// Requests and broadcasts for this node arrive on the returned
    /// receiver; answer requests with [`PgBus::reply`].
    pub fn start(
        backend: PgBackend,
        listen: ListenConfig,
        node: NodeId,
        config: BusConfig,
        shutdown: CancellationToken,
    ) -> (PgBus, mpsc::Receiver<Incoming>, BusTasks) {
        let inner = Arc::new(Inner {
            node,
            backend,
            config,
            signals: Mutex::new(BTreeSet::new()),
            signalled: Notify::new(),
            pending: Mutex::new(Pending::default()),
            stats: Mutex::new(BusStats::default()),
            shutdown: shutdown.clone(),
        });
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let mut set = JoinSet::new();
        set.spawn(notify_loop(inner.clone(), shutdown.clone()));
        set.spawn(receive_loop(inner.clone(), listen, tx, shutdown));
        (PgBus { inner }, rx, BusTasks { set })
    }

    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// What the bus did so far.
    pub fn stats(&self) -> BusStats {
        lock(&self.inner.stats).clone()
    }

    /// Sends request `kind` to node `target` and waits for its reply, at
    /// most `timeout` (at most [`MAX_REQUEST_TIMEOUT`]: a row lives until
    /// its deadline). Fails at once when the payload is too large, too
    /// many requests wait on `target`, or `target` is unknown or dead;
    /// later when `target` is seen dead while the request waits
    /// ([`BusError::NodeLost`]), when the deadline passes
    /// ([`BusError::DeadlineExceeded`]; the target will not run it late),
    /// or with the target's own error ([`BusError::Remote`]).
    pub async fn request(
        &self,
        target: &NodeId,
        kind: &Kind,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, BusError> {
        let inner = &*self.inner;
        let timeout = timeout.min(MAX_REQUEST_TIMEOUT);
        let waiting = |p: &Pending| p.per_node.get(target).copied().unwrap_or(0);
        admit(
            &inner.config,
            target,
            payload.len(),
            Some(waiting(&lock(&inner.pending))),
        )?;
        let client = inner.backend.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT last_seen_ms FROM nodes WHERE node_id = $1),
                        nextval(pg_get_serial_sequence('bus_messages', 'id'))",
                &[&target.as_str()],
            )
            .await?;
        let now = now_ms();
        liveness(target, row.get(0), now)?;
        let id: i64 = row.get(1);
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let deadline_ms = now.saturating_add(timeout_ms);
        // Registered before the row exists, so the reply cannot come first.
        let (tx, rx) = oneshot::channel();
        let _guard = {
            let mut pending = lock(&inner.pending);
            admit(&inner.config, target, 0, Some(waiting(&pending)))?;
            pending.calls.insert(
                id,
                Call {
                    target: target.clone(),
                    kind: kind.clone(),
                    reply: tx,
                },
            );
            *pending.per_node.entry(target.clone()).or_default() += 1;
            PendingGuard { inner, id }
        };
        // After registering: the receive task, once stopped, fails every
        // registered call, so a call registered before that is told, and
        // one registered after sees the token cancelled here.
        if inner.shutdown.is_cancelled() {
            return Err(BusError::ShuttingDown);
        }
        client
            .execute(
                "INSERT INTO bus_messages
                     (id, target_node, from_node, class, kind, payload, created_at_ms, deadline_ms)
                 VALUES ($1, $2, $3, 'request', $4, $5, $6, $7)",
                &[
                    &id,
                    &target.as_str(),
                    &inner.node.as_str(),
                    &kind.as_str(),
                    &payload,
                    &now,
                    &deadline_ms,
                ],
            )
            .await?;
        drop(client);
        inner.signal(target);
        let deadline = Instant::now() + timeout;
        tokio::select! {
            reply = rx => reply.unwrap_or(Err(BusError::ShuttingDown)),
            () = tokio::time::sleep_until(deadline) => Err(BusError::DeadlineExceeded {
                node: target.clone(),
                kind: kind.clone(),
                timeout_ms,
            }),
        }
    }

    /// Answers `request` (taken from this node's receiver) with its
    /// result: a payload, or the error text its caller gets as
    /// [`BusError::Remote`] (cut to 4 KiB). Returns `false`, sending
    /// nothing, when the request's deadline has passed (its caller has
    /// stopped waiting). Fails when the payload is too large.
    pub async fn reply(
        &self,
        request: &Request,
        result: Result<&[u8], &str>,
    ) -> Result<bool, BusError> {
        let inner = &*self.inner;
        let now = now_ms();
        if expired(request.deadline_ms, now) {
            return Ok(false);
        }
        let (payload, error): (&[u8], Option<&str>) = match result {
            Ok(p) => (p, None),
            Err(e) => (&[], Some(cut(e, MAX_ERROR_BYTES))),
        };
        admit(&inner.config, &request.from, payload.len(), None)?;
        let client = inner.backend.client().await?;
        client
            .execute(
                "INSERT INTO bus_messages (target_node, from_node, class, kind, request_id,
                     payload, error, created_at_ms, deadline_ms)
                 VALUES ($1, $2, 'reply', $3, $4, $5, $6, $7, $8)",
                &[
                    &request.from.as_str(),
                    &inner.node.as_str(),
                    &request.kind.as_str(),
                    &request.id,
                    &payload,
                    &error,
                    &now,
                    &request.deadline_ms,
                ],
            )
            .await?;
        drop(client);
        inner.signal(&request.from);
        Ok(true)
    }

    /// Sends `topic` to every node alive now (this one included), one row
    /// each; returns how many. A node that joins later does not get it
    /// (it loads the current state when it starts). Fails when the payload
    /// is too large.
    pub async fn broadcast(&self, topic: Topic, payload: &[u8]) -> Result<usize, BusError> {
        let inner = &*self.inner;
        admit(&inner.config, &inner.node, payload.len(), None)?;
        let now = now_ms();
        let deadline_ms = now + BROADCAST_TTL.as_millis() as i64;
        let client = inner.backend.client().await?;
        let rows = client
            .query(
                "INSERT INTO bus_messages
                     (target_node, from_node, class, kind, payload, created_at_ms, deadline_ms)
                 SELECT node_id, $1, 'broadcast', $2, $3, $4, $5 FROM nodes
                 WHERE last_seen_ms >= $6
                 RETURNING target_node",
                &[
                    &inner.node.as_str(),
                    &topic.as_str(),
                    &payload,
                    &now,
                    &deadline_ms,
                    &(now - NODE_SILENCE_MS),
                ],
            )
            .await?;
        drop(client);
        for row in &rows {
            inner.signal(&stored_node(row.get(0))?);
        }
        Ok(rows.len())
    }
}

/// The longest prefix of `s` of at most `max` bytes ending on a character.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Inner {
    /// Asks the notify task to wake `node` (after its row is committed).
    fn signal(&self, node: &NodeId) {
        {
            let mut signals = lock(&self.signals);
            if signals.len() >= MAX_SIGNALLED && !signals.contains(node) {
                return; // found by polling
            }
            signals.insert(node.clone());
        }
        self.signalled.notify_one();
    }

    /// THE call site of `NOTIFY`: one statement notifying `nodes`,
    /// decided at `at_ms` by [`plan_notifies`]; counted in [`BusStats`].
    async fn send_notifies(&self, nodes: &[NodeId], at_ms: u64) -> Result<(), BusError> {
        let channels: Vec<String> = nodes.iter().map(channel).collect();
        let client = self.backend.client().await?;
        client
            .execute(
                "SELECT pg_notify(c, '') FROM unnest($1::text[]) AS c",
                &[&channels],
            )
            .await?;
        let mut stats = lock(&self.stats);
        stats.notifies += nodes.len() as u64;
        for node in nodes {
            if stats.notified.len() >= MAX_SIGNALLED && !stats.notified.contains_key(node) {
                continue;
            }
            let r = stats.notified.entry(node.clone()).or_default();
            if r.count == 0 {
                r.first_ms = at_ms;
            } else {
                let gap = at_ms - r.last_ms;
                r.min_gap_ms = Some(r.min_gap_ms.map_or(gap, |g| g.min(gap)));
            }
            r.count += 1;
            r.last_ms = at_ms;
        }
        Ok(())
    }

    /// Takes every row addressed to this node and hands it on; returns
    /// how many it took. Stops early (`Err(ShuttingDown)`) when the node
    /// stops.
    async fn take_all(
        &self,
        tx: &mpsc::Sender<Incoming>,
        shutdown: &CancellationToken,
    ) -> Result<usize, BusError> {
        let mut taken = 0;
        loop {
            let client = self.backend.client().await?;
            let stmt = client
                .prepare_cached(
                    "DELETE FROM bus_messages WHERE id IN (
                         SELECT id FROM bus_messages WHERE target_node = $1
                         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING id, from_node, class, kind, request_id, payload, error, deadline_ms",
                )
                .await?;
            let mut rows = client
                .query(&stmt, &[&self.node.as_str(), &TAKE_BATCH])
                .await?;
            drop(client);
            lock(&self.stats).takes += 1;
            rows.sort_by_key(|r| r.get::<_, i64>(0));
            let now = now_ms();
            let full = rows.len() as i64 == TAKE_BATCH;
            taken += rows.len();
            for row in rows {
                match self.decode(&row, now) {
                    Ok(Some(incoming)) => tokio::select! {
                        sent = tx.send(incoming) => {
                            sent.map_err(|_| BusError::ShuttingDown)?;
                            lock(&self.stats).delivered += 1;
                        }
                        () = shutdown.cancelled() => return Err(BusError::ShuttingDown),
                    },
                    Ok(None) => {}
                    Err(e) => warn!("bus message {} dropped: {e}", row.get::<_, i64>(0)),
                }
            }
            if !full {
                return Ok(taken);
            }
        }
    }

    /// What a taken row is: something to hand on, or nothing (a reply,
    /// given to its waiting caller here; an expired message, dropped).
    fn decode(&self, row: &Row, now: i64) -> Result<Option<Incoming>, BusError> {
        let id: i64 = row.get(0);
        let from = stored_node(row.get(1))?;
        let class: &str = row.get(2);
        let kind: &str = row.get(3);
        let deadline_ms: i64 = row.get(7);
        let malformed = |what| crate::backend::StoreError::Malformed {
            what,
            value: kind.to_owned(),
        };
        if class == "reply" {
            let request_id: i64 = row.get(4);
            let call = lock(&self.pending).remove(request_id);
            match call {
                Some(call) => {
                    let result = match row.get::<_, Option<String>>(6) {
                        None => Ok(row.get(5)),
                        Some(message) => Err(BusError::Remote {
                            node: from,
                            kind: call.kind,
                            message,
                        }),
                    };
                    let _ = call.reply.send(result); // the caller may have gone
                }
                None => lock(&self.stats).late_replies += 1,
            }
            return Ok(None);
        }
        if expired(deadline_ms, now) {
            lock(&self.stats).expired_dropped += 1;
            return Ok(None);
        }
        let payload: Vec<u8> = row.get(5);
        Ok(Some(match class {
            "request" => Incoming::Request(Request {
                id,
                from,
                kind: kind.parse().map_err(|_| malformed("bus request kind"))?,
                payload,
                deadline_ms,
            }),
            _ => Incoming::Broadcast(Broadcast {
                id,
                from,
                topic: Topic::parse(kind).ok_or_else(|| malformed("bus broadcast topic"))?,
                payload,
            }),
        }))
    }

    /// Fails the pending requests whose target node is dead (or gone from
    /// `nodes`), and deletes their rows: they fail fast instead of at
    /// their deadline.
    async fn fail_lost_targets(&self) -> Result<(), BusError> {
        let targets: Vec<String> = lock(&self.pending)
            .per_node
            .keys()
            .map(|n| n.as_str().to_owned())
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let client = self.backend.client().await?;
        let seen: HashMap<String, i64> = client
            .query(
                "SELECT node_id, last_seen_ms FROM nodes WHERE node_id = ANY($1)",
                &[&targets],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let now = now_ms();
        // Taken out of `pending` first (a reply now finds no caller), the
        // rows deleted, then the callers told: when a caller sees the
        // error, nothing of its request is left.
        let mut failed = Vec::new();
        {
            let mut pending = lock(&self.pending);
            let ids: Vec<i64> = pending.calls.keys().copied().collect();
            for id in ids {
                let target = &pending.calls[&id].target;
                // A call to a node not asked about (registered since) waits
                // for the next round.
                if !targets.iter().any(|t| t == target.as_str()) {
                    continue;
                }
                if let Err(e) = liveness(target, seen.get(target.as_str()).copied(), now)
                    && let Some(call) = pending.remove(id)
                {
                    failed.push((id, call, e));
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = failed.iter().map(|(id, ..)| *id).collect();
        let deleted = client
            .execute("DELETE FROM bus_messages WHERE id = ANY($1)", &[&ids])
            .await;
        for (_, call, e) in failed {
            let _ = call.reply.send(Err(e)); // the caller may have gone
        }
        deleted?;
        Ok(())
    }

    /// Deletes rows whose deadline passed `SWEEP_GRACE_MS` ago: their
    /// target died before taking them (a live target drops its expired
    /// rows as it takes them).
    async fn sweep(&self) -> Result<u64, BusError> {
        let client = self.backend.client().await?;
        Ok(client
            .execute(
                "DELETE FROM bus_messages WHERE id IN (
                     SELECT id FROM bus_messages WHERE deadline_ms < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&(now_ms() - SWEEP_GRACE_MS), &SWEEP_BATCH],
            )
            .await?)
    }
}

/// The notify task: turns signals into coalesced `NOTIFY`s.
async fn notify_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let start = Instant::now();
    let coalesce_ms = COALESCE.as_millis() as u64;
    let mut last: BTreeMap<NodeId, u64> = BTreeMap::new();
    loop {
        let now = start.elapsed().as_millis() as u64;
        // Nodes notified long enough ago no longer hold anything back.
        last.retain(|_, t| now < *t + coalesce_ms);
        let waiting = lock(&inner.signals).clone();
        let plan = plan_notifies(&waiting, &last, now, coalesce_ms);
        if !plan.now.is_empty() {
            {
                let mut signals = lock(&inner.signals);
                for n in &plan.now {
                    signals.remove(n);
                }
            }
            // On failure the rows are still found by polling.
            if let Err(e) = inner.send_notifies(&plan.now, now).await {
                warn!("bus NOTIFY failed (nodes will find their messages by polling): {e}");
            }
            for n in plan.now {
                last.insert(n, now);
            }
            continue;
        }
        let wake_at = plan.wake_at_ms.map(|ms| start + Duration::from_millis(ms));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = inner.signalled.notified() => {}
            () = sleep_until_some(wake_at) => {}
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The dedicated `LISTEN` connection; `lost` completes, with the reason,
/// when the connection ends.
struct Listener {
    _client: tokio_postgres::Client,
    lost: Pin<Box<dyn Future<Output = String> + Send>>,
}

impl Listener {
    async fn connect(
        listen: &ListenConfig,
        node: &NodeId,
        wake: Arc<Notify>,
    ) -> Result<Listener, BusError> {
        let mut config = listen.config.clone();
        config.application_name(format!("outrider-bus-{node}"));
        match &listen.tls {
            PgTls::Disable => {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                Listener::listen(client, conn, node, wake).await
            }
            PgTls::Rustls(tls) => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, conn) = config.connect(make).await?;
                Listener::listen(client, conn, node, wake).await
            }
        }
    }

    async fn listen<S, T>(
        client: tokio_postgres::Client,
        conn: Connection<S, T>,
        node: &NodeId,
        wake: Arc<Notify>,
    ) -> Result<Listener, BusError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut lost: Pin<Box<dyn Future<Output = String> + Send>> = Box::pin(drive(conn, wake));
        // The channel is a checked node id, quoted: no injection.
        let sql = format!("LISTEN \"{}\"", channel(node));
        tokio::select! {
            r = client.batch_execute(&sql) => r?,
            reason = &mut lost => return Err(BusError::ListenLost(reason)),
        }
        Ok(Listener {
            _client: client,
            lost,
        })
    }
}

/// Drives the `LISTEN` connection: each notification wakes the receive
/// task (a `Notify` holds one wake-up however many arrive).
async fn drive<S, T>(mut conn: Connection<S, T>, wake: Arc<Notify>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match futures_util::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
            Some(Ok(_)) => {}
            Some(Err(e)) => return e.to_string(),
            None => return "closed".to_owned(),
        }
    }
}

/// The receive task; when it stops, the requests still waiting fail with
/// `ShuttingDown` (their replies can no longer be taken).
async fn receive_loop(
    inner: Arc<Inner>,
    listen: ListenConfig,
    tx: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    receive(&inner, listen, tx, shutdown).await;
    let mut pending = lock(&inner.pending);
    pending.calls.clear();
    pending.per_node.clear();
}

/// Keeps the `LISTEN` connection, takes this node's messages, fails
/// requests to dead nodes, sweeps; until `shutdown`.
async fn receive(
    inner: &Inner,
    listen: ListenConfig,
    tx: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let mut listener: Option<Listener> = None;
    let mut attempt = 0u32;
    let mut reconnect_at = Instant::now();
    let mut next_sweep = Instant::now();
    let mut last_took: Option<Instant> = None;
    let mut next_check = Instant::now();
    let (taking, checking, sweeping, listening) = (
        OutageLog::default(),
        OutageLog::default(),
        OutageLog::default(),
        OutageLog::default(),
    );
    loop {
        if listener.is_none() && Instant::now() >= reconnect_at {
            let connect = Listener::connect(&listen, &inner.node, wake.clone());
            let connected = tokio::time::timeout(LISTEN_CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| {
                    Err(BusError::ListenLost(format!(
                        "no connection within {LISTEN_CONNECT_TIMEOUT:?}"
                    )))
                });
            match connected {
                Ok(l) => {
                    listening.ok("bus: the LISTEN connection");
                    listener = Some(l);
                    attempt = 0;
                    lock(&inner.stats).listen_connects += 1;
                }
                Err(e) => {
                    let delay = crate::metrics::graphite::jittered(reconnect_delay(attempt));
                    listening.failed(
                        "bus: the LISTEN connection (polling meanwhile)",
                        &format!("{e}; next try in {delay:?}"),
                    );
                    reconnect_at = Instant::now() + delay;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        // Right after a (re)connect this is the re-poll: what was notified
        // while no connection listened is found here.
        let took = match inner.take_all(&tx, &shutdown).await {
            Err(BusError::ShuttingDown) => return,
            Err(e) => {
                taking.failed("bus: taking messages", &e);
                0
            }
            Ok(n) => {
                taking.ok("bus: taking messages");
                n
            }
        };
        // Not at every busy take: every poll interval is soon enough.
        if Instant::now() >= next_check {
            next_check = Instant::now() + inner.config.poll_interval.min(POLL_INTERVAL);
            match inner.fail_lost_targets().await {
                Ok(_) => {
                    checking.ok("bus: checking target nodes");
                }
                Err(e) => {
                    checking.failed("bus: checking target nodes", &e);
                }
            }
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + SWEEP_EVERY;
            match inner.sweep().await {
                Ok(_) => {
                    sweeping.ok("bus: sweeping expired messages");
                }
                Err(e) => {
                    sweeping.failed("bus: sweeping expired messages", &e);
                }
            }
        }
        if took > 0 {
            last_took = Some(Instant::now());
        }
        let since_took = last_took.map(|t| t.elapsed());
        let mut poll_at = Instant::now() + next_poll(since_took, &inner.config);
        if listener.is_none() {
            // Wake for the reconnect too (its re-poll follows it).
            poll_at = poll_at.min(reconnect_at);
        }
        let lost = async {
            match listener.as_mut() {
                Some(l) => Some((&mut l.lost).await),
                None => std::future::pending().await,
            }
        };
        let lost = tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => None,
            () = tokio::time::sleep_until(poll_at) => None,
            reason = lost => reason,
        };
        if let Some(reason) = lost {
            warn!("bus LISTEN connection lost: {reason}; reconnecting");
            listener = None;
            lock(&inner.stats).listen_lost += 1;
            reconnect_at = Instant::now() + reconnect_delay(attempt);
            attempt = attempt.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests;
