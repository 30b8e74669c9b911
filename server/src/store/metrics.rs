//! Perfdata metrics: series ids, raw points and five-minute rollups.
//!
//! Layout (`metrics.sql`): `series` maps `(agent, check, label)` to a small
//! integer id, so a raw point is three numbers (`series_id`, `ts_ms`,
//! `value`) in a `WITHOUT ROWID` table keyed by `(series_id, ts_ms)`. A
//! sample is stored at the time its check *started*, however late it
//! arrives: an agent back from an outage delivers hours-old results and
//! they land where they belong.
//!
//! Invariants:
//! - Points are written only for results stored for the first time
//!   ([`write_perfdata`], called by the results area's ingest,
//!   server/src/backend/*/results.rs), so a batch resent after a lost ack
//!   never duplicates points. On SQLite they commit in the results'
//!   transaction; with results on PostgreSQL they commit here just before
//!   the results do there, and a batch whose results then fail is resent
//!   and writes the same `(series, time)` rows again (`INSERT OR
//!   REPLACE`), not more.
//! - [`SeriesCache`] holds only ids that exist in the database: ids learnt
//!   in a transaction that rolled back are dropped with it (the caller
//!   clears the cache when a transaction fails).
//! - Retention ([`Store::retention_step`]) works on at most
//!   [`SERIES_PER_STEP`] series and [`POINTS_PER_STEP`] points per
//!   transaction and releases the connection between steps, so ingest
//!   never waits behind one long write.
//! - Rolling up is a merge (samples and sums add, min and max fold): a late
//!   sample folded into an existing bucket gives the same row as if it had
//!   arrived on time.
//! - An agent has at most `max_series` series ([`IngestLimits`](super::IngestLimits),
//!   `backend/results.rs`): a sample that would create one more is dropped, counted
//!   in [`AgentSeries::dropped_unreported`] and reported as a WARNING result
//!   ([`write_perfdata`]), so one noisy or hostile agent cannot grow the `series`
//!   table (and every output fed from it) without bound. Series rows are
//!   never deleted, so the count only grows: it is the number of distinct
//!   `(check, label)` pairs the agent ever reported.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use anyhow::Context;
use outrider_protocol::{CheckResult, CheckState, Fingerprint};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use super::Store;
pub use crate::backend::results::{AGENTS_PER_STEP, RESULTS_PER_STEP, ResultsCursor};
use crate::backend::{ResultStore, StoreError};

/// Width of a rollup bucket.
pub const ROLLUP_BUCKET_MS: i64 = 5 * 60 * 1000;

/// Default bound of [`SeriesCache`]: enough for 10,000 agents with ten
/// perfdata series each.
pub const DEFAULT_SERIES_CACHE_ENTRIES: usize = 100_000;

/// Most points one query returns; a wider range needs a coarser step.
pub const MAX_QUERY_POINTS: usize = 10_000;

/// Series handled by one retention transaction.
pub const SERIES_PER_STEP: usize = 200;

/// Raw points folded by one retention transaction at most, however many
/// a series holds (a flood of back-dated samples): bounds how long one
/// step holds the store's connection.
pub const POINTS_PER_STEP: usize = 20_000;

/// Perfdata labels are cut to this many bytes; a plugin printing longer
/// labels still gets a series, named by the prefix.
pub const MAX_LABEL_BYTES: usize = 128;

/// Units are cut to this many bytes.
pub const MAX_UOM_BYTES: usize = 16;

/// In-memory map `(agent, check, label)` → `(series id, unit)`, bounded:
/// when full it is emptied and refilled from the database as series come
/// back (an insert-or-select per series, once). Also each agent's series
/// count and series-limit report state ([`AgentSeries`]), loaded from the
/// database the first time an agent creates a series after a start or a
/// [`SeriesCache::clear`].
#[derive(Debug)]
pub struct SeriesCache {
    ids: HashMap<String, (i64, String)>,
    capacity: usize,
    /// Scratch buffer for lookup keys, reused to avoid an allocation per sample.
    key: String,
    pub(super) agents: HashMap<String, AgentSeries>,
}

/// One agent's series count and what its `outrider.series_limit` result
/// says ([`write_perfdata`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentSeries {
    /// Series stored for the agent.
    pub count: usize,
    /// Samples dropped by the limit and not yet named in a report.
    pub dropped_unreported: u64,
    /// When the agent's latest series-limit report (a WARNING) was
    /// written; `None` while it has none or its latest one is OK.
    pub warned_at_ms: Option<i64>,
}

impl SeriesCache {
    /// A cache holding at most `capacity` series (at least one).
    pub fn new(capacity: usize) -> SeriesCache {
        SeriesCache {
            ids: HashMap::new(),
            capacity: capacity.max(1),
            key: String::new(),
            agents: HashMap::new(),
        }
    }

    /// Forgets everything; called when a transaction that may have created
    /// series rolled back.
    pub fn clear(&mut self) {
        self.ids.clear();
        self.agents.clear();
    }

