//! The driver of the alert engine ([`outrider_alerting`]): one [`Engine`]
//! per server, fed committed results (from [`crate::ingest`]), presence
//! (from [`crate::agent_ws`]), update outcomes (stored with their results)
//! and operators' silences (REST, [`api`]), and ticked by [`run`].
//!
//! Durability, as `alerting/src/lib.rs` ("How the server drives it") asks:
//! every `Action::Notify` becomes one `alert_outbox` row
//! ([`crate::store::OutboxBatch`]) written **in the same transaction** as
//! the engine's new state. Between notifications the state is written at
//! most every [`SAVE_EVERY`] when something changed, and once more at
//! shutdown. If a write fails, the rows wait in memory (in order) and go
//! out with the next write, so the stored state is never ahead of the
//! outbox; a row written twice (same `batch_key`) is stored once. After a
//! crash, the latest result of each check received since the stored state
//! is handed to the engine again (`missed_results`).
//!
//! The engine sits behind an async mutex held for one engine call and, when
//! that call decided a notification, for the write that makes it durable:
//! decisions reach the store in the order they were made.
//!
//! Goodbyes: the agent library says Goodbye whenever it stops, also for a
//! hot swap or a rolling upgrade, and is back within moments. So a Goodbye
//! reaches the engine as a deregistration only when the agent has not come
//! back within the goodbye grace (`--alert-goodbye-grace-ms`, 30 s): a swap
//! then neither resolves a notified incident nor opens it again. An agent
//! is down only after `down_for` (minutes), so the wait hides nothing. At
//! shutdown the waiting Goodbyes are handed over; after a crash they come
//! back from the agents table.
//!
//! Presence races: a session that ends reports its loss after the store
//! call that records it, so a reconnect can overtake it. Each presence
//! event carries its session id (increasing, [`crate::sessions`]); a loss
//! of an older session than the latest opened one is ignored, otherwise a
//! hot swap could leave a connected agent counted as lost (and later down).
//!
//! Across nodes (several nodes sharing a PostgreSQL `--database`): each
//! node sees only its own agents' results and sessions, so no node's
//! [`Alerts`] holds an engine except on the node leading
//! `Job::AlertEvaluation` (`backend/leader.rs`, run by [`lead`] through
//! `cluster::singleton_with_term`). Every node, the leader too, appends what it
//! observes to the shared log of inputs ([`Input`], one row per call,
//! `backend/postgres/alert_inputs.rs`) through its [`Appender`], which keeps
//! them in order and retries while the database is away. The leader
//! restores the engine as a restart does (stored state, the deregistered
//! reconcile, the restart grace), marks the agents whose shared session
//! is up as connected under that session's generation (their sessions did
//! not end with the previous leader, unlike a restart's), then replays the
//! log from its start and every tick applies what follows through the
//! same calls as one node does. Sessions are identified by their shared
//! generation (`agent_ws.rs`), so a loss reported by the node an agent
//! left is older than the session it opened on its new node and ignored
//! ("Presence races" above). Its saves are fenced by its term and delete,
//! in the same transaction, the log rows the saved state has seen: the
//! log is exactly what the stored state lacks, so a new leader replays it
//! whole and nothing is applied twice or lost. That replaces
//! `missed_results`, which reads this node's results only. Reads and
//! silences asked of another node go to the leader over the bus
//! ([`remote`]).

pub mod api;
pub mod remote;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use outrider_alerting::config::GateRule;
use outrider_alerting::{Action, Config, Engine, Event, Notification, State, Status};
use outrider_protocol::api::{CheckInfo, Presence};
use outrider_protocol::{CheckResult, CheckState, Fingerprint};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::AppState;
use crate::backend::PgBackend;
use crate::backend::StoreError;
use crate::backend::leader::LeaderTerm;
use crate::backend::postgres::alert_inputs::{Cursor, MAX_INPUT_BYTES, READ_BATCH};
use crate::store::{OutboxBatch, Store, now_ms};

/// Longest time between two state writes while something changed.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// Default period of [`run`]'s ticks: the resolution of every timer
/// (`group_wait`, `down_for`, duration gates).
pub const DEFAULT_TICK_MS: u64 = 1000;
/// Default wait of a Goodbye for the agent to come back (see "Goodbyes").
pub const DEFAULT_GOODBYE_GRACE_MS: u64 = 30_000;
/// Inputs a node keeps for the shared log while the database is away;
/// more are dropped, with a warning.
pub const MAX_WAITING_INPUTS: usize = 10_000;
/// How often each node deletes log rows nobody consumed for an hour.
pub const TRIM_EVERY: Duration = Duration::from_secs(300);
/// Longest wait between two appends of one input the database refused.
const APPEND_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a stopping node spends appending what is still queued.
const APPEND_DRAIN: Duration = Duration::from_secs(2);
/// Inputs a node appends to the shared log in one statement at most, and
/// their bytes: a fleet reporting at once costs a commit per batch, not
/// per input.
const APPEND_BATCH: usize = 512;
const APPEND_BATCH_BYTES: usize = 1024 * 1024;
/// Wait before a leader tries again to restore the engine.
const LEAD_RETRY: Duration = Duration::from_secs(1);

/// The engine and what has not been stored yet.
#[derive(Debug)]
struct Inner {
    engine: Engine,
    /// Decided notifications not yet committed, oldest first.
    pending: Vec<OutboxBatch>,
    /// The state changed since it was last stored.
    dirty: bool,
    saved_at: Instant,
    /// The latest session id opened per agent (see "Presence races").
    sessions: HashMap<String, u64>,
    /// Goodbyes not yet handed to the engine, with when they will be.
    goodbyes: HashMap<String, u64>,
    /// Across nodes, on the leader: the last row of the shared log the
    /// engine has seen; a save deletes the rows up to it.
    cursor: Option<Cursor>,
}

impl Inner {
    fn new(engine: Engine) -> Inner {
        Inner {
            engine,
            pending: Vec::new(),
            dirty: false,
            saved_at: Instant::now(),
            sessions: HashMap::new(),
            goodbyes: HashMap::new(),
            cursor: None,
        }
    }
}

