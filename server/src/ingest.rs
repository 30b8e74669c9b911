//! Result ingest: the one path from an agent's batch to everything that
//! consumes results.
//!
//! A batch is first committed ([`crate::store::Store::ingest`]: one
//! transaction, deduplicated by `(agent, seq)`), then only what was newly
//! stored is handed, in batch order, to each [`Sink`] of
//! [`crate::AppState::sinks`]. The ack goes to the agent after that, so a
//! result the agent resends after a lost ack reaches no sink twice.
//!
//! Before that, each result's check name is judged ([`names`]): a result
//! under a name the agent has no reason to use is not stored, but its
//! sequence number is acknowledged with the batch, so the agent's spool
//! lets go of it instead of resending it forever; it is counted on
//! `/metrics` by reason and logged once per agent and name. The store
//! then bounds what is stored (series per agent, future timestamps; see
//! `backend/results.rs`).
//!
//! Each sink has its own delivery guarantee: the live event stream is lossy
//! by design (a slow subscriber misses events), the Graphite queue drops
//! its oldest lines when carbon is away, remote_write queues on disk up to
//! its byte cap (`metrics/remote_write.rs`), and alerting is handed every
//! committed result directly. Nothing subscribes to the live event stream
//! to alert: a dropped event would be a missed or stuck alert.

pub mod names;
pub mod samples;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use outrider_protocol::{CheckResult, Fingerprint};
use tracing::warn;

use crate::AppState;
use crate::alerts::Alerts;
use crate::metrics::{graphite, remote_write};
use crate::store::IngestLimits;

/// A consumer of committed results.
#[derive(Clone, Debug)]
pub enum Sink {
    /// The live event stream (`GET /api/v1/events`).
    LiveEvents,
    /// The Graphite forwarding queue (`--graphite-addr`).
    Graphite(Arc<graphite::Queue>),
    /// Prometheus remote_write forwarding (`--remote-write-url`).
    RemoteWrite(Arc<remote_write::Feed>),
    /// The alert engine ([`crate::alerts`]).
    Alerting(Arc<Alerts>),
}

/// The sinks of a server: the live events and alerting always, Graphite
/// and remote_write when forwarding is configured.
pub fn sinks(
    graphite: Option<Arc<graphite::Queue>>,
    remote_write: Option<Arc<remote_write::Feed>>,
    alerts: Arc<Alerts>,
) -> Vec<Sink> {
    let mut sinks = vec![Sink::LiveEvents];
    sinks.extend(graphite.map(Sink::Graphite));
    sinks.extend(remote_write.map(Sink::RemoteWrite));
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
    let (accepted, refused_up_to) = screen(state, fp, results);
    let limits = IngestLimits {
        max_series: state.metrics.config.max_series_per_agent,
        refused_up_to,
    };
    let ingested = state
        .store
        .ingest_with(fp, accepted, limits)
        .await
        .context("storing a result batch")?;
    let counters = &state.metrics.counters;
    counters
        .results
        .fetch_add(ingested.stored.len() as u64, Ordering::Relaxed);
    counters
        .samples
        .fetch_add(ingested.samples as u64, Ordering::Relaxed);
    counters
        .series_dropped
        .fetch_add(ingested.series_dropped as u64, Ordering::Relaxed);
    counters
        .future_clamped
        .fetch_add(ingested.clamped as u64, Ordering::Relaxed);
    if !ingested.stored.is_empty() {
        for sink in &state.sinks {
            deliver(state, sink, fp, &ingested.stored).await;
        }
    }
    Ok(ingested.acked_seq)
}

/// Stores sample batch `batch` of agent `fp`: screens it
/// ([`samples::screen`], refusals counted), stores the rest once
/// (`store/samples.rs`) and hands what was newly stored to the Graphite
/// and remote_write copies. Returns the sequence number to acknowledge, only once committed.
///
/// Fails when the store fails; nothing of the batch is stored then.
pub async fn samples(
    state: &AppState,
    fp: &Fingerprint,
    batch: outrider_protocol::SampleBatch,
) -> anyhow::Result<u64> {
    let (kept, refused) = samples::screen(batch.samples);
    let counters = &state.metrics.counters;
    let mut refused_total = 0;
    for (i, n) in refused.iter().enumerate() {
        counters.samples_refused[i].fetch_add(*n, Ordering::Relaxed);
        refused_total += n;
    }
    if refused_total > 0 {
        tracing::debug!(fingerprint = %fp, seq = batch.seq, refused = refused_total, "metric samples refused (counted in outrider_refused_metric_samples_total)");
    }
    let ingested = state
        .store
        .ingest_samples(
            fp,
            batch.seq,
            kept,
            state.metrics.config.max_series_per_agent,
        )
        .await
        .context("storing a metric sample batch")?;
    counters
        .metric_samples
        .fetch_add(ingested.written as u64, Ordering::Relaxed);
    counters
        .series_dropped
        .fetch_add(ingested.series_dropped as u64, Ordering::Relaxed);
    if ingested.fresh {
        for sink in &state.sinks {
            match sink {
                Sink::Graphite(queue) => queue.push_samples(fp, &ingested.stored),
                Sink::RemoteWrite(feed) => feed.push_samples(fp, &ingested.stored),
                Sink::LiveEvents | Sink::Alerting(_) => {}
            }
        }
    }
    Ok(batch.seq)
}

/// Splits a batch into the results whose names [`names::judge`] accepts
/// and the highest sequence number of those it refused (0: none), counting
/// and logging each refusal.
fn screen(
    state: &AppState,
    fp: &Fingerprint,
    results: Vec<CheckResult>,
) -> (Vec<CheckResult>, u64) {
    let config = state.configs.get(fp);
    let removed = state.configs.removed(fp);
    let now_ms = crate::store::now_ms();
    let mut refused_up_to = 0;
    let mut accepted = Vec::with_capacity(results.len());
    for r in results {
        let membership = names::Membership {
            configured: config
                .as_ref()
                .is_some_and(|c| crate::configs::reports_under(c, &r.check)),
            removed_at_ms: removed
                .iter()
                .find(|(name, _)| *name == r.check)
                .map(|(_, at)| *at),
            now_ms,
        };
        match names::judge(&r.check, membership, state.config.result_names) {
            Ok(()) => accepted.push(r),
            Err(refusal) => {
                refused_up_to = refused_up_to.max(r.seq);
                // Cut short (a refused name may be up to a frame long) and
                // Debug-formatted below, so control characters are escaped.
                let shown: String = r.check.chars().take(80).collect();
                if state.metrics.counters.refused_result(refusal, fp, &shown) {
                    warn!(
                        fingerprint = %fp,
                        check = ?shown,
                        "result not stored: {refusal} (counted in outrider_refused_results_total; logged once per agent and name)"
                    );
                }
            }
        }
    }
    (accepted, refused_up_to)
}

async fn deliver(state: &AppState, sink: &Sink, fp: &Fingerprint, stored: &[CheckResult]) {
    match sink {
        Sink::LiveEvents => {
            for result in stored {
                state.events.result(fp, result);
            }
        }
        Sink::Graphite(queue) => queue.push_results(fp, stored),
        Sink::RemoteWrite(feed) => feed.push_results(fp, stored),
        Sink::Alerting(alerts) => alerts.results(fp, stored).await,
    }
}
