//! Check results: the ingest of an agent's result batches (deduplicated by
//! `(agent, seq)`), each check's latest result, and the retention of old
//! results.
//!
//! Tables (server/src/store/schema.sql for SQLite,
//! server/src/backend/postgres/migrations/0012_results.sql for PostgreSQL):
//! `results`, every result once per `(agent, seq)`, and `latest_results`,
//! per agent and check the newest result's seq, state and since when the
//! check is in that state. The ingest also writes the `acked_seq` and
//! `last_seen_ms` columns of the agents area's `agents` table
//! (`backend/agents.rs`), and the update events area's tables
//! (`backend/update_events.rs`) for results carrying an update event.
//!
//! Rules (checked on both backends by `backend/result_tests.rs`):
//! 1. A batch is one transaction: its results, the latest-result pointers,
//!    its update events and the agent's `acked_seq` commit together or not
//!    at all. A result already stored is ignored (a resent batch is stored
//!    once) and only the results stored by this call are returned, so the
//!    sinks see each result once.
//! 2. The ack ([`Ingested::acked_seq`]) is the agent's `acked_seq` as the
//!    committing transaction left it: raised to the highest sequence number
//!    stored by the batch or refused by the caller
//!    ([`IngestLimits::refused_up_to`]), never lowered, so it never covers a
//!    result that is not durably stored (except those the caller refused).
//!    An agent that is not registered (removed meanwhile) stores nothing:
//!    [`StoreError::UnknownAgent`].
//! 3. A result's start is clamped to at most [`MAX_FUTURE_MS`] past the
//!    server's clock ([`clamped_start`]), so a future-dated result cannot
//!    outlive retention (which cuts on arrival) or sit ahead of every real
//!    one.
//! 4. `latest_results` moves only to a higher seq; `state_since_ms` moves
//!    only when the state changes (a straggler changes neither).
//! 5. Text is stored as [`stored_text`] makes it: a NUL (U+0000), which
//!    plugins can print and SQLite keeps but PostgreSQL's TEXT refuses
//!    (failing the whole transaction), becomes U+FFFD on both backends, so
//!    both store, return and hand to the sinks the same thing. Check names
//!    need no such care: the ingest accepts only `a-z0-9_.-`
//!    (server/src/ingest/names.rs).
//! 6. Perfdata (series, points, rollups: server/src/store/metrics.rs) stay
//!    in each node's embedded SQLite store on both backends: the trait's
//!    ingest is given that store (`metrics`). An agent's series are capped;
//!    samples beyond the cap are removed from the stored result and the
//!    server writes a result [`SERIES_LIMIT_CHECK`] of its own, with a
//!    negative seq ([`server_seq`]) apart from the agent's (shown as 0).
//! 7. Retention deletes results received before a cut-off in bounded steps
//!    ([`RESULTS_PER_STEP`] rows, [`AGENTS_PER_STEP`] agents), walking
//!    each agent's results in seq order, keeping every latest result.
//! 8. A removed agent's latest results go with it, and an agent enrolling
//!    again starts `acked_seq` above its results still stored (both in the
//!    agents area's statements, which read and write these tables).
//!
//! Differences between the backends, on purpose: the series cap counts
//! the series of the node's own SQLite store, so with several PostgreSQL
//! nodes it applies per node; the `U` items of a latest result are read
//! from the node's unknown points on SQLite (in series order) and from the
//! result's row on PostgreSQL (in printed order), label and unit only on
//! both.

use std::borrow::Cow;
use std::future::Future;

use outrider_protocol::api::ResultInfo;
use outrider_protocol::{CheckResult, CheckState, Fingerprint, PerfData, UnknownPerfData};

use super::{Backend, StoreError, dispatch};
use crate::store::Store;
pub use crate::store::metrics::SERIES_LIMIT_CHECK;
use crate::store::metrics::{MAX_LABEL_BYTES, MAX_UOM_BYTES, truncate};

/// How far past the server's clock a result's start may lie; later starts
/// are clamped to it (and counted in [`Ingested::clamped`]).
pub const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;

/// Default of [`IngestLimits::max_series`].
pub const DEFAULT_MAX_SERIES_PER_AGENT: usize = 2_000;

