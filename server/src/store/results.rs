//! Result ingest (deduplicated by `(agent, seq)`) and the latest-results view.
//!
//! One batch is one transaction: its results, their perfdata points
//! (`metrics.rs`), the latest-result pointers and the agent's acked seq
//! commit together, and the ack is computed inside it, so an ack never
//! covers anything not durably stored (except results the caller refused,
//! see [`IngestLimits::refused_up_to`]).
//!
//! Bounds applied here:
//! - a result's start time is clamped to at most [`MAX_FUTURE_MS`] past
//!   the server's clock, so a future-dated sample cannot outlive retention
//!   (which cuts on time) or sit ahead of every real one;
//! - an agent's series are capped (`metrics.rs`); the server reports drops
//!   as a WARNING result [`SERIES_LIMIT_CHECK`] of that agent. Results the
//!   server writes itself have negative sequence numbers (`i64::MIN` plus
//!   the time), apart from the agent's, and show as seq 0.

use anyhow::Context;
use outrider_protocol::api::ResultInfo;
use outrider_protocol::{CheckResult, CheckState, Fingerprint, UnknownPerfData};
use rusqlite::{Connection, params};

use super::metrics::{
    self, SERIES_LIMIT_CHECK, SERIES_LIMIT_RECOVERY_MS, SERIES_LIMIT_REPORT_MS, SeriesCache,
};
use super::{Store, now_ms};

/// How far past the server's clock a result's start may lie; later starts
/// are clamped to it (and counted in [`Ingested::clamped`]).
pub const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;

/// Default of [`IngestLimits::max_series`].
pub const DEFAULT_MAX_SERIES_PER_AGENT: usize = 2_000;

/// Bounds of one [`Store::ingest_with`] call.
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

/// What [`Store::ingest`] did with a batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// The sequence number the agent may treat as acknowledged: the highest
    /// stored for it.
    pub acked_seq: u64,
    /// The results stored by this call (not those stored before), in batch
    /// order: what the live event stream and the outputs should see.
    pub stored: Vec<CheckResult>,
    /// Perfdata samples written as metric points.
    pub samples: usize,
    /// Samples dropped by the agent's series limit.
    pub series_dropped: usize,
    /// Results whose start lay more than [`MAX_FUTURE_MS`] ahead, clamped.
    pub clamped: usize,
}

impl Store {
    /// Stores a batch, its perfdata as metric points included, in one
    /// transaction. Results already stored are ignored, so a resent batch is
    /// harmless. Each result is stored at its own `started_at_ms`, however
    /// old: an agent back from an outage delivers its spool late.
    ///
    /// Fails when the database fails or a sequence number exceeds `i64`;
    /// nothing of the batch is stored then.
    pub async fn ingest(
        &self,
        fingerprint: &Fingerprint,
        results: Vec<CheckResult>,
    ) -> anyhow::Result<Ingested> {
        self.ingest_with(fingerprint, results, IngestLimits::default())
            .await
    }

    /// [`Store::ingest`] within `limits`. The results of `stored` are as
    /// stored: start clamped, perfdata dropped by the series limit removed,
    /// and a series-limit report the server wrote for the agent last.
    pub async fn ingest_with(
        &self,
        fingerprint: &Fingerprint,
        results: Vec<CheckResult>,
        limits: IngestLimits,
    ) -> anyhow::Result<Ingested> {
        let fp = fingerprint.to_string();
        let series = self.series.clone();
        self.call(move |c| {
            // Lock order: `conn` (held by `call`), then the series cache.
            let mut cache = series.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = ingest_tx(c, &mut cache, &fp, results, limits);
            if outcome.is_err() {
                // Ids of series created in the rolled-back transaction are gone.
                cache.clear();
            }
            outcome
        })
        .await
    }

