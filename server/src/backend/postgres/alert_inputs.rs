//! The shared log of alert engine inputs (migrations/0014_alert_inputs.sql):
//! how the alert engine, which runs on the one node leading
//! `Job::AlertEvaluation`, learns what every node observes (server/src/alerts.rs,
//! "Across nodes").
//!
//! Every node appends ([`PgBackend::append_alert_input`]); the leader tails
//! ([`PgBackend::alert_inputs_after`]) and deletes what it consumed in the
//! transaction that saves the engine state covering it
//! ([`PgBackend::save_alerts_consuming`]); rows older than
//! [`MAX_INPUT_AGE_MS`] are deleted by any node ([`PgBackend::trim_alert_inputs`]),
//! so an hour without a leader does not grow the table for ever.
//!
//! Why the cursor is `(tx, id)` and reads stop below the snapshot's xmin:
//! `id` comes from a sequence when a row is inserted, not when its
//! transaction commits. Two nodes appending at once can commit in the
//! other order: row 8 committed while row 7's transaction is still open.
//! A reader going by `id` alone would take 8, move its cursor past 7 and
//! never see 7 once it commits. So each row also carries its transaction's
//! id (`tx`, `pg_current_xact_id()`, 64 bits, never wraps) and a read takes
//! only rows with `tx < pg_snapshot_xmin(pg_current_snapshot())`: every
//! transaction below the oldest one still running has ended, so no row of
//! such a transaction can appear later, and every row a later read can see
//! has a `tx` at or above that xmin, above the cursor. Reading in
//! `(tx, id)` order below xmin therefore never skips a row; the price is
//! that a row waits until every transaction older than it has ended (on
//! the whole PostgreSQL server: write transactions are short here, and the
//! fenced ones are bounded, `postgres/leader.rs`).
//!
//! Deleting in the saving transaction keeps the log and the stored state
//! exactly complementary: every row still in the log is one the stored
//! state has not seen (a save that fails or is fenced deletes nothing), so
//! a new leader restores the state and replays the whole log, and nothing
//! is fed twice or lost.

use outrider_protocol::Fingerprint;

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::alerts::{OutboxBatch, check_job};
use crate::backend::leader::{Job, LeaderTerm};
use crate::backend::presence::{NodeId, stored_agent, stored_generation, stored_node};

/// Largest input stored in one row (bytes of JSON); the driver splits a
/// larger batch (server/src/alerts.rs).
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

/// Rows older than this are deleted by any node: an hour with no leader
/// reading them.
pub const MAX_INPUT_AGE_MS: i64 = 3_600_000;

/// Most rows one read returns.
pub const READ_BATCH: i64 = 512;

/// A position in the log: the `(tx, id)` of the last row consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub tx: u64,
    pub id: i64,
}

/// One stored input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredInput {
    pub at: Cursor,
    pub created_at_ms: i64,
    pub input: String,
}

/// An input over [`MAX_INPUT_BYTES`] was refused; nothing was written.
fn too_large(len: usize) -> StoreError {
    StoreError::Malformed {
        what: "alert input (over MAX_INPUT_BYTES)",
        value: format!("{len} bytes"),
    }
}

fn parse_tx(text: &str) -> Result<u64, StoreError> {
    text.parse().map_err(|_| StoreError::Malformed {
        what: "transaction id of an alert input",
        value: text.chars().take(40).collect(),
    })
}

impl PgBackend {
    /// Appends one input (JSON) at `now_ms`, in a transaction of its own.
    ///
    /// Fails when it is over [`MAX_INPUT_BYTES`] (nothing written) or the
    /// database fails.
    pub async fn append_alert_input(&self, input: &str, now_ms: i64) -> Result<(), StoreError> {
        self.append_alert_inputs(&[input], now_ms).await
    }

    /// Appends `inputs` (JSON) at `now_ms`, in this order, in one statement
    /// (one transaction, one commit: a node appends what its fleet reports
    /// in batches, not a commit per input).
    ///
    /// Fails when one is over [`MAX_INPUT_BYTES`] (nothing written) or the
    /// database fails.
    pub async fn append_alert_inputs(
        &self,
        inputs: &[impl AsRef<str> + Sync],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let inputs: Vec<&str> = inputs.iter().map(AsRef::as_ref).collect();
        if let Some(big) = inputs.iter().find(|i| i.len() > MAX_INPUT_BYTES) {
            return Err(too_large(big.len()));
        }
        let client = self.client().await?;
        // Identities are drawn in the order the rows are inserted, so the
        // log keeps the inputs' order within the transaction.
        let stmt = client
            .prepare_cached(
                "INSERT INTO alert_inputs (created_at_ms, input)
                 SELECT $1, i.input FROM unnest($2::text[]) WITH ORDINALITY AS i(input, n)
                 ORDER BY i.n",
            )
            .await?;
        client.execute(&stmt, &[&now_ms, &inputs]).await?;
        Ok(())
    }

