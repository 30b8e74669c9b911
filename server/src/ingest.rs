//! Result ingest: the one path from an agent's batch to everything that
//! consumes results.
//!
//! A batch is first committed ([`crate::store::Store::ingest`]: one
//! transaction, deduplicated by `(agent, seq)`), then only what was newly
//! stored is handed, in batch order, to each [`Sink`] of
//! [`crate::AppState::sinks`]. The ack goes to the agent after that, so a
//! result the agent resends after a lost ack reaches no sink twice.
//!
//! Each sink has its own delivery guarantee: the live event stream is lossy
//! by design (a slow subscriber misses events), the Graphite queue drops
//! its oldest lines when carbon is away, and alerting is handed every
//! committed result directly. Nothing subscribes to the live event stream
//! to alert: a dropped event would be a missed or stuck alert.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use outrider_protocol::{CheckResult, Fingerprint};

use crate::AppState;
use crate::alerts::Alerts;
use crate::metrics::graphite;

/// A consumer of committed results.
#[derive(Clone, Debug)]
pub enum Sink {
    /// The live event stream (`GET /api/v1/events`).
    LiveEvents,
    /// The Graphite forwarding queue (`--graphite-addr`).
    Graphite(Arc<graphite::Queue>),
    /// The alert engine ([`crate::alerts`]).
    Alerting(Arc<Alerts>),
}

/// The sinks of a server: the live events and alerting always, Graphite
/// when forwarding is configured.
pub fn sinks(graphite: Option<Arc<graphite::Queue>>, alerts: Arc<Alerts>) -> Vec<Sink> {
    let mut sinks = vec![Sink::LiveEvents];
    sinks.extend(graphite.map(Sink::Graphite));
    sinks.push(Sink::Alerting(alerts));
    sinks
}

/// Stores a batch from agent `fp` and hands what was newly stored to every
/// sink. Returns the sequence number to acknowledge, and only once the
/// batch's transaction committed, so nothing acked can be lost.
///
/// Fails when the store fails; nothing of the batch is stored then, and no
/// sink sees any of it.
pub async fn results(
    state: &AppState,
    fp: &Fingerprint,
    results: Vec<CheckResult>,
) -> anyhow::Result<u64> {
    let ingested = state
        .store
        .ingest(fp, results)
        .await
        .context("storing a result batch")?;
    let counters = &state.metrics.counters;
    counters
        .results
        .fetch_add(ingested.stored.len() as u64, Ordering::Relaxed);
    counters
        .samples
        .fetch_add(ingested.samples as u64, Ordering::Relaxed);
    if !ingested.stored.is_empty() {
        for sink in &state.sinks {
            deliver(state, sink, fp, &ingested.stored).await;
        }
    }
    Ok(ingested.acked_seq)
}

async fn deliver(state: &AppState, sink: &Sink, fp: &Fingerprint, stored: &[CheckResult]) {
    match sink {
        Sink::LiveEvents => {
            for result in stored {
                state.events.result(fp, result);
            }
        }
        Sink::Graphite(queue) => queue.push_results(fp, stored),
        Sink::Alerting(alerts) => alerts.results(fp, stored).await,
    }
}
