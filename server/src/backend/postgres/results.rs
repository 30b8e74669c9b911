//! The results area on PostgreSQL (tables of migrations/0012_results.sql,
//! and `agents` of 0005_agents.sql).
//!
//! Concurrency. An agent moving between nodes can have batches ingested by
//! two nodes at once (its old session's last batch still on node A while
//! its new session resends on node B). Each ingest starts by locking the
//! agent's row (`SELECT … FOR UPDATE`) and keeps the lock to its commit,
//! so one agent's ingests take turns, as SQLite's single writer runs them,
//! and each statement after the lock sees every earlier holder's commit
//! (READ COMMITTED):
//! - a result the other node stored is found (`ON CONFLICT DO NOTHING`)
//!   and not stored or handed to the sinks twice; one whose batch rolled
//!   back is stored by the next (rule 1 of `backend/results.rs`);
//! - `acked_seq` is raised with `GREATEST` on the row as the previous
//!   holder committed it: never lowered by a straggler (rule 2);
//! - a removal (`postgres/agents.rs`) deletes the row under the same lock
//!   and then the agent's `latest_results`: an ingest queued behind it
//!   finds no agent and stores nothing ([`StoreError::UnknownAgent`]), and
//!   one ahead of it commits before the removal deletes its latest rows.
//!   Without the lock taken first, an ingest holding a latest row while
//!   the removal holds the agent's row deadlock (the step test
//!   `postgres_an_ingest_queued_behind_a_removal_stores_nothing` fails with
//!   "deadlock detected" without it);
//! - the result rows' unique entries and the `latest_results` rows are
//!   taken under that lock, so two overlapping batches of one agent,
//!   whose inserts would otherwise wait on each other's entries in
//!   different orders, cannot deadlock (without the lock the suite's
//!   `concurrent_batches_from_two_nodes_store_each_result_once_and_ack_all`
//!   fails with "deadlock detected").
//!
//! Lock order everywhere: the agent's row, then its `latest_results`
//! rows, then the update events' advisory lock
//! (`postgres::update_events::insert`, called on this transaction so a
//! result and its update event commit together).
//!
//! Perfdata stay in the node's embedded SQLite store (rule 6): the trait's
//! ingest is given it (`metrics`). Order of one batch:
//! 1. PostgreSQL: lock the agent, insert the results (learning which are
//!    new), move the latest pointers, read when the agent's series-limit
//!    WARNING was written (the node's cache may not know it);
//! 2. SQLite: write the new results' points and decide the series-limit
//!    report, committed (`Store::write_perfdata`);
//! 3. PostgreSQL: rewrite the perfdata the limit trimmed, store the update
//!    events and the report, raise `acked_seq`, commit;
//! 4. return the ack, read inside the transaction of step 3, only once its
//!    commit succeeded.
//!
//! So the ack never covers a result not committed in PostgreSQL. The
//! points are committed before their results: if step 3 fails, the
//! results are not stored, nothing is acked, and the agent resends them;
//! their points are then written again at the same `(series, time)`
//! (`INSERT OR REPLACE`: the same rows, not duplicates), and the node's
//! series cache is cleared so the report state is reloaded rather than
//! taken as reported. The other order (PostgreSQL committed first) would
//! lose the points of a batch whose SQLite write failed for good (the
//! resend finds the results stored and writes no points) and could not
//! store the perfdata the limit trimmed, which is known only after step 2.
//! The SQLite write runs inside the PostgreSQL transaction, under the
//! agent's lock; it waits only for the node's own SQLite writer. An ingest
//! dropped by its caller between steps 2 and 3 rolls PostgreSQL back but
//! keeps the cache's report state: at worst the next series-limit report
//! waits one report interval. A batch holds at most
//! `outrider_protocol::MAX_BATCH_RESULTS` results (the session refuses
//! larger ones, server/src/agent_ws.rs), so a transaction runs at most
//! two statements per result plus a handful, one round trip each.

use outrider_protocol::api::ResultInfo;
use outrider_protocol::{CheckResult, Fingerprint, UnknownPerfData};

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::results::{
    AGENTS_PER_STEP, IngestLimits, Ingested, RESULTS_PER_STEP, ResultStore, ResultsCursor,
    SERIES_LIMIT_CHECK, batch_ack, clamped_start, json, server_seq, shown_seq, store_text_of,
    stored_fingerprint, stored_perfdata, stored_seq, stored_state, stored_unknown,
    stored_unknown_items,
};
use crate::store::Store;