/// Agents whose old results one retention transaction deletes.
pub const AGENTS_PER_STEP: usize = 50;

/// Results looked at per retention transaction: bounds how long one step
/// holds the store's connection (ingest waits behind it on SQLite).
pub const RESULTS_PER_STEP: usize = 2_000;

/// Bounds of one [`ResultStore::ingest`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Distinct perfdata series one agent may have; samples of further
    /// series are dropped.
    pub max_series: usize,
    /// Highest sequence number of the batch's results the caller refused
    /// (0: none). Acknowledged with the batch, so the agent's spool lets
    /// go of them instead of resending them forever.
    pub refused_up_to: u64,
}

impl Default for IngestLimits {
    fn default() -> IngestLimits {
        IngestLimits {
            max_series: DEFAULT_MAX_SERIES_PER_AGENT,
            refused_up_to: 0,
        }
    }
}

/// What [`ResultStore::ingest`] did with a batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// The sequence number the agent may treat as acknowledged (rule 2).
    pub acked_seq: u64,
    /// The results stored by this call (not those stored before), in batch
    /// order, as stored (rules 3, 5, 6), the server's series-limit report
    /// last: what the live event stream and the outputs should see.
    pub stored: Vec<CheckResult>,
    /// Perfdata samples written as metric points.
    pub samples: usize,
    /// Samples dropped by the agent's series limit.
    pub series_dropped: usize,
    /// Results whose start lay more than [`MAX_FUTURE_MS`] ahead, clamped.
    pub clamped: usize,
}

/// Where a results retention pass continues: after result `after_seq` of
/// agent `agent`; the default starts at the first agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultsCursor {
    /// Fingerprint of the agent being walked; empty before the first.
    pub agent: String,
    /// Last sequence number looked at (results the server writes itself
    /// have negative ones, so a fresh agent starts at `i64::MIN`).
    pub after_seq: i64,
}

/// Rule 5: `text` as stored, every NUL replaced by U+FFFD.
pub fn stored_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Rule 5 on a result's free text (summary, long output), in place.
pub fn store_text_of(result: &mut CheckResult) {
    for text in [&mut result.summary, &mut result.long_output] {
        if let Cow::Owned(replaced) = stored_text(text) {
            *text = replaced;
        }
    }
}

/// Rule 3: the start a result is stored at, and whether it was clamped.
pub fn clamped_start(started_at_ms: i64, now_ms: i64) -> (i64, bool) {
    let latest = now_ms.saturating_add(MAX_FUTURE_MS);
    if started_at_ms > latest {
        (latest, true)
    } else {
        (started_at_ms, false)
    }
}

/// An agent's sequence number as stored; one beyond `i64` is refused
/// (nothing of its batch is stored).
pub fn stored_seq(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::SeqOutOfRange { seq })
}

/// Rule 6: the seq of a result the server writes at `now_ms`: negative,
/// growing with time, never one of the agent's.
pub fn server_seq(now_ms: i64) -> i64 {
    i64::MIN.saturating_add(now_ms.max(0))
}

/// Rule 2: what a batch raises the agent's `acked_seq` to at least: the
/// highest seq it stored or the caller refused.
pub fn batch_ack(stored: &[CheckResult], refused_up_to: u64) -> Result<i64, StoreError> {
    let max = stored
        .iter()
        .map(|r| r.seq)
        .max()
        .unwrap_or(0)
        .max(refused_up_to);
    stored_seq(max)
}

/// The seq a stored row shows: the server's own results (negative) as 0.
pub fn shown_seq(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// The `U` items of a result as a latest result shows them: label and
/// unit, cut as the series they are stored under are named
/// (server/src/store/metrics.rs), ranges and bounds left out.
pub fn stored_unknown_items(items: &[UnknownPerfData]) -> Vec<UnknownPerfData> {
    items
        .iter()
        .map(|u| UnknownPerfData {
            label: truncate(&u.label, MAX_LABEL_BYTES).to_owned(),
            uom: truncate(&u.uom, MAX_UOM_BYTES).to_owned(),
            warn: None,
            crit: None,
            min: None,
            max: None,
        })
        .collect()
}

/// A stored state, checked.
pub(crate) fn stored_state(text: &str) -> Result<CheckState, StoreError> {
    text.parse().map_err(|_| StoreError::Malformed {
        what: "result state",
        value: text.chars().take(200).collect(),
    })
}

/// A stored perfdata list (JSON), checked.
pub(crate) fn stored_perfdata(text: &str) -> Result<Vec<PerfData>, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Malformed {
        what: "perfdata of a result",
        value: text.chars().take(200).collect(),
    })
}

