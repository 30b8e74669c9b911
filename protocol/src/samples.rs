//! Metric samples on the wire: [`crate::AgentMessage::Samples`] carries one
//! [`SampleBatch`] of the agent's samples spool (`agent-lib/src/outbox/
//! samples.rs`), answered by [`crate::ServerMessage::SamplesAck`] once
//! stored; sent only in sessions that agreed
//! [`crate::capability::METRIC_SAMPLES`].
//!
//! These are also the spool's own record types (`agent-lib/src/spool/
//! record.rs` re-exports them), so what is spooled is exactly what is sent.

use serde::{Deserialize, Serialize};

/// Most samples of one batch the server stores; the rest of a bigger batch
/// is counted as refused (the agent splits batches far below this: one
/// batch is at most half a frame).
pub const MAX_BATCH_SAMPLES: usize = 16_384;

/// One metric sample, as a collector's StatsD or Graphite listener produces
/// it after aggregating a flush interval. Field for field the listeners'
/// `Sample` (`local-metrics/src/sample.rs`), so mapping one onto the other
/// copies and loses nothing: the kind is kept by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    /// Series name (`api.latency.p90`), without the tags.
    pub name: String,
    /// Tags (DogStatsD `#k:v`, Graphite 1.1 `;k=v`) in the listener's order;
    /// one key may appear with several values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<MetricTag>,
    /// The aggregated value; finite (JSON has no NaN or infinity).
    pub value: f64,
    /// What the value is, as the listener names it (`counter`, `gauge`,
    /// `timer`, `set`, `graphite`); empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Unit of measure in perfdata terms (`ms`), empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// Unix milliseconds: the flush time, or a Graphite line's own time.
    pub timestamp_ms: i64,
}

/// One tag of a sample; a DogStatsD tag without `:` has an empty value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MetricTag {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// Metric samples spooled and sent together under one sequence number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleBatch {
    /// Sequence number in the samples spool's own numbering (not the
    /// results'): the server acknowledges up to it and drops a batch it
    /// already stored.
    pub seq: u64,
    pub samples: Vec<MetricSample>,
}
