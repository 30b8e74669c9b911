//! Property tests: the parsers never panic and keep their bounds on any
//! bytes, a rendered valid line parses back to what was rendered, and the
//! aggregator's statistics agree with the values it accepted.

use std::collections::{BTreeMap, BTreeSet};

use outrider_local_metrics::statsd::{self, MetricType, Value};
use outrider_local_metrics::{
    Aggregator, AggregatorConfig, GaugeRetention, SampleKind, TimerStat, graphite,
};
use proptest::prelude::*;

use crate::{T0, value_of};

/// Bytes that look a little like metric lines, so the fuzzing reaches past
/// the first checks, plus fully arbitrary bytes.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b":".to_vec()),
        Just(b"|".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b";".to_vec()),
        Just(b"=".to_vec()),
        Just(b"|@0.5".to_vec()),
        Just(b"|#a:b,c".to_vec()),
        Just(b"|c".to_vec()),
        Just(b"|g".to_vec()),
        Just(b"|ms".to_vec()),
        Just(b"|s".to_vec()),
        Just(b"+1".to_vec()),
        Just(b"-1e308".to_vec()),
        Just(b"1.5".to_vec()),
        Just(b"nan".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"m".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|parts| parts.concat())
}

fn small_config() -> AggregatorConfig {
    AggregatorConfig {
        max_series: 8,
        max_bytes: 4_096,
        percentile_limit: 4,
        gauges: GaugeRetention::Repeat,
        ..AggregatorConfig::default()
    }
}

proptest! {
    #[test]
    fn parsers_and_the_aggregator_take_any_bytes(input in datagram()) {
        for line in statsd::parse_datagram(&input).flatten() {
            prop_assert!(!line.name.is_empty() && line.name.len() <= statsd::MAX_NAME_BYTES);
            prop_assert!(line.value_count() >= 1 && line.value_count() <= statsd::MAX_VALUES_PER_LINE);
            prop_assert_eq!(line.values().count(), line.value_count());
            prop_assert!(line.tags().count() <= statsd::MAX_TAGS);
            prop_assert!(line.sample_rate > 0.0 && line.sample_rate <= 1.0);
        }
        for line in graphite::parse_lines(&input).flatten() {
            prop_assert!(!line.name.is_empty() && line.value.is_finite());
            prop_assert!(line.tags().count() <= graphite::MAX_TAGS);
        }
        let mut agg = Aggregator::new(small_config()).unwrap();
        for _ in 0..2 {
            let s = agg.ingest_statsd(&input);
            let g = agg.ingest_graphite(&input, T0);
            prop_assert_eq!(s.first_error.is_some(), s.errors > 0);
            prop_assert_eq!(g.first_error.is_some(), g.errors > 0);
            prop_assert!(agg.bytes() <= 4_096 && agg.series_count() <= 8);
            for sample in agg.flush(T0) {
                prop_assert!(sample.value.is_finite(), "{:?}", sample);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = statsd::parse_datagram(&input).count();
        let _ = graphite::parse_lines(&input).count();
        let mut agg = Aggregator::new(small_config()).unwrap();
        agg.ingest_statsd(&input);
        agg.ingest_graphite(&input, T0);
        let _ = agg.flush(T0);
    }
}

/// One StatsD line's parts, valid by construction.
#[derive(Clone, Debug)]
struct StatsdParts {
    name: String,
    metric_type: MetricType,
    /// Numbers, or set members.
    values: Vec<Rendered>,
    rate: Option<f64>,
    tags: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
enum Rendered {
    Number(f64),
    Delta(f64),
    Member(String),
}

fn statsd_parts() -> impl Strategy<Value = StatsdParts> {
    let types = prop_oneof![
        Just(MetricType::Counter),
        Just(MetricType::Gauge),
        Just(MetricType::Timer),
        Just(MetricType::Histogram),
        Just(MetricType::Distribution),
        Just(MetricType::Set),
    ];
    (
        "[a-zA-Z][a-zA-Z0-9._-]{0,40}",
        types,
        proptest::collection::vec((any::<bool>(), -1e12f64..1e12, "[a-z0-9]{1,8}"), 1..6),
        proptest::option::of(0.001f64..=1.0),
        proptest::collection::vec(("[a-z][a-z0-9_.]{0,10}", "[a-z0-9_./:-]{0,12}"), 0..5),
    )
        .prop_map(|(name, metric_type, raw, rate, tags)| {
            let values = raw
                .into_iter()
                .map(|(delta, x, member)| match metric_type {
                    MetricType::Set => Rendered::Member(member),
                    MetricType::Gauge if delta => Rendered::Delta(x),
                    // A plain gauge value cannot start with `-`.
                    MetricType::Gauge => Rendered::Number(x.abs()),
                    _ => Rendered::Number(x),
                })
                .collect();
            StatsdParts {
                name,
                metric_type,
                values,
                rate,
                tags,
            }
        })
}

fn render_statsd(p: &StatsdParts) -> String {
    let values: Vec<String> = p
        .values
        .iter()
        .map(|v| match v {
            Rendered::Number(x) => x.to_string(),
            Rendered::Delta(x) if *x >= 0.0 => format!("+{x}"),
            Rendered::Delta(x) => x.to_string(),
            Rendered::Member(m) => m.clone(),
        })
        .collect();
    let mut line = format!(
        "{}:{}|{}",
        p.name,
        values.join(":"),
        p.metric_type.as_wire()
    );
    if let Some(rate) = p.rate {
        line.push_str(&format!("|@{rate}"));
    }
    if !p.tags.is_empty() {
        let tags: Vec<String> = p
            .tags
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}:{v}")
                }
            })
            .collect();
        line.push_str(&format!("|#{}", tags.join(",")));
    }
    line
}

