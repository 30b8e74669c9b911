//! The outbox: sequence numbering and batching over the on-disk [`Spool`].
//!
//! It holds two spools: check results in `<data_dir>/spool/` (the layout
//! every earlier build reads) and metric sample batches in
//! `<data_dir>/spool/metrics/`, with their own numbering, their own quarter
//! of the size cap and their own capability gate ([`samples`] says why).
//! What follows is about results; samples follow the same rules except
//! where `samples.rs` says otherwise.
//!
//! Invariants:
//! - Every result gets the next sequence number; numbers strictly increase
//!   and are never reused: the counter is derived on open from the spool
//!   (`meta.json` and the newest record) and the state blob, whichever is
//!   higher.
//! - Results stay in the spool, in sequence order, until an `Ack`/`Welcome`
//!   covers them; on every (re)connect all of them are resent from disk (the
//!   server dedups by seq). Nothing un-acked lives only in memory, so a
//!   crash, a restart or a hot swap loses nothing the spool held.
//! - Bounded: the spool has a byte cap; results evicted to respect it, or
//!   lost because the disk refused a write, are counted and reported as a
//!   WARNING result of [`SPOOL_CHECK`] (and logged), never silently.
//! - A cold start (no spool numbering, no state blob) numbers from 1; the
//!   first `Welcome` shifts every stored number above the server's
//!   `acked_seq`, so a reinstalled agent is not mistaken for a replay.
//! - The state blob still carries the newest [`STATE_UNACKED_MAX`] un-acked
//!   results, for a generation without a spool (rollback to an older build);
//!   a generation with a spool imports from a blob only what its spool lacks.
//!   The outbox neither reads nor writes the blob: it takes and returns a
//!   [`Handover`] and the agent (`agent.rs`) assembles the blob (`state.rs`),
//!   so the modules the blob carries do not depend on it.
//!
//! Locking: a std mutex held only for the bookkeeping and the spool's file
//! I/O (small appends, bounded batch reads), never across an await.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use outrider_protocol::{CheckResult, CheckState, MAX_MESSAGE_BYTES};
use tokio::sync::Notify;

use crate::error::AgentError;
use crate::host::HostHooks;
use crate::runner::RunOutcome;
use crate::spool::{Evicted, Kind, MetricSample, Payload, Position, Sealed, Spool, SpoolLimits};

pub mod samples;

use samples::SampleOutbox;

/// Name of the synthetic check reporting spool evictions and write failures.
pub const SPOOL_CHECK: &str = "outrider.spool";
/// Most un-acked results copied into the state blob.
pub const STATE_UNACKED_MAX: usize = 1_000;
/// Room left in a frame for the `{"type":"results","results":[…]}` envelope.
const ENVELOPE_BYTES: usize = 64;
/// A single result larger than this (encoded) loses its long output and
/// perfdata, so one result can always travel in one frame.
const MAX_RESULT_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// Outbox bookkeeping; see the module docs.
pub struct Outbox {
    spool: Spool,
    next_seq: u64,
    seq_synced: bool,
    /// Highest seq already sent in the current session.
    sent_up_to: u64,
    /// Where the next batch continues reading the spool.
    cursor: Option<Position>,
    /// Results the spool could not store since the last report, and why.
    lost: u64,
    lost_reason: String,
    /// Results evicted by the cap since this outbox was opened.
    evicted_total: u64,
    /// The metric samples, in their own spool; `None` when it could not be
    /// opened (logged; samples are then counted as lost, results go on).
    samples: Option<SampleOutbox>,
    /// Sample batches evicted by the cap since this outbox was opened.
    samples_evicted_total: u64,
    /// Sample batches the spool could not store since the last report.
    samples_lost: u64,
    hooks: Arc<dyn HostHooks>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("spool", &self.spool)
            .field("next_seq", &self.next_seq)
            .field("seq_synced", &self.seq_synced)
            .field("sent_up_to", &self.sent_up_to)
            .finish_non_exhaustive()
    }
}

/// What the outbox hands from one generation to the next (through the
/// state blob, which the agent assembles): the numbering and the newest
/// un-acked results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Handover {
    /// Next result sequence number to assign.
    pub next_seq: u64,
    /// Whether the numbering continues the server's (after a Welcome).
    pub seq_synced: bool,
    /// The newest un-acked results (at most [`STATE_UNACKED_MAX`]), in
    /// sequence order.
    pub unacked: Vec<CheckResult>,
}

/// What a [`Outbox::welcome`] did, for logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WelcomeEffect {
    /// How far entries were renumbered (0 when none).
    pub shifted_by: u64,
    /// How many entries the server already had.
    pub trimmed: usize,
}