/// Where an [`Alerts`] sends what it observes.
#[derive(Debug)]
enum Route {
    /// One node: this [`Alerts`] holds the engine.
    Engine,
    /// Several nodes: to the shared log; the engine, while this node
    /// leads, is another [`Alerts`] ([`Shared::leading`]).
    Log(Arc<Shared>),
    /// The leader's engine: saves fenced by `term`, consuming the log;
    /// `fenced` is cancelled when a save was refused (another node took
    /// over), which ends [`lead`].
    Leader {
        pg: PgBackend,
        term: LeaderTerm,
        fenced: CancellationToken,
    },
}

/// A node's side of the shared log.
#[derive(Debug)]
struct Shared {
    pg: PgBackend,
    appends: mpsc::Sender<String>,
    /// The engine while this node leads alert evaluation.
    leading: std::sync::Mutex<Option<Arc<Alerts>>>,
}

/// One row of the shared log: what one call on a node observed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// A committed result batch of an agent, as engine events (results
    /// and the update outcomes they carry).
    Events { events: Vec<Event> },
    /// A session of `agent`, by its shared generation.
    Presence {
        agent: Fingerprint,
        session: u64,
        what: SessionEvent,
        tags: Vec<String>,
    },
    /// The agent was removed by an operator.
    Removed { agent: Fingerprint },
    /// Check definitions changed: the leader reads them from the store.
    ChecksChanged,
}

/// The rows of `input`, each at most [`MAX_INPUT_BYTES`]: a result batch
/// too large for one is split; an event too large alone is dropped
/// (summaries are bounded well below it).
pub fn input_rows(input: &Input) -> Vec<String> {
    let Ok(json) = serde_json::to_string(input) else {
        return Vec::new();
    };
    if json.len() <= MAX_INPUT_BYTES {
        return vec![json];
    }
    match input {
        Input::Events { events } if events.len() > 1 => {
            let (a, b) = events.split_at(events.len() / 2);
            let mut rows = input_rows(&Input::Events { events: a.to_vec() });
            rows.extend(input_rows(&Input::Events { events: b.to_vec() }));
            rows
        }
        _ => {
            warn!(
                bytes = json.len(),
                "an alert input too large for the shared log was dropped"
            );
            Vec::new()
        }
    }
}

/// The alerting side's shared state: one field of [`crate::AppState`].
#[derive(Debug)]
pub struct Alerts {
    /// `None` on a node that only appends to the shared log.
    inner: Mutex<Option<Inner>>,
    route: Route,
    store: Store,
    /// The settings before check definitions add their rules.
    base: Config,
    /// How long a Goodbye waits for the agent to come back before it is a
    /// deregistration (see "Goodbyes" above).
    goodbye_grace_ms: u64,
    /// Rung after new outbox rows are committed, so they are routed at once
    /// rather than at the notifier's next poll.
    queued: Arc<Notify>,
    /// False under `--no-alerting` (see [`Alerts::disabled`]).
    enabled: bool,
}

/// Presence of one session, as [`Alerts::presence`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEvent {
    /// Welcomed; the engine learns the agent's tags.
    Opened,
    /// Ended without a Goodbye.
    Lost,
    /// Ended with a Goodbye: never an outage.
    Goodbye,
}

/// Reads the alerting settings file (JSON of [`outrider_alerting::Config`]).
///
/// Fails with a sentence naming the file when it cannot be read, is not
/// valid JSON of the settings, or a value is out of range.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the alerting settings {}", path.display()))?;
    let config: Config = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid alerting settings", path.display()))?;
    config
        .validate()
        .with_context(|| format!("{}", path.display()))?;
    Ok(config)
}

impl Alerts {
    /// Resumes the engine from the stored state (or starts a fresh one)
    /// for a server that started at `started_ms`; `queued` is rung after
    /// each commit that added outbox rows.
    ///
    /// Fails when the store fails, the stored state cannot be read, or
    /// `config` is invalid.
    pub async fn start(
        store: Store,
        base: Config,
        goodbye_grace: Duration,
        started_ms: u64,
        queued: Arc<Notify>,
    ) -> anyhow::Result<Alerts> {
        let checks = store.checks().await?;
        let config = engine_config(&base, &checks).context("the alert rules of the checks")?;
        let (engine, missed) = match store.alert_state().await? {
            Some(json) => {
                let state: State = serde_json::from_str(&json)
                    .context("the stored alerting state is not readable")?;
                let missed = missed_results(&store, state.now_ms).await?;
                (Engine::restore(config, state, started_ms)?, missed)
            }
            None => (Engine::new(config, started_ms)?, Vec::new()),
        };
        let deregistered: Vec<String> = store
            .agents()
            .await?
            .into_iter()
            .filter(|a| a.presence == Presence::Deregistered)
            .map(|a| a.fingerprint.to_string())
            .collect();
        let alerts = Alerts {
            inner: Mutex::new(Some(Inner::new(engine))),
            route: Route::Engine,
            store,
            base,
            goodbye_grace_ms: u64::try_from(goodbye_grace.as_millis()).unwrap_or(u64::MAX),
            queued,
            enabled: true,
        };
        alerts.reconcile(deregistered).await;
        alerts.observe(missed).await;
        Ok(alerts)
    }

    /// This node's side of alerting across nodes sharing `pg`: nothing is
    /// decided here unless the node leads ([`lead`]); what it observes is
    /// handed to the returned [`Appender`], which the caller runs.
    pub fn shared(
        store: Store,
        pg: PgBackend,
        base: Config,
        goodbye_grace: Duration,
        queued: Arc<Notify>,
    ) -> (Alerts, Appender) {
        let (tx, rx) = mpsc::channel(MAX_WAITING_INPUTS);
        let alerts = Alerts {
            inner: Mutex::new(None),
            route: Route::Log(Arc::new(Shared {
                pg: pg.clone(),
                appends: tx,
                leading: std::sync::Mutex::new(None),
            })),
            store,
            base,
            goodbye_grace_ms: u64::try_from(goodbye_grace.as_millis()).unwrap_or(u64::MAX),
            queued,
            enabled: true,
        };
        (alerts, Appender { pg, rx })
    }

    /// Whether observations go to the shared log (several nodes).
    pub fn is_shared(&self) -> bool {
        matches!(self.route, Route::Log(_))
    }

    /// The engine, when this node holds one: always on one node; across
    /// nodes, while it leads alert evaluation.
    pub fn engine(self: &Arc<Self>) -> Option<Arc<Alerts>> {
        match &self.route {
            Route::Log(shared) => shared
                .leading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            Route::Engine | Route::Leader { .. } => Some(self.clone()),
        }
    }