    /// The next rows after `cursor` (`None`: from the start) in `(tx, id)`
    /// order, at most [`READ_BATCH`], of transactions older than every
    /// transaction still running (see the module: none is ever skipped).
    pub async fn alert_inputs_after(
        &self,
        cursor: Option<Cursor>,
    ) -> Result<Vec<StoredInput>, StoreError> {
        let c = cursor.unwrap_or_default();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT tx::text, id, created_at_ms, input FROM alert_inputs
                 WHERE tx < pg_snapshot_xmin(pg_current_snapshot())
                   AND (tx, id) > ($1::text::xid8, $2)
                 ORDER BY tx, id
                 LIMIT $3",
            )
            .await?;
        client
            .query(&stmt, &[&c.tx.to_string(), &c.id, &READ_BATCH])
            .await?
            .iter()
            .map(|r| {
                Ok(StoredInput {
                    at: Cursor {
                        tx: parse_tx(r.get(0))?,
                        id: r.get(1),
                    },
                    created_at_ms: r.get(2),
                    input: r.get(3),
                })
            })
            .collect()
    }

    /// Deletes rows created before `now_ms - MAX_INPUT_AGE_MS`; returns
    /// how many.
    pub async fn trim_alert_inputs(&self, now_ms: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM alert_inputs WHERE created_at_ms < $1")
            .await?;
        Ok(client
            .execute(&stmt, &[&now_ms.saturating_sub(MAX_INPUT_AGE_MS)])
            .await?)
    }

    /// Every agent whose shared session is up, with its generation: what a
    /// new leader marks connected (server/src/alerts.rs, "Across nodes").
    pub async fn up_sessions(&self) -> Result<Vec<(Fingerprint, u64)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT agent_fp, generation FROM sessions WHERE ended_at_ms IS NULL")
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .into_iter()
            .map(|r| Ok((stored_agent(r.get(0))?, stored_generation(r.get(1))?)))
            .collect()
    }

    /// The node that last took leadership of `job` (`leases`); it may have
    /// lost it since without anyone taking over yet.
    pub async fn last_leader(&self, job: Job) -> Result<Option<NodeId>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT holder_node FROM leases WHERE job = $1")
            .await?;
        client
            .query_opt(&stmt, &[&job.name()])
            .await?
            .map(|r| stored_node(r.get(0)))
            .transpose()
    }

    /// [`AlertStore::save_alerts`](crate::backend::AlertStore::save_alerts)
    /// that also deletes the rows up to `consumed` (the last row the saved
    /// `state` has seen), in the same fenced transaction: refused or
    /// failed, it deletes nothing.
    pub async fn save_alerts_consuming(
        &self,
        term: &LeaderTerm,
        state: String,
        batches: Vec<OutboxBatch>,
        now_ms: i64,
        consumed: Option<Cursor>,
    ) -> Result<usize, StoreError> {
        check_job(term)?;
        self.fenced(term, move |tx| {
            Box::pin(async move {
                let inserted = super::alerts::write_alerts(tx, &state, &batches, now_ms).await?;
                if let Some(c) = consumed {
                    tx.execute(
                        "DELETE FROM alert_inputs WHERE (tx, id) <= ($1::text::xid8, $2)",
                        &[&c.tx.to_string(), &c.id],
                    )
                    .await?;
                }
                Ok(inserted)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    fn pg(b: &Backend) -> &PgBackend {
        match b {
            Backend::Postgres(pg) => pg,
            Backend::Sqlite(_) => unreachable!("a PostgreSQL node"),
        }
    }

    async fn read_all(pg: &PgBackend, cursor: &mut Option<Cursor>) -> Vec<String> {
        let rows = pg.alert_inputs_after(*cursor).await.unwrap();
        if let Some(last) = rows.last() {
            *cursor = Some(last.at);
        }
        rows.into_iter().map(|r| r.input).collect()
    }

    /// Reads until `want` came, in order. Other tests' transactions on the
    /// shared cluster hold the snapshot's xmin back for a moment, so a row
    /// committed may take a few reads to be readable.
    async fn read_until(pg: &PgBackend, cursor: &mut Option<Cursor>, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < want.len() {
            got.extend(read_all(pg, cursor).await);
            assert!(
                tokio::time::Instant::now() < deadline,
                "read {got:?} of {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(got, want);
    }

    /// Step by step: a row whose transaction is still open is not read,
    /// and it is read once it commits although a later row was consumed
    /// meanwhile (reading by id alone would have skipped it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_committed_late_is_read_after_a_later_row_not_skipped() {
        let (db, node) = crate::backend::two_nodes::pg_database_node().await;
        let pg = pg(&node);
        let mut cursor = None;
        pg.append_alert_input("first", 1).await.unwrap();
        read_until(pg, &mut cursor, &["first"]).await;

        // A node's append that has inserted but not committed yet.
        let (mut held, conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
        let conn = tokio::spawn(conn);
        let late = held.transaction().await.unwrap();
        late.execute(
            "INSERT INTO alert_inputs (created_at_ms, input) VALUES (2, 'late')",
            &[],
        )
        .await
        .unwrap();
        // Another node appends after it and commits first: its row has a
        // larger id.
        pg.append_alert_input("early", 3).await.unwrap();
        assert!(
            read_all(pg, &mut cursor).await.is_empty(),
            "nothing at or above the open transaction is read yet"
        );
        late.commit().await.unwrap();
        read_until(pg, &mut cursor, &["late", "early"]).await;
        assert!(read_all(pg, &mut cursor).await.is_empty());
        drop(held);
        conn.await.unwrap().unwrap();
    }

    /// A batch is read back in its own order, after what came before it;
    /// a batch with one input too large writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_appended_in_its_order_or_not_at_all() {
        let (_db, node) = crate::backend::two_nodes::pg_database_node().await;
        let pg = pg(&node);
        let mut cursor = None;
        pg.append_alert_input("before", 1).await.unwrap();
        let batch: Vec<String> = (0..600).map(|i| format!("in-{i}")).collect();
        pg.append_alert_inputs(&batch, 2).await.unwrap();
        let mut want = vec!["before"];
        want.extend(batch.iter().map(String::as_str));
        read_until(pg, &mut cursor, &want).await;

        let refused = ["small".to_owned(), "x".repeat(MAX_INPUT_BYTES + 1)];
        assert!(pg.append_alert_inputs(&refused, 3).await.is_err());
        pg.append_alert_input("after", 4).await.unwrap();
        read_until(pg, &mut cursor, &["after"]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_save_deletes_what_it_consumed_unless_fenced_and_old_rows_go() {
        let (db, node) = crate::backend::two_nodes::pg_database_node().await;
        let pg = pg(&node);
        let (client, conn) = db.config.connect(tokio_postgres::NoTls).await.unwrap();
        let conn = tokio::spawn(conn);
        client
            .execute(
                "INSERT INTO leases (job, holder_node, term, acquired_at_ms)
                 VALUES ('alert-evaluation', 'n1', 2, 0)",
                &[],
            )
            .await
            .unwrap();
        let term = |t| LeaderTerm {
            job: Job::AlertEvaluation,
            node: "n1".parse().unwrap(),
            term: t,
        };
        let now = crate::store::now_ms();
        for input in ["a", "b", "c"] {
            pg.append_alert_input(input, now).await.unwrap();
        }
        let mut cursor = None;
        read_until(pg, &mut cursor, &["a", "b", "c"]).await;
        let rows = pg.alert_inputs_after(None).await.unwrap();
        let after_b = Some(rows[1].at);

        // (term saving, rows left to read from the start)
        let cases = [(1, vec!["a", "b", "c"]), (2, vec!["c"])];
        for (t, left) in cases {
            let _ = pg
                .save_alerts_consuming(&term(t), "{}".into(), Vec::new(), now, after_b)
                .await;
            let mut cursor = None;
            read_until(pg, &mut cursor, &left).await;
        }
        // Too large: refused, nothing written.
        let big = "x".repeat(MAX_INPUT_BYTES + 1);
        assert!(pg.append_alert_input(&big, now).await.is_err());
        // Old rows are deleted by anyone.
        pg.append_alert_input("old", now - MAX_INPUT_AGE_MS - 1)
            .await
            .unwrap();
        assert_eq!(pg.trim_alert_inputs(now).await.unwrap(), 1);
        let mut cursor = None;
        read_until(pg, &mut cursor, &["c"]).await;
        drop(client);
        conn.await.unwrap().unwrap();
    }
}
