//! What nodes tell each other over the cross-node bus (`backend/bus.rs`,
//! `backend/postgres/bus.rs`) in the multi-node mode:
//! - run-now for an agent whose session is on another node: a request
//!   with a reply, answered by the node holding the session ([`run_now_on`]);
//! - reads of the alert engine and silences, answered by the node leading
//!   alert evaluation (`alerts/remote.rs`);
//! - broadcasts: a config change (every node recomputes its cache and
//!   wakes its sessions) and an update nudge scheduled (every node nudges
//!   the agents connected to it).
//!
//! A single SQLite node has no bus: its calls stay local and nothing here
//! runs.
//!
//! Head-of-line: the bus hands messages over one bounded queue, so nothing
//! slow runs on the task reading it. A run-now request waits for an agent
//! (seconds); it runs on a task of its own, at most [`MAX_HANDLING`] at
//! once. A config change recomputes every document; the changes are
//! coalesced into one refresh at a time by `Refresher`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outrider_protocol::api::{Event, RunRequest, RunResponse};
use outrider_protocol::{CheckState, Fingerprint};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::AppState;
use crate::backend::bus::{BusError, Incoming, Kind, Request, Topic};
use crate::backend::postgres::bus::PgBus;
use crate::backend::presence::{NodeId, PresenceStore};
use crate::error::ApiError;

/// The request kind of a run-now relayed to the agent's node.
pub const RUN_NOW: &str = "run_now";

/// Relayed requests handled at once on this node; more wait in the bus's
/// queue.
pub const MAX_HANDLING: usize = 256;

/// How often a caller waiting on another node looks whether the agent's
/// session is still there: an agent that moved (its node died, it
/// reconnected elsewhere) fails the call within this, not at its deadline.
pub const SESSION_CHECK: Duration = Duration::from_secs(1);

/// A run-now for `agent`, as relayed.
#[derive(Debug, Serialize, Deserialize)]
struct RunNowCall {
    agent: Fingerprint,
    request: RunRequest,
}

/// What the agent's node answered: the result, or the API error it would
/// have answered itself (status and sentence), so the caller's node
/// answers the same.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RunNowAnswer {
    Done(RunResponse),
    Refused { status: u16, message: String },
}

/// A nudge broadcast: `channel` got the manifest of `sequence`.
#[derive(Debug, Serialize, Deserialize)]
struct Nudge {
    channel: String,
    sequence: u64,
}

/// Runs `request` on `agent`, whose session is on node `owner`, through
/// the bus, waiting at most `wait`. Fails as the local call would (the
/// owner's refusals come back as they are), and also: 409 when the owner
/// is lost or the agent left it before answering (retry: the agent
/// reconnects to another node), 504 when no answer came in time, 429 when
/// too many calls wait on the owner.
pub async fn run_now_on(
    state: &AppState,
    owner: &NodeId,
    agent: &Fingerprint,
    request: RunRequest,
    wait: Duration,
) -> Result<RunResponse, ApiError> {
    let bus = state
        .bus
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this node has no bus to other nodes".into()))?;
    let payload = serde_json::to_vec(&RunNowCall {
        agent: agent.clone(),
        request,
    })
    .map_err(anyhow::Error::from)?;
    let kind: Kind = RUN_NOW.parse().expect("a valid kind");
    let call = bus.request(owner, &kind, &payload, wait);
    let moved = left_node(state, agent, owner);
    let reply = tokio::select! {
        reply = call => reply,
        now_on = moved => {
            return Err(ApiError::Conflict(match now_on {
                Some(node) => format!(
                    "agent {agent} left node {owner} before answering and is now connected to node {node}; run it again"
                ),
                None => format!(
                    "agent {agent} disconnected from node {owner} before answering; it cannot run anything now"
                ),
            }));
        }
    };
    let bytes = reply.map_err(|e| bus_error(agent, owner, e))?;
    match serde_json::from_slice(&bytes).map_err(anyhow::Error::from)? {
        RunNowAnswer::Done(response) => Ok(response),
        RunNowAnswer::Refused { status, message } => Err(ApiError::from_status(status, message)),
    }
}

