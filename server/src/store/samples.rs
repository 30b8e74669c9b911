//! Metric sample batches (`AgentMessage::Samples`): stored as points of
//! the agent's series, beside check perfdata, so they share the series
//! limit, the query API, rollups and retention (`metrics.rs`).
//!
//! - Series: check [`SAMPLES_CHECK`], label the sample's name followed by
//!   its tags in the agent's order (`name;key=value;…`, Graphite 1.1 style),
//!   unit the sample's unit. The caller ([`crate::ingest::samples()`]) has
//!   already refused names that do not fit a label whole.
//! - Deduplication: per agent, the highest batch sequence number stored
//!   (`sample_batches`); a batch at or below it is acknowledged without
//!   being stored again. The points and the new mark are written in one
//!   transaction, so an acknowledged batch is never lost and never doubled.
//!   (The samples spool numbers its batches on its own from 1 and keeps the
//!   numbering across restarts in its `meta.json`; an agent that lost only
//!   that directory sends batches the server takes for resends until its
//!   numbers pass the mark.)

use std::collections::BTreeMap;

use anyhow::Context;
use outrider_protocol::{CheckResult, CheckState, Fingerprint, MetricSample, PerfData};
use rusqlite::{OptionalExtension, params};

use super::metrics::{self, SeriesCache};
use super::{Store, now_ms};

/// The check name sample series are stored under; reserved for them.
pub const SAMPLES_CHECK: &str = "outrider.samples";

/// What [`Store::ingest_samples`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplesIngested {
    /// False when the batch was stored before (a resend).
    pub fresh: bool,
    /// Points written.
    pub written: usize,
    /// Samples dropped by the agent's series limit.
    pub series_dropped: usize,
    /// The samples as stored, one pseudo result per timestamp, for the
    /// Graphite copy.
    pub stored: Vec<CheckResult>,
}

/// The series label of a sample: its name, then each tag as `;key=value`
/// (`;key` for a tag without value).
pub fn series_label(sample: &MetricSample) -> String {
    let mut label = sample.name.clone();
    for tag in &sample.tags {
        label.push(';');
        label.push_str(&tag.key);
        if !tag.value.is_empty() {
            label.push('=');
            label.push_str(&tag.value);
        }
    }
    label
}

impl Store {
    /// Stores batch `seq` of agent `fp` (samples already screened) unless
    /// a batch at or above `seq` was stored before; at most `max_series`
    /// series per agent, as for perfdata.
    pub async fn ingest_samples(
        &self,
        fp: &Fingerprint,
        seq: u64,
        samples: Vec<MetricSample>,
        max_series: usize,
    ) -> anyhow::Result<SamplesIngested> {
        let fp = fp.to_string();
        let seq = i64::try_from(seq).context("sample batch sequence number out of range")?;
        let series = self.series.clone();
        self.call(move |c| {
            // Lock order: `conn` (held by `call`), then the series cache.
            let mut cache = series.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = ingest_tx(c, &mut cache, &fp, seq, samples, max_series);
            if outcome.is_err() {
                cache.clear();
            }
            outcome
        })
        .await
    }
}

fn ingest_tx(
    c: &mut rusqlite::Connection,
    cache: &mut SeriesCache,
    fp: &str,
    seq: i64,
    samples: Vec<MetricSample>,
    max_series: usize,
) -> anyhow::Result<SamplesIngested> {
    let tx = c.transaction()?;
    let mark: Option<i64> = tx
        .query_row(
            "SELECT acked_seq FROM sample_batches WHERE fingerprint = ?1",
            [fp],
            |r| r.get(0),
        )
        .optional()?;
    if mark.is_some_and(|m| seq <= m) {
        return Ok(SamplesIngested::default());
    }
    let now = now_ms();
    let mut by_time: BTreeMap<i64, Vec<PerfData>> = BTreeMap::new();
    for s in samples {
        let at = s.timestamp_ms.min(now + super::MAX_FUTURE_MS);
        by_time.entry(at).or_default().push(PerfData {
            label: series_label(&s),
            value: s.value,
            uom: s.unit,
            warn: None,
            crit: None,
            min: None,
            max: None,
        });
    }
    let mut out = SamplesIngested {
        fresh: true,
        ..SamplesIngested::default()
    };
    for (at, perfdata) in by_time {
        let mut result = CheckResult {
            seq: 0,
            check: SAMPLES_CHECK.to_owned(),
            state: CheckState::Ok,
            summary: String::new(),
            long_output: String::new(),
            perfdata,
            unknown_perfdata: Vec::new(),
            started_at_ms: at,
            duration_ms: 0,
            update_event: None,
        };
        let points = metrics::insert_points(&tx, cache, fp, &mut result, max_series)?;
        out.written += points.written;
        out.series_dropped += points.dropped;
        out.stored.push(result);
    }
    tx.execute(
        "INSERT INTO sample_batches (fingerprint, acked_seq) VALUES (?1, ?2)
         ON CONFLICT (fingerprint) DO UPDATE SET acked_seq = MAX(acked_seq, excluded.acked_seq)",
        params![fp, seq],
    )?;
    tx.commit()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::MetricTag;

    use super::*;
    use crate::store::metrics::SeriesQuery;

    fn sample(name: &str, value: f64, ts: i64) -> MetricSample {
        MetricSample {
            name: name.into(),
            tags: vec![],
            value,
            kind: "gauge".into(),
            unit: String::new(),
            timestamp_ms: ts,
        }
    }

    #[test]
    fn labels_carry_the_tags_in_order() {
        let mut s = sample("api.latency", 1.0, 0);
        s.tags = vec![
            MetricTag {
                key: "env".into(),
                value: "prod".into(),
            },
            MetricTag {
                key: "canary".into(),
                value: String::new(),
            },
        ];
        assert_eq!(series_label(&s), "api.latency;env=prod;canary");
    }

    #[tokio::test]
    async fn a_batch_is_stored_once_as_series_points() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let t = 1_700_000_000_000;
        let batch = vec![
            sample("a", 1.0, t),
            sample("a", 2.0, t + 1000),
            sample("b", 3.0, t),
        ];
        let first = store
            .ingest_samples(&fp, 1, batch.clone(), 100)
            .await
            .unwrap();
        assert!(first.fresh);
        assert_eq!(first.written, 3);
        assert_eq!(first.stored.len(), 2, "one pseudo result per timestamp");
        let again = store.ingest_samples(&fp, 1, batch, 100).await.unwrap();
        assert_eq!((again.fresh, again.written), (false, 0));
        let points = store
            .query_series(SeriesQuery {
                agent: fp.clone(),
                check: SAMPLES_CHECK.into(),
                metric: "a".into(),
                from_ms: t - 1,
                to_ms: t + 2000,
                step_ms: None,
                raw_since_ms: 0,
            })
            .await
            .unwrap()
            .expect("series a exists");
        let values: Vec<Option<f64>> = points.points.iter().map(|p| p.value).collect();
        assert_eq!(values, [Some(1.0), Some(2.0)]);
        // The series limit binds samples as it binds perfdata.
        let limited = store
            .ingest_samples(
                &fp,
                2,
                vec![sample("c", 1.0, t), sample("a", 5.0, t + 5)],
                2,
            )
            .await
            .unwrap();
        assert_eq!((limited.written, limited.series_dropped), (1, 1));
    }
}
