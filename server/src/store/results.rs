//! Result ingest (deduplicated by `(agent, seq)`) and the latest-results
//! view, on the server's SQLite store.
//!
//! The area's interface, rules and types are `crate::backend::results`
//! ([`ResultStore`]); its SQLite statements live in
//! server/src/backend/sqlite/results.rs, its PostgreSQL ones in
//! server/src/backend/postgres/results.rs. The `Store` methods below are
//! kept, each a call of the trait on the backend [`Store::results_area`]
//! returns, with the clock read here, as server/src/store/agents.rs does:
//! the callers (the ingest, the API, the dashboard) are unchanged, and the
//! server runs the statements the suite tests.
//!
//! The trait's ingest is given this store as the node's metrics store: on
//! SQLite it is the backend's own (points commit with their results); on
//! PostgreSQL, where metrics stay embedded, the backend writes the points
//! here and the results there. [`Store::results_area`] is the backend the
//! server was started on ([`Store::backend`]).

use anyhow::Context;
use outrider_protocol::api::ResultInfo;
use outrider_protocol::{CheckResult, Fingerprint};

pub use crate::backend::results::{
    DEFAULT_MAX_SERIES_PER_AGENT, IngestLimits, Ingested, MAX_FUTURE_MS,
};
use crate::backend::{Backend, ResultStore};

use super::{Store, now_ms};

impl Store {
    /// The results area of this store behind its trait (also the results
    /// retention's, `metrics.rs`): the one place that chooses the backend.
    pub(super) fn results_area(&self) -> Backend {
        self.backend()
    }

    /// Stores a batch, its perfdata as metric points included; see
    /// [`Store::ingest_with`].
    pub async fn ingest(
        &self,
        fingerprint: &Fingerprint,
        results: Vec<CheckResult>,
    ) -> anyhow::Result<Ingested> {
        self.ingest_with(fingerprint, results, IngestLimits::default())
            .await
    }

    /// Stores a batch within `limits` in one transaction (rules of
    /// `crate::backend::results`). Results already stored are ignored, so a
    /// resent batch is harmless. Each result is stored at its own
    /// `started_at_ms`, however old: an agent back from an outage delivers
    /// its spool late. The results of `stored` are as stored: start
    /// clamped, NUL replaced, perfdata dropped by the series limit
    /// removed, and a series-limit report the server wrote for the agent
    /// last.
    ///
    /// Fails when the agent is not registered, the database fails or a
    /// sequence number exceeds `i64`; nothing of the batch is stored then.
    pub async fn ingest_with(
        &self,
        fingerprint: &Fingerprint,
        results: Vec<CheckResult>,
        limits: IngestLimits,
    ) -> anyhow::Result<Ingested> {
        self.results_area()
            .ingest(fingerprint, results, limits, self, now_ms())
            .await
            .context("storing a result batch")
    }

    /// The newest result of every check of every agent (or of one agent).
    pub async fn latest_results(
        &self,
        agent: Option<Fingerprint>,
    ) -> anyhow::Result<Vec<ResultInfo>> {
        self.results_area()
            .latest_results(agent.as_ref())
            .await
            .context("reading the latest results")
    }
}

/// Through `Store`: the series limit's report state in the store's cache
/// and a reopened file. The area's behaviour on both backends is the suite
/// of server/src/backend/result_tests.rs.
#[cfg(test)]
mod tests {
    use outrider_protocol::api::Presence;
    use outrider_protocol::{CheckState, PerfData};

    use super::*;
    use crate::store::metrics::{
        SERIES_LIMIT_CHECK, SERIES_LIMIT_RECOVERY_MS, SERIES_LIMIT_REPORT_MS,
    };
    use crate::store::test_support::load_result as result;
    use crate::store::{Registration, test_support};

    async fn store_with_agent() -> (tempfile::TempDir, Store, Fingerprint) {
        test_support::store_with_agent("web-1").await
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