/// Returns when `agent`'s session is no longer on `owner`: with the node
/// it is on now, or `None` when it has none. Pends while it stays (a
/// store error counts as staying: the bus's own deadline still holds).
async fn left_node(state: &AppState, agent: &Fingerprint, owner: &NodeId) -> Option<NodeId> {
    let backend = state.store.backend();
    let mut tick = tokio::time::interval(SESSION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match backend.session(agent).await {
            Ok(Some(s)) if s.is_up() && &s.node == owner => {}
            Ok(Some(s)) if s.is_up() => return Some(s.node),
            Ok(_) => return None,
            Err(e) => debug!(fingerprint = %agent, "looking up the agent's session failed: {e}"),
        }
    }
}

/// The API's answer for a bus failure of a call to `owner` for `agent`.
fn bus_error(agent: &Fingerprint, owner: &NodeId, e: BusError) -> ApiError {
    match e {
        BusError::NodeLost { .. } | BusError::UnknownNode { .. } => ApiError::Conflict(format!(
            "agent {agent} was connected to node {owner}, which cannot be reached ({e}); it will reconnect to another node: run it again then"
        )),
        BusError::DeadlineExceeded { .. } => ApiError::GatewayTimeout(format!(
            "agent {agent} (on node {owner}) did not answer in time: {e}"
        )),
        BusError::TooManyPending { .. } => ApiError::TooManyRequests(e.to_string()),
        BusError::ShuttingDown => ApiError::Unavailable(e.to_string()),
        e => ApiError::Internal(anyhow::anyhow!("relaying to node {owner}: {e}")),
    }
}

/// Starts this node's side of the bus: the task reading what other nodes
/// send, until `shutdown`.
pub fn start(state: &Arc<AppState>, incoming: mpsc::Receiver<Incoming>) {
    if let Some(events) = state.events.relay() {
        state.tasks.spawn(forward_events(state.clone(), events));
    }
    let refresher = Arc::new(Refresher::default());
    state.tasks.spawn(refresher.clone().run(state.clone()));
    state
        .tasks
        .spawn(dispatch(state.clone(), incoming, refresher));
}

/// Reads the bus's queue: requests go to tasks of their own, broadcasts
/// are taken on the spot (each is cheap, or handed to the refresher).
async fn dispatch(
    state: Arc<AppState>,
    mut incoming: mpsc::Receiver<Incoming>,
    refresher: Arc<Refresher>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDLING));
    let shutdown = state.shutdown.clone();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = incoming.recv() => message,
        };
        match message {
            None => return,
            Some(Incoming::Request(request)) => {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                };
                let state = state.clone();
                state.tasks.clone().spawn(async move {
                    answer(&state, request).await;
                    drop(permit);
                });
            }
            Some(Incoming::Broadcast(b)) => match b.topic {
                // This node refreshed before it told the others.
                Topic::ConfigChanged if b.from == state.node => {}
                Topic::ConfigChanged => refresher.wake(),
                Topic::NudgeScheduled => match serde_json::from_slice::<Nudge>(&b.payload) {
                    Ok(nudge) => {
                        let agents = state.nudges.schedule(&nudge.channel, nudge.sequence);
                        debug!(channel = %nudge.channel, agents, "update nudges scheduled for a manifest stored on another node");
                    }
                    Err(e) => warn!(from = %b.from, "unreadable nudge broadcast ignored: {e}"),
                },
                // This node published its own already.
                Topic::LiveEvent if b.from == state.node => {}
                Topic::LiveEvent => match serde_json::from_slice::<Vec<Event>>(&b.payload) {
                    Ok(events) => {
                        for event in events {
                            state.events.publish_relayed(event);
                        }
                    }
                    Err(e) => warn!(from = %b.from, "unreadable live events ignored: {e}"),
                },
            },
        }
    }
}