impl Outbox {
    /// Opens the spool in `dir` and continues the numbering of the spool and
    /// of `state` (the previous generation's handover, if any), importing
    /// its un-acked results the spool does not hold. Fails only when the
    /// spool directory cannot be created or listed; damaged files are set
    /// aside and logged.
    pub fn open(
        dir: &Path,
        state: Option<&Handover>,
        limits: SpoolLimits,
        hooks: Arc<dyn HostHooks>,
    ) -> std::io::Result<Outbox> {
        let (limits, sample_limits) = samples::split_limits(limits);
        let spool = Spool::open(dir, Kind::Result, limits, hooks.clone())?;
        // Samples are an addition: a samples spool that cannot be opened
        // must not stop the results.
        let samples = SampleOutbox::open(dir, sample_limits, hooks.clone())
            .map_err(|e| {
                hooks.error(&format!(
                    "spool: cannot open the metric samples spool in {} ({e}); metric samples are \
                     lost until the agent restarts",
                    dir.join(samples::SAMPLES_DIR).display()
                ))
            })
            .ok();
        let meta = spool.meta();
        let mut next_seq = meta
            .next_seq
            .max(spool.last_seq().map_or(1, |s| s.saturating_add(1)))
            .max(meta.acked_seq.saturating_add(1));
        let mut seq_synced = meta.seq_synced;
        if let Some(state) = state {
            next_seq = next_seq.max(state.next_seq);
            seq_synced |= state.seq_synced;
        }
        let mut outbox = Outbox {
            spool,
            next_seq,
            seq_synced,
            sent_up_to: 0,
            cursor: None,
            lost: 0,
            lost_reason: String::new(),
            evicted_total: 0,
            samples,
            samples_evicted_total: 0,
            samples_lost: 0,
            hooks,
        };
        if let Some(state) = state {
            let floor = outbox.spool.last_seq().unwrap_or(0).max(meta.acked_seq);
            let mut carried: Vec<&CheckResult> =
                state.unacked.iter().filter(|r| r.seq > floor).collect();
            carried.sort_by_key(|r| r.seq);
            for r in carried {
                outbox.store(r);
            }
        }
        if (outbox.next_seq, outbox.seq_synced) != (meta.next_seq, meta.seq_synced) {
            outbox
                .spool
                .set_numbering(outbox.next_seq, outbox.seq_synced, 0);
        }
        Ok(outbox)
    }

    /// Adds a result under the next sequence number and returns that number.
    /// Evictions and write failures are reported (see the module docs).
    pub fn push(&mut self, check: &str, outcome: RunOutcome) -> u64 {
        let started_at_ms = outcome.started_at_ms;
        let seq = self.push_one(check, outcome);
        if self.lost > 0 && self.lost_reason.is_empty() {
            // The write that just worked ends a failure streak: report it.
            let lost = std::mem::take(&mut self.lost);
            self.push_one(
                SPOOL_CHECK,
                spool_report(
                    format!("{lost} results were lost: the spool could not store them"),
                    started_at_ms,
                ),
            );
        }
        if self.samples_lost > 0 && self.lost_reason.is_empty() {
            let lost = std::mem::take(&mut self.samples_lost);
            self.push_one(
                SPOOL_CHECK,
                spool_report(
                    format!(
                        "{lost} metric sample batches were lost: the spool could not store them"
                    ),
                    started_at_ms,
                ),
            );
        }
        seq
    }

    /// Stores metric samples (see [`samples`]) dated `now_ms`; evictions
    /// are reported as a WARNING result of [`SPOOL_CHECK`], write failures
    /// with the next result pushed. Fails, storing nothing, when a sample
    /// cannot be stored (the error names it).
    pub fn push_samples(
        &mut self,
        samples: Vec<MetricSample>,
        now_ms: i64,
    ) -> Result<u64, AgentError> {
        let pushed = match self.samples.as_mut() {
            Some(outbox) => outbox.push(samples)?,
            None => {
                samples::check(&samples)?;
                samples::Pushed {
                    lost: 1,
                    ..samples::Pushed::default()
                }
            }
        };
        self.samples_lost += pushed.lost;
        let evicted = pushed.evicted;
        if evicted.count > 0 {
            self.samples_evicted_total += evicted.count;
            let text = format!(
                "metric sample spool over its cap of {:.1} MiB: evicted {} un-sent batches, \
                 oldest first (seq {}-{}); {} evicted since the agent started",
                self.samples.as_ref().map_or(0, SampleOutbox::cap_bytes) as f64 / (1024.0 * 1024.0),
                evicted.count,
                evicted.first_seq,
                evicted.last_seq,
                self.samples_evicted_total
            );
            self.hooks.warn(&text);
            self.push_one(SPOOL_CHECK, spool_report(text, now_ms));
        }
        Ok(pushed.batches)
    }

