//! Retention and downsampling: a background loop that, every
//! `--retention-interval-secs`, folds raw points older than the raw
//! retention into five-minute rollups, deletes expired rollups and old
//! check results.
//!
//! Each pass is a sequence of small transactions
//! ([`Store::retention_step`], [`Store::results_retention_step`]), each
//! bounded in the series, agents and results it touches; the store's
//! connection is free between them, so ingest interleaves and never waits
//! behind a long write. The loop checks the shutdown token between steps.
//!
//! A pass runs until everything expired is gone, however many steps that
//! takes, so retention keeps up with any ingest rate (a pass that outlasts
//! the interval delays the next one). Results expire by the time they
//! *arrived*; points by their own time, which ingest clamps to at most
//! `MAX_FUTURE_MS` ahead of the server's clock (`backend/results.rs`), so a
//! result or sample dated in the future neither lives forever nor holds up
//! a pass.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::MetricsConfig;
use crate::store::metrics::{Cutoffs, ROLLUP_BUCKET_MS, ResultsCursor};
use crate::store::{Store, now_ms};

const DAY_MS: i64 = 86_400_000;

/// How long data of each kind is kept, and how often a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub raw_retention_ms: i64,
    pub rollup_retention_ms: i64,
    pub results_retention_ms: i64,
    pub interval: Duration,
}

impl Policy {
    pub fn from_config(config: &MetricsConfig) -> Policy {
        Policy {
            raw_retention_ms: i64::from(config.raw_retention_days) * DAY_MS,
            rollup_retention_ms: i64::from(config.rollup_retention_days) * DAY_MS,
            results_retention_ms: i64::from(config.results_retention_days) * DAY_MS,
            interval: Duration::from_secs(config.retention_interval_secs),
        }
    }

    /// The cut-offs of a pass at time `now_ms`. The raw cut-off is aligned
    /// to a rollup bucket so a bucket is folded whole when its samples
    /// arrived on time.
    pub fn cutoffs(&self, now_ms: i64) -> Cutoffs {
        let raw = now_ms - self.raw_retention_ms;
        Cutoffs {
            raw_before_ms: raw - raw.rem_euclid(ROLLUP_BUCKET_MS),
            rollups_before_ms: now_ms - self.rollup_retention_ms,
            results_before_ms: now_ms - self.results_retention_ms,
        }
    }
}

/// Which data a retention loop looks after. With several nodes the
/// metrics are each node's own (its embedded store) while the results are
/// shared, so every node runs [`Parts::METRICS`] and the node leading
/// `Job::Retention` also [`Parts::RESULTS`]; one node on SQLite runs
/// [`Parts::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// Fold old points into rollups, delete expired rollups.
    pub metrics: bool,
    /// Delete expired check results.
    pub results: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        metrics: true,
        results: true,
    };
    pub const METRICS: Parts = Parts {
        metrics: true,
        results: false,
    };
    pub const RESULTS: Parts = Parts {
        metrics: false,
        results: true,
    };
}

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub points_rolled_up: u64,
    pub rollups_deleted: u64,
    pub results_deleted: u64,
    /// Transactions the pass took.
    pub steps: u64,
    /// Whether shutdown interrupted the pass.
    pub interrupted: bool,
}

/// Runs a pass over `parts` now and then every `policy.interval` until
/// `shutdown`. A failed pass is logged and retried at the next interval.
pub async fn run(store: Store, policy: Policy, parts: Parts, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match pass(&store, policy.cutoffs(now_ms()), parts, &shutdown).await {
            Ok(stats)
                if stats.points_rolled_up + stats.rollups_deleted + stats.results_deleted > 0 =>
            {
                info!(
                    points_rolled_up = stats.points_rolled_up,
                    rollups_deleted = stats.rollups_deleted,
                    results_deleted = stats.results_deleted,
                    steps = stats.steps,
                    "retention pass"
                );
            }
            Ok(stats) => debug!(steps = stats.steps, "retention pass: nothing expired"),
            Err(e) => warn!("retention pass failed (retried next interval): {e:#}"),
        }
    }
}