/// Handles one request from another node and replies.
async fn answer(state: &AppState, request: Request) {
    let Some(bus) = &state.bus else { return };
    let outcome = match request.kind.as_str() {
        RUN_NOW => match serde_json::from_slice::<RunNowCall>(&request.payload) {
            Ok(call) => {
                let answer = match crate::rpc::run_here(state, &call.agent, call.request).await {
                    Ok(response) => RunNowAnswer::Done(response),
                    Err(e) => RunNowAnswer::Refused {
                        status: e.status().as_u16(),
                        message: e.to_string(),
                    },
                };
                serde_json::to_vec(&answer).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("unreadable run_now request: {e}")),
        },
        crate::alerts::remote::ALERTS => {
            crate::alerts::remote::answer(state, &request.payload).await
        }
        other => Err(format!(
            "node {} does not know request {other:?}",
            state.node
        )),
    };
    let sent = match &outcome {
        Ok(bytes) => bus.reply(&request, Ok(bytes)).await,
        Err(text) => bus.reply(&request, Err(text)).await,
    };
    match sent {
        Ok(true) => {}
        Ok(false) => {
            debug!(from = %request.from, kind = %request.kind, "reply after the caller's deadline dropped")
        }
        Err(e) => warn!(from = %request.from, kind = %request.kind, "cannot reply: {e}"),
    }
}

/// This node's live events sent to the other nodes' subscribers (the
/// dashboard, `GET /api/v1/events`): what [`RelayFilter`] admits, in
/// batches, every [`EVENT_BATCH_WAIT`] or [`EVENT_BATCH_BYTES`], one
/// broadcast each, so the bus carries a few rows a second whatever the
/// fleet's result rate. An event too large for a batch, or dropped by a
/// full queue, is not sent; the batch then ends with a `Lagged` event, on
/// which a subscriber re-reads what it shows.
async fn forward_events(state: Arc<AppState>, mut events: mpsc::Receiver<Arc<Event>>) {
    let Some(bus) = state.bus.clone() else { return };
    let shutdown = state.shutdown.clone();
    let mut filter = RelayFilter::default();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        if !filter.admits(&first) {
            continue;
        }
        let mut batch = EventBatch::default();
        batch.push(&first);
        let deadline = tokio::time::Instant::now() + EVENT_BATCH_WAIT;
        while !batch.is_full() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                event = events.recv() => match event {
                    Some(event) if filter.admits(&event) => batch.push(&event),
                    Some(_) => {}
                    None => break,
                },
            }
        }
        batch.missed += state.events.take_relay_dropped();
        if let Err(e) = bus.broadcast(Topic::LiveEvent, &batch.finish()).await {
            debug!("live events not relayed to the other nodes: {e}");
        }
    }
}

/// Which of this node's live events the other nodes get: every presence
/// change, config version and lag, and of the stored results only a
/// check's first and each change of its state. Relaying every result cost
/// the shared database a third of its ingest ceiling (each result written
/// to the bus once per node) and starved hellos of connections after a
/// node died; the other nodes' pages show states, and re-read the rest
/// when loaded.
#[derive(Debug, Default)]
struct RelayFilter {
    states: HashMap<(Fingerprint, String), CheckState>,
}

/// Checks whose last relayed state [`RelayFilter`] remembers at most; when
/// full it forgets them all, so each is relayed once more.
const RELAY_STATES: usize = 200_000;

impl RelayFilter {
    fn admits(&mut self, event: &Event) -> bool {
        let Event::Result { agent, result } = event else {
            return true;
        };
        if self.states.len() >= RELAY_STATES {
            self.states.clear();
        }
        self.states
            .insert((agent.clone(), result.check.clone()), result.state)
            != Some(result.state)
    }
}

/// How long this node gathers live events before relaying them.
pub const EVENT_BATCH_WAIT: Duration = Duration::from_millis(200);
/// How many bytes of live events one relay carries at most (within the
/// bus's payload limit).
pub const EVENT_BATCH_BYTES: usize = 48 * 1024;

