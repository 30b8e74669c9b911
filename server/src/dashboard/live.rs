//! The live stream: `GET /live`, one server-sent-event stream per tab.
//!
//! A hub task subscribes to the server's event bus (`server/src/events.rs`)
//! and turns presence changes and results into rendered rows:
//! `agent-<fp>` (the fleet row, `fleet_row.html`), `presence-<fp>`
//! (`presence.html`) and `check-<fp>-<check>` (a check's state,
//! `check_state.html`) of an agent's page. `live.js` replaces the element
//! of the same id.
//!
//! Invariants:
//! - A stream carries only what its page shows: its address names the
//!   page's rows (`/live?rows=<fp>,..&list=fleet`, `/live?agent=<fp>`; see
//!   `server/src/dashboard/interest.rs`), and the hub renders a row only
//!   when some tab shows it, so with no tab open it renders nothing. A row
//!   on the page changes in place; only an agent added to or removed from
//!   the fleet sends `list` to pages listing the fleet, which refetch their
//!   list (at most once a second, `live.js`) and reconnect with its rows.
//! - Row updates are coalesced: a row is sent at most once per
//!   [`ROW_INTERVAL`] (4 per second); updates in between are folded into
//!   one sent when the interval ends, rendered from the store then, so the
//!   last state always arrives.
//! - Every frame carries an id `<epoch>-<seq>` (`epoch` is random per
//!   server run) and is kept in a ring of the last [`RING`] frames. Numbers
//!   rise but have gaps: a row skipped because no tab showed it takes one
//!   too. A reconnect with `Last-Event-ID` (or a page's `after=`, the
//!   newest id when it was rendered) gets the frames after it that its
//!   filter wants; an id that fell out of the ring, is of another run, does
//!   not parse, or is older than a skipped change of one of its rows gets
//!   one `reset` (the page reloads), as does a subscriber or hub that
//!   lagged.
//! - A stream lives no longer than its session: checked at every frame and
//!   every [`SESSION_CHECK`], it ends with one `logout` (the page goes to
//!   the login form). An open tab counts as use of its session, so a wall
//!   screen stays logged in until `--dashboard-session-secs`.
//! - Publishing never blocks: the ring is bounded, subscribers read a
//!   bounded broadcast channel, and the stream ends at shutdown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{self, KeepAlive, Sse};
use futures_util::Stream;
use outrider_protocol::Fingerprint;
use outrider_protocol::api::{Event, Presence};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::interest::{Filter, Interests, Kind, Scope};
use super::pages::{CheckStateTemplate, CheckView, FleetRowTemplate, PresenceTemplate, RowView};
use super::{Authed, Dashboard, PageError};

/// Frames kept for reconnecting tabs.
pub const RING: usize = 1024;

/// Least time between two sends of one row.
pub const ROW_INTERVAL: Duration = Duration::from_millis(250);

/// Interval of SSE comments that keep idle proxies from closing the stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Longest time between two checks that a stream's session still exists
/// (it is also checked at every frame).
pub const SESSION_CHECK: Duration = Duration::from_secs(30);

/// How long a rendered page's rows stay shown before its stream connects
/// (a page fetched by something that never opens the stream lets go then).
pub const LEASE: Duration = Duration::from_secs(30);

/// Most pages rendered in the last [`LEASE`] whose rows are held; past it
/// the oldest lets go early (its tab may then reset once).
pub const MAX_LEASES: usize = 1024;

/// One sent event.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    /// `row`, `list` or `reset`.
    pub event: &'static str,
    pub data: String,
    /// Which streams carry it.
    pub scope: Scope,
}

#[derive(Debug)]
struct Ring {
    frames: VecDeque<Arc<Frame>>,
    /// The number of the newest frame dropped from the ring (0: none).
    evicted: u64,
}

/// The hub's ring, fan-out and the tabs' interest.
#[derive(Debug)]
pub struct Live {
    epoch: String,
    ring: Mutex<Ring>,
    /// The next frame number (frames and skipped rows take one each).
    next_seq: AtomicU64,
    tx: broadcast::Sender<Arc<Frame>>,
    /// What the open tabs show. Lock order: `ring` before `interests`.
    interests: Mutex<Interests>,
    /// Rendered pages whose stream may not be open yet, oldest first.
    leases: Mutex<VecDeque<(Instant, Filter)>>,
}

