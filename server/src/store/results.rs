//! Result ingest (deduplicated by `(agent, seq)`) and the latest-results view.
//!
//! One batch is one transaction: its results, their perfdata points
//! (`metrics.rs`), the latest-result pointers and the agent's acked seq
//! commit together, and the ack is computed inside it, so an ack never
//! covers anything not durably stored.

use anyhow::Context;
use outrider_protocol::api::ResultInfo;
use outrider_protocol::{CheckResult, Fingerprint, UnknownPerfData};
use rusqlite::{Connection, params};

use super::metrics::{self, SeriesCache};
use super::{Store, now_ms};

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
        let fp = fingerprint.to_string();
        let series = self.series.clone();
        self.call(move |c| {
            // Lock order: `conn` (held by `call`), then the series cache.
            let mut cache = series.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = ingest_tx(c, &mut cache, &fp, results);
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
        self.call(move |c| {
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
                    seq: seq as u64,
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

/// The body of [`Store::ingest`]: one transaction.
fn ingest_tx(
    c: &mut Connection,
    cache: &mut SeriesCache,
    fp: &str,
    results: Vec<CheckResult>,
) -> anyhow::Result<Ingested> {
    let tx = c.transaction()?;
    let now = now_ms();
    let mut out = Ingested::default();
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO results (fingerprint, seq, check_name, state, summary, long_output,
                                            perfdata, started_at_ms, duration_ms, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut latest = tx.prepare_cached(
            // `state_since_ms` moves only when the state changes; the
            // right-hand sides see the row as it was before the update.
            "INSERT INTO latest_results (fingerprint, check_name, seq, state, state_since_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (fingerprint, check_name) DO UPDATE SET seq = excluded.seq,
                 state = excluded.state,
                 state_since_ms = CASE WHEN latest_results.state IS excluded.state
                                       THEN latest_results.state_since_ms
                                       ELSE excluded.state_since_ms END
             WHERE excluded.seq > latest_results.seq",
        )?;
        for r in results {
            let seq = i64::try_from(r.seq).context("sequence number out of range")?;
            let inserted = insert.execute(params![
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
                latest.execute(params![fp, r.check, seq, r.state.as_str(), r.started_at_ms])?;
                out.samples += metrics::insert_points(&tx, cache, fp, &r)?;
                if let Some(event) = &r.update_event {
                    super::update_events::insert(&tx, fp, event, now)?;
                }
                out.stored.push(r);
            }
        }
    }
    let max = out.stored.iter().map(|r| r.seq).max().unwrap_or(0) as i64;
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