    /// The next sample batches not yet sent in this session (see
    /// [`samples::SampleOutbox::next_batches`]): none unless `agreed` holds
    /// [`samples::SAMPLES_CAPABILITY`].
    pub fn next_sample_batches(
        &mut self,
        agreed: &[String],
        max_batches: usize,
    ) -> Vec<crate::spool::SampleBatch> {
        self.samples
            .as_mut()
            .map_or_else(Vec::new, |s| s.next_batches(agreed, max_batches))
    }

    /// Deletes every sample batch with `seq <= up_to`.
    pub fn ack_samples(&mut self, up_to: u64) {
        if let Some(samples) = self.samples.as_mut() {
            samples.ack(up_to);
        }
    }

    /// Number of un-acked sample batches.
    pub fn samples_len(&self) -> u64 {
        self.samples.as_ref().map_or(0, SampleOutbox::len)
    }

    fn push_one(&mut self, check: &str, outcome: RunOutcome) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        let mut result = outcome.into_result(seq, check);
        if encoded_len(&result) > MAX_RESULT_BYTES {
            result.long_output =
                "[long output and perfdata dropped: result exceeded the frame size]".into();
            result.perfdata.clear();
            result.summary = result.summary.chars().take(1024).collect();
        }
        let evicted = self.store(&result);
        if evicted.count > 0 {
            self.evicted_total += evicted.count;
            let text = format!(
                "spool over its cap of {:.1} MiB: evicted {} un-acked results, oldest first \
                 (seq {}-{}); {} evicted since the agent started",
                self.spool.limits().cap_bytes as f64 / (1024.0 * 1024.0),
                evicted.count,
                evicted.first_seq,
                evicted.last_seq,
                self.evicted_total
            );
            self.hooks.warn(&text);
            self.store(
                &spool_report(text, result.started_at_ms).into_result(self.next_seq, SPOOL_CHECK),
            );
            self.next_seq = self.next_seq.saturating_add(1);
        }
        seq
    }

    /// Writes one result to the spool; a failure is logged once per streak
    /// and counted for the next report.
    fn store(&mut self, result: &CheckResult) -> Evicted {
        match self.spool.append(&Payload::Result(result.clone())) {
            Ok(evicted) => {
                self.lost_reason.clear();
                evicted
            }
            Err(e) => {
                if self.lost_reason.is_empty() {
                    self.lost_reason = e.to_string();
                    self.hooks.error(&format!(
                        "spool: cannot store result seq {} of {:?} ({e}); results are lost until \
                         the spool is writable again",
                        result.seq, result.check
                    ));
                }
                self.lost += 1;
                Evicted::default()
            }
        }
    }

    /// Whether an un-acked result of `check` with this summary is stored
    /// (so an event handed over twice is reported once).
    pub fn holds(&self, check: &str, summary: &str) -> bool {
        let acked = self.spool.meta().acked_seq;
        let mut found = false;
        self.spool.read_from(None, |p, _| {
            if let Payload::Result(r) = p {
                found = r.seq > acked && r.check == check && r.summary == summary;
            }
            !found
        });
        found
    }

    /// Applies a `Welcome{acked_seq}`: reconciles a cold counter, trims what
    /// the server has and marks everything else for resending.
    pub fn welcome(&mut self, acked_seq: u64) -> WelcomeEffect {
        let mut shifted_by = 0;
        if !self.seq_synced {
            // Cold start: our numbers began at 1 and the server's `acked_seq`
            // belongs to an earlier life of this identity. Continue above it.
            shifted_by = acked_seq;
            self.next_seq = self.next_seq.saturating_add(shifted_by);
            self.seq_synced = true;
        }
        // The server has seen numbers we never assigned (e.g. lost state):
        // never hand out a number it would discard as a duplicate.
        // Saturating: `acked_seq` comes from the server and may be anything.
        self.next_seq = self.next_seq.max(acked_seq.saturating_add(1));
        if shifted_by > 0
            || self.spool.meta().next_seq != self.next_seq
            || !self.spool.meta().seq_synced
        {
            self.spool.set_numbering(self.next_seq, true, shifted_by);
        }
        let before = self.len();
        self.ack(acked_seq);
        self.sent_up_to = 0;
        self.cursor = None;
        if let Some(samples) = self.samples.as_mut() {
            samples.resend();
        }
        WelcomeEffect {
            shifted_by,
            trimmed: before - self.len(),
        }
    }

    /// Segments sealed since the last call, to fsync off the runtime thread
    /// (see the spool's module docs).
    pub fn take_sealed(&mut self) -> Vec<Sealed> {
        self.spool
            .take_sealed()
            .into_iter()
            .chain(self.samples.as_mut().and_then(SampleOutbox::take_sealed))
            .collect()
    }

    /// Whether no sealed segment waits for its fsync.
    fn sealed_is_empty(&self) -> bool {
        self.spool.sealed_is_empty()
            && self
                .samples
                .as_ref()
                .is_none_or(SampleOutbox::sealed_is_empty)
    }

    /// Drops every entry with `seq <= up_to`.
    pub fn ack(&mut self, up_to: u64) {
        self.spool.ack(up_to);
    }

    /// The next batch not yet sent in this session (≤ `max_results` and
    /// fitting one frame), marked as sent. Empty when all is sent.
    pub fn next_batch(&mut self, max_results: usize) -> Vec<CheckResult> {
        let floor = self.sent_up_to.max(self.spool.meta().acked_seq);
        let mut batch = Vec::new();
        let mut bytes = ENVELOPE_BYTES;
        let mut cursor = self.cursor;
        self.spool.read_from(self.cursor, |p, pos| {
            // The results spool hands out only results.
            let Payload::Result(r) = p else { return true };
            if r.seq <= floor {
                cursor = Some(pos);
                return true;
            }
            let len = encoded_len(&r) + 1;
            if batch.len() == max_results || (!batch.is_empty() && bytes + len > MAX_MESSAGE_BYTES)
            {
                return false;
            }
            bytes += len;
            batch.push(r);
            cursor = Some(pos);
            true
        });
        self.cursor = cursor;
        if let Some(last) = batch.last() {
            self.sent_up_to = last.seq;
        }
        batch
    }

    /// Highest sequence number ever assigned (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Number of un-acked results.
    pub fn len(&self) -> usize {
        usize::try_from(self.spool.unacked()).unwrap_or(usize::MAX)
    }

    /// True when nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the next generation needs. Called at the end of a generation,
    /// so it also makes the spool durable (fsync).
    pub fn handover(&mut self) -> Handover {
        self.spool.set_numbering(self.next_seq, self.seq_synced, 0);
        self.spool.sync();
        if let Some(samples) = self.samples.as_mut() {
            samples.sync();
        }
        let acked = self.spool.meta().acked_seq;
        let mut newest = VecDeque::with_capacity(STATE_UNACKED_MAX.min(self.len()));
        self.spool.read_from(None, |p, _| {
            if let Payload::Result(r) = p
                && r.seq > acked
            {
                if newest.len() == STATE_UNACKED_MAX {
                    newest.pop_front();
                }
                newest.push_back(r);
            }
            true
        });
        Handover {
            next_seq: self.next_seq,
            seq_synced: self.seq_synced,
            unacked: newest.into(),
        }
    }
}