    /// The newest result of every check of every agent (or of one agent).
    pub async fn latest_results(
        &self,
        agent: Option<Fingerprint>,
    ) -> anyhow::Result<Vec<ResultInfo>> {
        self.read(move |c| {
            // A range on the key rather than `?1 IS NULL OR l.fingerprint = ?1`,
            // which SQLite answers with a scan of every agent's rows.
            let (low, high) = match &agent {
                Some(fp) => (fp.as_str(), fp.as_str()),
                None => ("", "\u{10ffff}"),
            };
            let mut stmt = c.prepare_cached(
                "SELECT r.fingerprint, a.hostname, r.check_name, r.seq, r.state, r.summary, r.long_output,
                        r.perfdata, r.started_at_ms, r.duration_ms, r.received_at_ms,
                        l.state_since_ms
                 FROM latest_results l
                 JOIN results r ON r.fingerprint = l.fingerprint AND r.seq = l.seq
                 JOIN agents a ON a.fingerprint = l.fingerprint
                 WHERE l.fingerprint BETWEEN ?1 AND ?2
                 ORDER BY a.hostname, r.fingerprint, r.check_name",
            )?;
            let rows = stmt.query_map([low, high], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (fp, hostname, check, seq, state, summary, long_output, perfdata, started, duration, received, since) =
                    row?;
                out.push(ResultInfo {
                    agent: fp.parse().context("stored fingerprint is malformed")?,
                    hostname,
                    check,
                    // The server's own results have negative sequence numbers.
                    seq: u64::try_from(seq).unwrap_or(0),
                    state: state.parse().map_err(anyhow::Error::msg)?,
                    summary,
                    long_output,
                    perfdata: serde_json::from_str(&perfdata).context("stored perfdata is malformed")?,
                    unknown_perfdata: Vec::new(),
                    started_at_ms: started,
                    duration_ms: duration as u64,
                    received_at_ms: received,
                    state_since_ms: since,
                });
            }
            add_unknown_perfdata(c, low, high, &mut out)?;
            Ok(out)
        })
        .await
    }
}

/// Fills in the `U` items of the latest results in `out` (those of agents
/// `low..=high`) from the unknown points stored at each result's start;
/// they carry label and unit (see `metrics.sql`).
fn add_unknown_perfdata(
    c: &Connection,
    low: &str,
    high: &str,
    out: &mut [ResultInfo],
) -> anyhow::Result<()> {
    let mut stmt = c.prepare_cached(
        "SELECT s.fingerprint, s.check_name, s.label, s.uom
         FROM latest_results l
         JOIN results r ON r.fingerprint = l.fingerprint AND r.seq = l.seq
         JOIN series s ON s.fingerprint = l.fingerprint AND s.check_name = l.check_name
         JOIN unknown_points u ON u.series_id = s.id AND u.ts_ms = r.started_at_ms
         WHERE l.fingerprint BETWEEN ?1 AND ?2
         ORDER BY s.id",
    )?;
    let mut rows = stmt.query([low, high])?;
    while let Some(row) = rows.next()? {
        let (fp, check): (String, String) = (row.get(0)?, row.get(1)?);
        if let Some(result) = out
            .iter_mut()
            .find(|r| r.agent.as_str() == fp && r.check == check)
        {
            result.unknown_perfdata.push(UnknownPerfData {
                label: row.get(2)?,
                uom: row.get(3)?,
                warn: None,
                crit: None,
                min: None,
                max: None,
            });
        }
    }
    Ok(())
}