    /// Queues `input` for the shared log; dropped with a warning when
    /// [`MAX_WAITING_INPUTS`] wait already (the database is away). Nothing
    /// under `--no-alerting`, where no appender runs.
    fn append(&self, shared: &Shared, input: &Input) {
        if !self.enabled {
            return;
        }
        for row in input_rows(input) {
            if let Err(e) = shared.appends.try_send(row) {
                warn!("an alert input was dropped: {e}");
            }
        }
    }

    /// The leader's engine for `term`: restored as a restart does, then
    /// every agent whose shared session is up is connected again under its
    /// generation (a handover ends no session). The log is replayed by
    /// [`lead`].
    async fn start_leader(&self, shared: &Shared, term: LeaderTerm) -> anyhow::Result<Alerts> {
        let checks = self.store.checks().await?;
        let config = engine_config(&self.base, &checks).context("the alert rules of the checks")?;
        let now = now_ms_u64();
        let engine = match self.store.alert_state().await? {
            Some(json) => {
                let state: State = serde_json::from_str(&json)
                    .context("the stored alerting state is not readable")?;
                Engine::restore(config, state, now)?
            }
            None => Engine::new(config, now)?,
        };
        let agents = self.store.agents().await?;
        let up = shared.pg.up_sessions().await?;
        let leader = Alerts {
            inner: Mutex::new(Some(Inner::new(engine))),
            route: Route::Leader {
                pg: shared.pg.clone(),
                term,
                fenced: CancellationToken::new(),
            },
            store: self.store.clone(),
            base: self.base.clone(),
            goodbye_grace_ms: self.goodbye_grace_ms,
            queued: self.queued.clone(),
            enabled: true,
        };
        let deregistered = agents
            .iter()
            .filter(|a| a.presence == Presence::Deregistered)
            .map(|a| a.fingerprint.to_string())
            .collect();
        leader.reconcile(deregistered).await;
        let tags: HashMap<&Fingerprint, &Vec<String>> =
            agents.iter().map(|a| (&a.fingerprint, &a.tags)).collect();
        for (agent, generation) in up {
            let tags = tags.get(&agent).map(|t| t.to_vec()).unwrap_or_default();
            leader
                .presence(&agent, generation, SessionEvent::Opened, tags)
                .await;
        }
        Ok(leader)
    }

    /// Applies the rows of the shared log after the cursor, each under
    /// the lock that moves the cursor past it, so a save covers exactly the
    /// rows its state has seen. Stops at a store failure (the row waits).
    async fn catch_up(&self) {
        let Route::Leader { pg, .. } = &self.route else {
            return;
        };
        loop {
            let cursor = match self.inner.lock().await.as_ref() {
                Some(inner) => inner.cursor,
                None => return,
            };
            let rows = match pg.alert_inputs_after(cursor).await {
                Ok(rows) => rows,
                Err(e) => {
                    warn!("reading the shared alert inputs failed (retried next tick): {e}");
                    return;
                }
            };
            let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= READ_BATCH;
            for row in rows {
                let input = match serde_json::from_str::<Input>(&row.input) {
                    Ok(input) => input,
                    Err(e) => {
                        warn!("an unreadable alert input was skipped: {e}");
                        self.with_inner(|inner| inner.cursor = Some(row.at)).await;
                        continue;
                    }
                };
                let checks = match &input {
                    Input::ChecksChanged => match self.store.checks().await {
                        Ok(checks) => Some(checks),
                        Err(e) => {
                            warn!("reading the checks failed (retried next tick): {e:#}");
                            return;
                        }
                    },
                    _ => None,
                };
                let mut guard = self.inner.lock().await;
                let Some(inner) = guard.as_mut() else { return };
                // Before applying: a save the input causes covers it.
                inner.cursor = Some(row.at);
                match input {
                    Input::Events { events } => self.apply(inner, events).await,
                    Input::Presence {
                        agent,
                        session,
                        what,
                        tags,
                    } => self.presence_in(inner, &agent, session, what, tags).await,
                    Input::Removed { agent } => self.removed_in(inner, &agent).await,
                    Input::ChecksChanged => {
                        let checks = checks.unwrap_or_default();
                        match self.config_with(&checks) {
                            Ok(config) => {
                                if let Err(e) = inner.engine.reconfigure(config) {
                                    warn!("the new alert rules were refused: {e}");
                                }
                            }
                            Err(e) => warn!("the new alert rules were refused: {e}"),
                        }
                        inner.dirty = true;
                    }
                }
            }
            if !full {
                return;
            }
        }
    }

    async fn with_inner(&self, f: impl FnOnce(&mut Inner)) {
        if let Some(inner) = self.inner.lock().await.as_mut() {
            f(inner);
        }
    }

    /// Switches the engine off (`--no-alerting`): results and presence are
    /// not handed to it and [`run`] returns at once, so nothing is decided
    /// and the stored state stays as it was. It exists to measure what
    /// alerting costs next to a server without it (`bench/alerting.sh`);
    /// an operator who wants quiet adds a silence.
    pub fn disabled(mut self) -> Alerts {
        self.enabled = false;
        self
    }

    /// The store, not the engine state, is the truth about Goodbyes: the
    /// state is written only every few seconds between notifications, so a
    /// crash can lose a deregistration that `agents` committed. Replaying
    /// them keeps an agent that left cleanly from being called down after
    /// the restart grace. Deregistering again is a no-op.
    async fn reconcile(&self, deregistered: Vec<String>) {
        let events = deregistered
            .into_iter()
            .map(|agent| Event::Deregistered { agent })
            .collect();
        self.observe(events).await;
    }

    /// The engine's settings with `checks`' rules, checked.
    ///
    /// # Errors
    /// [`outrider_alerting::Error::InvalidConfig`] naming the bad rule.
    pub fn config_with(&self, checks: &[CheckInfo]) -> Result<Config, outrider_alerting::Error> {
        engine_config(&self.base, checks)
    }