/// A WARNING result of [`SPOOL_CHECK`], dated like the result that caused it.
fn spool_report(summary: String, started_at_ms: i64) -> RunOutcome {
    RunOutcome {
        started_at_ms,
        ..RunOutcome::note(CheckState::Warning, summary)
    }
}

fn encoded_len(r: &CheckResult) -> usize {
    serde_json::to_string(r).map_or(usize::MAX, |s| s.len())
}

/// The outbox shared between the scheduler (producer) and the connection
/// (consumer), with a wake-up for the consumer.
#[derive(Debug)]
pub struct SharedOutbox {
    inner: Mutex<Outbox>,
    /// Notified on every push; one stored permit covers pushes while the
    /// consumer is busy.
    pub pushed: Notify,
    /// Notified when a push sealed a spool segment that needs its fsync.
    pub sealed: Notify,
}

impl SharedOutbox {
    pub fn new(outbox: Outbox) -> SharedOutbox {
        SharedOutbox {
            inner: Mutex::new(outbox),
            pushed: Notify::new(),
            sealed: Notify::new(),
        }
    }

    /// Locks the outbox. Poisoning is ignored: the data stays consistent
    /// because every method finishes its bookkeeping before it can panic.
    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pushes a result and wakes the consumer; returns its seq.
    pub fn push(&self, check: &str, outcome: RunOutcome) -> u64 {
        let (seq, sealed) = {
            let mut outbox = self.lock();
            let seq = outbox.push(check, outcome);
            (seq, !outbox.sealed_is_empty())
        };
        self.pushed.notify_one();
        if sealed {
            self.sealed.notify_one();
        }
        seq
    }

    /// Stores metric samples ([`Outbox::push_samples`]), wakes the consumer
    /// when a batch was stored and the syncer when a segment was sealed.
    /// Fails, storing nothing, when a sample cannot be stored.
    pub fn push_samples(&self, samples: Vec<MetricSample>, now_ms: i64) -> Result<u64, AgentError> {
        let (pushed, sealed) = {
            let mut outbox = self.lock();
            let pushed = outbox.push_samples(samples, now_ms);
            (pushed, !outbox.sealed_is_empty())
        };
        if matches!(pushed, Ok(n) if n > 0) {
            self.pushed.notify_one();
        }
        if sealed {
            self.sealed.notify_one();
        }
        pushed
    }