impl ResultStore for PgBackend {
    async fn ingest(
        &self,
        agent: &Fingerprint,
        results: Vec<CheckResult>,
        limits: IngestLimits,
        metrics: &Store,
        now_ms: i64,
    ) -> Result<Ingested, StoreError> {
        let fp = agent.as_str();
        let _turn = self.ingest_turn().await?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Step 1.
        let lock = tx
            .prepare_cached("SELECT 1 FROM agents WHERE fingerprint = $1 FOR UPDATE")
            .await?;
        if tx.query_opt(&lock, &[&fp]).await?.is_none() {
            return Err(StoreError::UnknownAgent {
                fingerprint: fp.to_owned(),
            });
        }
        let mut out = Ingested::default();
        let mut new = Vec::new();
        for mut r in results {
            let seq = stored_seq(r.seq)?;
            let (start, clamped) = clamped_start(r.started_at_ms, now_ms);
            r.started_at_ms = start;
            out.clamped += usize::from(clamped);
            store_text_of(&mut r);
            if insert_result(&tx, fp, seq, &r, now_ms).await? {
                new.push(r);
            }
        }
        let warned = tx
            .prepare_cached(
                "SELECT r.received_at_ms FROM latest_results l
                 JOIN results r ON r.fingerprint = l.fingerprint AND r.seq = l.seq
                 WHERE l.fingerprint = $1 AND l.check_name = $2 AND r.state = 'WARNING'",
            )
            .await?;
        let warned_at_ms: Option<i64> = tx
            .query_opt(&warned, &[&fp, &SERIES_LIMIT_CHECK])
            .await?
            .map(|r| r.get(0));
        // Step 2.
        let (stored, written) = metrics
            .write_perfdata(fp, new, limits.max_series, now_ms, warned_at_ms)
            .await?;
        out.stored = stored;
        out.samples = written.samples;
        out.series_dropped = written.series_dropped;
        // Step 3.
        let finish = async {
            let trim = tx
                .prepare_cached(
                    "UPDATE results SET perfdata = $3, unknown_perfdata = $4
                     WHERE fingerprint = $1 AND seq = $2",
                )
                .await?;
            for &i in &written.trimmed {
                let r = &out.stored[i];
                let unknown = json(&stored_unknown_items(&r.unknown_perfdata));
                tx.execute(
                    &trim,
                    &[&fp, &stored_seq(r.seq)?, &json(&r.perfdata), &unknown],
                )
                .await?;
            }
            for r in &out.stored {
                if let Some(event) = &r.update_event {
                    super::update_events::insert(&tx, fp, event, now_ms).await?;
                }
            }
            let max = batch_ack(&out.stored, limits.refused_up_to)?;
            if let Some(report) = written.report {
                insert_result(&tx, fp, server_seq(now_ms), &report, now_ms).await?;
                out.stored.push(report);
            }
            let ack = tx
                .prepare_cached(
                    "UPDATE agents SET acked_seq = GREATEST(acked_seq, $2), last_seen_ms = $3
                     WHERE fingerprint = $1 RETURNING acked_seq",
                )
                .await?;
            // The row is locked by this transaction since step 1.
            let acked: i64 = tx.query_one(&ack, &[&fp, &max, &now_ms]).await?.get(0);
            tx.commit().await?;
            Ok::<_, StoreError>(acked)
        };
        match finish.await {
            Ok(acked) => {
                // Step 4.
                out.acked_seq = shown_seq(acked);
                Ok(out)
            }
            Err(e) => {
                // The report state the SQLite step took as reported was
                // not stored: reload it on the next batch.
                metrics.forget_series_state();
                Err(e)
            }
        }
    }