    /// The series state of `fingerprint`, read from the database when not
    /// cached.
    pub(super) fn agent(
        &mut self,
        tx: &Transaction<'_>,
        fingerprint: &str,
    ) -> rusqlite::Result<&mut AgentSeries> {
        if !self.agents.contains_key(fingerprint) {
            if self.agents.len() >= self.capacity {
                self.agents.clear();
            }
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM series WHERE fingerprint = ?1")?
                .query_row([fingerprint], |r| r.get(0))?;
            let warned_at_ms: Option<i64> = tx
                .prepare_cached(
                    "SELECT r.received_at_ms FROM latest_results l
                     JOIN results r ON r.fingerprint = l.fingerprint AND r.seq = l.seq
                     WHERE l.fingerprint = ?1 AND l.check_name = ?2 AND r.state = 'WARNING'",
                )?
                .query_row(params![fingerprint, SERIES_LIMIT_CHECK], |r| r.get(0))
                .optional()?;
            self.agents.insert(
                fingerprint.to_owned(),
                AgentSeries {
                    count: usize::try_from(count).unwrap_or(usize::MAX),
                    dropped_unreported: 0,
                    warned_at_ms,
                },
            );
        }
        // Inserted just above when missing.
        Ok(self
            .agents
            .get_mut(fingerprint)
            .expect("agent series state"))
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Name of the result the server stores for an agent whose samples were
/// dropped by the series limit (WARNING), and again (OK) once none were
/// dropped for [`SERIES_LIMIT_RECOVERY_MS`].
pub const SERIES_LIMIT_CHECK: &str = "outrider.series_limit";

/// Quiet time after which a series-limit WARNING is followed by an OK.
pub const SERIES_LIMIT_RECOVERY_MS: i64 = 15 * 60 * 1000;

/// Shortest time between two series-limit WARNINGs of one agent: an agent
/// over its limit in every batch gets one report a minute, not one per
/// batch.
pub const SERIES_LIMIT_REPORT_MS: i64 = 60 * 1000;

/// What [`insert_points`] wrote and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PointsWritten {
    pub written: usize,
    /// Samples dropped because they would have created a series beyond
    /// the agent's limit; they are removed from the result too.
    pub dropped: usize,
}

/// Writes the perfdata of `result`, just stored for the first time, as raw
/// points at `result.started_at_ms`, and its `U` items as unknown points.
/// A sample of a new series is dropped (and removed from `result`) when the
/// agent already has `max_series` series.
pub(super) fn insert_points(
    tx: &Transaction<'_>,
    cache: &mut SeriesCache,
    fingerprint: &str,
    result: &mut CheckResult,
    max_series: usize,
) -> rusqlite::Result<PointsWritten> {
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO points (series_id, ts_ms, value) VALUES (?1, ?2, ?3)",
    )?;
    let mut out = PointsWritten::default();
    // The series of a sample (perfdata or unknown), or `None` when
    // `max_series` refuses a new one.
    let check = &result.check;
    let mut series = |label: &str, uom: &str| {
        let (label, uom) = (
            truncate(label, MAX_LABEL_BYTES),
            truncate(uom, MAX_UOM_BYTES),
        );
        series_id(tx, cache, fingerprint, check, label, uom, max_series)
    };
    let mut keep = Vec::with_capacity(result.perfdata.len());
    for perf in &result.perfdata {
        // JSON cannot carry NaN or infinities, but a value decoded from a
        // number too large for f64 becomes infinite.
        if !perf.value.is_finite() {
            keep.push(true);
            continue;
        }
        let Some(id) = series(&perf.label, &perf.uom)? else {
            keep.push(false);
            out.dropped += 1;
            continue;
        };
        keep.push(true);
        insert.execute(params![id, result.started_at_ms, perf.value])?;
        out.written += 1;
    }
    let mut unknown = tx.prepare_cached(
        "INSERT OR REPLACE INTO unknown_points (series_id, ts_ms) VALUES (?1, ?2)",
    )?;
    let mut keep_unknown = Vec::with_capacity(result.unknown_perfdata.len());
    for perf in &result.unknown_perfdata {
        let Some(id) = series(&perf.label, &perf.uom)? else {
            keep_unknown.push(false);
            out.dropped += 1;
            continue;
        };
        keep_unknown.push(true);
        unknown.execute(params![id, result.started_at_ms])?;
        out.written += 1;
    }
    if out.dropped > 0 {
        let mut keep = keep.into_iter();
        result.perfdata.retain(|_| keep.next().unwrap_or(true));
        let mut keep = keep_unknown.into_iter();
        result
            .unknown_perfdata
            .retain(|_| keep.next().unwrap_or(true));
        cache.agent(tx, fingerprint)?.dropped_unreported += out.dropped as u64;
    }
    Ok(out)
}

/// What [`write_perfdata`] did with a batch's perfdata.
#[derive(Debug, Default)]
pub(crate) struct PerfdataWritten {
    /// Samples written as points.
    pub samples: usize,
    /// Samples dropped by the agent's series limit.
    pub series_dropped: usize,
    /// Indices of the results whose perfdata lost samples to the limit
    /// (their stored perfdata must be rewritten).
    pub trimmed: Vec<usize>,
    /// The server's series-limit result due after this batch, if any.
    pub report: Option<CheckResult>,
}

/// Writes the perfdata of `results` (a batch's results stored for the
/// first time, starts already clamped) as points of agent `fingerprint`,
/// removing the samples the series limit drops from them, and decides the
/// series-limit report ([`series_limit_report`]). `warned_at_ms`, when
/// given, is when the agent's latest series-limit WARNING was received as
/// the results' backend stores it (PostgreSQL's `latest_results`, which
/// this file does not hold); without it the file's own `latest_results`
/// is read. It is used only when the agent's state is not cached.
pub(crate) fn write_perfdata(
    tx: &Transaction<'_>,
    cache: &mut SeriesCache,
    fingerprint: &str,
    results: &mut [CheckResult],
    max_series: usize,
    now_ms: i64,
    warned_at_ms: Option<Option<i64>>,
) -> rusqlite::Result<PerfdataWritten> {
    if let Some(warned) = warned_at_ms
        && !cache.agents.contains_key(fingerprint)
    {
        cache.agent(tx, fingerprint)?.warned_at_ms = warned;
    }
    let mut out = PerfdataWritten::default();
    for (i, r) in results.iter_mut().enumerate() {
        let points = insert_points(tx, cache, fingerprint, r, max_series)?;
        out.samples += points.written;
        if points.dropped > 0 {
            out.series_dropped += points.dropped;
            out.trimmed.push(i);
        }
    }
    out.report = series_limit_report(
        tx,
        cache,
        fingerprint,
        now_ms,
        max_series,
        out.series_dropped,
    )?;
    Ok(out)
}