    /// fsyncs sealed spool segments on the blocking pool whenever a push
    /// seals one, until `stop`; what is left then is synced by
    /// [`Outbox::handover`].
    pub async fn sync_sealed(&self, stop: &tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = self.sealed.notified() => {}
            }
            let sealed = self.lock().take_sealed();
            if sealed.is_empty() {
                continue;
            }
            // Every spool's segments are synced, whatever failed first.
            let synced = tokio::task::spawn_blocking(move || {
                let mut first_error = None;
                for spool in sealed {
                    if let Err(e) = spool.sync() {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            })
            .await;
            match synced {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self
                    .lock()
                    .hooks
                    .error(&format!("spool: fsync of sealed segments failed: {e}")),
                Err(e) => self
                    .lock()
                    .hooks
                    .error(&format!("spool: the fsync task failed: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use outrider_protocol::CheckState;

    use super::*;
    use crate::host::{Health, Level};
    use crate::spool::MetricSample;

    /// Hooks that keep every log line.
    #[derive(Debug, Default)]
    pub(crate) struct Logs(pub Mutex<Vec<String>>);
    impl HostHooks for Logs {
        fn log(&self, _: Level, m: &str) {
            self.0.lock().unwrap().push(m.to_owned());
        }
        fn health(&self, _: Health, _: &str) {}
        fn request_update_check(&self) {}
    }

    fn outcome(summary: &str) -> RunOutcome {
        RunOutcome {
            state: CheckState::Ok,
            summary: summary.into(),
            long_output: String::new(),
            perfdata: vec![],
            unknown_perfdata: vec![],
            started_at_ms: 0,
            duration_ms: 0,
            update_event: None,
        }
    }

    fn open(dir: &Path, state: Option<&Handover>) -> Outbox {
        open_with(dir, state, SpoolLimits::default())
    }

    fn open_with(dir: &Path, state: Option<&Handover>, limits: SpoolLimits) -> Outbox {
        Outbox::open(dir, state, limits, Arc::new(Logs::default())).unwrap()
    }

    /// Every un-acked seq, read from disk.
    fn seqs(o: &mut Outbox) -> Vec<u64> {
        o.sent_up_to = 0;
        o.cursor = None;
        let seqs = o.next_batch(usize::MAX).iter().map(|r| r.seq).collect();
        o.sent_up_to = 0;
        o.cursor = None;
        seqs
    }

    #[test]
    fn numbers_increase_and_ack_trims() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        for _ in 0..3 {
            o.push("c", outcome("x"));
        }
        assert_eq!(seqs(&mut o), [1, 2, 3]);
        o.welcome(0);
        o.ack(2);
        assert_eq!(seqs(&mut o), [3]);
        assert_eq!((o.last_seq(), o.len()), (3, 1));
    }

    #[test]
    fn a_restart_mid_stream_keeps_everything_and_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        o.welcome(10);
        for i in 0..5 {
            o.push("c", outcome(&format!("r{i}")));
        }
        o.ack(12);
        // A crash: no handover, no sync; the process just goes away.
        drop(o);
        let mut o = open(dir.path(), None);
        assert_eq!(seqs(&mut o), [13, 14, 15]);
        assert_eq!(o.push("c", outcome("after")), 16);
        o.welcome(12);
        assert_eq!(
            o.next_batch(2).iter().map(|r| r.seq).collect::<Vec<_>>(),
            [13, 14]
        );
        assert_eq!(
            o.next_batch(10).iter().map(|r| r.seq).collect::<Vec<_>>(),
            [15, 16]
        );
        assert!(o.next_batch(10).is_empty());
    }

    #[test]
    fn cold_start_renumbers_above_server_ack_and_the_shift_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        o.push("c", outcome("a"));
        o.push("c", outcome("b"));
        let effect = o.welcome(100);
        assert_eq!(
            effect,
            WelcomeEffect {
                shifted_by: 100,
                trimmed: 0
            }
        );
        assert_eq!(seqs(&mut o), [101, 102]);
        o.push("c", outcome("c"));
        assert_eq!(o.last_seq(), 103);
        drop(o);
        let mut o = open(dir.path(), None);
        assert_eq!(seqs(&mut o), [101, 102, 103]);
        // Later welcomes (reconnects) trim instead of renumbering.
        assert_eq!(
            o.welcome(101),
            WelcomeEffect {
                shifted_by: 0,
                trimmed: 1
            }
        );
        assert_eq!(seqs(&mut o), [102, 103]);
    }

    #[test]
    fn synced_counter_never_falls_behind_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let state = Handover {
            next_seq: 5,
            seq_synced: true,
            unacked: Vec::new(),
        };
        let mut o = open(dir.path(), Some(&state));
        o.welcome(50);
        o.push("c", outcome("a"));
        assert_eq!(seqs(&mut o), [51]);
    }

    #[test]
    fn batches_resend_after_welcome_and_respect_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        for _ in 0..5 {
            o.push("c", outcome("x"));
        }
        o.welcome(0);
        let b: Vec<_> = o.next_batch(2).iter().map(|r| r.seq).collect();
        assert_eq!(b, [1, 2]);
        let b: Vec<_> = o.next_batch(10).iter().map(|r| r.seq).collect();
        assert_eq!(b, [3, 4, 5]);
        assert!(o.next_batch(10).is_empty());
        o.push("c", outcome("y"));
        assert_eq!(o.next_batch(10)[0].seq, 6);
        // Reconnect: everything un-acked goes again.
        o.welcome(1);
        assert_eq!(o.next_batch(10).len(), 5);
    }

