//! The results area on SQLite: the statements the server has always run
//! (moved here from server/src/store/results.rs and the results part of
//! server/src/store/metrics.rs), on the tables of
//! server/src/store/schema.sql.
//!
//! One writer, so a batch is one immediate transaction holding everything
//! of rule 1 (`backend/results.rs`) and the perfdata points too: the
//! results, their points (`store::metrics::write_perfdata`, on the same
//! file), the latest pointers, the update events
//! (`sqlite::update_events::insert`), the series-limit report and the
//! agent's `acked_seq`. The ack is read back from the `UPDATE` that
//! raised it, inside that transaction, and returned only after the
//! commit.

use outrider_protocol::api::ResultInfo;
use outrider_protocol::{CheckResult, Fingerprint, UnknownPerfData};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::results::{
    AGENTS_PER_STEP, IngestLimits, Ingested, RESULTS_PER_STEP, ResultStore, ResultsCursor,
    batch_ack, clamped_start, json, server_seq, shown_seq, store_text_of, stored_fingerprint,
    stored_perfdata, stored_seq, stored_state,
};
use crate::store::Store;
use crate::store::metrics::{SeriesCache, write_perfdata};

impl ResultStore for SqliteBackend {
    async fn ingest(
        &self,
        agent: &Fingerprint,
        results: Vec<CheckResult>,
        limits: IngestLimits,
        // The node's metrics store is this backend's own store: the points
        // are written below, in the results' transaction.
        _metrics: &Store,
        now_ms: i64,
    ) -> Result<Ingested, StoreError> {
        let fp = agent.to_string();
        let series = self.store.series_cache();
        self.store
            .with_writer(move |c| {
                // Lock order: `conn` (held by `with_writer`), then the cache.
                let mut cache = series.lock().unwrap_or_else(|p| p.into_inner());
                let outcome = ingest_tx(c, &mut cache, &fp, results, limits, now_ms);
                if outcome.is_err() {
                    // Ids of series created in the rolled-back transaction
                    // are gone.
                    cache.clear();
                }
                outcome
            })
            .await?
    }