/// The body of [`Store::ingest_with`]: one transaction.
fn ingest_tx(
    c: &mut Connection,
    cache: &mut SeriesCache,
    fp: &str,
    results: Vec<CheckResult>,
    limits: IngestLimits,
) -> anyhow::Result<Ingested> {
    let tx = c.transaction()?;
    let now = now_ms();
    let mut out = Ingested::default();
    for mut r in results {
        let seq = i64::try_from(r.seq).context("sequence number out of range")?;
        if r.started_at_ms > now + MAX_FUTURE_MS {
            r.started_at_ms = now + MAX_FUTURE_MS;
            out.clamped += 1;
        }
        if insert_result(&tx, fp, seq, &r, now)? {
            let points = metrics::insert_points(&tx, cache, fp, &mut r, limits.max_series)?;
            out.samples += points.written;
            if points.dropped > 0 {
                out.series_dropped += points.dropped;
                tx.prepare_cached(
                    "UPDATE results SET perfdata = ?3 WHERE fingerprint = ?1 AND seq = ?2",
                )?
                .execute(params![fp, seq, serde_json::to_string(&r.perfdata)?])?;
            }
            if let Some(event) = &r.update_event {
                super::update_events::insert(&tx, fp, event, now)?;
            }
            out.stored.push(r);
        }
    }
    let max = out
        .stored
        .iter()
        .map(|r| r.seq)
        .max()
        .unwrap_or(0)
        .max(limits.refused_up_to);
    let max = i64::try_from(max).context("sequence number out of range")?;
    if let Some(report) = series_limit_report(&tx, cache, fp, now, limits.max_series, &out)? {
        // `i64::MIN + now` grows with time and never meets an agent's seq.
        insert_result(&tx, fp, i64::MIN + now, &report, now)?;
        out.stored.push(report);
    }
    let mut acked = tx.prepare_cached(
        "UPDATE agents SET acked_seq = MAX(acked_seq, ?2), last_seen_ms = ?3 WHERE fingerprint = ?1
         RETURNING acked_seq",
    )?;
    let acked_seq: i64 = acked.query_row(params![fp, max, now], |r| r.get(0))?;
    drop(acked);
    tx.commit()?;
    out.acked_seq = acked_seq as u64;
    Ok(out)
}

/// Stores result `r` as `seq` of agent `fp` and moves the check's latest
/// pointer; false when that seq was already stored.
fn insert_result(
    tx: &rusqlite::Transaction<'_>,
    fp: &str,
    seq: i64,
    r: &CheckResult,
    now: i64,
) -> anyhow::Result<bool> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO results (fingerprint, seq, check_name, state, summary, long_output,
                                            perfdata, started_at_ms, duration_ms, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            fp,
            seq,
            r.check,
            r.state.as_str(),
            r.summary,
            r.long_output,
            serde_json::to_string(&r.perfdata)?,
            r.started_at_ms,
            r.duration_ms as i64,
            now
        ])?;
    if inserted > 0 {
        // `state_since_ms` moves only when the state changes; the
        // right-hand sides see the row as it was before the update.
        tx.prepare_cached(
            "INSERT INTO latest_results (fingerprint, check_name, seq, state, state_since_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (fingerprint, check_name) DO UPDATE SET seq = excluded.seq,
                 state = excluded.state,
                 state_since_ms = CASE WHEN latest_results.state IS excluded.state
                                       THEN latest_results.state_since_ms
                                       ELSE excluded.state_since_ms END
             WHERE excluded.seq > latest_results.seq",
        )?
        .execute(params![fp, r.check, seq, r.state.as_str(), r.started_at_ms])?;
    }
    Ok(inserted > 0)
}

