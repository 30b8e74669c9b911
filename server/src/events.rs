//! The live event stream: presence changes, stored results and config
//! versions, fanned out to admin subscribers (`GET /api/v1/events`, SSE).
//!
//! Invariants:
//! - Publishing never blocks and never fails: the channel is a bounded
//!   [`tokio::sync::broadcast`] ring of [`EVENT_BUFFER`] events. A subscriber
//!   that falls further behind loses the oldest events and receives one
//!   [`Event::Lagged`] saying how many — ingest is never slowed by a reader.
//! - Events are shared as `Arc`s: one allocation per event, whatever the
//!   number of subscribers.
//! - A subscriber stream ends when the server shuts down, so open SSE
//!   connections never hold up graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{self, KeepAlive, Sse};
use futures_util::Stream;
use outrider_protocol::api::{Event, Presence};
use outrider_protocol::{CheckResult, Fingerprint};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Events kept for slow subscribers before they lag.
pub const EVENT_BUFFER: usize = 4096;

/// Interval of SSE comment frames that keep idle proxies from closing the stream.
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Events relayed to the other nodes at most, waiting to be sent
/// (`crate::relay`); more are dropped, and the other nodes' subscribers
/// told they lagged.
pub const RELAY_BUFFER: usize = 8192;

/// Handle for publishing events; cheap to clone.
#[derive(Clone, Debug)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    /// With several nodes, this node's own events also go here, for the
    /// relay to the other nodes' subscribers (`crate::relay`).
    outbound: Arc<std::sync::OnceLock<mpsc::Sender<Arc<Event>>>>,
    /// Events the relay's queue had no room for since the relay last
    /// looked ([`Events::take_relay_dropped`]).
    relay_dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new(EVENT_BUFFER)
    }
}

impl Events {
    /// A channel keeping at most `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> Events {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Events {
            tx,
            outbound: Arc::default(),
            relay_dropped: Arc::default(),
        }
    }

    /// From now on this node's own events are also handed to the returned
    /// receiver (bounded by [`RELAY_BUFFER`]: when it is full an event is
    /// dropped for the other nodes, never for this one's subscribers).
    /// `None` when a relay was set up already.
    pub fn relay(&self) -> Option<mpsc::Receiver<Arc<Event>>> {
        let (tx, rx) = mpsc::channel(RELAY_BUFFER);
        self.outbound.set(tx).ok().map(|()| rx)
    }

    /// Publishes `event` to every current subscriber (and to the relay,
    /// if any); a no-op without any.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        if let Some(out) = self.outbound.get()
            && out.try_send(event.clone()).is_err()
        {
            // Full: dropped for the other nodes only (see `relay`), who
            // are told they lagged.
            self.relay_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // `send` fails only when nobody listens, which is fine.
        let _ = self.tx.send(event);
    }

    /// How many events the relay's queue dropped since the last call.
    pub fn take_relay_dropped(&self) -> u64 {
        self.relay_dropped
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes an event another node relayed, to this node's subscribers
    /// only (relaying it on would send it round for ever).
    pub fn publish_relayed(&self, event: Event) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// Publishes one stored check result of `agent` (called by ingest).
    pub fn result(&self, agent: &Fingerprint, result: &CheckResult) {
        if self.tx.receiver_count() > 0 || self.outbound.get().is_some() {
            self.publish(Event::Result {
                agent: agent.clone(),
                result: result.clone(),
            });
        }
    }

    /// Publishes a presence change of `agent` at `at_ms`.
    pub fn presence(&self, agent: &Fingerprint, presence: Presence, at_ms: i64) {
        self.publish(Event::Presence {
            agent: agent.clone(),
            presence,
            at_ms,
        });
    }

    /// A new subscription, starting with the next published event.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// `GET /api/v1/events`: the event stream as Server-Sent Events.
pub async fn handler(
    State(state): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    use futures_util::StreamExt;
    let rx = state.events.subscribe();
    let frames = subscriber_stream(rx, state.shutdown.clone()).map(|e| Ok(to_sse(&e)));
    Sse::new(frames).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
}

/// Turns a subscription into a stream of events (a lag becomes one
/// [`Event::Lagged`]) that ends at `shutdown`.
fn subscriber_stream(
    rx: broadcast::Receiver<Arc<Event>>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Arc<Event>> {
    futures_util::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return None,
            received = rx.recv() => match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Arc::new(Event::Lagged { missed })
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((event, (rx, shutdown)))
    })
}

fn to_sse(event: &Event) -> sse::Event {
    let name = match event {
        Event::Presence { .. } => "presence",
        Event::Result { .. } => "result",
        Event::Config { .. } => "config",
        Event::Lagged { .. } => "lagged",
        _ => "event",
    };
    // Serialising these plain data types cannot fail.
    let data = serde_json::to_string(event).expect("event serialises");
    sse::Event::default().event(name).data(data)
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_slow_subscriber_gets_lagged_and_never_blocks_publishing() {
        let events = Events::new(4);
        let shutdown = CancellationToken::new();
        let stream = subscriber_stream(events.subscribe(), shutdown.clone());
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        for i in 0..10 {
            events.presence(&fp, Presence::Connected, i);
        }
        futures_util::pin_mut!(stream);
        assert_eq!(*stream.next().await.unwrap(), Event::Lagged { missed: 6 });
        // The four newest survive, oldest first.
        let next = stream.next().await.unwrap();
        assert!(
            matches!(*next, Event::Presence { at_ms: 6, .. }),
            "{next:?}"
        );
        shutdown.cancel();
        let rest: Vec<_> = stream.collect().await;
        assert!(rest.len() <= 3);
    }
}
