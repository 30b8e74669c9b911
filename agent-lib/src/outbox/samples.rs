//! The metric-sample side of the outbox: batches of [`MetricSample`]s in
//! their own spool, `<spool>/metrics/`, with their own numbering.
//!
//! Why apart from the check results:
//! - The server acks by high-water mark (`acked_seq`): samples held back
//!   from a server that cannot take them must not sit between results in
//!   one numbering, or the ack of a later result would delete them.
//! - An older library generation (a rollback) lists only `*.seg` files of
//!   `<spool>/` and reads each record as a check result; a samples record
//!   there would be damage to it and cost the results behind it in the same
//!   segment (see `spool/record.rs`). It never looks into `metrics/`, so
//!   after a rollback the samples simply wait, and the next generation that
//!   knows them finds them again.
//!
//! Sending: batches leave only in a session whose agreed capabilities hold
//! [`SAMPLES_CAPABILITY`]. No protocol message carries samples yet and this
//! agent does not announce the capability, so today samples stay spooled,
//! bounded by their own cap (a quarter of `spool_max_mb`, see
//! [`split_limits`]); batches evicted to respect it are counted and
//! reported like evicted results. The batches of one session go out in
//! order; a reconnect resends every un-acked batch (seq lets a server
//! deduplicate).

use std::path::Path;
use std::sync::Arc;

use outrider_protocol::MAX_MESSAGE_BYTES;

use crate::config::SpoolLimits;
use crate::error::AgentError;
use crate::host::HostHooks;
use crate::spool::{Evicted, Kind, MetricSample, Payload, Position, SampleBatch, Spool};

/// Capability a server must announce (and this agent agree to) before any
/// metric sample is sent to it (`AgentMessage::Samples`).
pub const SAMPLES_CAPABILITY: &str = outrider_protocol::capability::METRIC_SAMPLES;
/// Directory of the samples spool, inside the results spool's directory.
pub const SAMPLES_DIR: &str = "metrics";
/// Most encoded bytes of one batch, so a batch always fits one frame with
/// room for its envelope.
pub const MAX_BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;
/// Room in a batch for `{"kind":"samples","seq":N,"samples":[…]}` around
/// the samples.
const BATCH_ENVELOPE_BYTES: usize = 64;
/// Longest metric name accepted.
pub const MAX_NAME_BYTES: usize = 1024;

/// Splits the configured spool limits between check results (three
/// quarters) and metric samples (one quarter), so both together stay under
/// `spool_max_mb`.
pub fn split_limits(limits: SpoolLimits) -> (SpoolLimits, SpoolLimits) {
    let samples = limits.cap_bytes / 4;
    (
        SpoolLimits {
            cap_bytes: limits.cap_bytes - samples,
            ..limits
        },
        SpoolLimits {
            cap_bytes: samples,
            ..limits
        },
    )
}

/// What pushing samples did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Batches written.
    pub batches: u64,
    /// Batches evicted (oldest first) to stay under the cap.
    pub evicted: Evicted,
    /// Batches the spool could not write (counted, logged once per streak).
    pub lost: u64,
}

/// The samples spool and its numbering; see the module docs.
#[derive(Debug)]
pub struct SampleOutbox {
    spool: Spool,
    next_seq: u64,
    /// Highest seq already sent in the current session.
    sent_up_to: u64,
    cursor: Option<Position>,
    /// Whether the last write failed (a failure is logged once per streak).
    failing: bool,
    hooks: Arc<dyn HostHooks>,
}

impl SampleOutbox {
    /// Opens the samples spool under the results spool directory `dir`.
    /// Fails only when the directory cannot be created or listed.
    pub fn open(
        dir: &Path,
        limits: SpoolLimits,
        hooks: Arc<dyn HostHooks>,
    ) -> std::io::Result<SampleOutbox> {
        let spool = Spool::open(&dir.join(SAMPLES_DIR), Kind::Samples, limits, hooks.clone())?;
        let meta = spool.meta();
        let next_seq = meta
            .next_seq
            .max(spool.last_seq().map_or(1, |s| s.saturating_add(1)))
            .max(meta.acked_seq.saturating_add(1));
        Ok(SampleOutbox {
            spool,
            next_seq,
            sent_up_to: 0,
            cursor: None,
            failing: false,
            hooks,
        })
    }