    /// Applies the alert rules of the check definitions (after a change).
    ///
    /// # Errors
    /// As [`Alerts::config_with`]; the rules in force stay then.
    pub async fn set_checks(&self, checks: &[CheckInfo]) -> Result<(), outrider_alerting::Error> {
        let config = self.config_with(checks)?;
        if let Route::Log(shared) = &self.route {
            // The leader reads the definitions from the store.
            self.append(shared, &Input::ChecksChanged);
            return Ok(());
        }
        match self.inner.lock().await.as_mut() {
            Some(inner) => inner.engine.reconfigure(config),
            None => Ok(()),
        }
    }

    /// Hands committed results of agent `fp` to the engine, each at its
    /// own time; update outcomes they carry become update events.
    pub async fn results(&self, fp: &Fingerprint, results: &[CheckResult]) {
        if !self.enabled {
            return;
        }
        let events = result_events(fp, results);
        if let Route::Log(shared) = &self.route {
            self.append(shared, &Input::Events { events });
            return;
        }
        self.observe(events).await;
    }

    /// Presence of session `id` of agent `fp` (with its effective tags on
    /// [`SessionEvent::Opened`]); `id` is the session's shared generation
    /// across nodes, this node's session id on one.
    pub async fn presence(&self, fp: &Fingerprint, id: u64, what: SessionEvent, tags: Vec<String>) {
        if !self.enabled {
            return;
        }
        if let Route::Log(shared) = &self.route {
            let input = Input::Presence {
                agent: fp.clone(),
                session: id,
                what,
                tags,
            };
            self.append(shared, &input);
            return;
        }
        let mut guard = self.inner.lock().await;
        if let Some(inner) = guard.as_mut() {
            self.presence_in(inner, fp, id, what, tags).await;
        }
    }

    async fn presence_in(
        &self,
        inner: &mut Inner,
        fp: &Fingerprint,
        id: u64,
        what: SessionEvent,
        tags: Vec<String>,
    ) {
        let agent = fp.to_string();
        let latest = inner.sessions.get(&agent).copied();
        if latest.is_some_and(|latest| latest > id) {
            debug!(fingerprint = %fp, session = id, "presence of a replaced session ignored");
            return;
        }
        inner.sessions.insert(agent.clone(), id);
        let waiting = inner.goodbyes.remove(&agent).is_some();
        let event = match what {
            SessionEvent::Opened => Event::SessionOpened { agent, tags },
            SessionEvent::Lost => Event::SessionLost { agent },
            SessionEvent::Goodbye => {
                let due = now_ms_u64().saturating_add(self.goodbye_grace_ms);
                inner.goodbyes.insert(agent, due);
                return;
            }
        };
        if waiting {
            debug!(fingerprint = %fp, "back within the goodbye grace: not a deregistration");
        }
        self.apply(inner, vec![event]).await;
    }

    /// Agent `fp` was removed by an operator: deregistered at once (its
    /// incidents resolve, nothing alerts), whatever its sessions did.
    pub async fn removed(&self, fp: &Fingerprint) {
        if let Route::Log(shared) = &self.route {
            self.append(shared, &Input::Removed { agent: fp.clone() });
            return;
        }
        let mut guard = self.inner.lock().await;
        if let Some(inner) = guard.as_mut() {
            self.removed_in(inner, fp).await;
        }
    }

    async fn removed_in(&self, inner: &mut Inner, fp: &Fingerprint) {
        let agent = fp.to_string();
        inner.goodbyes.remove(&agent);
        self.apply(inner, vec![Event::Deregistered { agent }]).await;
    }
}

/// The engine events of committed results of agent `fp`, each at its own
/// time; update outcomes they carry become update events.
fn result_events(fp: &Fingerprint, results: &[CheckResult]) -> Vec<Event> {
    let mut events = Vec::with_capacity(results.len());
    for r in results {
        events.push(Event::CheckResult {
            agent: fp.to_string(),
            check: r.check.clone(),
            status: status(r.state),
            summary: r.summary.clone(),
            at_ms: u64::try_from(r.started_at_ms).unwrap_or(0),
        });
        let update = r.update_event.as_deref();
        if let Some((u, outcome)) = update.and_then(|u| Some((u, update_outcome(u)?))) {
            events.push(Event::Update {
                agent: fp.to_string(),
                outcome,
                detail: update_detail(u),
            });
        }
    }
    events
}