proptest! {
    #[test]
    fn rendered_statsd_lines_round_trip(p in statsd_parts()) {
        let text = render_statsd(&p);
        let line = statsd::parse_line(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(line.name, p.name.as_str());
        prop_assert_eq!(line.metric_type, p.metric_type);
        prop_assert_eq!(line.sample_rate, p.rate.unwrap_or(1.0));
        let want: Vec<Value<'_>> = p.values.iter().map(|v| match v {
            Rendered::Number(x) => Value::Number(*x),
            Rendered::Delta(x) => Value::Delta(*x),
            Rendered::Member(m) => Value::Member(m),
        }).collect();
        prop_assert_eq!(line.values().collect::<Vec<_>>(), want);
        let tags: Vec<(String, String)> = line.tags().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(tags, p.tags.clone());
    }

    #[test]
    fn rendered_graphite_lines_round_trip(
        path in "[a-zA-Z0-9_-]{1,20}(\\.[a-zA-Z0-9_-]{1,20}){0,5}",
        tags in proptest::collection::btree_map("[a-z][a-z0-9_]{0,10}", "[a-zA-Z0-9_./-]{1,12}", 0..5),
        value in -1e15f64..1e15,
        secs in proptest::option::of(0u32..=u32::MAX),
        crlf in any::<bool>(),
    ) {
        let tags: BTreeMap<String, String> = tags.into_iter().filter(|(k, _)| k != "name").collect();
        let mut text = path.clone();
        for (k, v) in &tags {
            text.push_str(&format!(";{k}={v}"));
        }
        text.push_str(&format!(" {value}"));
        if let Some(secs) = secs {
            text.push_str(&format!(" {secs}"));
        }
        if crlf {
            text.push('\r');
        }
        let line = graphite::parse_line(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(line.name, path.as_str());
        prop_assert_eq!(line.value, value);
        let want = secs.map_or(graphite::Timestamp::Now, |s| graphite::Timestamp::UnixMs(i64::from(s) * 1000));
        prop_assert_eq!(line.timestamp, want);
        let got: BTreeMap<String, String> = line.tags().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(got, tags);
    }

    #[test]
    fn timer_statistics_agree_with_the_values_accepted(
        values in proptest::collection::vec(-1e6f64..1e6, 1..300),
        limit in 1usize..50,
    ) {
        let mut agg = Aggregator::new(AggregatorConfig {
            percentile_limit: limit,
            percentiles: vec![1.0, 50.0, 90.0, 99.0, 100.0],
            ..AggregatorConfig::default()
        }).unwrap();
        for chunk in values.chunks(7) {
            let text: Vec<String> = chunk.iter().map(f64::to_string).collect();
            let got = agg.ingest_statsd(format!("t:{}|ms", text.join(":")).as_bytes());
            prop_assert_eq!(got.errors, 0);
        }
        let samples = agg.flush(T0);
        let stat = |name: &str, s: TimerStat| value_of(&samples, name, SampleKind::Timer(s));
        prop_assert_eq!(stat("t.count", TimerStat::Count), Some(values.len() as f64));
        // Summed in arrival order, like the aggregator: bit-for-bit equal.
        prop_assert_eq!(stat("t.sum", TimerStat::Sum), Some(values.iter().sum::<f64>()));
        let lower = values.iter().copied().fold(f64::INFINITY, f64::min);
        let upper = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert_eq!(stat("t.lower", TimerStat::Lower), Some(lower));
        prop_assert_eq!(stat("t.upper", TimerStat::Upper), Some(upper));
        // Percentiles are values that were sent, and grow with p.
        let mut last = f64::NEG_INFINITY;
        for p in [1.0, 50.0, 90.0, 99.0, 100.0] {
            let pct = outrider_local_metrics::Percentile::new(p).unwrap();
            let v = stat(&format!("t.{pct}"), TimerStat::Percentile(pct)).unwrap();
            prop_assert!(values.contains(&v), "p{} = {} not sent", p, v);
            prop_assert!(v >= last);
            last = v;
        }
        // Exact when everything fit in the reservoir.
        if values.len() <= limit {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            prop_assert_eq!(stat("t.p100", TimerStat::Percentile(outrider_local_metrics::Percentile::new(100.0).unwrap())), Some(upper));
            let p50 = outrider_local_metrics::Percentile::new(50.0).unwrap();
            prop_assert_eq!(stat("t.p50", TimerStat::Percentile(p50)), Some(sorted[p50.rank(sorted.len()) - 1]));
        }
    }

    #[test]
    fn counters_and_sets_agree_with_the_values_accepted(
        increments in proptest::collection::vec((-1e6f64..1e6, prop_oneof![Just(1.0), Just(0.5), Just(0.1)]), 1..100),
        members in proptest::collection::vec("[a-z]{1,3}", 1..100),
    ) {
        let mut agg = Aggregator::new(AggregatorConfig::default()).unwrap();
        let mut want = 0.0;
        for (x, rate) in &increments {
            want += x / rate;
            agg.ingest_statsd(format!("c:{x}|c|@{rate}").as_bytes());
        }
        agg.ingest_statsd(format!("s:{}|s", members.join(":")).as_bytes());
        let samples = agg.flush(T0);
        prop_assert_eq!(value_of(&samples, "c", SampleKind::Counter), Some(want));
        let distinct: BTreeSet<&String> = members.iter().collect();
        prop_assert_eq!(value_of(&samples, "s", SampleKind::Set), Some(distinct.len() as f64));
        prop_assert_eq!(agg.stats().statsd_lines, increments.len() as u64 + 1);
        prop_assert!(agg.flush(T0).is_empty());
        prop_assert_eq!(agg.bytes(), 0);
    }
}