/// One stream's interest; dropping it ends the interest.
#[derive(Debug)]
pub struct Registered {
    dash: Arc<Dashboard>,
    filter: Arc<Filter>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.dash.live.interests().remove(&self.filter);
    }
}

/// Where a (re)connecting tab starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// A fresh tab: only new frames.
    Fresh,
    /// Frames after this sequence number, then new ones.
    After(u64),
    /// The tab missed frames it cannot get: one `reset`, then new ones.
    Reset,
}

/// Where a tab presenting `last_event_id` resumes, for a ring of this
/// `epoch` that dropped frames up to `evicted` (0: none) and numbers the
/// next one `next`.
pub fn resume(last_event_id: Option<&str>, epoch: &str, evicted: u64, next: u64) -> Resume {
    let Some(id) = last_event_id else {
        return Resume::Fresh;
    };
    let Some(seq) = id
        .split_once('-')
        .filter(|(e, _)| *e == epoch)
        .and_then(|(_, seq)| seq.parse::<u64>().ok())
    else {
        return Resume::Reset;
    };
    // Frames seq+1 .. next must all still be in the ring.
    if seq >= next || seq < evicted {
        return Resume::Reset;
    }
    Resume::After(seq)
}

impl Live {
    /// An empty hub with a fresh epoch. Fails only without OS randomness.
    pub fn new() -> anyhow::Result<Live> {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
        let (tx, _) = broadcast::channel(RING);
        Ok(Live {
            epoch: hex::encode(bytes),
            ring: Mutex::new(Ring {
                frames: VecDeque::with_capacity(RING),
                evicted: 0,
            }),
            next_seq: AtomicU64::new(1),
            tx,
            interests: Mutex::new(Interests::default()),
            leases: Mutex::new(VecDeque::new()),
        })
    }

    fn interests(&self) -> MutexGuard<'_, Interests> {
        self.interests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some tab shows `kind` of agent `fp`; when none does, the
    /// skipped change takes a number (see [`Interests::shown`]).
    pub fn shown(&self, fp: &Fingerprint, kind: Kind) -> bool {
        self.interests()
            .shown(fp, kind, || self.next_seq.fetch_add(1, Ordering::SeqCst))
    }

    /// Whether some tab lists the fleet.
    pub fn listed(&self) -> bool {
        self.interests().listed()
    }

    /// Counts `filter`'s interest until the guard drops.
    fn register(dash: &Arc<Dashboard>, filter: Arc<Filter>) -> Registered {
        let next = dash.live.next_seq.load(Ordering::SeqCst);
        dash.live.interests().add(&filter, next);
        Registered {
            dash: dash.clone(),
            filter,
        }
    }

    /// Holds `filter`'s rows shown for [`LEASE`]: a page just rendered
    /// whose stream is about to connect, so their changes meanwhile are
    /// rendered into the ring instead of skipped.
    pub fn lease(&self, filter: Filter) {
        let now = Instant::now();
        self.expire_leases(now);
        let next = self.next_seq.load(Ordering::SeqCst);
        self.interests().add(&filter, next);
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.push_back((now + LEASE, filter));
        if leases.len() > MAX_LEASES
            && let Some((_, oldest)) = leases.pop_front()
        {
            self.interests().remove(&oldest);
        }
    }

