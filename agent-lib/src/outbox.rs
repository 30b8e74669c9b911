//! The in-memory outbox: results waiting for the server's ack.
//!
//! Invariants:
//! - Every result gets the next sequence number; numbers strictly increase
//!   and are never reused within a lineage of generations (the counter
//!   travels in the state blob).
//! - Entries stay, in sequence order, until an `Ack`/`Welcome` covers them; on
//!   every (re)connect all of them are resent (the server dedups by seq).
//! - Bounded: when full, the oldest entry is dropped (and reported). The disk
//!   spool that removes this loss comes with a later issue.
//! - A cold start (no state blob) numbers from 1; the first `Welcome` then
//!   shifts every entry above the server's `acked_seq`, so a reinstalled agent
//!   is not mistaken for a replay and silently deduplicated.
//!
//! Locking: a std mutex held only for the in-memory bookkeeping, never across
//! an await.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use outrider_protocol::{CheckResult, MAX_MESSAGE_BYTES};
use tokio::sync::Notify;

use crate::runner::RunOutcome;
use crate::state::StateBlob;

/// Most results held in memory.
pub const OUTBOX_CAPACITY: usize = 10_000;
/// Room left in a frame for the `{"type":"results","results":[…]}` envelope.
const ENVELOPE_BYTES: usize = 64;
/// A single result larger than this (encoded) loses its long output and
/// perfdata, so one result can always travel in one frame.
const MAX_RESULT_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// Outbox bookkeeping; see the module docs.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<CheckResult>,
    next_seq: u64,
    seq_synced: bool,
    /// Highest seq already sent in the current session.
    sent_up_to: u64,
    capacity: usize,
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
    /// An outbox continuing from `state` (a cold one when `None`).
    pub fn new(state: Option<&StateBlob>, capacity: usize) -> Outbox {
        let cold = StateBlob::default();
        let state = state.unwrap_or(&cold);
        let mut entries: VecDeque<CheckResult> = state.unacked.iter().cloned().collect();
        entries.make_contiguous().sort_by_key(|r| r.seq);
        let next_seq = entries.back().map_or(1, |r| r.seq + 1).max(state.next_seq);
        let mut outbox = Outbox {
            entries,
            next_seq,
            seq_synced: state.seq_synced,
            sent_up_to: 0,
            capacity,
        };
        while outbox.entries.len() > capacity {
            outbox.entries.pop_front();
        }
        outbox
    }

    /// Adds a result under the next sequence number. Returns the seq of the
    /// entry dropped to make room, if any.
    pub fn push(&mut self, check: &str, outcome: RunOutcome) -> Option<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut result = outcome.into_result(seq, check);
        if encoded_len(&result) > MAX_RESULT_BYTES {
            result.long_output =
                "[long output and perfdata dropped: result exceeded the frame size]".into();
            result.perfdata.clear();
            result.summary = result.summary.chars().take(1024).collect();
        }
        let dropped = if self.entries.len() >= self.capacity {
            self.entries.pop_front().map(|r| r.seq)
        } else {
            None
        };
        self.entries.push_back(result);
        dropped
    }

    /// Whether an un-acked result of `check` with this summary is queued
    /// (so an event handed over twice is reported once).
    pub fn holds(&self, check: &str, summary: &str) -> bool {
        self.entries
            .iter()
            .any(|r| r.check == check && r.summary == summary)
    }

    /// Applies a `Welcome{acked_seq}`: reconciles a cold counter, trims what
    /// the server has and marks everything else for resending.
    pub fn welcome(&mut self, acked_seq: u64) -> WelcomeEffect {
        let mut shifted_by = 0;
        if !self.seq_synced {
            // Cold start: our numbers began at 1 and the server's `acked_seq`
            // belongs to an earlier life of this identity. Continue above it.
            shifted_by = acked_seq;
            for r in &mut self.entries {
                r.seq += shifted_by;
            }
            self.next_seq += shifted_by;
            self.seq_synced = true;
        }
        // The server has seen numbers we never assigned (e.g. lost state):
        // never hand out a number it would discard as a duplicate.
        self.next_seq = self.next_seq.max(acked_seq + 1);
        let before = self.entries.len();
        self.ack(acked_seq);
        self.sent_up_to = 0;
        WelcomeEffect {
            shifted_by,
            trimmed: before - self.entries.len(),
        }
    }

    /// Drops every entry with `seq <= up_to`.
    pub fn ack(&mut self, up_to: u64) {
        while self.entries.front().is_some_and(|r| r.seq <= up_to) {
            self.entries.pop_front();
        }
    }

    /// The next batch not yet sent in this session (≤ `max_results` and
    /// fitting one frame), marked as sent. Empty when all is sent.
    pub fn next_batch(&mut self, max_results: usize) -> Vec<CheckResult> {
        let mut batch = Vec::new();
        let mut bytes = ENVELOPE_BYTES;
        for r in self.entries.iter().filter(|r| r.seq > self.sent_up_to) {
            let len = encoded_len(r) + 1;
            if batch.len() == max_results || (!batch.is_empty() && bytes + len > MAX_MESSAGE_BYTES)
            {
                break;
            }
            bytes += len;
            batch.push(r.clone());
        }
        if let Some(last) = batch.last() {
            self.sent_up_to = last.seq;
        }
        batch
    }

    /// Highest sequence number ever assigned (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Number of un-acked results.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The state blob for the next generation.
    pub fn to_state(&self) -> StateBlob {
        StateBlob {
            next_seq: self.next_seq,
            seq_synced: self.seq_synced,
            unacked: self.entries.iter().cloned().collect(),
            ..StateBlob::default()
        }
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
}