/// What the server says about agent `fp`'s series limit after a batch
/// that dropped `dropped` samples, if anything: a WARNING naming the
/// samples dropped since the last report (at most one per
/// [`SERIES_LIMIT_REPORT_MS`]), or an OK once none were dropped for
/// [`SERIES_LIMIT_RECOVERY_MS`] after a WARNING, so an alert on it
/// resolves.
fn series_limit_report(
    tx: &Transaction<'_>,
    cache: &mut SeriesCache,
    fp: &str,
    now: i64,
    max_series: usize,
    dropped: usize,
) -> rusqlite::Result<Option<CheckResult>> {
    // Loaded once per agent and process: after a restart a WARNING left by
    // the previous run still recovers.
    let agent = cache.agent(tx, fp)?;
    let report = |state: CheckState, summary: String| CheckResult {
        seq: 0,
        check: SERIES_LIMIT_CHECK.to_owned(),
        state,
        summary,
        long_output: String::new(),
        perfdata: Vec::new(),
        unknown_perfdata: Vec::new(),
        started_at_ms: now,
        duration_ms: 0,
        update_event: None,
    };
    let report_due = agent
        .warned_at_ms
        .is_none_or(|t| now - t >= SERIES_LIMIT_REPORT_MS);
    if agent.dropped_unreported > 0 && report_due {
        let dropped = std::mem::take(&mut agent.dropped_unreported);
        agent.warned_at_ms = Some(now);
        return Ok(Some(report(
            CheckState::Warning,
            format!(
                "{dropped} perfdata samples dropped: this agent has reached the server's limit of {max_series} series (--max-series-per-agent); \
                 remove perfdata labels or raise the limit"
            ),
        )));
    }
    let quiet = agent
        .warned_at_ms
        .is_some_and(|t| now - t >= SERIES_LIMIT_RECOVERY_MS);
    if quiet && agent.dropped_unreported == 0 && dropped == 0 {
        agent.warned_at_ms = None;
        return Ok(Some(report(
            CheckState::Ok,
            format!(
                "no perfdata samples dropped for {} minutes",
                SERIES_LIMIT_RECOVERY_MS / 60_000
            ),
        )));
    }
    Ok(None)
}

/// The id of series `(fingerprint, check, label)`, created on first sight
/// unless the agent already has `max_series` series (`None` then);
/// records a changed unit.
fn series_id(
    tx: &Transaction<'_>,
    cache: &mut SeriesCache,
    fingerprint: &str,
    check: &str,
    label: &str,
    uom: &str,
    max_series: usize,
) -> rusqlite::Result<Option<i64>> {
    cache.key.clear();
    // The parts cannot contain NUL in any form that matters: fingerprints
    // and check names are validated, and a label is text from one plugin.
    let _ = write!(cache.key, "{fingerprint}\0{check}\0{label}");
    if let Some((id, cached_uom)) = cache.ids.get_mut(cache.key.as_str()) {
        if cached_uom != uom {
            tx.prepare_cached("UPDATE series SET uom = ?2 WHERE id = ?1")?
                .execute(params![*id, uom])?;
            uom.clone_into(cached_uom);
        }
        return Ok(Some(*id));
    }
    let existing: Option<i64> = tx
        .prepare_cached(
            "UPDATE series SET uom = ?4 WHERE fingerprint = ?1 AND check_name = ?2 AND label = ?3
             RETURNING id",
        )?
        .query_row(params![fingerprint, check, label, uom], |r| r.get(0))
        .optional()?;
    let id = match existing {
        Some(id) => id,
        None => {
            let agent = cache.agent(tx, fingerprint)?;
            if agent.count >= max_series {
                return Ok(None);
            }
            agent.count += 1;
            tx.prepare_cached(
                "INSERT INTO series (fingerprint, check_name, label, uom) VALUES (?1, ?2, ?3, ?4)
                 RETURNING id",
            )?
            .query_row(params![fingerprint, check, label, uom], |r| r.get(0))?
        }
    };
    if cache.ids.len() >= cache.capacity {
        cache.ids.clear();
    }
    let key = cache.key.clone();
    cache.ids.insert(key, (id, uom.to_owned()));
    Ok(Some(id))
}

/// `GET /api/v1/series`: one stored series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesInfo {
    pub agent: Fingerprint,
    pub check: String,
    /// The perfdata label.
    pub metric: String,
    /// Unit of measure the plugin printed last; empty when none.
    pub uom: String,
}

/// What [`Store::query_series`] reads.
#[derive(Clone, Debug)]
pub struct SeriesQuery {
    pub agent: Fingerprint,
    pub check: String,
    pub metric: String,
    /// Start of the range, inclusive, Unix ms.
    pub from_ms: i64,
    /// End of the range, exclusive, Unix ms.
    pub to_ms: i64,
    /// Bucket width for aggregated points; `None` lets the store choose raw
    /// points when the range holds few enough of them.
    pub step_ms: Option<i64>,
    /// Raw points older than this have been (or will be) folded into
    /// rollups: a range reaching before it is answered from aggregates.
    pub raw_since_ms: i64,
}

/// Whether points are raw samples or bucket aggregates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Raw,
    Aggregated,
}

/// `GET /api/v1/series/query`: the points of one series over a range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoints {
    pub agent: Fingerprint,
    pub check: String,
    pub metric: String,
    pub uom: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub resolution: Resolution,
    /// Bucket width of aggregated points; absent for raw points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_secs: Option<i64>,
    /// Sorted by `ts_ms`.
    pub points: Vec<Point>,
}