/// One pass over every series and agent of `parts`, in bounded steps;
/// stops early (with `interrupted`) when `shutdown` is cancelled.
///
/// Fails when a step's transaction fails; earlier steps stay committed.
pub async fn pass(
    store: &Store,
    cutoffs: Cutoffs,
    parts: Parts,
    shutdown: &CancellationToken,
) -> anyhow::Result<PassStats> {
    let mut stats = PassStats::default();
    let mut series_cursor = parts.metrics.then_some(0);
    while let Some(after) = series_cursor {
        if shutdown.is_cancelled() {
            stats.interrupted = true;
            return Ok(stats);
        }
        let step = store.retention_step(after, cutoffs).await?;
        stats.steps += 1;
        stats.points_rolled_up += step.points_rolled_up;
        stats.rollups_deleted += step.rollups_deleted;
        series_cursor = step.next;
    }
    let mut agent_cursor = parts.results.then(ResultsCursor::default);
    while let Some(after) = agent_cursor {
        if shutdown.is_cancelled() {
            stats.interrupted = true;
            return Ok(stats);
        }
        let (next, deleted) = store
            .results_retention_step(after, cutoffs.results_before_ms)
            .await?;
        stats.steps += 1;
        stats.results_deleted += deleted;
        agent_cursor = next;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckResult, CheckState, PerfData};

    use super::*;
    use crate::store::metrics::{Resolution, SeriesQuery};
    use crate::store::test_support::{load_result, store_with_agent};

    #[tokio::test]
    async fn the_loop_folds_expired_points_at_start_and_stops_on_shutdown() {
        let (_dir, store, fp) = store_with_agent("h").await;
        let old = now_ms() - 10 * DAY_MS;
        let result = |seq: u64, value: f64| CheckResult {
            seq,
            check: "load".into(),
            state: CheckState::Ok,
            summary: String::new(),
            long_output: String::new(),
            perfdata: vec![PerfData {
                label: "load1".into(),
                value,
                uom: String::new(),
                warn: None,
                crit: None,
                min: None,
                max: None,
            }],
            unknown_perfdata: Vec::new(),
            started_at_ms: old + seq as i64,
            duration_ms: 1,
            update_event: None,
        };
        store
            .ingest(&fp, vec![result(1, 1.0), result(2, 3.0)])
            .await
            .unwrap();
        let policy = Policy::from_config(&MetricsConfig {
            raw_retention_days: 1,
            ..MetricsConfig::default()
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(store.clone(), policy, Parts::ALL, shutdown.clone()));
        let query = SeriesQuery {
            agent: fp,
            check: "load".into(),
            metric: "load1".into(),
            from_ms: old - DAY_MS,
            to_ms: old + DAY_MS,
            step_ms: None,
            raw_since_ms: 0,
        };
        // The first pass runs at once; raw points become one rollup.
        let folded = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let got = store.query_series(query.clone()).await.unwrap().unwrap();
                if got.resolution == Resolution::Raw && got.points.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        folded.await.expect("raw points folded within 5 s");
        let aggregated = store
            .query_series(SeriesQuery {
                step_ms: Some(DAY_MS),
                ..query
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(aggregated.points.len(), 1);
        assert_eq!(aggregated.points[0].count, Some(2));
        assert_eq!(aggregated.points[0].value, Some(2.0));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
    }

    /// Each part touches its own data only: a node of several must not
    /// delete the shared results unless it leads `Job::Retention`.
    #[tokio::test]
    async fn a_pass_touches_only_the_parts_it_was_given() {
        // (parts, points folded, results deleted)
        let cases = [
            (Parts::ALL, true, true),
            (Parts::METRICS, true, false),
            (Parts::RESULTS, false, true),
        ];
        for (parts, folds, deletes) in cases {
            let (_dir, store, fp) = store_with_agent("h").await;
            let old = now_ms() - 10 * DAY_MS;
            let result = |seq: u64| CheckResult {
                started_at_ms: old + seq as i64,
                ..load_result(seq, "load", CheckState::Ok)
            };
            // The latest result of a check is always kept, the first goes.
            store.ingest(&fp, vec![result(1), result(2)]).await.unwrap();
            // Everything has expired a hundred days from now.
            let policy = Policy::from_config(&MetricsConfig {
                raw_retention_days: 1,
                results_retention_days: 1,
                ..MetricsConfig::default()
            });
            let cutoffs = policy.cutoffs(now_ms() + 100 * DAY_MS);
            let stats = pass(&store, cutoffs, parts, &CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(stats.points_rolled_up > 0, folds, "{parts:?}: {stats:?}");
            assert_eq!(stats.results_deleted > 0, deletes, "{parts:?}: {stats:?}");
        }
    }

    #[test]
    fn cutoffs_follow_the_policy_and_align_raw_to_buckets() {
        let policy = Policy::from_config(&MetricsConfig {
            raw_retention_days: 2,
            rollup_retention_days: 30,
            results_retention_days: 3,
            ..MetricsConfig::default()
        });
        let now = 100 * DAY_MS + 123_456;
        let c = policy.cutoffs(now);
        assert_eq!(c.raw_before_ms, 98 * DAY_MS);
        assert_eq!(c.rollups_before_ms, 70 * DAY_MS + 123_456);
        assert_eq!(c.results_before_ms, 97 * DAY_MS + 123_456);
    }
}