    async fn latest_results(
        &self,
        agent: Option<&Fingerprint>,
    ) -> Result<Vec<ResultInfo>, StoreError> {
        let agent = agent.cloned();
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
            let mut rows = stmt.query([low, high])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(ResultInfo {
                    agent: stored_fingerprint(&r.get::<_, String>(0)?)?,
                    hostname: r.get(1)?,
                    check: r.get(2)?,
                    seq: shown_seq(r.get(3)?),
                    state: stored_state(&r.get::<_, String>(4)?)?,
                    summary: r.get(5)?,
                    long_output: r.get(6)?,
                    perfdata: stored_perfdata(&r.get::<_, String>(7)?)?,
                    unknown_perfdata: Vec::new(),
                    started_at_ms: r.get(8)?,
                    duration_ms: u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
                    received_at_ms: r.get(10)?,
                    state_since_ms: r.get(11)?,
                });
            }
            add_unknown_perfdata(c, low, high, &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn results_retention_step(
        &self,
        cursor: ResultsCursor,
        before_ms: i64,
    ) -> Result<(Option<ResultsCursor>, u64), StoreError> {
        self.write(move |tx| Ok(results_retention_tx(tx, cursor, before_ms)?))
            .await
    }
}

/// Fills in the `U` items of the latest results in `out` (those of agents
/// `low..=high`) from the unknown points stored at each result's start;
/// they carry label and unit (see server/src/store/metrics.sql).
fn add_unknown_perfdata(
    c: &Connection,
    low: &str,
    high: &str,
    out: &mut [ResultInfo],
) -> rusqlite::Result<()> {
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

/// The body of [`ResultStore::ingest`]: one immediate transaction.
fn ingest_tx(
    c: &mut Connection,
    cache: &mut SeriesCache,
    fp: &str,
    results: Vec<CheckResult>,
    limits: IngestLimits,
    now: i64,
) -> Result<Ingested, StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let known = tx
        .prepare_cached("SELECT 1 FROM agents WHERE fingerprint = ?1")?
        .query_row([fp], |_| Ok(()))
        .optional()?;
    if known.is_none() {
        return Err(StoreError::UnknownAgent {
            fingerprint: fp.to_owned(),
        });
    }
    let mut out = Ingested::default();
    for mut r in results {
        let seq = stored_seq(r.seq)?;
        let (start, clamped) = clamped_start(r.started_at_ms, now);
        r.started_at_ms = start;
        out.clamped += usize::from(clamped);
        store_text_of(&mut r);
        if insert_result(&tx, fp, seq, &r, now)? {
            out.stored.push(r);
        }
    }
    let written = write_perfdata(
        &tx,
        cache,
        fp,
        &mut out.stored,
        limits.max_series,
        now,
        None,
    )?;
    out.samples = written.samples;
    out.series_dropped = written.series_dropped;
    for &i in &written.trimmed {
        let r = &out.stored[i];
        tx.prepare_cached("UPDATE results SET perfdata = ?3 WHERE fingerprint = ?1 AND seq = ?2")?
            .execute(params![fp, stored_seq(r.seq)?, json(&r.perfdata)])?;
    }
    for r in &out.stored {
        if let Some(event) = &r.update_event {
            super::update_events::insert(&tx, fp, event, now)?;
        }
    }
    let max = batch_ack(&out.stored, limits.refused_up_to)?;
    if let Some(report) = written.report {
        insert_result(&tx, fp, server_seq(now), &report, now)?;
        out.stored.push(report);
    }
    let acked_seq: i64 = tx
        .prepare_cached(
            "UPDATE agents SET acked_seq = MAX(acked_seq, ?2), last_seen_ms = ?3
             WHERE fingerprint = ?1 RETURNING acked_seq",
        )?
        .query_row(params![fp, max, now], |r| r.get(0))?;
    tx.commit()?;
    out.acked_seq = shown_seq(acked_seq);
    Ok(out)
}

/// Stores result `r` as `seq` of agent `fp` and moves the check's latest
/// pointer; false when that seq was already stored.
fn insert_result(
    tx: &Transaction<'_>,
    fp: &str,
    seq: i64,
    r: &CheckResult,
    now: i64,
) -> rusqlite::Result<bool> {
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
            json(&r.perfdata),
            r.started_at_ms,
            i64::try_from(r.duration_ms).unwrap_or(i64::MAX),
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

/// The body of [`ResultStore::results_retention_step`] (rule 7).
fn results_retention_tx(
    tx: &Transaction<'_>,
    cursor: ResultsCursor,
    before_ms: i64,
) -> rusqlite::Result<(Option<ResultsCursor>, u64)> {
    let mut next_agent = tx.prepare_cached(
        "SELECT fingerprint FROM agents WHERE fingerprint > ?1 ORDER BY fingerprint LIMIT 1",
    )?;
    let mut window = tx.prepare_cached(
        "SELECT seq, received_at_ms FROM results WHERE fingerprint = ?1 AND seq > ?2
         ORDER BY seq LIMIT ?3",
    )?;
    let mut delete = tx.prepare_cached(
        "DELETE FROM results WHERE fingerprint = ?1 AND seq > ?2 AND seq <= ?3
             AND received_at_ms < ?4
             AND seq NOT IN (SELECT seq FROM latest_results WHERE fingerprint = ?1)",
    )?;
    let (mut agent, mut after) = if cursor.agent.is_empty() {
        match next_agent
            .query_row([""], |r| r.get::<_, String>(0))
            .optional()?
        {
            Some(fp) => (fp, i64::MIN),
            None => return Ok((None, 0)),
        }
    } else {
        (cursor.agent, cursor.after_seq)
    };
    let (mut examined, mut agents, mut deleted) = (0usize, 0usize, 0u64);
    loop {
        let limit = RESULTS_PER_STEP - examined;
        let rows: Vec<(i64, i64)> = window
            .query_map(params![agent, after, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        examined += rows.len().max(1);
        if let Some(&(last_seq, last_received)) = rows.last() {
            deleted += delete.execute(params![agent, after, last_seq, before_ms])? as u64;
            if rows.len() == limit && last_received < before_ms {
                // The budget ran out inside this agent's expired results.
                return Ok((
                    Some(ResultsCursor {
                        agent,
                        after_seq: last_seq,
                    }),
                    deleted,
                ));
            }
        }
        agents += 1;
        match next_agent
            .query_row([&agent], |r| r.get::<_, String>(0))
            .optional()?
        {
            None => return Ok((None, deleted)),
            Some(fp) => {
                agent = fp;
                after = i64::MIN;
            }
        }
        if examined >= RESULTS_PER_STEP || agents >= AGENTS_PER_STEP {
            return Ok((
                Some(ResultsCursor {
                    agent,
                    after_seq: after,
                }),
                deleted,
            ));
        }
    }
}