impl Alerts {
    /// Hands the Goodbyes whose grace is over (all of them with `all`) to
    /// the engine as deregistrations.
    async fn deregister_due(&self, inner: &mut Inner, all: bool) {
        let now = now_ms_u64();
        let due: Vec<String> = inner
            .goodbyes
            .iter()
            .filter(|(_, at)| all || **at <= now)
            .map(|(agent, _)| agent.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        inner.goodbyes.retain(|agent, _| !due.contains(agent));
        let events = due
            .into_iter()
            .map(|agent| Event::Deregistered { agent })
            .collect();
        self.apply(inner, events).await;
    }

    /// Hands events to the engine; they are not operator input, so they
    /// cannot fail (an error would be an engine bug, logged).
    async fn observe(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut guard = self.inner.lock().await;
        if let Some(inner) = guard.as_mut() {
            self.apply(inner, events).await;
        }
    }

    async fn apply(&self, inner: &mut Inner, events: Vec<Event>) {
        let now = now_ms_u64();
        let mut notified = false;
        for event in events {
            match inner.engine.handle(event, now) {
                Ok(actions) => notified |= record(inner, actions),
                Err(e) => warn!("the alert engine refused an event: {e}"),
            }
        }
        inner.dirty = true;
        if notified {
            self.save(inner).await;
        }
    }

    /// An operator's request (silences): applied, then stored at once.
    /// Returns the engine's actions; its error is the operator's mistake.
    ///
    /// Across nodes, on a node not holding the engine (see [`Alerts::engine`]
    /// and [`remote`]), nothing is applied: `Ok` with no actions.
    pub async fn operator(&self, event: Event) -> Result<Vec<Action>, outrider_alerting::Error> {
        let mut guard = self.inner.lock().await;
        let Some(inner) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let actions = inner.engine.handle(event, now_ms_u64())?;
        record(inner, actions.clone());
        inner.dirty = true;
        self.save(inner).await;
        Ok(actions)
    }

    /// Reads the engine (for the REST API), holding the lock only for `f`;
    /// `None` on a node not holding the engine (see [`Alerts::engine`]).
    pub async fn read<R>(&self, f: impl FnOnce(&Engine) -> R) -> Option<R> {
        self.inner
            .lock()
            .await
            .as_ref()
            .map(|inner| f(&inner.engine))
    }

    /// One tick at the server's clock; stores what must be.
    async fn tick(&self) {
        let mut guard = self.inner.lock().await;
        let Some(inner) = guard.as_mut() else { return };
        self.deregister_due(inner, false).await;
        let actions = inner.engine.tick(now_ms_u64());
        if !actions.is_empty() {
            inner.dirty = true;
        }
        let notified = record(inner, actions);
        let due = inner.dirty && inner.saved_at.elapsed() >= SAVE_EVERY;
        if notified || !inner.pending.is_empty() || due {
            self.save(inner).await;
        }
    }

    /// Stores the state with every pending row; on failure both wait for
    /// the next save.
    async fn save(&self, inner: &mut Inner) {
        let json = match serde_json::to_string(inner.engine.state()) {
            Ok(json) => json,
            Err(e) => {
                warn!("cannot serialize the alerting state: {e}");
                return;
            }
        };
        let saved = match &self.route {
            Route::Leader { pg, term, fenced } => {
                let saved = pg
                    .save_alerts_consuming(
                        term,
                        json,
                        inner.pending.clone(),
                        now_ms(),
                        inner.cursor,
                    )
                    .await;
                if let Err(StoreError::Fenced { .. }) = &saved {
                    // Another node leads now: this engine must stop.
                    fenced.cancel();
                }
                saved.map_err(anyhow::Error::from)
            }
            Route::Engine | Route::Log(_) => {
                self.store.save_alerts(json, inner.pending.clone()).await
            }
        };
        match saved {
            Ok(new) => {
                if new > 0 {
                    info!(rows = new, "alert notifications queued in the outbox");
                    self.queued.notify_one();
                }
                inner.pending.clear();
                inner.dirty = false;
                inner.saved_at = Instant::now();
            }
            Err(e) => warn!(
                pending = inner.pending.len(),
                "storing the alerting state failed; retrying at the next tick: {e:#}"
            ),
        }
    }
}

/// Ticks `alerts` every `tick` until `shutdown`, then stores the state.
///
/// Across nodes it returns at once: [`lead`] ticks the leader's engine.
pub async fn run(alerts: Arc<Alerts>, tick: Duration, shutdown: CancellationToken) {
    if !alerts.enabled || alerts.is_shared() {
        return;
    }
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => alerts.tick().await,
        }
    }
    let mut guard = alerts.inner.lock().await;
    let Some(inner) = guard.as_mut() else { return };
    // The agents table already says they left: the state should too.
    alerts.deregister_due(inner, true).await;
    if inner.dirty || !inner.pending.is_empty() {
        alerts.save(inner).await;
    }
}

/// Alert evaluation on the node leading it under `term` (across nodes,
/// run by `cluster::singleton`), until `cancel` or until a save is fenced:
/// restores the engine (`Alerts::start_leader`, retried while the store
/// fails), then every `tick` applies the shared log and ticks the engine.
/// At the end the state is saved (unless fenced) and the engine dropped;
/// waiting Goodbyes are not forced through, the next leader finds them
/// in the agents table.
pub async fn lead(state: Arc<AppState>, term: LeaderTerm, cancel: CancellationToken) {
    let front = state.alerts.clone();
    let Route::Log(shared) = &front.route else {
        return;
    };
    if !front.enabled {
        return;
    }
    let leader = loop {
        match front.start_leader(shared, term.clone()).await {
            Ok(leader) => break Arc::new(leader),
            Err(e) => warn!("restoring alert evaluation failed (retried): {e:#}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LEAD_RETRY) => {}
        }
    };
    let Route::Leader { fenced, .. } = &leader.route else {
        unreachable!("start_leader makes a leader")
    };
    let fenced = fenced.clone();
    info!(term = term.term, "alert evaluation runs on this node");
    // Replays the log before anyone reads the engine.
    leader.catch_up().await;
    *shared.leading.lock().unwrap_or_else(|e| e.into_inner()) = Some(leader.clone());
    let mut interval = tokio::time::interval(Duration::from_millis(state.config.alert_tick_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = fenced.cancelled() => break,
            _ = interval.tick() => {}
        }
        leader.catch_up().await;
        leader.tick().await;
    }
    *shared.leading.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if fenced.is_cancelled() {
        info!(term = term.term, "alert evaluation moved to another node");
        return;
    }
    let mut guard = leader.inner.lock().await;
    if let Some(inner) = guard.as_mut()
        && (inner.dirty || !inner.pending.is_empty())
    {
        leader.save(inner).await;
    }
}

/// A node's writer of the shared log: appends the queued inputs in order,
/// each retried until the database takes it, and every [`TRIM_EVERY`]
/// deletes rows older than an hour.
#[derive(Debug)]
pub struct Appender {
    pg: PgBackend,
    rx: mpsc::Receiver<String>,
}

impl Appender {
    /// Runs until `shutdown`, then appends what is queued, each row tried
    /// once, for at most `APPEND_DRAIN`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.append_until(&shutdown).await;
        let drain = async {
            while let Ok(first) = self.rx.try_recv() {
                let rows = self.batch(first);
                if let Err(e) = self.pg.append_alert_inputs(&rows, now_ms()).await {
                    warn!(
                        dropped = rows.len(),
                        "alert inputs queued at shutdown were dropped: {e}"
                    );
                }
            }
        };
        if tokio::time::timeout(APPEND_DRAIN, drain).await.is_err() {
            warn!("alert inputs queued at shutdown were dropped: the database was too slow");
        }
    }

    /// `first` and what else waits, up to [`APPEND_BATCH`] inputs and
    /// about [`APPEND_BATCH_BYTES`]; an input too large for the log is
    /// dropped here, with a warning, so it cannot hold up the others.
    fn batch(&mut self, first: String) -> Vec<String> {
        let mut rows = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(row) = next.take() {
            if row.len() > MAX_INPUT_BYTES {
                warn!(
                    bytes = row.len(),
                    "an alert input too large for the shared log was dropped"
                );
            } else {
                bytes += row.len();
                rows.push(row);
            }
            if rows.len() < APPEND_BATCH && bytes < APPEND_BATCH_BYTES {
                next = self.rx.try_recv().ok();
            }
        }
        rows
    }

    async fn append_until(&mut self, shutdown: &CancellationToken) {
        let mut trim = tokio::time::interval(TRIM_EVERY);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = trim.tick() => {
                    if let Err(e) = self.pg.trim_alert_inputs(now_ms()).await {
                        debug!("deleting old alert inputs failed: {e}");
                    }
                    continue;
                }
                row = self.rx.recv() => match row {
                    Some(row) => row,
                    None => return,
                },
            };
            let rows = self.batch(first);
            if rows.is_empty() {
                continue;
            }
            let mut backoff = Duration::from_millis(100);
            let mut warned = false;
            loop {
                match self.pg.append_alert_inputs(&rows, now_ms()).await {
                    Ok(()) => break,
                    Err(StoreError::Malformed { .. }) => {
                        // Cannot happen: `batch` left out the oversized.
                        warn!(
                            dropped = rows.len(),
                            "alert inputs the shared log refused were dropped"
                        );
                        break;
                    }
                    Err(e) => {
                        if !warned {
                            warn!("appending an alert input failed (retried): {e}");
                            warned = true;
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(APPEND_BACKOFF_MAX);
                    }
                }
            }
        }
    }
}