/// One point: a raw sample (`value` only) or a bucket starting at `ts_ms`
/// (`value` is the mean; `min`, `max`, `count` describe the bucket).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub ts_ms: i64,
    /// `null` for a raw sample the plugin printed as `U` (undetermined);
    /// a bucket counts only determined samples, so its mean is a number.
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Cut-off times of one retention pass, Unix ms: data older is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutoffs {
    /// Raw points before this are folded into rollups and deleted.
    pub raw_before_ms: i64,
    /// Rollups whose bucket starts before this are deleted.
    pub rollups_before_ms: i64,
    /// Check results received before this are deleted, except each check's
    /// latest result.
    pub results_before_ms: i64,
}

/// What one retention step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Cursor for the next step; `None` when the pass is complete.
    pub next: Option<i64>,
    pub points_rolled_up: u64,
    pub rollups_deleted: u64,
}

impl Store {
    /// Every series, optionally only those of one agent and/or check,
    /// sorted by agent, check and metric.
    pub async fn series(
        &self,
        agent: Option<Fingerprint>,
        check: Option<String>,
    ) -> anyhow::Result<Vec<SeriesInfo>> {
        self.read(move |c| {
            // Key ranges rather than `?1 IS NULL OR ...`, which would scan
            // every series even when one agent is asked for.
            let (low, high) = match &agent {
                Some(fp) => (fp.as_str(), fp.as_str()),
                None => ("", "\u{10ffff}"),
            };
            let mut stmt = c.prepare_cached(
                "SELECT fingerprint, check_name, label, uom FROM series
                 WHERE fingerprint BETWEEN ?1 AND ?2 AND (?3 IS NULL OR check_name = ?3)
                 ORDER BY fingerprint, check_name, label",
            )?;
            let rows = stmt.query_map(params![low, high, check], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (fp, check, metric, uom) = row?;
                out.push(SeriesInfo {
                    agent: fp.parse().context("stored fingerprint is malformed")?,
                    check,
                    metric,
                    uom,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The points of one series over `[from_ms, to_ms)`; `None` when the
    /// series does not exist.
    ///
    /// Without a step, raw points are returned when the range starts inside
    /// the raw retention window and holds at most [`MAX_QUERY_POINTS`];
    /// otherwise points are aggregated into buckets (at least
    /// [`ROLLUP_BUCKET_MS`] wide when the range reaches the rollups), the
    /// step chosen so there are at most [`MAX_QUERY_POINTS`] of them.
    pub async fn query_series(&self, q: SeriesQuery) -> anyhow::Result<Option<SeriesPoints>> {
        self.read(move |c| {
            let found: Option<(i64, String)> = c
                .prepare_cached(
                    "SELECT id, uom FROM series WHERE fingerprint = ?1 AND check_name = ?2 AND label = ?3",
                )?
                .query_row(params![q.agent.as_str(), q.check, q.metric], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((id, uom)) = found else {
                return Ok(None);
            };
            let (resolution, step_ms, points) = match q.step_ms {
                Some(step) => (Resolution::Aggregated, Some(step), aggregated(c, id, &q, step)?),
                None => match raw(c, id, &q)? {
                    Some(points) => (Resolution::Raw, None, points),
                    None => {
                        let step = auto_step_ms(&q);
                        (Resolution::Aggregated, Some(step), aggregated(c, id, &q, step)?)
                    }
                },
            };
            Ok(Some(SeriesPoints {
                agent: q.agent,
                check: q.check,
                metric: q.metric,
                uom,
                from_ms: q.from_ms,
                to_ms: q.to_ms,
                resolution,
                step_secs: step_ms.map(|s| s / 1000),
                points,
            }))
        })
        .await
    }

    /// One bounded retention step over the series with ids after `after`:
    /// folds raw points older than the cut-off into rollups, deletes them,
    /// and deletes expired rollups, all in one transaction.
    pub async fn retention_step(
        &self,
        after: i64,
        cutoffs: Cutoffs,
    ) -> anyhow::Result<StepOutcome> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let outcome = retention_tx(&tx, after, cutoffs, POINTS_PER_STEP)?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    /// One bounded retention step over check results, from `cursor` on:
    /// deletes results *received* before `results_before_ms`, keeping
    /// every check's latest result. Returns the cursor for the next step
    /// (`None` when the pass is complete) and the rows deleted.
    ///
    /// Each agent's results are walked in sequence order, which is arrival
    /// order, in windows of at most [`RESULTS_PER_STEP`] rows; a step
    /// covers at most [`AGENTS_PER_STEP`] agents. An agent is done when its
    /// window holds a result received after the cut-off (later ones are
    /// newer). The cut-off is on arrival, not on the agent's clock, so
    /// results dated in the future neither stay forever nor hold up the
    /// walk, and kept rows (latest results) are stepped over, never
    /// re-examined within the pass: a pass deletes everything expired
    /// however fast the agents write. The results area's statements
    /// (`crate::backend::results`), called on this store.
    pub async fn results_retention_step(
        &self,
        cursor: ResultsCursor,
        results_before_ms: i64,
    ) -> anyhow::Result<(Option<ResultsCursor>, u64)> {
        self.results_area()
            .results_retention_step(cursor, results_before_ms)
            .await
            .context("deleting old results")
    }

    /// [`write_perfdata`] in a transaction of its own on this store: the
    /// perfdata of a batch whose results a PostgreSQL backend stores
    /// (`backend/postgres/results.rs` says why it runs before their
    /// commit). Returns the results, trimmed of dropped samples.
    pub(crate) async fn write_perfdata(
        &self,
        fingerprint: &str,
        mut results: Vec<CheckResult>,
        max_series: usize,
        now_ms: i64,
        warned_at_ms: Option<i64>,
    ) -> Result<(Vec<CheckResult>, PerfdataWritten), StoreError> {
        let fp = fingerprint.to_owned();
        let series = self.series.clone();
        self.with_writer(move |c| {
            // Lock order: `conn` (held by `with_writer`), then the cache.
            let mut cache = series.lock().unwrap_or_else(|p| p.into_inner());
            let written = (|| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let written = write_perfdata(
                    &tx,
                    &mut cache,
                    &fp,
                    &mut results,
                    max_series,
                    now_ms,
                    Some(warned_at_ms),
                )?;
                tx.commit()?;
                Ok::<_, rusqlite::Error>(written)
            })();
            if written.is_err() {
                // Ids of series created in the rolled-back transaction are gone.
                cache.clear();
            }
            Ok((results, written?))
        })
        .await?
    }

    /// Forgets the series cache's per-agent report state and ids, to be
    /// reloaded: after the results of a batch whose perfdata
    /// [`Store::write_perfdata`] wrote were not stored after all, so its
    /// drop counts and report times are not taken as reported.
    pub(crate) fn forget_series_state(&self) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The series cache, for the SQLite results ingest
    /// (`backend/sqlite/results.rs`), which writes points in its
    /// transaction. Lock it only while holding the writer connection.
    pub(crate) fn series_cache(&self) -> std::sync::Arc<std::sync::Mutex<SeriesCache>> {
        self.series.clone()
    }
}

/// The body of [`Store::retention_step`]: at most [`SERIES_PER_STEP`]
/// series and `points_budget` raw points folded. A series with more
/// expired points than the budget left is folded oldest first up to the
/// budget and the cursor stays on it (folding is a merge, so a bucket
/// folded in two steps gives the same rollup).
fn retention_tx(
    tx: &Transaction<'_>,
    after: i64,
    cutoffs: Cutoffs,
    points_budget: usize,
) -> rusqlite::Result<StepOutcome> {
    let ids: Vec<i64> = tx
        .prepare_cached("SELECT id FROM series WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map(params![after, SERIES_PER_STEP as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut fold = tx.prepare_cached(
        "INSERT INTO rollups (series_id, bucket_ms, samples, min_value, max_value, sum_value)
         SELECT series_id, ts_ms - (ts_ms % ?3), COUNT(*), MIN(value), MAX(value), SUM(value)
         FROM points WHERE series_id = ?1 AND ts_ms < ?2
         GROUP BY 2
         ON CONFLICT (series_id, bucket_ms) DO UPDATE SET
             samples = samples + excluded.samples,
             min_value = MIN(min_value, excluded.min_value),
             max_value = MAX(max_value, excluded.max_value),
             sum_value = sum_value + excluded.sum_value",
    )?;
    let mut nth_expired = tx.prepare_cached(
        "SELECT ts_ms FROM points WHERE series_id = ?1 AND ts_ms < ?2 ORDER BY ts_ms LIMIT 1 OFFSET ?3",
    )?;
    let mut delete_points =
        tx.prepare_cached("DELETE FROM points WHERE series_id = ?1 AND ts_ms < ?2")?;
    let mut delete_rollups =
        tx.prepare_cached("DELETE FROM rollups WHERE series_id = ?1 AND bucket_ms < ?2")?;
    let mut delete_unknown =
        tx.prepare_cached("DELETE FROM unknown_points WHERE series_id = ?1 AND ts_ms < ?2")?;
    let mut outcome = StepOutcome::default();
    let mut budget = points_budget;
    for &id in &ids {
        // Points at or after the budget-th expired one wait for the next step.
        let partial: Option<i64> = nth_expired
            .query_row(params![id, cutoffs.raw_before_ms, budget as i64], |r| {
                r.get(0)
            })
            .optional()?;
        let upto = partial.unwrap_or(cutoffs.raw_before_ms);
        fold.execute(params![id, upto, ROLLUP_BUCKET_MS])?;
        let folded = delete_points.execute(params![id, upto])?;
        budget = budget.saturating_sub(folded);
        outcome.points_rolled_up += folded as u64;
        outcome.rollups_deleted +=
            delete_rollups.execute(params![id, cutoffs.rollups_before_ms])? as u64;
        delete_unknown.execute(params![id, upto])?;
        if partial.is_some() {
            // This series again, from the start of the next step.
            outcome.next = Some(id - 1);
            return Ok(outcome);
        }
    }
    outcome.next = (ids.len() == SERIES_PER_STEP).then(|| ids[ids.len() - 1]);
    Ok(outcome)
}

/// Raw points of the range, or `None` when the range reaches before the raw
/// window or holds more than [`MAX_QUERY_POINTS`].
fn raw(c: &rusqlite::Connection, id: i64, q: &SeriesQuery) -> anyhow::Result<Option<Vec<Point>>> {
    if q.from_ms < q.raw_since_ms {
        return Ok(None);
    }
    let mut stmt = c.prepare_cached(
        "SELECT ts_ms, value FROM points WHERE series_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3
         UNION ALL
         SELECT ts_ms, NULL FROM unknown_points WHERE series_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3
         ORDER BY ts_ms LIMIT ?4",
    )?;
    let points: Vec<Point> = stmt
        .query_map(
            params![id, q.from_ms, q.to_ms, MAX_QUERY_POINTS as i64 + 1],
            |r| {
                Ok(Point {
                    ts_ms: r.get(0)?,
                    value: r.get(1)?,
                    min: None,
                    max: None,
                    count: None,
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    Ok((points.len() <= MAX_QUERY_POINTS).then_some(points))
}

/// The step [`Store::query_series`] picks when raw points will not do:
/// whole seconds, at most [`MAX_QUERY_POINTS`] buckets, and a multiple of
/// the rollup bucket when the range reaches the rollups.
fn auto_step_ms(q: &SeriesQuery) -> i64 {
    let span = (q.to_ms - q.from_ms).max(1);
    let mut step = ceil_div(span, MAX_QUERY_POINTS as i64).max(1000);
    if q.from_ms < q.raw_since_ms {
        step = step.max(ROLLUP_BUCKET_MS);
        step = ceil_div(step, ROLLUP_BUCKET_MS) * ROLLUP_BUCKET_MS;
    } else {
        step = ceil_div(step, 1000) * 1000;
    }
    step
}

/// Buckets of `step` ms over the range, merging raw points and rollups
/// (both may hold data for one bucket while a late sample waits to be
/// folded). A rollup counts in the bucket its own start falls into.
fn aggregated(
    c: &rusqlite::Connection,
    id: i64,
    q: &SeriesQuery,
    step: i64,
) -> anyhow::Result<Vec<Point>> {
    struct Acc {
        count: u64,
        min: f64,
        max: f64,
        sum: f64,
    }
    let mut buckets: BTreeMap<i64, Acc> = BTreeMap::new();
    let sources = [
        "SELECT ts_ms - (ts_ms % ?4), COUNT(*), MIN(value), MAX(value), SUM(value)
         FROM points WHERE series_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 GROUP BY 1",
        "SELECT bucket_ms - (bucket_ms % ?4), SUM(samples), MIN(min_value), MAX(max_value), SUM(sum_value)
         FROM rollups WHERE series_id = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3 GROUP BY 1",
    ];
    for sql in sources {
        let mut stmt = c.prepare_cached(sql)?;
        let mut rows = stmt.query(params![id, q.from_ms, q.to_ms, step])?;
        while let Some(r) = rows.next()? {
            let (bucket, count, min, max, sum): (i64, i64, f64, f64, f64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            let acc = buckets.entry(bucket).or_insert(Acc {
                count: 0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                sum: 0.0,
            });
            acc.count += count as u64;
            acc.min = acc.min.min(min);
            acc.max = acc.max.max(max);
            acc.sum += sum;
        }
    }
    Ok(buckets
        .into_iter()
        .filter(|(_, a)| a.count > 0)
        .map(|(ts_ms, a)| Point {
            ts_ms,
            value: Some(a.sum / a.count as f64),
            min: Some(a.min),
            max: Some(a.max),
            count: Some(a.count),
        })
        .collect())
}

/// `a / b` rounded up, for non-negative `a` and positive `b`
/// (`i64::div_ceil` is unstable); no overflow even for `a = i64::MAX`,
/// which a query range from the API can reach.
pub(crate) fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckState, PerfData};

    use super::*;
    use crate::store::test_support::store_with_agent;

    const HOUR_MS: i64 = 3_600_000;

    fn perf(label: &str, value: f64, uom: &str) -> PerfData {
        PerfData {
            label: label.into(),
            value,
            uom: uom.into(),
            warn: None,
            crit: None,
            min: None,
            max: None,
        }
    }

    fn result(seq: u64, started_at_ms: i64, perfdata: Vec<PerfData>) -> CheckResult {
        CheckResult {
            seq,
            check: "disk".into(),
            state: CheckState::Ok,
            summary: "ok".into(),
            long_output: String::new(),
            perfdata,
            unknown_perfdata: Vec::new(),
            started_at_ms,
            duration_ms: 1,
            update_event: None,
        }
    }

    async fn store() -> (tempfile::TempDir, Store, Fingerprint) {
        store_with_agent("db-1").await
    }

    fn query(fp: &Fingerprint, from_ms: i64, to_ms: i64, step_ms: Option<i64>) -> SeriesQuery {
        SeriesQuery {
            agent: fp.clone(),
            check: "disk".into(),
            metric: "used".into(),
            from_ms,
            to_ms,
            step_ms,
            raw_since_ms: 0,
        }
    }

    async fn count(store: &Store, table: &'static str) -> i64 {
        store
            .call(move |c| {
                Ok(c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
            })
            .await
            .unwrap()
    }

    #[test]
    fn the_widest_range_the_api_accepts_gets_a_step_without_overflow() {
        let fp: Fingerprint = crate::store::test_support::TEST_FP.parse().unwrap();
        for raw_since_ms in [0, i64::MAX] {
            let q = SeriesQuery {
                raw_since_ms,
                ..query(&fp, 0, i64::MAX, None)
            };
            let step = auto_step_ms(&q);
            assert!(step > 0 && (i64::MAX / step) <= MAX_QUERY_POINTS as i64 + 1);
        }
        assert_eq!(ceil_div(i64::MAX, 2), i64::MAX / 2 + 1);
        assert_eq!(ceil_div(10, 5), 2);
        assert_eq!(ceil_div(0, 5), 0);
    }

    #[tokio::test]
    async fn points_land_at_their_own_time_once_and_series_are_reused() {
        let (_dir, store, fp) = store().await;
        let now = crate::store::now_ms();
        // Hours-old results after an outage, then a fresh one.
        let batch = vec![
            result(
                1,
                now - 5 * HOUR_MS,
                vec![perf("used", 10.0, "%"), perf("free", 1.0, "B")],
            ),
            result(2, now - 4 * HOUR_MS, vec![perf("used", 20.0, "%")]),
        ];
        let first = store.ingest(&fp, batch.clone()).await.unwrap();
        assert_eq!(
            (first.acked_seq, first.stored.len(), first.samples),
            (2, 2, 3)
        );
        // The same batch again (lost ack): nothing new, same ack.
        let again = store.ingest(&fp, batch).await.unwrap();
        assert_eq!(
            (again.acked_seq, again.stored.len(), again.samples),
            (2, 0, 0)
        );
        // A unit change keeps the series and records the new unit.
        store
            .ingest(&fp, vec![result(3, now, vec![perf("used", 30.0, "pct")])])
            .await
            .unwrap();
        assert_eq!(count(&store, "points").await, 4);
        let series = store.series(Some(fp.clone()), None).await.unwrap();
        let names: Vec<_> = series
            .iter()
            .map(|s| (s.metric.as_str(), s.uom.as_str()))
            .collect();
        assert_eq!(names, [("free", "B"), ("used", "pct")]);
        assert!(
            store
                .series(None, Some("other".into()))
                .await
                .unwrap()
                .is_empty()
        );

        let raw = store
            .query_series(query(&fp, now - 6 * HOUR_MS, now + 1, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(raw.resolution, Resolution::Raw);
        let got: Vec<_> = raw.points.iter().map(|p| (p.ts_ms, p.value)).collect();
        assert_eq!(
            got,
            [
                (now - 5 * HOUR_MS, Some(10.0)),
                (now - 4 * HOUR_MS, Some(20.0)),
                (now, Some(30.0))
            ]
        );
        let missing = SeriesQuery {
            metric: "nope".into(),
            ..query(&fp, 0, now, None)
        };
        assert!(store.query_series(missing).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn retention_folds_old_points_into_rollups_and_merges_late_ones() {
        let (_dir, store, fp) = store().await;
        let bucket = 1_000 * ROLLUP_BUCKET_MS;
        // Three samples in one old bucket, one in the next, one recent.
        let old = vec![
            result(1, bucket + 1_000, vec![perf("used", 1.0, "")]),
            result(2, bucket + 2_000, vec![perf("used", 5.0, "")]),
            result(3, bucket + 3_000, vec![perf("used", 3.0, "")]),
            result(4, bucket + ROLLUP_BUCKET_MS, vec![perf("used", 7.0, "")]),
            result(
                5,
                bucket + 10 * ROLLUP_BUCKET_MS,
                vec![perf("used", 9.0, "")],
            ),
        ];
        store.ingest(&fp, old).await.unwrap();
        let cutoffs = Cutoffs {
            raw_before_ms: bucket + 5 * ROLLUP_BUCKET_MS,
            rollups_before_ms: 0,
            results_before_ms: 0,
        };
        let step = store.retention_step(0, cutoffs).await.unwrap();
        assert_eq!((step.next, step.points_rolled_up), (None, 4));
        assert_eq!(count(&store, "points").await, 1);
        assert_eq!(count(&store, "rollups").await, 2);

        // A late sample for the first bucket arrives and is folded in.
        store
            .ingest(
                &fp,
                vec![result(6, bucket + 4_000, vec![perf("used", 11.0, "")])],
            )
            .await
            .unwrap();
        // Before the next pass, a query merges raw and rollup data.
        let q = query(
            &fp,
            bucket,
            bucket + 20 * ROLLUP_BUCKET_MS,
            Some(ROLLUP_BUCKET_MS),
        );
        let before = store.query_series(q.clone()).await.unwrap().unwrap();
        store.retention_step(0, cutoffs).await.unwrap();
        let after = store.query_series(q).await.unwrap().unwrap();
        assert_eq!(before, after);
        assert_eq!(after.resolution, Resolution::Aggregated);
        assert_eq!(after.step_secs, Some(300));
        let first = &after.points[0];
        assert_eq!(
            (first.ts_ms, first.value, first.min, first.max, first.count),
            (bucket, Some(5.0), Some(1.0), Some(11.0), Some(4))
        );
        assert_eq!(after.points.len(), 3);
        assert_eq!(after.points[1].count, Some(1));
        assert_eq!(after.points[2].value, Some(9.0));
        assert_eq!(count(&store, "rollups").await, 2);

        // Expired rollups go; the recent raw point stays.
        let expire = Cutoffs {
            rollups_before_ms: bucket + 2 * ROLLUP_BUCKET_MS,
            ..cutoffs
        };
        let step = store.retention_step(0, expire).await.unwrap();
        assert_eq!(step.rollups_deleted, 2);
        assert_eq!(count(&store, "points").await, 1);
    }

    #[tokio::test]
    async fn a_series_with_more_expired_points_than_the_budget_is_folded_in_steps() {
        let (_dir, store, fp) = store().await;
        let bucket = 1_000 * ROLLUP_BUCKET_MS;
        let batch: Vec<_> = (1..=25)
            .map(|s| {
                result(
                    s,
                    bucket + s as i64 * 1_000,
                    vec![perf("used", s as f64, "")],
                )
            })
            .collect();
        store.ingest(&fp, batch).await.unwrap();
        let cutoffs = Cutoffs {
            raw_before_ms: bucket + ROLLUP_BUCKET_MS,
            rollups_before_ms: 0,
            results_before_ms: 0,
        };
        let mut after = 0;
        let mut folded = Vec::new();
        loop {
            let step = store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let step = retention_tx(&tx, after, cutoffs, 10)?;
                    tx.commit()?;
                    Ok(step)
                })
                .await
                .unwrap();
            folded.push(step.points_rolled_up);
            match step.next {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(folded, [10, 10, 5]);
        // One bucket, as if folded at once.
        let q = query(
            &fp,
            bucket,
            bucket + ROLLUP_BUCKET_MS,
            Some(ROLLUP_BUCKET_MS),
        );
        let got = store.query_series(q).await.unwrap().unwrap();
        let p = &got.points[0];
        assert_eq!(
            (p.count, p.min, p.max, p.value),
            (Some(25), Some(1.0), Some(25.0), Some(13.0))
        );
        assert_eq!(count(&store, "rollups").await, 1);
        assert_eq!(count(&store, "points").await, 0);
    }

    #[tokio::test]
    async fn unknown_samples_are_raw_only_and_expire_with_raw_points() {
        let (_dir, store, fp) = store().await;
        let mut late = result(2, 5_000, vec![]);
        late.unknown_perfdata = vec![outrider_protocol::UnknownPerfData {
            label: "used".into(),
            uom: "%".into(),
            warn: None,
            crit: None,
            min: None,
            max: None,
        }];
        let batch = vec![result(1, 1_000, vec![perf("used", 3.0, "%")]), late];
        assert_eq!(store.ingest(&fp, batch).await.unwrap().samples, 2);
        let raw = store
            .query_series(query(&fp, 0, 10_000, None))
            .await
            .unwrap()
            .unwrap();
        let got: Vec<_> = raw.points.iter().map(|p| (p.ts_ms, p.value)).collect();
        assert_eq!(got, [(1_000, Some(3.0)), (5_000, None)]);
        let agg = store
            .query_series(query(&fp, 0, 10_000, Some(10_000)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (agg.points[0].value, agg.points[0].count),
            (Some(3.0), Some(1))
        );

        let cutoffs = Cutoffs {
            raw_before_ms: 4_000,
            rollups_before_ms: 0,
            results_before_ms: 0,
        };
        store.retention_step(0, cutoffs).await.unwrap();
        assert_eq!(
            count(&store, "unknown_points").await,
            1,
            "newer than the cut-off"
        );
        let cutoffs = Cutoffs {
            raw_before_ms: 6_000,
            ..cutoffs
        };
        store.retention_step(0, cutoffs).await.unwrap();
        assert_eq!(count(&store, "unknown_points").await, 0);
        assert_eq!(
            count(&store, "rollups").await,
            1,
            "the known sample is folded"
        );
    }

    #[tokio::test]
    async fn a_full_series_cache_is_refilled_with_the_same_ids() {
        let (_dir, store, fp) = store().await;
        *store.series.lock().unwrap() = SeriesCache::new(2);
        let labels = ["a", "b", "c"];
        let batch = |seq: u64| {
            let perfdata = labels.iter().map(|l| perf(l, seq as f64, "")).collect();
            vec![result(seq, seq as i64 * 1_000, perfdata)]
        };
        store.ingest(&fp, batch(1)).await.unwrap();
        assert!(store.series.lock().unwrap().len() <= 2);
        store.ingest(&fp, batch(2)).await.unwrap();
        // Three series, never more, each with both points.
        assert_eq!(count(&store, "series").await, 3);
        for label in labels {
            let q = SeriesQuery {
                metric: label.into(),
                ..query(&fp, 0, 10_000, None)
            };
            let got = store.query_series(q).await.unwrap().unwrap();
            assert_eq!(got.points.len(), 2, "{label}");
        }
    }

    #[tokio::test]
    async fn old_results_go_but_each_checks_latest_stays() {
        let (_dir, store, fp) = store().await;
        let batch: Vec<_> = (1..=5)
            .map(|s| result(s, s as i64 * 1_000, vec![]))
            .collect();
        store.ingest(&fp, batch).await.unwrap();
        // Nothing arrived before a cut-off in the past, whatever its start.
        let (next, deleted) = store
            .results_retention_step(ResultsCursor::default(), 10_000)
            .await
            .unwrap();
        assert_eq!((next, deleted), (None, 0));
        let later = crate::store::now_ms() + 1_000;
        let (next, deleted) = store
            .results_retention_step(ResultsCursor::default(), later)
            .await
            .unwrap();
        assert_eq!((next, deleted), (None, 4));
        let latest = store.latest_results(None).await.unwrap();
        assert_eq!(latest[0].seq, 5);
    }

    #[tokio::test]
    async fn a_results_pass_deletes_everything_expired_in_bounded_steps() {
        let (_dir, store, fp) = store().await;
        // More than one step's budget, dated far in the future (a wrong
        // clock or a hostile agent) and by an agent whose kept latest
        // results come first in sequence order.
        let future = i64::MAX / 4;
        let n = 2 * RESULTS_PER_STEP as u64 + 500;
        let mut seq = 0;
        while seq < n {
            let batch: Vec<_> = (seq + 1..=(seq + 500).min(n))
                .map(|s| {
                    let mut r = result(s, future + s as i64, vec![]);
                    r.check = format!("c{}", s % 3);
                    r
                })
                .collect();
            seq += batch.len() as u64;
            store.ingest(&fp, batch).await.unwrap();
        }
        let cutoff = crate::store::now_ms() + 1_000;
        let mut cursor = Some(ResultsCursor::default());
        let (mut steps, mut deleted) = (0, 0);
        while let Some(c) = cursor {
            let (next, d) = store.results_retention_step(c, cutoff).await.unwrap();
            cursor = next;
            deleted += d;
            steps += 1;
            assert!(steps < 10, "the pass ends");
        }
        assert!(steps >= 2, "bounded steps, took {steps}");
        assert_eq!(deleted, n - 3);
        assert_eq!(count(&store, "results").await, 3);
    }

    #[tokio::test]
    async fn wide_ranges_without_a_step_are_aggregated() {
        let (_dir, store, fp) = store().await;
        let batch: Vec<_> = (1..=3)
            .map(|s| result(s, s as i64 * 1_000, vec![perf("used", s as f64, "")]))
            .collect();
        store.ingest(&fp, batch).await.unwrap();
        // Reaching before the raw window: rollup-sized buckets.
        let q = SeriesQuery {
            raw_since_ms: 2_000,
            ..query(&fp, 0, 40 * 86_400_000, None)
        };
        let got = store.query_series(q).await.unwrap().unwrap();
        assert_eq!(got.resolution, Resolution::Aggregated);
        assert_eq!(got.step_secs, Some(600));
        assert_eq!(got.points.len(), 1);
        assert_eq!(got.points[0].count, Some(3));
        assert_eq!(got.points[0].value, Some(2.0));
    }
}
