//! The live stream: `GET /live`, one server-sent-event stream per tab.
//!
//! A hub task subscribes to the server's event bus (`server/src/events.rs`)
//! and turns presence changes and results into rendered rows:
//! `agent-<fp>` (the fleet row, `fleet_row.html`; with `presence-<fp>`,
//! `presence.html`, when the agent's page is open) and `check-<fp>-<check>`
//! (a check's state on the agent page, `check_state.html`). `live.js`
//! replaces the element of the same id.
//!
//! Invariants:
//! - Row updates are coalesced: a row is sent at most once per
//!   [`ROW_INTERVAL`] (4 per second); updates in between are folded into
//!   one sent when the interval ends, rendered from the store then, so the
//!   last state always arrives.
//! - Every frame carries an id `<epoch>-<seq>` (`epoch` is random per
//!   server run) and is kept in a ring of the last [`RING`] frames. A
//!   reconnect with `Last-Event-ID` gets the frames after it; an id that
//!   fell out of the ring, is of another run, or does not parse gets one
//!   `reset` (the page reloads), as does a subscriber or hub that lagged.
//! - A stream lives no longer than its session: checked at every frame and
//!   every [`SESSION_CHECK`], it ends with one `logout` (the page goes to
//!   the login form). An open tab counts as use of its session, so a wall
//!   screen stays logged in until `--dashboard-session-secs`.
//! - Publishing never blocks: the ring is bounded, subscribers read a
//!   bounded broadcast channel, and the stream ends at shutdown.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{self, KeepAlive, Sse};
use futures_util::Stream;
use outrider_protocol::Fingerprint;
use outrider_protocol::api::Event;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// One sent event.
#[derive(Debug)]
pub struct Frame {
    pub seq: u64,
    /// `row` or `reset`.
    pub event: &'static str,
    pub data: String,
}

#[derive(Debug)]
struct Ring {
    frames: VecDeque<Arc<Frame>>,
    next_seq: u64,
}

/// The hub's ring and fan-out.
#[derive(Debug)]
pub struct Live {
    epoch: String,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Frame>>,
    /// Agents whose page is open, with how many tabs show it: only their
    /// check states are rendered.
    watched: Mutex<HashMap<Fingerprint, usize>>,
}

/// One tab's interest in an agent's page; dropping it ends the interest.
#[derive(Debug)]
pub struct Watch {
    live: Arc<Dashboard>,
    agent: Fingerprint,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self
            .live
            .live
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = watched.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.agent);
            }
        }
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
/// `epoch` holding frames from `oldest` (`None`: empty) to before `next`.
pub fn resume(last_event_id: Option<&str>, epoch: &str, oldest: Option<u64>, next: u64) -> Resume {
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
    if seq >= next {
        return Resume::Reset;
    }
    // Frames seq+1 .. next must all still be in the ring.
    match oldest {
        Some(oldest) if seq + 1 < oldest => Resume::Reset,
        None if seq + 1 < next => Resume::Reset,
        _ => Resume::After(seq),
    }
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
                next_seq: 1,
            }),
            tx,
            watched: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a tab shows agent `fp`'s page.
    pub fn is_watched(&self, fp: &Fingerprint) -> bool {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(fp)
    }

    /// Records that a tab shows agent `fp`'s page until the guard drops.
    fn watch(dash: &Arc<Dashboard>, fp: Fingerprint) -> Watch {
        *dash
            .live
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(fp.clone())
            .or_insert(0) += 1;
        Watch {
            live: dash.clone(),
            agent: fp,
        }
    }

    /// The SSE id of frame `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// Appends a frame to the ring and sends it to every subscriber.
    pub fn publish(&self, event: &'static str, data: String) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let frame = Arc::new(Frame {
            seq: ring.next_seq,
            event,
            data,
        });
        ring.next_seq += 1;
        if ring.frames.len() == RING {
            ring.frames.pop_front();
        }
        ring.frames.push_back(frame.clone());
        // Sent under the lock, so a subscriber taken under it misses and
        // doubles nothing. Fails only without subscribers.
        let _ = self.tx.send(frame);
    }

    /// A subscription for a tab presenting `last_event_id`: the frames to
    /// send first (a `reset` or the missed ones) and the receiver of new ones.
    pub fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (Vec<Arc<Frame>>, broadcast::Receiver<Arc<Frame>>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let oldest = ring.frames.front().map(|f| f.seq);
        let first = match resume(last_event_id, &self.epoch, oldest, ring.next_seq) {
            Resume::Fresh => Vec::new(),
            Resume::After(seq) => ring
                .frames
                .iter()
                .filter(|f| f.seq > seq)
                .cloned()
                .collect(),
            Resume::Reset => vec![self.reset_frame(ring.next_seq)],
        };
        (first, rx)
    }

    /// A `reset` for one tab, carrying the id of the newest frame so the
    /// tab's next reconnect resumes from there.
    fn reset_frame(&self, next_seq: u64) -> Arc<Frame> {
        Arc::new(Frame {
            seq: next_seq - 1,
            event: "reset",
            data: String::new(),
        })
    }
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
}