    #[test]
    fn batches_fit_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        for _ in 0..4 {
            o.push("c", outcome(&"y".repeat(400 * 1024)));
        }
        o.welcome(0);
        let sizes: Vec<_> =
            std::iter::from_fn(|| Some(o.next_batch(500).len()).filter(|&n| n > 0)).collect();
        assert_eq!(sizes, [2, 2]);
    }

    #[test]
    fn oversized_result_is_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        let mut big = outcome("s");
        big.long_output = "\u{1}".repeat(MAX_RESULT_BYTES);
        o.push("c", big);
        assert!(encoded_len(&o.next_batch(1)[0]) < MAX_RESULT_BYTES);
    }

    #[test]
    fn the_cap_evicts_the_oldest_and_reports_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits {
            cap_bytes: 4096,
            segment_bytes: 1024,
        };
        let mut o = open_with(dir.path(), None, limits);
        o.welcome(0);
        for i in 0..100 {
            o.push("c", outcome(&format!("result {i:03}")));
        }
        let all = {
            o.welcome(0);
            o.next_batch(usize::MAX)
        };
        let reports: Vec<_> = all.iter().filter(|r| r.check == SPOOL_CHECK).collect();
        assert!(
            !reports.is_empty(),
            "evictions are reported: {:?}",
            all.iter().map(|r| (r.seq, &r.check)).collect::<Vec<_>>()
        );
        assert_eq!(reports[0].state, CheckState::Warning);
        let kept: Vec<_> = all.iter().filter(|r| r.check == "c").collect();
        // Oldest first: what is left is the newest, contiguous and ending at the last push.
        assert_eq!(kept.last().unwrap().summary, "result 099");
        assert!(kept[0].summary.as_str() > "result 000");
        // Reports can be evicted too, so each carries the running total:
        // every seq ever assigned is either still stored or counted.
        let last = reports.last().unwrap();
        let total: u64 = last
            .summary
            .split("; ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(all.len() as u64 + total, o.last_seq(), "{}", last.summary);
        assert!(o.spool.total_bytes() <= limits.cap_bytes + limits.segment_bytes);
    }

    #[test]
    fn state_round_trip_keeps_the_counter_and_imports_only_what_the_spool_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        o.push("c", outcome("a"));
        o.welcome(7);
        let state = o.handover();
        assert_eq!(
            (state.next_seq, state.seq_synced, state.unacked.len()),
            (9, true, 1)
        );
        drop(o);
        // A generation without a spool added seq 9 to the blob.
        let mut older = state.clone();
        older.unacked.push(outcome("b").into_result(9, "c"));
        older.next_seq = 10;
        let mut again = open(dir.path(), Some(&older));
        assert_eq!(seqs(&mut again), [8, 9]);
        assert_eq!(again.last_seq(), 9);
        // A blob for an empty spool (another data dir) is imported whole.
        let other = tempfile::tempdir().unwrap();
        let mut fresh = open(other.path(), Some(&older));
        assert_eq!(seqs(&mut fresh), [8, 9]);
    }

    #[test]
    fn absurd_server_sequence_numbers_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        o.push("c", outcome("a"));
        o.welcome(u64::MAX);
        o.ack(u64::MAX);
        o.push("c", outcome("b"));
        assert_eq!(o.last_seq(), u64::MAX - 1);
        drop(o);
        // The numbering persisted at the top opens again.
        let o = open(dir.path(), None);
        assert_eq!(o.spool.meta().acked_seq, u64::MAX);
    }

    #[test]
    fn holds_finds_unacked_results_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        o.welcome(0);
        o.push("u", outcome("rolled back"));
        assert!(o.holds("u", "rolled back"));
        assert!(!o.holds("u", "other"));
        o.ack(1);
        assert!(!o.holds("u", "rolled back"));
    }

    fn sample(name: &str, value: f64) -> MetricSample {
        MetricSample {
            name: name.into(),
            value,
            tags: vec![crate::spool::Tag {
                key: "dc".into(),
                value: "ams".into(),
            }],
            kind: "gauge".into(),
            unit: String::new(),
            timestamp_ms: 1_764_806_410_000,
        }
    }

    fn sample_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(samples::SAMPLES_DIR))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    }

    #[test]
    fn samples_go_only_to_a_server_with_the_capability_and_an_ack_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        o.welcome(0);
        assert_eq!(
            o.push_samples(vec![sample("a", 1.0), sample("b", 2.0)], 5)
                .unwrap(),
            1
        );
        o.push_samples(vec![sample("c", 3.0)], 6).unwrap();
        o.push("c", outcome("r"));
        let without: Vec<String> = outrider_protocol::capability::ALL
            .iter()
            .filter(|c| **c != samples::SAMPLES_CAPABILITY)
            .map(|c| c.to_string())
            .collect();
        assert!(o.next_sample_batches(&without, 10).is_empty());
        // Acking every result leaves the samples alone: their own numbering.
        assert_eq!(seqs(&mut o), [1]);
        o.ack(1);
        assert_eq!(o.samples_len(), 2);
        // A restart in between keeps them and their numbers.
        drop(o);
        let mut o = open(dir.path(), None);
        o.welcome(1);
        assert!(o.next_sample_batches(&[], 10).is_empty());
        let with = vec![samples::SAMPLES_CAPABILITY.to_owned()];
        let sent = o.next_sample_batches(&with, 1);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].seq, sent[0].samples.len()), (1, 2));
        assert_eq!(sent[0].samples[1], sample("b", 2.0));
        let rest = o.next_sample_batches(&with, 10);
        assert_eq!(rest.iter().map(|b| b.seq).collect::<Vec<_>>(), [2]);
        assert!(o.next_sample_batches(&with, 10).is_empty(), "sent once");
        // A reconnect sends the un-acked again.
        o.welcome(1);
        assert_eq!(o.next_sample_batches(&with, 10).len(), 2);
        o.ack_samples(2);
        assert_eq!(o.samples_len(), 0);
        assert_eq!(sample_files(dir.path()), 0, "acked segments are deleted");
        o.push_samples(vec![sample("d", 4.0)], 7).unwrap();
        assert_eq!(o.next_sample_batches(&with, 10)[0].seq, 3);
    }

    #[test]
    fn an_older_build_reads_every_result_and_never_sees_the_samples() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        for i in 0..20 {
            o.push("c", outcome(&format!("r{i}")));
            o.push_samples(vec![sample("m", f64::from(i))], 0).unwrap();
        }
        o.handover();
        drop(o);
        // The reader of the build before payload kinds, kept here as it was
        // (`Spool::open` and `read_from` of that build): every `*.seg` file
        // of the spool directory, each record's body a CheckResult.
        let old_read = |dir: &Path| -> Result<Vec<CheckResult>, String> {
            let mut ids: Vec<u64> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".seg")?.parse().ok()
                })
                .collect();
            ids.sort_unstable();
            let mut out = Vec::new();
            for id in ids {
                let data = std::fs::read(dir.join(format!("{id:020}.seg"))).unwrap();
                let mut reader = &data[..];
                let mut body = Vec::new();
                while let Some(rec) = crate::spool::read_record_for_tests(&mut reader, &mut body) {
                    rec?;
                    out.push(
                        serde_json::from_slice::<CheckResult>(&body).map_err(|e| e.to_string())?,
                    );
                }
            }
            Ok(out)
        };
        let results = old_read(dir.path()).unwrap();
        assert_eq!(
            results
                .iter()
                .map(|r| r.summary.clone())
                .collect::<Vec<_>>(),
            (0..20).map(|i| format!("r{i}")).collect::<Vec<_>>()
        );
        // Had the samples shared the results' segments, the old reader
        // would have stopped at the first of them: it is damage to it.
        let samples_dir = dir.path().join(samples::SAMPLES_DIR);
        let err = old_read(&samples_dir).unwrap_err();
        assert!(err.contains("missing field `check`"), "{err}");
        // And the new build still finds both after the rollback.
        let mut o = open(dir.path(), None);
        assert_eq!(o.len(), 20);
        assert_eq!(o.samples_len(), 20);
        o.welcome(0);
        assert_eq!(seqs(&mut o).len(), 20);
    }

    #[test]
    fn bad_samples_are_refused_by_name_and_nothing_of_their_push_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        let table = [
            (sample("x", f64::NAN), "not finite"),
            (sample("", 1.0), "empty name"),
            (sample(&"n".repeat(2000), 1.0), "longer than 1024"),
        ];
        for (bad, want) in table {
            let err = o.push_samples(vec![sample("ok", 1.0), bad], 0).unwrap_err();
            assert!(matches!(err, AgentError::MetricSample { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
        assert_eq!(o.samples_len(), 0);
    }

    #[test]
    fn samples_are_batched_below_a_frame_and_evictions_are_reported() {
        let with = vec![samples::SAMPLES_CAPABILITY.to_owned()];
        let many = || -> Vec<_> { (0..40_000).map(|i| sample(&format!("m{i}"), 1.0)).collect() };
        let roomy = tempfile::tempdir().unwrap();
        let mut o = open(roomy.path(), None);
        let batches = o.push_samples(many(), 0).unwrap();
        let sent = o.next_sample_batches(&with, usize::MAX);
        assert_eq!(sent.len() as u64, batches);
        assert!(batches > 2, "{batches}");
        assert_eq!(sent.iter().map(|b| b.samples.len()).sum::<usize>(), 40_000);
        let last = sent.len() - 1;
        for (i, batch) in sent.into_iter().enumerate() {
            let body = Payload::Samples(batch).to_body().unwrap();
            assert!(body.len() <= samples::MAX_BATCH_BYTES, "{}", body.len());
            // As few batches as fit: all but the last are nearly full.
            assert!(i == last || body.len() > samples::MAX_BATCH_BYTES * 9 / 10);
        }

        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits {
            cap_bytes: 16 * 1024,
            segment_bytes: 1024,
        };
        let mut o = open_with(dir.path(), None, limits);
        o.welcome(0);
        let batches = o.push_samples(many(), 0).unwrap();
        // A small cap: the quarter left for samples holds only the newest.
        for i in 0..200 {
            o.push_samples(vec![sample(&format!("s{i}"), 1.0)], 0)
                .unwrap();
        }
        let all = o.next_batch(usize::MAX);
        let report = all
            .iter()
            .rev()
            .find(|r| r.check == SPOOL_CHECK)
            .expect("evictions are reported");
        assert_eq!(report.state, CheckState::Warning);
        assert!(
            report
                .summary
                .contains("metric sample spool over its cap of 0.0 MiB"),
            "{}",
            report.summary
        );
        let evicted: u64 = report
            .summary
            .split("; ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            evicted + o.samples_len(),
            batches + 200,
            "{}",
            report.summary
        );
    }

    #[test]
    fn sample_batches_the_disk_refused_are_reported_with_the_next_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), None);
        o.welcome(0);
        o.push_samples(vec![sample("a", 1.0)], 0).unwrap();
        // Everything acked: the next batch starts a new segment, in a
        // directory that is now a file.
        o.ack_samples(1);
        let metrics = dir.path().join(samples::SAMPLES_DIR);
        std::fs::remove_dir_all(&metrics).unwrap();
        std::fs::write(&metrics, b"in the way").unwrap();
        assert_eq!(o.push_samples(vec![sample("b", 2.0)], 0).unwrap(), 0);
        assert_eq!(o.push_samples(vec![sample("c", 3.0)], 0).unwrap(), 0);
        o.push("c", outcome("r"));
        let all = o.next_batch(10);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[1].check, SPOOL_CHECK);
        assert_eq!(
            all[1].summary,
            "2 metric sample batches were lost: the spool could not store them"
        );
    }

    #[test]
    fn a_samples_spool_that_cannot_open_costs_samples_not_results() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(samples::SAMPLES_DIR), b"in the way").unwrap();
        let logs = Arc::new(Logs::default());
        let mut o = Outbox::open(dir.path(), None, SpoolLimits::default(), logs.clone()).unwrap();
        assert!(
            logs.0.lock().unwrap()[0].contains("cannot open the metric samples spool"),
            "{:?}",
            logs.0.lock().unwrap()
        );
        assert!(
            o.push_samples(vec![sample("", 1.0)], 0).is_err(),
            "still checked"
        );
        assert_eq!(o.push_samples(vec![sample("a", 1.0)], 0).unwrap(), 0);
        let with = vec![samples::SAMPLES_CAPABILITY.to_owned()];
        assert!(o.next_sample_batches(&with, 10).is_empty());
        o.push("c", outcome("r"));
        o.welcome(0);
        let all = o.next_batch(10);
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].summary, "r");
        assert!(
            all[1]
                .summary
                .starts_with("1 metric sample batches were lost")
        );
        o.handover();
    }

    #[test]
    fn shared_sample_pushes_wake_the_sender_and_the_syncer() {
        use futures_util::FutureExt;

        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits {
            cap_bytes: 1 << 20,
            segment_bytes: 1024,
        };
        let shared = SharedOutbox::new(open_with(dir.path(), None, limits));
        assert!(shared.push_samples(vec![sample("", 1.0)], 0).is_err());
        assert!(
            shared.pushed.notified().now_or_never().is_none(),
            "nothing stored"
        );
        shared.push_samples(vec![sample("a", 1.0)], 0).unwrap();
        assert!(shared.pushed.notified().now_or_never().is_some());
        assert!(
            shared.sealed.notified().now_or_never().is_none(),
            "one segment"
        );
        for i in 0..20 {
            shared
                .push_samples(vec![sample(&format!("m{i}"), 1.0)], 0)
                .unwrap();
        }
        assert!(shared.sealed.notified().now_or_never().is_some());
        let sealed = shared.lock().take_sealed();
        assert_eq!(sealed.len(), 1, "the samples spool's sealed segments");
        for s in sealed {
            s.sync().unwrap();
        }
    }
}