impl SharedOutbox {
    pub fn new(outbox: Outbox) -> SharedOutbox {
        SharedOutbox {
            inner: Mutex::new(outbox),
            pushed: Notify::new(),
        }
    }

    /// Locks the outbox. Poisoning is ignored: the data stays consistent
    /// because every method finishes its bookkeeping before it can panic.
    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pushes a result and wakes the consumer; returns the dropped seq, if any.
    pub fn push(&self, check: &str, outcome: RunOutcome) -> Option<u64> {
        let dropped = self.lock().push(check, outcome);
        self.pushed.notify_one();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use outrider_protocol::CheckState;

    use super::*;

    fn outcome(summary: &str) -> RunOutcome {
        RunOutcome {
            state: CheckState::Ok,
            summary: summary.into(),
            long_output: String::new(),
            perfdata: vec![],
            started_at_ms: 0,
            duration_ms: 0,
        }
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        o.entries.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn numbers_increase_and_ack_trims() {
        let mut o = Outbox::new(None, 10);
        for _ in 0..3 {
            o.push("c", outcome("x"));
        }
        assert_eq!(seqs(&o), [1, 2, 3]);
        o.welcome(0);
        o.ack(2);
        assert_eq!(seqs(&o), [3]);
        assert_eq!(o.last_seq(), 3);
    }

    #[test]
    fn full_outbox_drops_oldest() {
        let mut o = Outbox::new(None, 2);
        assert_eq!(o.push("c", outcome("1")), None);
        assert_eq!(o.push("c", outcome("2")), None);
        assert_eq!(o.push("c", outcome("3")), Some(1));
        assert_eq!(seqs(&o), [2, 3]);
    }

    #[test]
    fn cold_start_renumbers_above_server_ack() {
        let mut o = Outbox::new(None, 10);
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
        assert_eq!(seqs(&o), [101, 102]);
        o.push("c", outcome("c"));
        assert_eq!(o.last_seq(), 103);
        // Later welcomes (reconnects) trim instead of renumbering.
        assert_eq!(
            o.welcome(101),
            WelcomeEffect {
                shifted_by: 0,
                trimmed: 1
            }
        );
        assert_eq!(seqs(&o), [102, 103]);
    }

    #[test]
    fn synced_counter_never_falls_behind_the_server() {
        let state = StateBlob {
            next_seq: 5,
            seq_synced: true,
            ..StateBlob::default()
        };
        let mut o = Outbox::new(Some(&state), 10);
        o.welcome(50);
        o.push("c", outcome("a"));
        assert_eq!(seqs(&o), [51]);
    }

    #[test]
    fn batches_resend_after_welcome_and_respect_limits() {
        let mut o = Outbox::new(None, 10);
        for _ in 0..5 {
            o.push("c", outcome("x"));
        }
        o.welcome(0);
        let b: Vec<_> = o.next_batch(2).iter().map(|r| r.seq).collect();
        assert_eq!(b, [1, 2]);
        let b: Vec<_> = o.next_batch(10).iter().map(|r| r.seq).collect();
        assert_eq!(b, [3, 4, 5]);
        assert!(o.next_batch(10).is_empty());
        // Reconnect: everything un-acked goes again.
        o.welcome(1);
        assert_eq!(o.next_batch(10).len(), 4);
    }

    #[test]
    fn batches_fit_one_frame() {
        let mut o = Outbox::new(None, 10);
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
        let mut o = Outbox::new(None, 10);
        let mut big = outcome("s");
        big.long_output = "\u{1}".repeat(MAX_RESULT_BYTES);
        o.push("c", big);
        assert!(encoded_len(&o.entries[0]) < MAX_RESULT_BYTES);
    }

    #[test]
    fn state_round_trip_keeps_unacked_and_counter() {
        let mut o = Outbox::new(None, 10);
        o.push("c", outcome("a"));
        o.welcome(7);
        let state = o.to_state();
        assert_eq!(
            (state.next_seq, state.seq_synced, state.unacked.len()),
            (9, true, 1)
        );
        let again = Outbox::new(Some(&state), 10);
        assert_eq!(seqs(&again), [8]);
        assert_eq!(again.last_seq(), 8);
    }
}
