//! Pure mappings from what the listeners aggregate to what the spool stores:
//! `local_metrics::Sample` to [`MetricSample`] field by field, and the
//! listeners' own counts to samples of their own.

use outrider_local_metrics::{Sample, SampleKind};

use crate::spool::{MetricSample, Tag};

/// Prefix of the listeners' own samples.
pub const SELF_PREFIX: &str = "outrider.listener.";

/// The spool's name for a sample kind (`spool/record.rs`).
pub fn kind_name(kind: SampleKind) -> &'static str {
    match kind {
        SampleKind::Counter => "counter",
        SampleKind::Gauge => "gauge",
        SampleKind::Timer(_) => "timer",
        SampleKind::Set => "set",
        SampleKind::Graphite => "graphite",
        // `SampleKind` is non-exhaustive: a kind added later is stored
        // without a name rather than refused.
        _ => "",
    }
}

/// One aggregated sample as the spool stores it.
pub fn to_metric_sample(sample: Sample) -> MetricSample {
    MetricSample {
        name: sample.name,
        tags: sample
            .tags
            .into_iter()
            .map(|t| Tag {
                key: t.key,
                value: t.value,
            })
            .collect(),
        value: sample.value,
        kind: kind_name(sample.kind).to_owned(),
        unit: sample.unit.to_owned(),
        timestamp_ms: sample.timestamp_ms,
    }
}

/// The listeners' counts since they started; they only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// StatsD datagrams read.
    pub statsd_datagrams: u64,
    /// StatsD lines accepted.
    pub statsd_lines: u64,
    /// StatsD lines refused by the parser.
    pub statsd_parse_errors: u64,
    /// Graphite lines accepted.
    pub graphite_lines: u64,
    /// Graphite lines refused by the parser (overlong ones included).
    pub graphite_parse_errors: u64,
    /// Graphite connections accepted.
    pub graphite_connections: u64,
    /// Graphite connections closed at once because `max_connections` were open.
    pub graphite_connections_refused: u64,
    /// Values dropped by the aggregator's bounds (series per interval,
    /// memory), and samples the spool refused.
    pub dropped: u64,
}

impl Counts {
    /// Each count's name (after [`SELF_PREFIX`]) and value.
    fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("statsd.datagrams", self.statsd_datagrams),
            ("statsd.received", self.statsd_lines),
            ("statsd.parse_errors", self.statsd_parse_errors),
            ("graphite.received", self.graphite_lines),
            ("graphite.parse_errors", self.graphite_parse_errors),
            ("graphite.connections", self.graphite_connections),
            (
                "graphite.connections_refused",
                self.graphite_connections_refused,
            ),
            ("dropped", self.dropped),
        ]
    }
}

/// The interval's counts (`now` minus `before`) as counter samples
/// `outrider.listener.<count>`, stamped `now_ms`: one per count, zeros
/// included, so "nothing dropped" is an explicit 0 — but none at all for an
/// interval without any traffic, so an idle host stores nothing.
pub fn count_samples(before: &Counts, now: &Counts, now_ms: i64) -> Vec<MetricSample> {
    if before == now {
        return Vec::new();
    }
    before
        .named()
        .iter()
        .zip(now.named())
        .map(|((name, old), (_, new))| MetricSample {
            name: format!("{SELF_PREFIX}{name}"),
            tags: Vec::new(),
            value: new.saturating_sub(*old) as f64,
            kind: kind_name(SampleKind::Counter).to_owned(),
            unit: String::new(),
            timestamp_ms: now_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use outrider_local_metrics::{Percentile, TimerStat};

    use super::*;

    #[test]
    fn kinds_are_named_by_table() {
        let p90 = TimerStat::Percentile(Percentile::new(90.0).unwrap());
        let cases = [
            (SampleKind::Counter, "counter"),
            (SampleKind::Gauge, "gauge"),
            (SampleKind::Timer(TimerStat::Mean), "timer"),
            (SampleKind::Timer(p90), "timer"),
            (SampleKind::Set, "set"),
            (SampleKind::Graphite, "graphite"),
        ];
        for (kind, want) in cases {
            assert_eq!(kind_name(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn a_sample_is_copied_field_by_field() {
        let sample = Sample {
            name: "api.latency.p90".into(),
            tags: vec![outrider_local_metrics::Tag {
                key: "env".into(),
                value: "prod".into(),
            }],
            value: 12.5,
            kind: SampleKind::Timer(TimerStat::Upper),
            unit: "ms",
            timestamp_ms: 1_733_300_000_000,
        };
        let stored = to_metric_sample(sample);
        assert_eq!(
            stored,
            MetricSample {
                name: "api.latency.p90".into(),
                tags: vec![Tag {
                    key: "env".into(),
                    value: "prod".into()
                }],
                value: 12.5,
                kind: "timer".into(),
                unit: "ms".into(),
                timestamp_ms: 1_733_300_000_000,
            }
        );
    }

    #[test]
    fn counts_become_interval_deltas() {
        let before = Counts {
            statsd_lines: 10,
            dropped: 1,
            ..Counts::default()
        };
        let now = Counts {
            statsd_lines: 25,
            statsd_parse_errors: 2,
            dropped: 1,
            ..Counts::default()
        };
        let samples = count_samples(&before, &now, 5);
        let value = |n: &str| {
            samples
                .iter()
                .find(|s| s.name == format!("{SELF_PREFIX}{n}"))
                .map(|s| s.value)
        };
        assert_eq!(samples.len(), 8);
        assert_eq!(value("statsd.received"), Some(15.0));
        assert_eq!(value("statsd.parse_errors"), Some(2.0));
        assert_eq!(value("dropped"), Some(0.0));
        assert!(
            samples
                .iter()
                .all(|s| s.kind == "counter" && s.timestamp_ms == 5)
        );
        assert!(count_samples(&now, &now, 6).is_empty());
    }
}