/// What a crash kept from the engine: the latest result of every check
/// received after the stored state's time (`saved_ms`, the engine's latest
/// time when it was written), oldest first. Between notifications the
/// state is written only every [`SAVE_EVERY`], and a result the engine saw
/// in those seconds is gone with the process. Most checks make that up with
/// their next result, but a report sent only on change (the agent's
/// `outrider.dns`) is never sent again: without this a lost "DNS OK" would
/// leave the resolver failing in the engine and page "DNS broken" later.
/// Only the latest result per check, so the replay is bounded by the
/// number of checks; a result the state already holds was received no
/// later than `saved_ms`, so nothing is fed twice.
async fn missed_results(store: &Store, saved_ms: u64) -> anyhow::Result<Vec<Event>> {
    let saved_ms = i64::try_from(saved_ms).unwrap_or(i64::MAX);
    let mut missed: Vec<_> = store
        .latest_results(None)
        .await?
        .into_iter()
        .filter(|r| r.received_at_ms > saved_ms)
        .collect();
    missed.sort_by_key(|r| (r.received_at_ms, r.started_at_ms));
    Ok(missed
        .into_iter()
        .map(|r| Event::CheckResult {
            agent: r.agent.to_string(),
            check: r.check,
            status: status(r.state),
            summary: r.summary,
            at_ms: u64::try_from(r.started_at_ms).unwrap_or(0),
        })
        .collect())
}

/// `base` with the rules of every check whose definition sets some: each
/// field a definition leaves out keeps what `base` says for that check.
///
/// # Errors
/// [`outrider_alerting::Error::InvalidConfig`] for a rule out of range or a
/// definition giving both a count and a duration.
pub fn engine_config(
    base: &Config,
    checks: &[CheckInfo],
) -> Result<Config, outrider_alerting::Error> {
    let mut config = base.clone();
    for check in checks {
        let Some(alert) = &check.alert else { continue };
        let mut rules = base.rules_for(&check.name);
        match (alert.after_failures, alert.after_secs) {
            (Some(_), Some(_)) => {
                return Err(outrider_alerting::Error::InvalidConfig {
                    field: "alert",
                    reason: format!(
                        "check {:?} gives both after_failures and after_secs; give one",
                        check.name
                    ),
                });
            }
            (Some(count), None) => rules.gate = GateRule::Consecutive { count },
            (None, Some(secs)) => {
                rules.gate = GateRule::Duration {
                    for_ms: secs.saturating_mul(1000),
                }
            }
            (None, None) => {}
        }
        if let Some(n) = alert.recover_after {
            rules.recover_after = n;
        }
        config.checks.insert(check.name.clone(), rules);
    }
    config.validate()?;
    Ok(config)
}

/// Queues the outbox rows of `actions`; true when there was one.
fn record(inner: &mut Inner, actions: Vec<Action>) -> bool {
    let mut notified = false;
    for action in actions {
        match action {
            Action::Notify {
                group,
                notifications,
            } => {
                notified = true;
                for n in &notifications {
                    info!(group = %group, subject = %n.subject, kind = ?n.kind, title = %n.title, "alert decided");
                }
                match batch(group, &notifications) {
                    Ok(b) => inner.pending.push(b),
                    Err(e) => warn!("cannot serialize a notification: {e}"),
                }
            }
            other => debug!(action = ?other, "alert engine"),
        }
    }
    notified
}

/// The outbox row of one `Action::Notify` (see `store/alert_outbox.sql`).
pub fn batch(group: String, notifications: &[Notification]) -> serde_json::Result<OutboxBatch> {
    let mut keys: Vec<String> = notifications
        .iter()
        .map(|n| format!("{}#{}", n.incident_key(), n.seq))
        .collect();
    keys.sort();
    let worst = notifications
        .iter()
        .map(|n| n.status)
        .max_by_key(|s| severity_rank(*s))
        .unwrap_or(Status::Ok);
    Ok(OutboxBatch {
        batch_key: keys.join(" "),
        group_key: group,
        severity: severity_name(worst).to_owned(),
        notifications: serde_json::to_string(notifications)?,
    })
}

/// Worse is larger: critical, then warning, then unknown, then ok (the
/// order of `store/alert_outbox.sql`).
pub fn severity_rank(status: Status) -> u8 {
    match status {
        Status::Critical => 3,
        Status::Warning => 2,
        Status::Unknown => 1,
        Status::Ok => 0,
    }
}

/// The outbox's spelling of a status.
pub fn severity_name(status: Status) -> &'static str {
    match status {
        Status::Critical => "critical",
        Status::Warning => "warning",
        Status::Unknown => "unknown",
        Status::Ok => "ok",
    }
}

fn status(state: CheckState) -> Status {
    match state {
        CheckState::Ok => Status::Ok,
        CheckState::Warning => Status::Warning,
        CheckState::Critical => Status::Critical,
        CheckState::Unknown => Status::Unknown,
    }
}