/// Live events encoded for one relay: a JSON array.
#[derive(Debug, Default)]
struct EventBatch {
    json: Vec<u8>,
    missed: u64,
}

impl EventBatch {
    /// Adds `event`, or counts it missed when it alone would not fit.
    fn push(&mut self, event: &Event) {
        let encoded = serde_json::to_vec(event).expect("events serialize");
        if encoded.len() > EVENT_BATCH_BYTES {
            self.missed += 1;
            return;
        }
        self.json
            .push(if self.json.is_empty() { b'[' } else { b',' });
        self.json.extend_from_slice(&encoded);
    }

    fn is_full(&self) -> bool {
        self.json.len() >= EVENT_BATCH_BYTES
    }

    /// The array, closed, with a `Lagged` event last when some were missed.
    fn finish(mut self) -> Vec<u8> {
        if self.missed > 0 {
            let lagged = Event::Lagged {
                missed: self.missed,
            };
            self.missed = 0;
            self.push(&lagged);
        }
        if self.json.is_empty() {
            return b"[]".to_vec();
        }
        self.json.push(b']');
        self.json
    }
}

/// Tells every node that checks, collectors, plugins or an agent's tags or
/// permissions changed, so each recomputes its documents and wakes its
/// sessions. A failure is logged: the other nodes then catch up with the
/// next change or their next start.
pub async fn config_changed(bus: &PgBus) {
    if let Err(e) = bus.broadcast(Topic::ConfigChanged, &[]).await {
        warn!("cannot tell the other nodes that the configuration changed: {e}");
    }
}

/// Tells every node (this one included) that `channel` got the manifest
/// of `sequence`, so each nudges the agents connected to it.
pub async fn nudge_scheduled(bus: &PgBus, channel: &str, sequence: u64) {
    let payload = serde_json::to_vec(&Nudge {
        channel: channel.to_owned(),
        sequence,
    })
    .expect("a nudge serializes");
    if let Err(e) = bus.broadcast(Topic::NudgeScheduled, &payload).await {
        warn!(
            channel,
            sequence, "cannot tell the nodes to nudge their agents: {e}"
        );
    }
}

/// Config refreshes asked for by other nodes, coalesced: one runs at a
/// time, and any number of changes during it make one more.
#[derive(Debug, Default)]
struct Refresher {
    wake: Notify,
}