/// A stored list of unknown perfdata items (JSON, PostgreSQL), checked.
pub(crate) fn stored_unknown(text: &str) -> Result<Vec<UnknownPerfData>, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Malformed {
        what: "unknown perfdata of a result",
        value: text.chars().take(200).collect(),
    })
}

/// A stored fingerprint, checked.
pub(crate) fn stored_fingerprint(text: &str) -> Result<Fingerprint, StoreError> {
    text.parse().map_err(|_| StoreError::Malformed {
        what: "fingerprint of a result",
        value: text.chars().take(200).collect(),
    })
}

/// JSON of values that always serialize (lists of perfdata items).
pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("perfdata items serialize")
}

/// The results area. Times are Unix milliseconds given by the caller.
pub trait ResultStore {
    /// Stores agent `agent`'s batch `results`, received at `now_ms`, within
    /// `limits` (rules 1 to 6), its perfdata in `metrics`, the node's
    /// embedded store (on SQLite the backend's own store: the points are
    /// written in the results' transaction).
    ///
    /// Fails when the agent is not registered
    /// ([`StoreError::UnknownAgent`]), a seq exceeds `i64`
    /// ([`StoreError::SeqOutOfRange`]) or a database fails; no result of
    /// the batch is stored and nothing is acknowledged then.
    fn ingest(
        &self,
        agent: &Fingerprint,
        results: Vec<CheckResult>,
        limits: IngestLimits,
        metrics: &Store,
        now_ms: i64,
    ) -> impl Future<Output = Result<Ingested, StoreError>> + Send;

    /// The newest result of every check of every agent (or of one agent),
    /// by host name (byte order), agent and check.
    fn latest_results(
        &self,
        agent: Option<&Fingerprint>,
    ) -> impl Future<Output = Result<Vec<ResultInfo>, StoreError>> + Send;

    /// One bounded retention step from `cursor` on (rule 7): deletes the
    /// results received before `before_ms`, keeping every check's latest.
    /// Returns the cursor of the next step (`None`: the pass is complete)
    /// and the rows deleted.
    fn results_retention_step(
        &self,
        cursor: ResultsCursor,
        before_ms: i64,
    ) -> impl Future<Output = Result<(Option<ResultsCursor>, u64), StoreError>> + Send;
}

impl ResultStore for Backend {
    async fn ingest(
        &self,
        agent: &Fingerprint,
        results: Vec<CheckResult>,
        limits: IngestLimits,
        metrics: &Store,
        now_ms: i64,
    ) -> Result<Ingested, StoreError> {
        dispatch!(self, b => b.ingest(agent, results, limits, metrics, now_ms))
    }

    async fn latest_results(
        &self,
        agent: Option<&Fingerprint>,
    ) -> Result<Vec<ResultInfo>, StoreError> {
        dispatch!(self, b => b.latest_results(agent))
    }