impl Seen {
    /// The rows `event` changes; a check's state is rendered only when
    /// `watched(agent)`, as only an open agent page shows it.
    pub fn rows_of(&mut self, event: &Event, watched: impl Fn(&Fingerprint) -> bool) -> Vec<Row> {
        match event {
            Event::Presence { agent, .. } => vec![Row::Agent(agent.clone())],
            Event::Result { agent, result } => {
                let mut rows = Vec::new();
                let before = self
                    .states
                    .entry(agent.clone())
                    .or_default()
                    .insert(result.check.clone(), result.state);
                if before != Some(result.state) {
                    rows.push(Row::Agent(agent.clone()));
                }
                if watched(agent) {
                    rows.push(Row::Check(agent.clone(), result.check.clone()));
                }
                rows
            }
            _ => Vec::new(),
        }
    }
}

/// Renders `row` from the store and publishes it: a removed agent's row as
/// an empty hidden one, a check without a result not at all.
async fn send_row(dash: &Dashboard, row: &Row) {
    let html = match row {
        Row::Agent(fp) => match dash.app.store.fleet_row(fp).await {
            Ok(Some(found)) => {
                let row = RowView::from(found);
                // An open agent page shows the presence too.
                if dash.live.is_watched(fp) {
                    match (PresenceTemplate { row: &row }).render() {
                        Ok(html) => dash.live.publish("row", html),
                        Err(e) => tracing::warn!("dashboard live presence of {fp}: {e:#}"),
                    }
                }
                FleetRowTemplate { row }
                    .render()
                    .map_err(anyhow::Error::from)
            }
            // Removed: its row leaves the pages that show it.
            Ok(None) => Ok(format!("<tr id=\"agent-{fp}\" hidden></tr>")),
            Err(e) => Err(e),
        },
        Row::Check(fp, check) => match dash.app.store.latest_results(Some(fp.clone())).await {
            Ok(results) => match results.into_iter().find(|r| &r.check == check) {
                Some(found) => CheckStateTemplate {
                    row: CheckView::from(found),
                }
                .render()
                .map_err(anyhow::Error::from),
                None => return,
            },
            Err(e) => Err(e),
        },
    };
    match html {
        Ok(html) => dash.live.publish("row", html),
        Err(e) => tracing::warn!("dashboard live row {row:?}: {e:#}"),
    }
}