impl Refresher {
    fn wake(&self) {
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, state: Arc<AppState>) {
        let shutdown: CancellationToken = state.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            match crate::configs::refresh(&state, None).await {
                Ok(_) => info!("agent configurations reloaded after a change on another node"),
                Err(e) => warn!(
                    "reloading agent configurations after a change on another node failed: {e:#}"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_status_and_sentence_across_the_bus() {
        // (error of the agent's node, status the caller's node answers)
        let cases = [
            (ApiError::Conflict("not connected".into()), 409),
            (ApiError::BadRequest("no such check".into()), 400),
            (ApiError::Forbidden("no ad-hoc".into()), 403),
            (ApiError::Unprocessable("could not run".into()), 422),
            (ApiError::TooManyRequests("busy".into()), 429),
            (ApiError::GatewayTimeout("late".into()), 504),
            (ApiError::NotFound("unknown agent".into()), 404),
        ];
        for (error, status) in cases {
            let sentence = error.to_string();
            let relayed = RunNowAnswer::Refused {
                status: error.status().as_u16(),
                message: sentence.clone(),
            };
            let bytes = serde_json::to_vec(&relayed).unwrap();
            let RunNowAnswer::Refused { status: s, message } =
                serde_json::from_slice(&bytes).unwrap()
            else {
                panic!("refusal decoded as a result")
            };
            let back = ApiError::from_status(s, message);
            assert_eq!(back.status().as_u16(), status, "{sentence}");
            assert_eq!(back.to_string(), sentence);
        }
    }

    #[test]
    fn only_a_checks_first_result_and_changes_of_state_are_relayed() {
        let fp = |n: u8| -> Fingerprint { format!("{n:02x}23456789abcdef0123").parse().unwrap() };
        let result = |agent: u8, check: &str, state: CheckState| Event::Result {
            agent: fp(agent),
            result: crate::store::test_support::load_result(1, check, state),
        };
        let presence = Event::Presence {
            agent: fp(1),
            presence: outrider_protocol::api::Presence::Connected,
            at_ms: 1,
        };
        // (event, relayed) in order, through one filter
        let cases = [
            (result(1, "load", CheckState::Ok), true),
            (result(1, "load", CheckState::Ok), false),
            (result(1, "disk", CheckState::Ok), true),
            (result(2, "load", CheckState::Ok), true),
            (result(1, "load", CheckState::Critical), true),
            (result(1, "load", CheckState::Critical), false),
            (result(1, "load", CheckState::Ok), true),
            (presence.clone(), true),
            (presence, true),
            (
                Event::Config {
                    agent: fp(1),
                    version: 2,
                },
                true,
            ),
            (Event::Lagged { missed: 1 }, true),
        ];
        let mut filter = RelayFilter::default();
        for (i, (event, relayed)) in cases.into_iter().enumerate() {
            assert_eq!(filter.admits(&event), relayed, "case {i}: {event:?}");
        }
    }

    #[test]
    fn a_batch_of_live_events_is_one_array_and_says_what_it_dropped() {
        let agent: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let small = Event::Config {
            agent: agent.clone(),
            version: 3,
        };
        let huge = Event::Result {
            agent: agent.clone(),
            result: outrider_protocol::CheckResult {
                seq: 1,
                check: "big".into(),
                state: outrider_protocol::CheckState::Ok,
                summary: "x".repeat(EVENT_BATCH_BYTES),
                long_output: String::new(),
                perfdata: Vec::new(),
                unknown_perfdata: Vec::new(),
                started_at_ms: 1,
                duration_ms: 1,
                update_event: None,
            },
        };
        // (events pushed, what the other nodes get)
        let cases = [
            (vec![small.clone()], vec![small.clone()]),
            (
                vec![small.clone(), huge.clone(), small.clone()],
                vec![small.clone(), small.clone(), Event::Lagged { missed: 1 }],
            ),
            (vec![huge], vec![Event::Lagged { missed: 1 }]),
            (vec![], vec![]),
        ];
        for (pushed, got) in cases {
            let mut batch = EventBatch::default();
            for e in &pushed {
                batch.push(e);
            }
            let decoded: Vec<Event> = serde_json::from_slice(&batch.finish()).unwrap();
            assert_eq!(decoded, got);
        }
        let mut full = EventBatch::default();
        while !full.is_full() {
            full.push(&small);
        }
        assert!(full.finish().len() <= crate::backend::bus::MAX_PAYLOAD_BYTES);
    }

    #[test]
    fn bus_failures_are_answers_an_operator_can_act_on() {
        let agent: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let owner: NodeId = "n2".parse().unwrap();
        let kind: Kind = RUN_NOW.parse().unwrap();
        let cases = [
            (
                BusError::NodeLost {
                    node: owner.clone(),
                    silent_ms: 31_000,
                },
                409,
                "it will reconnect to another node",
            ),
            (
                BusError::DeadlineExceeded {
                    node: owner.clone(),
                    kind: kind.clone(),
                    timeout_ms: 15_000,
                },
                504,
                "did not answer in time",
            ),
            (
                BusError::TooManyPending {
                    node: owner.clone(),
                    pending: 1024,
                },
                429,
                "retry later",
            ),
            (BusError::ShuttingDown, 503, "shutting down"),
        ];
        for (e, status, says) in cases {
            let api = bus_error(&agent, &owner, e);
            assert_eq!(api.status().as_u16(), status, "{api}");
            assert!(api.to_string().contains(says), "{api}");
        }
    }
}