    async fn results_retention_step(
        &self,
        cursor: ResultsCursor,
        before_ms: i64,
    ) -> Result<(Option<ResultsCursor>, u64), StoreError> {
        dispatch!(self, b => b.results_retention_step(cursor, before_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_becomes_the_replacement_character_and_nothing_else_changes() {
        let cases = [
            ("", ""),
            ("OK - all fine", "OK - all fine"),
            ("\0", "\u{FFFD}"),
            ("a\0b\0\0c", "a\u{FFFD}b\u{FFFD}\u{FFFD}c"),
            ("\u{FFFD} stays", "\u{FFFD} stays"),
            ("ünïcödé\0", "ünïcödé\u{FFFD}"),
            ("tab\tand\nnewline", "tab\tand\nnewline"),
        ];
        for (text, stored) in cases {
            assert_eq!(stored_text(text), stored, "{text:?}");
        }
        assert!(matches!(stored_text("clean"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_results_summary_and_long_output_are_stored_without_nul() {
        let mut r = CheckResult {
            seq: 1,
            check: "load".into(),
            state: CheckState::Ok,
            summary: "a\0b".into(),
            long_output: "\0".into(),
            perfdata: Vec::new(),
            unknown_perfdata: Vec::new(),
            started_at_ms: 0,
            duration_ms: 0,
            update_event: None,
        };
        store_text_of(&mut r);
        assert_eq!(
            (r.summary.as_str(), r.long_output.as_str()),
            ("a\u{FFFD}b", "\u{FFFD}")
        );
    }

    #[test]
    fn starts_beyond_the_future_bound_are_clamped() {
        let now = 1_000_000;
        let cases = [
            (0, (0, false)),
            (now, (now, false)),
            (now + MAX_FUTURE_MS, (now + MAX_FUTURE_MS, false)),
            (now + MAX_FUTURE_MS + 1, (now + MAX_FUTURE_MS, true)),
            (i64::MAX, (now + MAX_FUTURE_MS, true)),
            (i64::MIN, (i64::MIN, false)),
        ];
        for (start, stored) in cases {
            assert_eq!(clamped_start(start, now), stored, "{start}");
        }
        assert_eq!(clamped_start(i64::MAX, i64::MAX), (i64::MAX, false));
    }

    #[test]
    fn seqs_beyond_i64_are_refused_and_the_servers_own_show_as_zero() {
        assert_eq!(stored_seq(0).unwrap(), 0);
        assert_eq!(stored_seq(i64::MAX as u64).unwrap(), i64::MAX);
        assert!(matches!(
            stored_seq(i64::MAX as u64 + 1),
            Err(StoreError::SeqOutOfRange { seq }) if seq == i64::MAX as u64 + 1
        ));
        let cases = [
            (0, 0),
            (7, 7),
            (-1, 0),
            (i64::MIN, 0),
            (server_seq(1_700_000_000_000), 0),
        ];
        for (stored, shown) in cases {
            assert_eq!(shown_seq(stored), shown, "{stored}");
        }
        assert!(server_seq(2) > server_seq(1));
        assert!(server_seq(i64::MAX) < 0);
        assert_eq!(server_seq(-5), i64::MIN);
    }

    #[test]
    fn a_batch_acks_its_highest_stored_or_refused_seq() {
        let r = |seq| CheckResult {
            seq,
            check: "load".into(),
            state: CheckState::Ok,
            summary: String::new(),
            long_output: String::new(),
            perfdata: Vec::new(),
            unknown_perfdata: Vec::new(),
            started_at_ms: 0,
            duration_ms: 0,
            update_event: None,
        };
        // (stored seqs, refused up to, ack at least)
        let cases: [(&[u64], u64, i64); 5] = [
            (&[], 0, 0),
            (&[3, 1, 2], 0, 3),
            (&[3], 9, 9),
            (&[], 4, 4),
            (&[12], 4, 12),
        ];
        for (seqs, refused, ack) in cases {
            let stored: Vec<_> = seqs.iter().map(|&s| r(s)).collect();
            assert_eq!(
                batch_ack(&stored, refused).unwrap(),
                ack,
                "{seqs:?} {refused}"
            );
        }
        assert!(batch_ack(&[], u64::MAX).is_err());
    }

    #[test]
    fn unreadable_stored_values_are_malformed() {
        assert_eq!(stored_state("CRITICAL").unwrap(), CheckState::Critical);
        assert!(matches!(
            stored_state("PURPLE"),
            Err(StoreError::Malformed {
                what: "result state",
                ..
            })
        ));
        assert!(stored_perfdata("[]").unwrap().is_empty());
        assert!(matches!(
            stored_perfdata("{"),
            Err(StoreError::Malformed {
                what: "perfdata of a result",
                ..
            })
        ));
        assert!(matches!(
            stored_unknown("["),
            Err(StoreError::Malformed {
                what: "unknown perfdata of a result",
                ..
            })
        ));
        assert!(matches!(
            stored_fingerprint("not hex"),
            Err(StoreError::Malformed {
                what: "fingerprint of a result",
                ..
            })
        ));
    }
}