    /// Lets go of the leases that ended by `now`.
    pub fn expire_leases(&self, now: Instant) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        while leases.front().is_some_and(|(end, _)| *end <= now) {
            if let Some((_, filter)) = leases.pop_front() {
                self.interests().remove(&filter);
            }
        }
    }

    /// The id of the newest number given out: a page rendered now embeds it
    /// (`after=`), so its stream starts from what the page shows.
    pub fn newest_id(&self) -> String {
        self.id(self.next_seq.load(Ordering::SeqCst) - 1)
    }

    /// The SSE id of frame `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// Appends a frame to the ring and sends it to every subscriber.
    pub fn publish(&self, scope: Scope, event: &'static str, data: String) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let frame = Arc::new(Frame {
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
            event,
            data,
            scope,
        });
        if ring.frames.len() == RING
            && let Some(old) = ring.frames.pop_front()
        {
            ring.evicted = old.seq;
        }
        ring.frames.push_back(frame.clone());
        // Sent under the lock, so a subscriber taken under it misses and
        // doubles nothing. Fails only without subscribers.
        let _ = self.tx.send(frame);
    }

    /// A subscription of `filter` for a tab presenting `last_event_id`: the
    /// frames to send first (a `reset` or the missed ones it wants) and the
    /// receiver of new ones. Register the filter first, so nothing of its
    /// rows is skipped after this.
    pub fn subscribe(
        &self,
        last_event_id: Option<&str>,
        filter: &Filter,
    ) -> (Vec<Arc<Frame>>, broadcast::Receiver<Arc<Frame>>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let next = self.next_seq.load(Ordering::SeqCst);
        let mut start = resume(last_event_id, &self.epoch, ring.evicted, next);
        if let Resume::After(seq) = start
            && self.interests().missed(filter, seq)
        {
            start = Resume::Reset;
        }
        let first = match start {
            Resume::Fresh => Vec::new(),
            Resume::After(seq) => ring
                .frames
                .iter()
                .filter(|f| f.seq > seq && filter.wants(&f.scope))
                .cloned()
                .collect(),
            Resume::Reset => vec![reset_frame(next - 1)],
        };
        (first, rx)
    }
}

/// A `reset` for one tab, carrying the id `seq` so the tab's next
/// reconnect resumes from there.
fn reset_frame(seq: u64) -> Arc<Frame> {
    Arc::new(Frame {
        seq,
        event: "reset",
        data: String::new(),
        scope: Scope::All,
    })
}

/// Coalesces row updates: each row is sent at most once per interval.
#[derive(Debug)]
pub struct Coalescer {
    interval: Duration,
    rows: HashMap<Row, Slot>,
}

#[derive(Debug)]
struct Slot {
    sent_at: Instant,
    pending: bool,
}

/// A live row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Row {
    Agent(Fingerprint),
    Check(Fingerprint, String),
    /// The fleet's membership (an agent added or removed).
    List,
}

impl Coalescer {
    pub fn new(interval: Duration) -> Coalescer {
        Coalescer {
            interval,
            rows: HashMap::new(),
        }
    }

    /// An update of `row` at `now`: `true` to send it now, `false` when it
    /// was sent less than an interval ago (it is then sent by [`Coalescer::due`]).
    pub fn offer(&mut self, row: Row, now: Instant) -> bool {
        match self.rows.get_mut(&row) {
            Some(slot) if now < slot.sent_at + self.interval => {
                slot.pending = true;
                false
            }
            _ => {
                self.rows.insert(
                    row,
                    Slot {
                        sent_at: now,
                        pending: false,
                    },
                );
                true
            }
        }
    }

    /// The rows whose folded updates are due at `now` (marked sent), and
    /// forgets rows quiet for an interval.
    pub fn due(&mut self, now: Instant) -> Vec<Row> {
        let interval = self.interval;
        let mut out = Vec::new();
        self.rows.retain(|row, slot| {
            if now < slot.sent_at + interval {
                return true;
            }
            if slot.pending {
                out.push(row.clone());
                slot.pending = false;
                slot.sent_at = now;
                return true;
            }
            false
        });
        out
    }

    /// When [`Coalescer::due`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.rows
            .values()
            .filter(|s| s.pending)
            .map(|s| s.sent_at + self.interval)
            .min()
    }
}

/// What the hub remembers to tell which events change a row on screen.
#[derive(Debug, Default)]
pub struct Seen {
    /// The last state of each check of each agent, from results seen since
    /// the server started. A fleet row shows only presence and the checks'
    /// worst state, so a result in the same state as before changes nothing
    /// there; in a fleet of thousands that is nearly every result.
    states: HashMap<Fingerprint, HashMap<String, outrider_protocol::CheckState>>,
    /// The agents in the fleet: a presence of another one is a new agent,
    /// which changes what fleet pages list.
    known: HashSet<Fingerprint>,
}

impl Seen {
    /// Knowing the fleet's `known` agents.
    pub fn new(known: HashSet<Fingerprint>) -> Seen {
        Seen {
            known,
            ..Seen::default()
        }
    }

    /// Forgets a removed agent.
    pub fn removed(&mut self, fp: &Fingerprint) {
        self.known.remove(fp);
        self.states.remove(fp);
    }