/// The hub: event bus in, coalesced rendered rows out, until `shutdown`.
pub async fn run(dash: Arc<Dashboard>, shutdown: CancellationToken) {
    let mut events = dash.app.events.subscribe();
    let mut coalescer = Coalescer::new(ROW_INTERVAL);
    let mut seen = Seen::default();
    loop {
        let deadline = coalescer.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                for row in coalescer.due(Instant::now()) {
                    send_row(&dash, &row).await;
                }
            }
            received = events.recv() => match received {
                Ok(event) => {
                    for row in seen.rows_of(&event, |fp| dash.live.is_watched(fp)) {
                        if coalescer.offer(row.clone(), Instant::now()) {
                            send_row(&dash, &row).await;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the dashboard's live hub fell behind the event bus; open pages reload");
                    dash.live.publish("reset", String::new());
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The stream's query: the agent whose page the tab shows, if any.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveParams {
    agent: Option<String>,
}

/// `GET /live[?agent=<fp>]`: the stream of one tab.
pub async fn stream(
    State(dash): State<Arc<Dashboard>>,
    Authed(_session): Authed,
    headers: HeaderMap,
    params: Result<Query<LiveParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, PageError> {
    let Query(params) = params.map_err(|e| {
        PageError::bad_request(format!(
            "the live stream takes only ?agent=: {}",
            e.body_text()
        ))
    })?;
    let watch = match params.agent {
        Some(text) => {
            let fp: Fingerprint = text.parse().map_err(|e| {
                PageError::bad_request(format!("agent {text:?} is not a fingerprint: {e}"))
            })?;
            Some(Live::watch(&dash, fp))
        }
        None => None,
    };
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (first, rx) = dash.live.subscribe(last);
    let frames = frames(first, rx, dash.app.shutdown.clone());
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
    // The watch ends with the stream.
    let frames = futures_util::StreamExt::map(frames, move |frame| {
        let _watching = &watch;
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

/// `first`, then what `rx` receives (a lag becomes one `reset`), until
/// `shutdown`.
fn frames(
    first: Vec<Arc<Frame>>,
    rx: broadcast::Receiver<Arc<Frame>>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Arc<Frame>> {
    let first = futures_util::stream::iter(first);
    let rest = futures_util::stream::unfold(
        (rx, shutdown, 0u64),
        |(mut rx, shutdown, last)| async move {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => return None,
                received = rx.recv() => match received {
                    Ok(frame) => frame,
                    Err(broadcast::error::RecvError::Lagged(_)) => Arc::new(Frame {
                        seq: last,
                        event: "reset",
                        data: String::new(),
                    }),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let seq = frame.seq;
            Some((frame, (rx, shutdown, seq)))
        },
    );
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

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_with_logout_when_its_session_ends() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let live = Live::new().unwrap();
        let (first, rx) = live.subscribe(None);
        let logged_in = Arc::new(AtomicBool::new(true));
        let alive = {
            let logged_in = logged_in.clone();
            move || {
                let now = logged_in.load(Ordering::SeqCst);
                async move { now }
            }
        };
        let shutdown = CancellationToken::new();
        let stream = while_logged_in(frames(first, rx, shutdown), alive, SESSION_CHECK);
        futures_util::pin_mut!(stream);
        live.publish("row", "a".into());
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
        for (last, oldest, next, expected) in [
            (None, Some(1), 10, Resume::Fresh),
            (Some("abcd-9"), Some(1), 10, Resume::After(9)),
            (Some("abcd-3"), Some(1), 10, Resume::After(3)),
            (Some("abcd-0"), Some(1), 10, Resume::After(0)),
            (Some("abcd-4"), Some(5), 10, Resume::After(4)),
            (Some("abcd-3"), Some(5), 10, Resume::Reset),
            (Some("abcd-10"), Some(1), 10, Resume::Reset),
            (Some("ffff-3"), Some(1), 10, Resume::Reset),
            (Some("abcd-x"), Some(1), 10, Resume::Reset),
            (Some("garbage"), Some(1), 10, Resume::Reset),
            (Some("abcd-0"), None, 1, Resume::After(0)),
        ] {
            assert_eq!(
                resume(last, e, oldest, next),
                expected,
                "{last:?} {oldest:?} {next}"
            );
        }
    }

    #[tokio::test]
    async fn a_reconnect_gets_what_it_missed_or_one_reset() {
        let live = Live::new().unwrap();
        for i in 0..RING + 10 {
            live.publish("row", format!("<tr id=\"r{i}\"></tr>"));
        }
        let newest = (RING + 10) as u64;
        let (first, _rx) = live.subscribe(Some(&live.id(newest - 2)));
        let seqs: Vec<u64> = first.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [newest - 1, newest]);
        // Frame 5 fell out of the ring.
        let (first, _rx) = live.subscribe(Some(&live.id(5)));
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].event, first[0].seq), ("reset", newest));
        // A fresh tab, then a new frame reaches it.
        let (first, rx) = live.subscribe(None);
        assert!(first.is_empty());
        let shutdown = CancellationToken::new();
        let stream = frames(first, rx, shutdown.clone());
        futures_util::pin_mut!(stream);
        live.publish("row", "new".into());
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
        let mut seen = Seen::default();
        let watched = |f: &Fingerprint| *f == shown;
        let agent = |f: &Fingerprint| Row::Agent(f.clone());
        let check = |f: &Fingerprint, c: &str| Row::Check(f.clone(), c.into());
        for (event, rows) in [
            (result(&fp, "load", Ok), vec![agent(&fp)]),
            (result(&fp, "load", Ok), vec![]),
            (result(&fp, "disk", Ok), vec![agent(&fp)]),
            (result(&fp, "load", Critical), vec![agent(&fp)]),
            (result(&fp, "load", Critical), vec![]),
            (presence, vec![agent(&fp)]),
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