    async fn latest_results(
        &self,
        agent: Option<&Fingerprint>,
    ) -> Result<Vec<ResultInfo>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT r.fingerprint, a.hostname, r.check_name, r.seq, r.state, r.summary,
                        r.long_output, r.perfdata, r.unknown_perfdata, r.started_at_ms,
                        r.duration_ms, r.received_at_ms, l.state_since_ms
                 FROM latest_results l
                 JOIN results r ON r.fingerprint = l.fingerprint AND r.seq = l.seq
                 JOIN agents a ON a.fingerprint = l.fingerprint
                 WHERE $1::text IS NULL OR l.fingerprint = $1
                 ORDER BY a.hostname COLLATE \"C\", r.fingerprint COLLATE \"C\",
                          r.check_name COLLATE \"C\"",
            )
            .await?;
        let agent = agent.map(Fingerprint::as_str);
        client
            .query(&stmt, &[&agent])
            .await?
            .iter()
            .map(|r| {
                Ok(ResultInfo {
                    agent: stored_fingerprint(r.get(0))?,
                    hostname: r.get(1),
                    check: r.get(2),
                    seq: shown_seq(r.get(3)),
                    state: stored_state(r.get(4))?,
                    summary: r.get(5),
                    long_output: r.get(6),
                    perfdata: stored_perfdata(r.get(7))?,
                    unknown_perfdata: stored_unknown(r.get(8))?,
                    started_at_ms: r.get(9),
                    duration_ms: u64::try_from(r.get::<_, i64>(10)).unwrap_or(0),
                    received_at_ms: r.get(11),
                    state_since_ms: Some(r.get(12)),
                })
            })
            .collect()
    }

    async fn results_retention_step(
        &self,
        cursor: ResultsCursor,
        before_ms: i64,
    ) -> Result<(Option<ResultsCursor>, u64), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Fingerprints are lowercase hex, which every collation orders as
        // bytes: the primary key's order is SQLite's.
        let next_agent = tx
            .prepare_cached(
                "SELECT fingerprint FROM agents WHERE fingerprint > $1 ORDER BY fingerprint LIMIT 1",
            )
            .await?;
        let window = tx
            .prepare_cached(
                "SELECT seq, received_at_ms FROM results WHERE fingerprint = $1 AND seq > $2
                 ORDER BY seq LIMIT $3",
            )
            .await?;
        // The kept rows are read by the same statement that deletes: a
        // latest pointer committed meanwhile moved only to a row inserted
        // in its own transaction, received now, after the cut-off.
        let delete = tx
            .prepare_cached(
                "DELETE FROM results WHERE fingerprint = $1 AND seq > $2 AND seq <= $3
                     AND received_at_ms < $4
                     AND seq NOT IN (SELECT seq FROM latest_results WHERE fingerprint = $1)",
            )
            .await?;
        let (mut agent, mut after) = if cursor.agent.is_empty() {
            match tx.query_opt(&next_agent, &[&""]).await? {
                Some(r) => (r.get::<_, String>(0), i64::MIN),
                None => return Ok((None, 0)),
            }
        } else {
            (cursor.agent, cursor.after_seq)
        };
        let (mut examined, mut agents, mut deleted) = (0usize, 0usize, 0u64);
        let next = loop {
            let limit = RESULTS_PER_STEP - examined;
            let rows: Vec<(i64, i64)> = tx
                .query(&window, &[&agent, &after, &(limit as i64)])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            examined += rows.len().max(1);
            if let Some(&(last_seq, last_received)) = rows.last() {
                deleted += tx
                    .execute(&delete, &[&agent, &after, &last_seq, &before_ms])
                    .await?;
                if rows.len() == limit && last_received < before_ms {
                    // The budget ran out inside this agent's expired results.
                    break Some(ResultsCursor {
                        agent,
                        after_seq: last_seq,
                    });
                }
            }
            agents += 1;
            match tx.query_opt(&next_agent, &[&agent]).await? {
                None => break None,
                Some(r) => {
                    agent = r.get(0);
                    after = i64::MIN;
                }
            }
            if examined >= RESULTS_PER_STEP || agents >= AGENTS_PER_STEP {
                break Some(ResultsCursor {
                    agent,
                    after_seq: after,
                });
            }
        };
        tx.commit().await?;
        Ok((next, deleted))
    }
}

/// Stores result `r` as `seq` of agent `fp` in `tx` and moves the check's
/// latest pointer; false when that seq was already stored. The pointer's
/// `WHERE` and `CASE` are re-checked by PostgreSQL on the row's newest
/// version after a lock wait (rule 4).
pub(crate) async fn insert_result(
    tx: &deadpool_postgres::Transaction<'_>,
    fp: &str,
    seq: i64,
    r: &CheckResult,
    now: i64,
) -> Result<bool, StoreError> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO results (fingerprint, seq, check_name, state, summary, long_output,
                                  perfdata, unknown_perfdata, started_at_ms, duration_ms,
                                  received_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (fingerprint, seq) DO NOTHING",
        )
        .await?;
    let unknown: Vec<UnknownPerfData> = stored_unknown_items(&r.unknown_perfdata);
    let inserted = tx
        .execute(
            &insert,
            &[
                &fp,
                &seq,
                &r.check,
                &r.state.as_str(),
                &r.summary,
                &r.long_output,
                &json(&r.perfdata),
                &json(&unknown),
                &r.started_at_ms,
                &i64::try_from(r.duration_ms).unwrap_or(i64::MAX),
                &now,
            ],
        )
        .await?;
    if inserted > 0 {
        let latest = tx
            .prepare_cached(
                "INSERT INTO latest_results (fingerprint, check_name, seq, state, state_since_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (fingerprint, check_name) DO UPDATE SET seq = excluded.seq,
                     state = excluded.state,
                     state_since_ms = CASE WHEN latest_results.state = excluded.state
                                           THEN latest_results.state_since_ms
                                           ELSE excluded.state_since_ms END
                 WHERE excluded.seq > latest_results.seq",
            )
            .await?;
        tx.execute(
            &latest,
            &[&fp, &r.check, &seq, &r.state.as_str(), &r.started_at_ms],
        )
        .await?;
    }
    Ok(inserted > 0)
}