    /// Whether `fp` is in the fleet as far as the hub knows.
    pub fn knows(&self, fp: &Fingerprint) -> bool {
        self.known.contains(fp)
    }

    /// The rows `event` changes; a check's state only when `page(agent)`
    /// (an open agent page shows it).
    pub fn rows_of(&mut self, event: &Event, page: impl Fn(&Fingerprint) -> bool) -> Vec<Row> {
        match event {
            Event::Presence { agent, .. } => {
                let mut rows = vec![Row::Agent(agent.clone())];
                if !self.known.contains(agent) {
                    self.known.insert(agent.clone());
                    rows.push(Row::List);
                }
                rows
            }
            Event::Result { agent, result } => {
                let mut rows = Vec::new();
                // Lookups first: a result in a known state clones nothing.
                let states = match self.states.get_mut(agent) {
                    Some(states) => states,
                    None => self.states.entry(agent.clone()).or_default(),
                };
                let before = match states.get_mut(&result.check) {
                    Some(state) => Some(std::mem::replace(state, result.state)),
                    None => states.insert(result.check.clone(), result.state),
                };
                if before != Some(result.state) {
                    rows.push(Row::Agent(agent.clone()));
                }
                if page(agent) {
                    rows.push(Row::Check(agent.clone(), result.check.clone()));
                }
                rows
            }
            _ => Vec::new(),
        }
    }
}

/// Whether some tab shows `row` (a skipped one takes a number, see
/// [`Live::shown`]): only those are coalesced and rendered.
fn wanted(live: &Live, row: &Row) -> bool {
    match row {
        // Both asked, so each skip is remembered.
        Row::Agent(fp) => live.shown(fp, Kind::Row) | live.shown(fp, Kind::Page),
        // Asked already by `Seen::rows_of`.
        Row::Check(..) => true,
        Row::List => live.listed(),
    }
}

/// Renders `row` from the store and publishes it to the tabs showing it: a
/// removed agent's fleet row as an empty hidden one (and `list`), a check
/// without a result not at all.
async fn send_row(dash: &Dashboard, row: &Row) {
    let live = &dash.live;
    let (scope, html) = match row {
        Row::List => {
            live.publish(Scope::List, "list", "fleet".to_owned());
            return;
        }
        Row::Agent(fp) => {
            let (in_fleet, on_page) = (live.shown(fp, Kind::Row), live.shown(fp, Kind::Page));
            if !in_fleet && !on_page {
                return;
            }
            match dash.app.store.fleet_row(fp).await {
                Ok(Some(found)) => {
                    let row = RowView::from(found);
                    if on_page {
                        match (PresenceTemplate { row: &row }).render() {
                            Ok(html) => live.publish(Scope::AgentPage(fp.clone()), "row", html),
                            Err(e) => tracing::warn!("dashboard live presence of {fp}: {e:#}"),
                        }
                    }
                    if !in_fleet {
                        return;
                    }
                    (
                        Scope::FleetRow(fp.clone()),
                        FleetRowTemplate { row }
                            .render()
                            .map_err(anyhow::Error::from),
                    )
                }
                // Removed: its row leaves the pages that show it.
                Ok(None) => (
                    Scope::FleetRow(fp.clone()),
                    Ok(format!("<tr id=\"agent-{fp}\" hidden></tr>")),
                ),
                Err(e) => (Scope::FleetRow(fp.clone()), Err(e)),
            }
        }
        Row::Check(fp, check) => match dash.app.store.latest_results(Some(fp.clone())).await {
            Ok(results) => match results.into_iter().find(|r| &r.check == check) {
                Some(found) => (
                    Scope::AgentPage(fp.clone()),
                    CheckStateTemplate {
                        row: CheckView::from(found),
                    }
                    .render()
                    .map_err(anyhow::Error::from),
                ),
                None => return,
            },
            Err(e) => (Scope::AgentPage(fp.clone()), Err(e)),
        },
    };
    match html {
        Ok(html) => live.publish(scope, "row", html),
        Err(e) => tracing::warn!("dashboard live row {row:?}: {e:#}"),
    }
}

/// How often the hub lets go of ended page leases.
const LEASE_SWEEP: Duration = Duration::from_secs(5);