/// What the server says about agent `fp`'s series limit after a batch, if
/// anything: a WARNING naming the samples dropped since the last report
/// (at most one per [`SERIES_LIMIT_REPORT_MS`]), or an OK once none were
/// dropped for [`SERIES_LIMIT_RECOVERY_MS`] after a WARNING, so an alert
/// on it resolves.
fn series_limit_report(
    tx: &rusqlite::Transaction<'_>,
    cache: &mut SeriesCache,
    fp: &str,
    now: i64,
    max_series: usize,
    batch: &Ingested,
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
    if quiet && agent.dropped_unreported == 0 && batch.series_dropped == 0 {
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

#[cfg(test)]
mod tests {
    use outrider_protocol::api::Presence;
    use outrider_protocol::{CheckState, PerfData};

    use super::*;
    use crate::store::{Registration, test_support};

    fn result(seq: u64, check: &str, state: CheckState) -> CheckResult {
        CheckResult {
            seq,
            check: check.into(),
            state,
            summary: format!("run {seq}"),
            long_output: String::new(),
            perfdata: vec![PerfData {
                label: "load1".into(),
                value: seq as f64,
                uom: String::new(),
                warn: Some("5".into()),
                crit: None,
                min: Some(0.0),
                max: None,
            }],
            unknown_perfdata: Vec::new(),
            started_at_ms: 1_000 * seq as i64,
            duration_ms: 3,
            update_event: None,
        }
    }

    async fn store_with_agent() -> (tempfile::TempDir, Store, Fingerprint) {
        test_support::store_with_agent("web-1").await
    }

    #[tokio::test]
    async fn resent_batch_is_stored_once_and_latest_tracks_highest_seq() {
        let (_dir, store, fp) = store_with_agent().await;
        let batch = vec![
            result(1, "load", CheckState::Ok),
            result(2, "load", CheckState::Critical),
        ];
        assert_eq!(store.ingest(&fp, batch.clone()).await.unwrap().acked_seq, 2);
        // Lost ack: the agent resends the same batch plus an older straggler.
        assert_eq!(store.ingest(&fp, batch).await.unwrap().acked_seq, 2);
        let latest = store.latest_results(None).await.unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].seq, 2);
        assert_eq!(latest[0].state, CheckState::Critical);
        assert_eq!(latest[0].perfdata[0].value, 2.0);
        assert_eq!(latest[0].hostname, "web-1");
        let count: i64 = store
            .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM results", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(count, 2);
    }

    #[tokio::test]
    async fn latest_result_records_since_when_the_check_is_in_its_state() {
        let (_dir, store, fp) = store_with_agent().await;
        let since = |store: Store| async move {
            store.latest_results(None).await.unwrap()[0].state_since_ms
        };
        let table = [
            (1, CheckState::Ok, 1_000),
            (2, CheckState::Ok, 1_000),
            (3, CheckState::Critical, 3_000),
            (4, CheckState::Critical, 3_000),
            (5, CheckState::Warning, 5_000),
            (6, CheckState::Ok, 6_000),
        ];
        for (seq, state, want) in table {
            store
                .ingest(&fp, vec![result(seq, "load", state)])
                .await
                .unwrap();
            assert_eq!(since(store.clone()).await, Some(want), "after seq {seq}");
        }
        // An older straggler changes neither the latest result nor since.
        store
            .ingest(&fp, vec![result(0, "load", CheckState::Critical)])
            .await
            .unwrap();
        assert_eq!(since(store.clone()).await, Some(6_000));
    }

    fn with_labels(seq: u64, labels: std::ops::Range<usize>) -> CheckResult {
        let mut r = result(seq, "load", CheckState::Ok);
        r.started_at_ms = now_ms();
        r.perfdata = labels
            .map(|i| PerfData {
                label: format!("l{i}"),
                ..r.perfdata[0].clone()
            })
            .collect();
        r
    }

    #[tokio::test]
    async fn series_beyond_the_limit_are_dropped_and_reported_then_recover() {
        let (_dir, store, fp) = store_with_agent().await;
        let limits = IngestLimits {
            max_series: 3,
            refused_up_to: 0,
        };
        let got = store
            .ingest_with(&fp, vec![with_labels(1, 0..5)], limits)
            .await
            .unwrap();
        assert_eq!((got.samples, got.series_dropped), (3, 2));
        // The stored result keeps only the samples that were stored, and
        // the server's report follows it.
        assert_eq!(got.stored.len(), 2);
        assert_eq!(got.stored[0].perfdata.len(), 3);
        let report = &got.stored[1];
        assert_eq!(
            (report.check.as_str(), report.state),
            (SERIES_LIMIT_CHECK, CheckState::Warning)
        );
        assert!(
            report.summary.starts_with("2 perfdata samples dropped"),
            "{}",
            report.summary
        );
        assert_eq!(store.series(Some(fp.clone()), None).await.unwrap().len(), 3);
        // Known series still take samples; new ones are dropped, but the
        // next WARNING waits for the report interval.
        let got = store
            .ingest_with(&fp, vec![with_labels(2, 0..6)], limits)
            .await
            .unwrap();
        assert_eq!(
            (got.samples, got.series_dropped, got.stored.len()),
            (3, 3, 1)
        );
        let latest = store.latest_results(None).await.unwrap();
        let report = latest
            .iter()
            .find(|r| r.check == SERIES_LIMIT_CHECK)
            .unwrap();
        assert_eq!((report.state, report.seq), (CheckState::Warning, 0));
        let perfdata: String = store
            .call(|c| {
                Ok(
                    c.query_row("SELECT perfdata FROM results WHERE seq = 2", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<PerfData>>(&perfdata)
                .unwrap()
                .len(),
            3
        );
        // Once the report interval passed, the drops since are reported.
        let age = |store: &Store, ms: i64| {
            let mut cache = store.series.lock().unwrap();
            let agent = cache.agents.get_mut(fp.as_str()).unwrap();
            agent.warned_at_ms = agent.warned_at_ms.map(|t| t - ms);
        };
        age(&store, SERIES_LIMIT_REPORT_MS);
        let got = store
            .ingest_with(&fp, vec![with_labels(3, 0..3)], limits)
            .await
            .unwrap();
        assert_eq!(got.stored.len(), 2);
        assert!(
            got.stored[1]
                .summary
                .starts_with("3 perfdata samples dropped")
        );
        // Quiet for the recovery time: an OK, so an alert on it resolves.
        age(&store, SERIES_LIMIT_RECOVERY_MS);
        let got = store
            .ingest_with(&fp, vec![with_labels(4, 0..3)], limits)
            .await
            .unwrap();
        assert_eq!(got.stored.len(), 2);
        assert_eq!(got.stored[1].state, CheckState::Ok);
        let got = store
            .ingest_with(&fp, vec![with_labels(5, 0..3)], limits)
            .await
            .unwrap();
        assert_eq!(got.stored.len(), 1, "one OK, not one per batch");
        // The agent's own sequence numbers and acks are untouched.
        assert_eq!(got.acked_seq, 5);
    }

    #[tokio::test]
    async fn future_dated_results_are_clamped_and_refused_seqs_acked() {
        let (_dir, store, fp) = store_with_agent().await;
        let mut r = result(1, "load", CheckState::Ok);
        r.started_at_ms = i64::MAX;
        let limits = IngestLimits {
            refused_up_to: 9,
            ..IngestLimits::default()
        };
        let got = store.ingest_with(&fp, vec![r], limits).await.unwrap();
        assert_eq!(got.clamped, 1);
        assert_eq!(got.acked_seq, 9);
        let stored = got.stored[0].started_at_ms;
        assert!(stored <= now_ms() + MAX_FUTURE_MS && stored > now_ms());
        let latest = store.latest_results(None).await.unwrap();
        assert_eq!(latest[0].started_at_ms, stored);
    }

    #[tokio::test]
    async fn presence_and_acked_seq_survive_reopen() {
        let (dir, store, fp) = store_with_agent().await;
        store
            .ingest(&fp, vec![result(7, "disk", CheckState::Ok)])
            .await
            .unwrap();
        store
            .set_presence(&fp, Presence::Deregistered)
            .await
            .unwrap();
        drop(store);
        let store = Store::open(&dir.path().join("test.db")).await.unwrap();
        let agents = store.agents().await.unwrap();
        assert_eq!(agents[0].presence, Presence::Deregistered);
        // Re-registration reports what is already stored.
        let acked = store
            .register(Registration {
                agent_version: "0.1.1".into(),
                build_sha256: Some("cd".repeat(32)),
                build_version: Some("0.1.1".into()),
                ..test_support::registration(&fp, "web-1", &[])
            })
            .await
            .unwrap()
            .unwrap()
            .acked_seq;
        assert_eq!(acked, 7);
        assert_eq!(
            store.agents().await.unwrap()[0].presence,
            Presence::Connected
        );
    }
}