/// What an update event means for alerting; `None` for kinds that decide
/// nothing (`installed` is still on probation) or that a newer stub added.
pub fn update_outcome(
    event: &outrider_protocol::UpdateEvent,
) -> Option<outrider_alerting::model::UpdateOutcome> {
    use outrider_alerting::model::UpdateOutcome;
    match event.kind.as_str() {
        "probation_passed" | "stub_updated" => Some(UpdateOutcome::Applied),
        "refused" | "stub_refused" => Some(UpdateOutcome::Refused),
        "probation_failed" | "rolled_back" => Some(UpdateOutcome::RolledBack),
        _ => None,
    }
}

fn update_detail(e: &outrider_protocol::UpdateEvent) -> String {
    let version = e.version.as_deref().unwrap_or("?");
    if e.reason.is_empty() {
        format!("{} {version}", e.kind)
    } else {
        format!("{} {version}: {}", e.kind, e.reason)
    }
}

fn now_ms_u64() -> u64 {
    u64::try_from(now_ms()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use outrider_alerting::{NotificationKind, Subject};

    use super::*;

    fn note(agent: &str, status: Status, started: u64, seq: u32) -> Notification {
        Notification {
            subject: Subject::Check {
                agent: agent.into(),
                name: "disk".into(),
            },
            kind: NotificationKind::Firing,
            status,
            title: "t".into(),
            summary: String::new(),
            resolve_cause: None,
            incident_started_ms: started,
            seq,
        }
    }

    #[test]
    fn batch_key_is_sorted_incident_keys_and_severity_the_worst() {
        let table = [
            (vec![Status::Ok], "ok"),
            (vec![Status::Ok, Status::Unknown], "unknown"),
            (vec![Status::Unknown, Status::Warning], "warning"),
            (
                vec![Status::Warning, Status::Critical, Status::Ok],
                "critical",
            ),
        ];
        for (statuses, want) in table {
            let notes: Vec<_> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| note(&format!("a{}", 9 - i), *s, 5, 1))
                .collect();
            let b = batch("agent/x".into(), &notes).unwrap();
            assert_eq!(b.severity, want, "{statuses:?}");
            let keys: Vec<_> = b.batch_key.split(' ').collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
            assert_eq!(keys.len(), notes.len());
        }
        let b = batch("agent/x".into(), &[note("a", Status::Critical, 7, 2)]).unwrap();
        assert_eq!(b.batch_key, "check/a/disk@7#2");
    }

    #[test]
    fn check_definitions_set_their_gate_and_keep_the_rest() {
        use outrider_protocol::api::CheckAlert;
        let check = |name: &str, alert: Option<CheckAlert>| CheckInfo {
            name: name.into(),
            command: vec!["/bin/true".into()],
            interval_secs: 10,
            timeout_secs: 5,
            tags: Vec::new(),
            alert,
        };
        let base = Config::default();
        let config = engine_config(
            &base,
            &[
                check("plain", None),
                check(
                    "count",
                    Some(CheckAlert {
                        after_failures: Some(5),
                        ..CheckAlert::default()
                    }),
                ),
                check(
                    "time",
                    Some(CheckAlert {
                        after_secs: Some(90),
                        recover_after: Some(1),
                        ..CheckAlert::default()
                    }),
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.rules_for("plain"), base.check_defaults);
        assert!(!config.checks.contains_key("plain"));
        let count = config.rules_for("count");
        assert_eq!(count.gate, GateRule::Consecutive { count: 5 });
        assert_eq!(count.recover_after, 2, "kept from the defaults");
        let time = config.rules_for("time");
        assert_eq!(time.gate, GateRule::Duration { for_ms: 90_000 });
        assert_eq!(time.recover_after, 1);

        let bad = [
            CheckAlert {
                after_failures: Some(2),
                after_secs: Some(2),
                ..CheckAlert::default()
            },
            CheckAlert {
                after_failures: Some(0),
                ..CheckAlert::default()
            },
            CheckAlert {
                recover_after: Some(0),
                ..CheckAlert::default()
            },
            CheckAlert {
                after_secs: Some(0),
                ..CheckAlert::default()
            },
        ];
        for alert in bad {
            let err = engine_config(&base, &[check("x", Some(alert.clone()))]);
            assert!(
                matches!(err, Err(outrider_alerting::Error::InvalidConfig { .. })),
                "{alert:?} accepted"
            );
        }
    }

    /// Ticks once a millisecond later (so `down_for` of 1 ms is over);
    /// whether the agent is then an open problem.
    async fn agent_open(alerts: &Alerts) -> bool {
        let t = now_ms_u64();
        while now_ms_u64() < t + 2 {
            std::hint::spin_loop();
        }
        alerts.tick().await;
        alerts
            .read(|e| e.open())
            .await
            .unwrap()
            .iter()
            .any(|(s, _)| matches!(s, outrider_alerting::Subject::Agent { .. }))
    }

    /// A loss reported by an older session after a newer one opened (a
    /// reconnect overtaking the old session's end) must not count the
    /// agent as lost; a loss of the latest session does.
    #[tokio::test]
    async fn a_stale_loss_does_not_overtake_a_newer_session() {
        let (_dir, store, fp) = crate::store::test_support::store_with_agent("web-1").await;
        let config = Config {
            down_for_ms: 1,
            restart_grace_extra_ms: 0,
            ..Config::default()
        };
        let started = now_ms_u64() - 60_000;
        let alerts = Alerts::start(
            store,
            config,
            Duration::from_secs(30),
            started,
            Arc::new(Notify::new()),
        )
        .await
        .unwrap();
        alerts
            .presence(&fp, 1, SessionEvent::Opened, Vec::new())
            .await;
        alerts
            .presence(&fp, 2, SessionEvent::Opened, Vec::new())
            .await;
        alerts
            .presence(&fp, 1, SessionEvent::Lost, Vec::new())
            .await;
        assert!(
            !agent_open(&alerts).await,
            "session 1's loss came after session 2 opened"
        );
        alerts
            .presence(&fp, 2, SessionEvent::Lost, Vec::new())
            .await;
        assert!(
            agent_open(&alerts).await,
            "the latest session's loss counts"
        );
    }

    /// (d) Inputs of the shared log by table: each comes back as it went,
    /// a result batch over the row cap is split in order into rows under
    /// it, an event too large alone is dropped.
    #[test]
    fn inputs_round_trip_and_large_batches_split_in_order() {
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let event = |summary: String| Event::CheckResult {
            agent: fp.to_string(),
            check: "disk".into(),
            status: Status::Critical,
            summary,
            at_ms: 5,
        };
        let events = |n: usize, bytes: usize| -> Vec<Event> {
            (0..n)
                .map(|i| event(format!("{i:06}{}", "x".repeat(bytes))))
                .collect()
        };
        // (input, rows expected)
        let cases = [
            (Input::ChecksChanged, 1),
            (Input::Removed { agent: fp.clone() }, 1),
            (
                Input::Presence {
                    agent: fp.clone(),
                    session: 7,
                    what: SessionEvent::Goodbye,
                    tags: vec!["db".into()],
                },
                1,
            ),
            (
                Input::Events {
                    events: events(3, 10),
                },
                1,
            ),
            (
                Input::Events {
                    events: events(4, MAX_INPUT_BYTES / 3),
                },
                2,
            ),
            (
                Input::Events {
                    events: events(1, MAX_INPUT_BYTES + 1),
                },
                0,
            ),
        ];
        for (i, (input, want)) in cases.into_iter().enumerate() {
            let rows = input_rows(&input);
            assert_eq!(rows.len(), want, "case {i}");
            assert!(rows.iter().all(|r| r.len() <= MAX_INPUT_BYTES));
            let back: Vec<Input> = rows
                .iter()
                .map(|r| serde_json::from_str(r).unwrap())
                .collect();
            match (&input, want) {
                (_, 0) => {}
                (Input::Events { events }, _) => {
                    let joined: Vec<Event> = back
                        .into_iter()
                        .flat_map(|i| match i {
                            Input::Events { events } => events,
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    assert!(&joined == events, "case {i}");
                }
                (input, _) => assert!(back == [input.clone()], "case {i}"),
            }
        }
    }

    async fn open_count(alerts: &Alerts) -> usize {
        alerts.read(|e| e.open().len()).await.unwrap()
    }

    /// Adds a silence of check `disk` (the engine saves at once).
    async fn silence(alerts: &Alerts) -> Result<Vec<Action>, outrider_alerting::Error> {
        let spec = serde_json::from_value(serde_json::json!({
            "matchers": [{"field": "check", "op": {"equal": "disk"}}],
            "starts_ms": 0, "ends_ms": u64::MAX / 2, "author": "a", "comment": "c"
        }))
        .unwrap();
        alerts.operator(Event::AddSilence(spec)).await
    }

    /// The leader's engine on PostgreSQL: inputs appended by any node are
    /// applied in order; its save under the newest term deletes the rows
    /// its state has seen; a leader whose term is stale is refused and
    /// told to stop (its `fenced` token), writing nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_applies_the_log_saves_consuming_it_and_stops_when_fenced() {
        use crate::backend::leader::Job;
        let db = outrider_pgtest::Cluster::shared()
            .unwrap_or_else(|e| panic!("{e}"))
            .database()
            .await
            .unwrap();
        let pg = PgBackend::with_config(db.config.clone(), crate::backend::PgTls::Disable, 2)
            .await
            .unwrap();
        let (_dir, store, fp) = crate::store::test_support::store_with_agent("web-1").await;
        let store = store.with_postgres(pg.clone(), "a".parse().unwrap());
        let (front, _appender) = Alerts::shared(
            store,
            pg.clone(),
            Config::default(),
            Duration::from_secs(30),
            Arc::new(Notify::new()),
        );
        let Route::Log(shared) = &front.route else {
            unreachable!()
        };
        let (client, conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
        let conn = tokio::spawn(conn);
        client
            .execute(
                "INSERT INTO leases (job, holder_node, term, acquired_at_ms)
                 VALUES ('alert-evaluation', 'n2', 2, 0)",
                &[],
            )
            .await
            .unwrap();
        let term = |t| LeaderTerm {
            job: Job::AlertEvaluation,
            node: "n2".parse().unwrap(),
            term: t,
        };
        let critical = CheckResult {
            seq: 1,
            check: "disk".into(),
            state: CheckState::Critical,
            summary: "full".into(),
            long_output: String::new(),
            perfdata: Vec::new(),
            unknown_perfdata: Vec::new(),
            started_at_ms: now_ms(),
            duration_ms: 1,
            update_event: None,
        };
        for input in [
            Input::Presence {
                agent: fp.clone(),
                session: 1,
                what: SessionEvent::Opened,
                tags: Vec::new(),
            },
            Input::Events {
                events: result_events(&fp, &[critical.clone(), critical.clone(), critical]),
            },
        ] {
            for row in input_rows(&input) {
                pg.append_alert_input(&row, now_ms()).await.unwrap();
            }
        }
        let leader = front.start_leader(shared, term(2)).await.unwrap();
        // Other tests' transactions on the shared cluster may hold the
        // rows back a moment (the xmin guard).
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_count(&leader).await == 0 {
            assert!(Instant::now() < deadline, "the log was never applied");
            leader.catch_up().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        silence(&leader).await.unwrap();
        assert!(
            pg.alert_inputs_after(None).await.unwrap().is_empty(),
            "the save deleted the rows its state has seen"
        );
        let saved = leader.store.alert_state().await.unwrap().unwrap();

        let stale = front.start_leader(shared, term(1)).await.unwrap();
        let Route::Leader { fenced, .. } = &stale.route else {
            unreachable!()
        };
        assert!(!fenced.is_cancelled());
        silence(&stale).await.unwrap();
        assert!(fenced.is_cancelled(), "a stale leader is told to stop");
        assert_eq!(leader.store.alert_state().await.unwrap().unwrap(), saved);
        drop(client);
        conn.await.unwrap().unwrap();
    }

    #[test]
    fn update_kinds_map_to_outcomes() {
        use outrider_alerting::model::UpdateOutcome::*;
        let table = [
            ("installed", None),
            ("probation_passed", Some(Applied)),
            ("stub_updated", Some(Applied)),
            ("refused", Some(Refused)),
            ("stub_refused", Some(Refused)),
            ("probation_failed", Some(RolledBack)),
            ("rolled_back", Some(RolledBack)),
            ("a_future_kind", None),
        ];
        for (kind, want) in table {
            let event = outrider_protocol::UpdateEvent {
                id: 1,
                kind: kind.into(),
                at_unix_ms: 1,
                build_sha256: None,
                version: None,
                to_sha256: None,
                to_version: None,
                reason: String::new(),
            };
            assert_eq!(update_outcome(&event), want, "{kind}");
        }
    }
}