/// The hub: event bus in, coalesced rendered rows out, until `shutdown`.
pub async fn run(dash: Arc<Dashboard>, shutdown: CancellationToken) {
    let mut events = dash.app.events.subscribe();
    let mut coalescer = Coalescer::new(ROW_INTERVAL);
    // Subscribed first, so an agent added meanwhile is in one or the other.
    let known = match dash.app.store.agents().await {
        Ok(agents) => agents.into_iter().map(|a| a.fingerprint).collect(),
        Err(e) => {
            tracing::warn!(
                "dashboard live hub: reading the fleet: {e:#}; every agent counts as new"
            );
            HashSet::new()
        }
    };
    let mut seen = Seen::new(known);
    let mut sweep = tokio::time::interval(LEASE_SWEEP);
    loop {
        let deadline = coalescer.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sweep.tick() => dash.live.expire_leases(Instant::now()),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                for row in coalescer.due(Instant::now()) {
                    send_row(&dash, &row).await;
                }
            }
            received = events.recv() => match received {
                // Another node's relay dropped events (`crate::relay`).
                Ok(event) if matches!(*event, Event::Lagged { .. }) => {
                    tracing::warn!("another node's live events were dropped on their way here; open pages reload");
                    dash.live.publish(Scope::All, "reset", String::new());
                }
                Ok(event) => {
                    let mut rows = seen.rows_of(&event, |fp| dash.live.shown(fp, Kind::Page));
                    // A goodbye may be a removal, which changes the lists.
                    if let Event::Presence { agent, presence: Presence::Deregistered, .. } = &*event
                        && seen.knows(agent)
                        && matches!(dash.app.store.agent(agent).await, Ok(None))
                    {
                        seen.removed(agent);
                        rows.push(Row::List);
                    }
                    for row in rows {
                        if wanted(&dash.live, &row) && coalescer.offer(row.clone(), Instant::now()) {
                            send_row(&dash, &row).await;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the dashboard's live hub fell behind the event bus; open pages reload");
                    dash.live.publish(Scope::All, "reset", String::new());
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The stream's query: what the tab's page shows, and where it starts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveParams {
    /// The fleet rows on the page, comma-separated fingerprints.
    rows: Option<String>,
    /// The agent whose page it is.
    agent: Option<String>,
    /// `fleet`: the page lists the fleet.
    list: Option<String>,
    /// The newest frame id when the page was rendered; `Last-Event-ID`
    /// (sent by a reconnecting `EventSource`) wins.
    after: Option<String>,
}

/// `GET /live[?rows=<fp>,..][&agent=<fp>][&list=fleet][&after=<id>]`: the
/// stream of one tab.
pub async fn stream(
    State(dash): State<Arc<Dashboard>>,
    Authed(_session): Authed,
    headers: HeaderMap,
    params: Result<Query<LiveParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, PageError> {
    let Query(params) = params.map_err(|e| {
        PageError::bad_request(format!(
            "the live stream takes only rows=, agent=, list= and after=: {}",
            e.body_text()
        ))
    })?;
    let filter = Filter::parse(
        params.rows.as_deref(),
        params.agent.as_deref(),
        params.list.as_deref(),
    )
    .map_err(|e| PageError::bad_request(format!("the live stream's address: {e}")))?;
    let filter = Arc::new(filter);
    let registered = Live::register(&dash, filter.clone());
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(params.after.as_deref());
    let (first, rx) = dash.live.subscribe(last, &filter);
    let frames = frames(first, rx, filter, dash.app.shutdown.clone());
    // `Authed` found the cookie, so there is one.
    let cookie = dash
        .sessions
        .cookie_id(&headers)
        .unwrap_or_default()
        .to_owned();
    let alive = {
        let dash = dash.clone();
        move || {
            let (dash, cookie) = (dash.clone(), cookie.clone());
            async move {
                dash.sessions
                    .find(&cookie, crate::store::now_ms())
                    .await
                    .is_some()
            }
        }
    };
    let frames = while_logged_in(frames, alive, SESSION_CHECK);
    // The interest ends with the stream.
    let frames = futures_util::StreamExt::map(frames, move |frame| {
        let _shown = &registered;
        frame
    });
    let epoch_dash = dash.clone();
    let events = futures_util::StreamExt::map(frames, move |frame| {
        Ok::<_, Infallible>(
            sse::Event::default()
                .id(epoch_dash.live.id(frame.seq))
                .event(frame.event)
                .data(&frame.data),
        )
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEPALIVE)))
}

/// `first`, then what `rx` receives that `filter` wants (a lag becomes one
/// `reset`), until `shutdown`.
fn frames(
    first: Vec<Arc<Frame>>,
    rx: broadcast::Receiver<Arc<Frame>>,
    filter: Arc<Filter>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Arc<Frame>> {
    let first = futures_util::stream::iter(first);
    let rest =
        futures_util::stream::unfold((rx, shutdown, 0u64), move |(mut rx, shutdown, last)| {
            let filter = filter.clone();
            async move {
                let frame = loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        received = rx.recv() => match received {
                            Ok(frame) if filter.wants(&frame.scope) => break frame,
                            Ok(_) => continue,
                            Err(broadcast::error::RecvError::Lagged(_)) => break reset_frame(last),
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    }
                };
                let seq = frame.seq;
                Some((frame, (rx, shutdown, seq)))
            }
        });
    futures_util::StreamExt::chain(first, rest)
}

/// `frames` while `alive()` (the tab's session exists; asking touches it,
/// so an open tab counts as use), checked at every frame and at least
/// every `check`; then one `logout` (`live.js` goes to the login form) and
/// the end.
fn while_logged_in<S, A, F>(frames: S, alive: A, check: Duration) -> impl Stream<Item = Arc<Frame>>
where
    S: Stream<Item = Arc<Frame>> + Send + 'static,
    A: Fn() -> F + Send + 'static,
    F: std::future::Future<Output = bool> + Send,
{
    use futures_util::StreamExt;
    futures_util::stream::unfold(
        (frames.boxed(), alive, 0u64, false),
        move |(mut frames, alive, last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let next = tokio::select! {
                    frame = frames.next() => Some(frame?),
                    _ = tokio::time::sleep(check) => None,
                };
                if !alive().await {
                    let logout = Arc::new(Frame {
                        seq: last,
                        event: "logout",
                        data: String::new(),
                        scope: Scope::All,
                    });
                    return Some((logout, (frames, alive, last, true)));
                }
                if let Some(frame) = next {
                    let seq = frame.seq;
                    return Some((frame, (frames, alive, seq, false)));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn fp(n: u8) -> Fingerprint {
        format!("{n:02x}23456789abcdef0123").parse().unwrap()
    }

    /// A filter wanting the fleet rows and pages of agents 1 and 2.
    fn everything() -> Filter {
        Filter {
            rows: [fp(1), fp(2)].into_iter().collect(),
            agent: Some(fp(1)),
            list: true,
        }
    }

    #[tokio::test]
    async fn a_stream_carries_only_its_pages_rows_and_a_resume_only_those() {
        let live = Live::new().unwrap();
        let (a, b) = (fp(1), fp(2));
        let page_a = Arc::new(Filter {
            rows: [a.clone()].into_iter().collect(),
            agent: None,
            list: true,
        });
        let (first, rx) = live.subscribe(None, &page_a);
        let shutdown = CancellationToken::new();
        let stream = frames(first, rx, page_a.clone(), shutdown.clone());
        futures_util::pin_mut!(stream);
        live.publish(Scope::FleetRow(b.clone()), "row", "b".into());
        live.publish(Scope::AgentPage(a.clone()), "row", "a's page".into());
        live.publish(Scope::FleetRow(a.clone()), "row", "a".into());
        live.publish(Scope::List, "list", "fleet".into());
        live.publish(Scope::All, "reset", String::new());
        let got: Vec<(&str, String)> = (&mut stream)
            .take(3)
            .map(|f| (f.event, f.data.clone()))
            .collect()
            .await;
        assert_eq!(
            got,
            [
                ("row", "a".to_owned()),
                ("list", "fleet".to_owned()),
                ("reset", String::new())
            ]
        );
        // A resume from before them gets the same three.
        let (first, _rx) = live.subscribe(Some(&live.id(0)), &page_a);
        let seqs: Vec<u64> = first.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn with_no_tab_nothing_is_shown_and_a_late_resume_of_a_skipped_row_resets() {
        let live = Live::new().unwrap();
        let (a, b) = (fp(1), fp(2));
        // No tab: neither a fleet row nor an agent page is shown.
        assert!(!live.shown(&a, Kind::Row));
        assert!(!live.shown(&a, Kind::Page));
        assert!(!live.listed());
        let page_a = Arc::new(Filter {
            rows: [a.clone()].into_iter().collect(),
            ..Filter::default()
        });
        let dash_less = |f: &Filter| live.interests().add(f, 0);
        dash_less(&page_a);
        assert!(live.shown(&a, Kind::Row));
        live.publish(Scope::FleetRow(a.clone()), "row", "a".into());
        let seen = live.newest_id();
        live.interests().remove(&page_a);
        // The tab left; a's row changed unseen, b's too.
        assert!(!live.shown(&a, Kind::Row));
        assert!(!live.shown(&b, Kind::Row));
        live.interests().add(&page_a, 0);
        let (first, _rx) = live.subscribe(Some(&seen), &page_a);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].event, "reset");
        // A tab of b's row only, from before b's skip, resets too; one
        // from after it resumes.
        let page_b = Filter {
            rows: [b.clone()].into_iter().collect(),
            ..Filter::default()
        };
        let (first, _rx) = live.subscribe(Some(&seen), &page_b);
        assert_eq!(first[0].event, "reset");
        let (first, _rx) = live.subscribe(Some(&live.newest_id()), &page_b);
        assert!(first.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_with_logout_when_its_session_ends() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let live = Live::new().unwrap();
        let all = Arc::new(everything());
        let (first, rx) = live.subscribe(None, &all);
        let logged_in = Arc::new(AtomicBool::new(true));
        let alive = {
            let logged_in = logged_in.clone();
            move || {
                let now = logged_in.load(Ordering::SeqCst);
                async move { now }
            }
        };
        let shutdown = CancellationToken::new();
        let stream = while_logged_in(frames(first, rx, all, shutdown), alive, SESSION_CHECK);
        futures_util::pin_mut!(stream);
        live.publish(Scope::FleetRow(fp(1)), "row", "a".into());
        assert_eq!(stream.next().await.unwrap().data, "a");
        // Logged out with no frame coming: the periodic check ends it.
        logged_in.store(false, Ordering::SeqCst);
        let frame = stream.next().await.unwrap();
        assert_eq!((frame.event, frame.seq), ("logout", 1));
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn resume_by_table() {
        let e = "abcd";
        for (last, evicted, next, expected) in [
            (None, 0, 10, Resume::Fresh),
            (Some("abcd-9"), 0, 10, Resume::After(9)),
            (Some("abcd-3"), 0, 10, Resume::After(3)),
            (Some("abcd-0"), 0, 10, Resume::After(0)),
            (Some("abcd-4"), 4, 10, Resume::After(4)),
            (Some("abcd-3"), 4, 10, Resume::Reset),
            (Some("abcd-10"), 0, 10, Resume::Reset),
            (Some("ffff-3"), 0, 10, Resume::Reset),
            (Some("abcd-x"), 0, 10, Resume::Reset),
            (Some("garbage"), 0, 10, Resume::Reset),
            (Some("abcd-0"), 0, 1, Resume::After(0)),
        ] {
            assert_eq!(
                resume(last, e, evicted, next),
                expected,
                "{last:?} {evicted} {next}"
            );
        }
    }

    #[tokio::test]
    async fn a_reconnect_gets_what_it_missed_or_one_reset() {
        let live = Live::new().unwrap();
        let all = Arc::new(everything());
        for i in 0..RING + 10 {
            live.publish(
                Scope::FleetRow(fp(1)),
                "row",
                format!("<tr id=\"r{i}\"></tr>"),
            );
        }
        let newest = (RING + 10) as u64;
        let (first, _rx) = live.subscribe(Some(&live.id(newest - 2)), &all);
        let seqs: Vec<u64> = first.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [newest - 1, newest]);
        // Frame 5 fell out of the ring.
        let (first, _rx) = live.subscribe(Some(&live.id(5)), &all);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].event, first[0].seq), ("reset", newest));
        // A fresh tab, then a new frame reaches it.
        let (first, rx) = live.subscribe(None, &all);
        assert!(first.is_empty());
        let shutdown = CancellationToken::new();
        let stream = frames(first, rx, all, shutdown.clone());
        futures_util::pin_mut!(stream);
        live.publish(Scope::FleetRow(fp(1)), "row", "new".into());
        let got = stream.next().await.unwrap();
        assert_eq!((got.seq, got.data.as_str()), (newest + 1, "new"));
        shutdown.cancel();
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn only_state_changes_touch_the_fleet_row_and_only_watched_agents_their_checks() {
        use outrider_protocol::CheckState::{Critical, Ok};
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let shown: Fingerprint = "1123456789abcdef0123".parse().unwrap();
        let result = |agent: &Fingerprint, check: &str, state| Event::Result {
            agent: agent.clone(),
            result: outrider_protocol::CheckResult {
                seq: 1,
                check: check.into(),
                state,
                summary: String::new(),
                long_output: String::new(),
                perfdata: Vec::new(),
                unknown_perfdata: Vec::new(),
                started_at_ms: 0,
                duration_ms: 0,
                update_event: None,
            },
        };
        let presence = Event::Presence {
            agent: fp.clone(),
            presence: outrider_protocol::api::Presence::Down,
            at_ms: 0,
        };
        let mut seen = Seen::new([fp.clone(), shown.clone()].into_iter().collect());
        let newcomer: Fingerprint = "2123456789abcdef0123".parse().unwrap();
        let newcomer_presence = Event::Presence {
            agent: newcomer.clone(),
            presence: outrider_protocol::api::Presence::Connected,
            at_ms: 0,
        };
        let watched = |f: &Fingerprint| *f == shown;
        let agent = |f: &Fingerprint| Row::Agent(f.clone());
        let check = |f: &Fingerprint, c: &str| Row::Check(f.clone(), c.into());
        for (event, rows) in [
            (result(&fp, "load", Ok), vec![agent(&fp)]),
            (result(&fp, "load", Ok), vec![]),
            (result(&fp, "disk", Ok), vec![agent(&fp)]),
            (result(&fp, "load", Critical), vec![agent(&fp)]),
            (result(&fp, "load", Critical), vec![]),
            (presence.clone(), vec![agent(&fp)]),
            // A new agent changes the fleet's lists, once.
            (newcomer_presence.clone(), vec![agent(&newcomer), Row::List]),
            (newcomer_presence, vec![agent(&newcomer)]),
            (
                result(&shown, "load", Ok),
                vec![agent(&shown), check(&shown, "load")],
            ),
            (result(&shown, "load", Ok), vec![check(&shown, "load")]),
        ] {
            assert_eq!(seen.rows_of(&event, watched), rows, "{event:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rows_are_sent_at_most_four_times_a_second_and_the_last_update_arrives() {
        let mut c = Coalescer::new(ROW_INTERVAL);
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let row = Row::Agent(fp.clone());
        let other = Row::Check(fp, "load".into());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert!(c.offer(row.clone(), ms(0)));
        assert!(c.offer(other.clone(), ms(10)), "rows coalesce separately");
        // A burst within the interval is folded into one later send.
        for n in [1, 50, 100, 249] {
            assert!(!c.offer(row.clone(), ms(n)));
        }
        assert_eq!(c.next_deadline(), Some(ms(250)));
        assert!(c.due(ms(249)).is_empty());
        assert_eq!(c.due(ms(250)), std::slice::from_ref(&row));
        // Sent at 250: the next update waits until 500.
        assert!(!c.offer(row.clone(), ms(300)));
        assert_eq!(c.next_deadline(), Some(ms(500)));
        assert_eq!(c.due(ms(500)), std::slice::from_ref(&row));
        // Quiet for an interval: forgotten, so the next update goes at once.
        assert!(c.due(ms(750)).is_empty());
        assert!(c.rows.is_empty());
        assert!(c.offer(row, ms(751)));
        // Over a second of constant updates, at most 4 sends per row.
        let mut c = Coalescer::new(ROW_INTERVAL);
        let row = Row::Check("0123456789abcdef0123".parse().unwrap(), "x".into());
        let mut sends = 0;
        for n in 0..1000 {
            sends += usize::from(c.offer(row.clone(), ms(n)));
            sends += c.due(ms(n)).len();
        }
        assert!(sends <= 4, "{sends}");
    }
}