    /// Stores `samples` in as few batches as fit [`MAX_BATCH_BYTES`] each.
    ///
    /// Fails, storing nothing, when a sample cannot be stored: a value that
    /// is not finite, an empty name or one longer than [`MAX_NAME_BYTES`];
    /// the error names the sample.
    pub fn push(&mut self, samples: Vec<MetricSample>) -> Result<Pushed, AgentError> {
        let sizes = check(&samples)?;
        let mut pushed = Pushed::default();
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (sample, len) in samples.into_iter().zip(sizes) {
            if !batch.is_empty() && bytes + len > MAX_BATCH_BYTES - BATCH_ENVELOPE_BYTES {
                self.store(std::mem::take(&mut batch), &mut pushed);
                bytes = 0;
            }
            bytes += len;
            batch.push(sample);
        }
        if !batch.is_empty() {
            self.store(batch, &mut pushed);
        }
        Ok(pushed)
    }

    fn store(&mut self, samples: Vec<MetricSample>, pushed: &mut Pushed) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        match self
            .spool
            .append(&Payload::Samples(SampleBatch { seq, samples }))
        {
            Ok(evicted) => {
                self.failing = false;
                pushed.batches += 1;
                if evicted.count > 0 {
                    if pushed.evicted.count == 0 {
                        pushed.evicted.first_seq = evicted.first_seq;
                    }
                    pushed.evicted.count += evicted.count;
                    pushed.evicted.last_seq = evicted.last_seq;
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    self.hooks.error(&format!(
                        "spool: cannot store metric sample batch seq {seq} ({e}); samples are \
                         lost until the spool is writable again"
                    ));
                }
                pushed.lost += 1;
            }
        }
    }

    /// The next batches not yet sent in this session (≤ `max_batches`),
    /// marked as sent; empty when all is sent or when `agreed` (the
    /// session's capabilities) lacks [`SAMPLES_CAPABILITY`].
    pub fn next_batches(&mut self, agreed: &[String], max_batches: usize) -> Vec<SampleBatch> {
        if !agreed.iter().any(|c| c == SAMPLES_CAPABILITY) {
            return Vec::new();
        }
        let floor = self.sent_up_to.max(self.spool.meta().acked_seq);
        let mut batches = Vec::new();
        let mut cursor = self.cursor;
        self.spool.read_from(self.cursor, |payload, pos| {
            let Payload::Samples(batch) = payload else {
                // The spool hands out only its own kind.
                return true;
            };
            if batch.seq > floor {
                if batches.len() == max_batches {
                    return false;
                }
                batches.push(batch);
            }
            cursor = Some(pos);
            true
        });
        self.cursor = cursor;
        if let Some(last) = batches.last() {
            self.sent_up_to = last.seq;
        }
        batches
    }

    /// The server stored every batch up to `up_to`: they are deleted.
    pub fn ack(&mut self, up_to: u64) {
        self.spool.ack(up_to.min(self.next_seq.saturating_sub(1)));
    }

    /// A new session: every un-acked batch is to be sent again.
    pub fn resend(&mut self) {
        self.sent_up_to = 0;
        self.cursor = None;
    }

    /// Un-acked batches stored.
    pub fn len(&self) -> u64 {
        self.spool.unacked()
    }

    /// True when no batch waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cap of the samples spool, in bytes.
    pub fn cap_bytes(&self) -> u64 {
        self.spool.limits().cap_bytes
    }

    /// Persists the numbering and fsyncs everything (end of a generation).
    pub fn sync(&mut self) {
        self.spool.set_numbering(self.next_seq, true, 0);
        self.spool.sync();
    }

    /// Whether a sealed segment waits for its fsync.
    pub fn sealed_is_empty(&self) -> bool {
        self.spool.sealed_is_empty()
    }

    /// Segments sealed since the last call, to fsync off the runtime thread.
    pub fn take_sealed(&mut self) -> Option<crate::spool::Sealed> {
        self.spool.take_sealed()
    }
}

/// Checks that every sample can be stored; returns each one's encoded size.
/// Fails naming the first that cannot (see [`SampleOutbox::push`]).
pub fn check(samples: &[MetricSample]) -> Result<Vec<usize>, AgentError> {
    let mut sizes = Vec::with_capacity(samples.len());
    for s in samples {
        let reason = if s.name.is_empty() {
            Some("has an empty name".to_owned())
        } else if s.name.len() > MAX_NAME_BYTES {
            Some(format!("has a name longer than {MAX_NAME_BYTES} bytes"))
        } else if !s.value.is_finite() {
            Some(format!("has the value {}, which is not finite", s.value))
        } else {
            None
        };
        let len = serde_json::to_vec(s).map_or(usize::MAX, |b| b.len() + 1);
        let reason = reason.or_else(|| {
            (len > MAX_BATCH_BYTES - BATCH_ENVELOPE_BYTES)
                .then(|| format!("takes {len} bytes, more than a batch may hold"))
        });
        if let Some(reason) = reason {
            return Err(AgentError::MetricSample {
                name: s.name.chars().take(80).collect(),
                reason,
            });
        }
        sizes.push(len);
    }
    Ok(sizes)
}
