//! Aggregation by table: each case feeds datagrams, flushes, and compares
//! with values computed by hand (in the comments).

use outrider_local_metrics::{
    Aggregator, AggregatorConfig, GaugeRetention, Ingested, ParseError, Percentile, SampleKind,
    Stats, Tag, TimerStat,
};

use crate::{T0, aggregator, value_of};

const FLUSH: i64 = 10_000;

/// The datagrams of each interval, in order.
type Intervals<'a> = &'a [&'a [&'a str]];
/// A series' value at each flush (None: no sample).
type Flushed = Vec<Option<f64>>;

/// Feeds each interval's datagrams and flushes after each; returns the
/// value of `name` of `kind` at each flush (None: no sample).
fn run(
    config: AggregatorConfig,
    intervals: Intervals<'_>,
    name: &str,
    kind: SampleKind,
) -> Flushed {
    let mut agg = Aggregator::new(config).unwrap();
    let mut got = Vec::new();
    for (i, datagrams) in intervals.iter().enumerate() {
        for d in *datagrams {
            let ingested = agg.ingest_statsd(d.as_bytes());
            assert_eq!(ingested.errors, 0, "{d}: {:?}", ingested.first_error);
        }
        let samples = agg.flush(T0 + i as i64 * FLUSH);
        got.push(value_of(&samples, name, kind));
    }
    got
}

#[test]
fn counters_sum_increments_scaled_by_their_sample_rates() {
    let cases: [(Intervals<'_>, Flushed); 5] = [
        // 1 + 1
        (&[&["hits:1|c", "hits:1|c"]], vec![Some(2.0)]),
        // 3 / 0.1 = 30
        (&[&["hits:3|c|@0.1"]], vec![Some(30.0)]),
        // 1 + 1 + 3/0.1 + (2 + 2)/0.5 = 40, all in one datagram
        (
            &[&["hits:1|c\nhits:1|c\nhits:3|c|@0.1\nhits:2:2|c|@0.5"]],
            vec![Some(40.0)],
        ),
        // Negative increments are allowed: 5 - 7 = -2.
        (&[&["hits:5|c", "hits:-7|c"]], vec![Some(-2.0)]),
        // Forgotten at each flush: an idle interval has no sample.
        (
            &[&["hits:4|c"], &[], &["hits:1|c"]],
            vec![Some(4.0), None, Some(1.0)],
        ),
    ];
    for (intervals, want) in cases {
        let got = run(
            AggregatorConfig::default(),
            intervals,
            "hits",
            SampleKind::Counter,
        );
        assert_eq!(got, want, "{intervals:?}");
    }
}

#[test]
fn gauges_set_and_apply_deltas_and_are_kept_as_configured() {
    use GaugeRetention::*;
    let cases: [(GaugeRetention, Intervals<'_>, Flushed); 8] = [
        // 10, +5, -3 = 12
        (
            Remember,
            &[&["g:10|g", "g:+5|g", "g:-3|g"]],
            vec![Some(12.0)],
        ),
        // Packed: set 1, +2, set 7, -1 = 6
        (Remember, &[&["g:1:+2:7:-1|g"]], vec![Some(6.0)]),
        // A negative level: set 0 first, then -5.
        (Remember, &[&["g:0|g\ng:-5|g"]], vec![Some(-5.0)]),
        // A delta to an unknown gauge starts from 0.
        (Remember, &[&["g:-4|g"]], vec![Some(-4.0)]),
        // Sample rates do not scale gauges.
        (Remember, &[&["g:8|g|@0.1"]], vec![Some(8.0)]),
        // Remember: 12 kept; idle interval silent; +1 applies to 12.
        (
            Remember,
            &[&["g:12|g"], &[], &["g:+1|g"]],
            vec![Some(12.0), None, Some(13.0)],
        ),
        // Repeat (StatsD): the idle interval repeats 12.
        (
            Repeat,
            &[&["g:12|g"], &[], &["g:+1|g"]],
            vec![Some(12.0), Some(12.0), Some(13.0)],
        ),
        // Forget (Telegraf): the delta after a flush starts from 0.
        (
            Forget,
            &[&["g:12|g"], &[], &["g:+1|g"]],
            vec![Some(12.0), None, Some(1.0)],
        ),
    ];
    for (gauges, intervals, want) in cases {
        let config = AggregatorConfig {
            gauges,
            ..AggregatorConfig::default()
        };
        let got = run(config, intervals, "g", SampleKind::Gauge);
        assert_eq!(got, want, "{gauges:?} {intervals:?}");
    }
}

#[test]
fn idle_gauges_are_forgotten_after_the_configured_flushes() {
    for gauges in [GaugeRetention::Remember, GaugeRetention::Repeat] {
        let mut agg = Aggregator::new(AggregatorConfig {
            gauges,
            gauge_max_idle_flushes: 2,
            ..AggregatorConfig::default()
        })
        .unwrap();
        agg.ingest_statsd(b"g:12|g");
        // Updated, then idle for 1 and 2 flushes: kept.
        for _ in 0..3 {
            agg.flush(T0);
            assert_eq!(agg.series_count(), 1, "{gauges:?}");
        }
        // Idle for a third flush: forgotten, and its bytes given back.
        agg.flush(T0);
        assert_eq!((agg.series_count(), agg.bytes()), (0, 0), "{gauges:?}");
        agg.ingest_statsd(b"g:+1|g");
        assert_eq!(value_of(&agg.flush(T0), "g", SampleKind::Gauge), Some(1.0));
    }
}

fn timer(stat: TimerStat) -> SampleKind {
    SampleKind::Timer(stat)
}

fn pct(p: f64) -> TimerStat {
    TimerStat::Percentile(Percentile::new(p).unwrap())
}

#[test]
fn timers_flush_their_statistics_and_exact_percentiles() {
    let mut agg = aggregator();
    // 1..=10 ms: mean 5.5, upper 10, lower 1, sum 55, count 10; nearest
    // rank: p50 = 5th = 5, p90 = 9th = 9, p99 = ceil(9.9) = 10th = 10.
    let values: Vec<String> = (1..=10).map(|v| v.to_string()).collect();
    agg.ingest_statsd(format!("rt:{}|ms", values.join(":")).as_bytes());
    // 100 ms twice at rate 0.5 and 200 once: count 2 + 2 + 1 = 5, sum 400,
    // mean 400 / 3 (the mean is over the values received).
    agg.ingest_statsd(b"db:100|ms|@0.5\ndb:100|ms|@0.5\ndb:200|ms");
    let samples = agg.flush(T0);
    let cases = [
        ("rt.mean", TimerStat::Mean, 5.5),
        ("rt.upper", TimerStat::Upper, 10.0),
        ("rt.lower", TimerStat::Lower, 1.0),
        ("rt.sum", TimerStat::Sum, 55.0),
        ("rt.count", TimerStat::Count, 10.0),
        ("rt.p50", pct(50.0), 5.0),
        ("rt.p90", pct(90.0), 9.0),
        ("rt.p99", pct(99.0), 10.0),
        ("db.count", TimerStat::Count, 5.0),
        ("db.sum", TimerStat::Sum, 400.0),
        ("db.mean", TimerStat::Mean, 400.0 / 3.0),
        ("db.upper", TimerStat::Upper, 200.0),
        ("db.lower", TimerStat::Lower, 100.0),
        ("db.p50", pct(50.0), 100.0),
        ("db.p90", pct(90.0), 200.0),
    ];
    for (name, stat, want) in cases {
        assert_eq!(value_of(&samples, name, timer(stat)), Some(want), "{name}");
    }
    for s in &samples {
        let want = if s.kind == timer(TimerStat::Count) {
            ""
        } else {
            "ms"
        };
        assert_eq!((s.unit, s.timestamp_ms), (want, T0), "{s:?}");
    }
    assert_eq!(samples.len(), 2 * 8, "8 samples per timer: {samples:#?}");
    assert!(agg.flush(T0 + FLUSH).is_empty(), "timers are forgotten");
}

#[test]
fn histograms_and_distributions_are_timers_without_a_unit() {
    let mut agg = Aggregator::new(AggregatorConfig {
        percentiles: vec![25.0, 99.95],
        ..AggregatorConfig::default()
    })
    .unwrap();
    // 4, 8, 15, 16, 23, 42: p25 = ceil(1.5) = 2nd = 8; p99.95 = 6th = 42.
    agg.ingest_statsd(b"size:4:8:15|h\nsize:16:23:42|h\nq:3|d");
    let samples = agg.flush(T0);
    assert_eq!(value_of(&samples, "size.p25", timer(pct(25.0))), Some(8.0));
    assert_eq!(
        value_of(&samples, "size.p99_95", timer(pct(99.95))),
        Some(42.0)
    );
    assert_eq!(value_of(&samples, "q.p25", timer(pct(25.0))), Some(3.0));
    assert!(samples.iter().all(|s| s.unit.is_empty()), "{samples:#?}");
}

#[test]
fn percentiles_beyond_the_reservoir_are_sampled_uniformly() {
    let mut agg = Aggregator::new(AggregatorConfig {
        percentile_limit: 200,
        ..AggregatorConfig::default()
    })
    .unwrap();
    // 0..10_000 in order: a reservoir that kept only the first values (or
    // only the last) would put p50 near 100 (or 9_900).
    for chunk in (0..10_000).collect::<Vec<u32>>().chunks(100) {
        let values: Vec<String> = chunk.iter().map(u32::to_string).collect();
        agg.ingest_statsd(format!("rt:{}|ms", values.join(":")).as_bytes());
    }
    let samples = agg.flush(T0);
    // Statistics other than percentiles cover every value exactly.
    assert_eq!(
        value_of(&samples, "rt.count", timer(TimerStat::Count)),
        Some(10_000.0)
    );
    assert_eq!(
        value_of(&samples, "rt.sum", timer(TimerStat::Sum)),
        Some(49_995_000.0)
    );
    assert_eq!(
        value_of(&samples, "rt.upper", timer(TimerStat::Upper)),
        Some(9_999.0)
    );
    // A uniform sample of 200: p50 within ±1_000 of 5_000 with
    // overwhelming probability (its standard error is ~350); the seed is
    // fixed, so this never flakes.
    let p50 = value_of(&samples, "rt.p50", timer(pct(50.0))).unwrap();
    let p90 = value_of(&samples, "rt.p90", timer(pct(90.0))).unwrap();
    assert!((4_000.0..=6_000.0).contains(&p50), "p50 {p50}");
    assert!((8_400.0..=9_600.0).contains(&p90), "p90 {p90}");
}

#[test]
fn sets_count_distinct_members() {
    let cases: [(Intervals<'_>, Flushed); 3] = [
        // a, b, c: `a` three times counts once.
        (&[&["u:a|s", "u:b|s", "u:a|s", "u:c:a|s"]], vec![Some(3.0)]),
        // Members are strings: `1` and `1.0` differ.
        (&[&["u:1|s\nu:1.0|s"]], vec![Some(2.0)]),
        // Forgotten at each flush.
        (
            &[&["u:a|s"], &[], &["u:a|s"]],
            vec![Some(1.0), None, Some(1.0)],
        ),
    ];
    for (intervals, want) in cases {
        let got = run(AggregatorConfig::default(), intervals, "u", SampleKind::Set);
        assert_eq!(got, want, "{intervals:?}");
    }
}

#[test]
fn tags_are_canonical_and_types_are_separate_series() {
    let mut agg = aggregator();
    agg.ingest_statsd(b"x:1|c|#b:2,a:1\nx:2|c|#a:1,b:2\nx:4|c|#a:1,a:1,b:2\nx:8|c|#a:1\nx:5|g");
    let samples = agg.flush(T0);
    let tag = |k: &str, v: &str| Tag {
        key: k.into(),
        value: v.into(),
    };
    let got: Vec<_> = samples
        .iter()
        .map(|s| (s.label(), s.kind, s.tags.clone(), s.value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("x".into(), SampleKind::Gauge, vec![], 5.0),
            (
                "x;a=1".into(),
                SampleKind::Counter,
                vec![tag("a", "1")],
                8.0
            ),
            // 1 + 2 + 4: order and duplicate tags do not make new series.
            (
                "x;a=1;b=2".into(),
                SampleKind::Counter,
                vec![tag("a", "1"), tag("b", "2")],
                7.0
            ),
        ]
    );
}

#[test]
fn graphite_points_pass_through_with_their_own_time() {
    let mut agg = aggregator();
    let received = T0 - 3_000;
    let ingested = agg.ingest_graphite(
        b"m 1 100\r\nm 2 110\r\nm 3 110\r\nm;b=2;a=1 5 120\nm;a=1;b=2 6 130\nm;a=1;a=2 7 140\nm 9 -1\nm 10\nbad line here\n",
        received,
    );
    assert_eq!(ingested.lines, 8);
    assert_eq!(ingested.errors, 1);
    let samples = agg.flush(T0);
    let got: Vec<_> = samples
        .iter()
        .map(|s| (s.label(), s.timestamp_ms, s.value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("m".into(), 100_000, 1.0),
            // Same time as the previous point of the series: replaced.
            ("m".into(), 110_000, 3.0),
            // `-1` and no timestamp: the receive time; the second replaces
            // the first, as both have that time.
            ("m".into(), received, 10.0),
            // Tag order does not matter; sorted by name as carbon does.
            ("m;a=1;b=2".into(), 120_000, 5.0),
            ("m;a=1;b=2".into(), 130_000, 6.0),
            // The last value of a repeated tag name.
            ("m;a=2".into(), 140_000, 7.0),
        ]
    );
    assert!(
        samples
            .iter()
            .all(|s| s.kind == SampleKind::Graphite && s.unit.is_empty())
    );
    assert!(agg.flush(T0 + FLUSH).is_empty());
}

#[test]
fn new_series_past_the_limit_are_dropped_and_counted() {
    let mut agg = Aggregator::new(AggregatorConfig {
        max_series: 2,
        ..AggregatorConfig::default()
    })
    .unwrap();
    // `c` would be the third series: its 3 values are dropped; `a` still
    // takes values.
    agg.ingest_statsd(b"a:1|c\nb:1|c\nc:1:2:3|c\na:1|c");
    agg.ingest_graphite(b"g 1 100\n", T0);
    let samples = agg.flush(T0);
    let names: Vec<_> = samples.iter().map(|s| (s.name.as_str(), s.value)).collect();
    assert_eq!(names, vec![("a", 2.0), ("b", 1.0)]);
    assert_eq!(agg.stats().dropped_series_limit, 4);
    // The flush freed the slots.
    agg.ingest_statsd(b"c:1|c");
    assert_eq!(
        value_of(&agg.flush(T0), "c", SampleKind::Counter),
        Some(1.0)
    );
}

#[test]
fn values_past_the_byte_budget_are_dropped_and_counted() {
    let mut agg = Aggregator::new(AggregatorConfig {
        max_bytes: 1_000,
        ..AggregatorConfig::default()
    })
    .unwrap();
    let members: Vec<String> = (0..100).map(|i| format!("member-{i:03}")).collect();
    agg.ingest_statsd(format!("u:{}|s", members.join(":")).as_bytes());
    assert!(agg.bytes() <= 1_000, "{}", agg.bytes());
    let counted = value_of(&agg.flush(T0), "u", SampleKind::Set).unwrap();
    let dropped = agg.stats().dropped_values;
    // Every member either counted or dropped, and some of each.
    assert_eq!(counted as u64 + dropped, 100);
    assert!(counted >= 1.0 && dropped >= 1, "{counted} {dropped}");
    assert_eq!(agg.bytes(), 0, "the flush gives every byte back");

    // A set whose every member is dropped flushes nothing, not a 0.
    let mut agg = Aggregator::new(AggregatorConfig {
        max_bytes: 200,
        ..AggregatorConfig::default()
    })
    .unwrap();
    agg.ingest_statsd(format!("u:{}|s", "m".repeat(100)).as_bytes());
    assert_eq!((agg.series_count(), agg.stats().dropped_values), (1, 1));
    assert!(agg.flush(T0).is_empty());
}

#[test]
fn overflowing_values_are_dropped_at_flush() {
    let mut agg = aggregator();
    agg.ingest_statsd(b"c:1e308|c\nc:1e308|c\ng:1e308|g\ng:+1e308|g\nok:1|c");
    let samples = agg.flush(T0);
    assert_eq!(
        samples.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["ok"]
    );
    assert_eq!(agg.stats().dropped_values, 2);
    assert_eq!(agg.series_count(), 0, "the overflowed gauge is forgotten");
}

#[test]
fn stats_count_lines_errors_and_samples() {
    let mut agg = aggregator();
    let got = agg.ingest_statsd(b"a:1|c\nbad\nb:x|c\n\nc:1|g\n");
    assert_eq!((got.lines, got.errors), (2, 2));
    assert_eq!(
        got.first_error,
        Some(ParseError::MissingValue { name: "bad".into() })
    );
    agg.ingest_graphite(b"m 1 100\nm\n", T0);
    let flushed = agg.flush(T0).len() as u64;
    assert_eq!(
        agg.stats(),
        Stats {
            statsd_lines: 2,
            statsd_parse_errors: 2,
            graphite_lines: 1,
            graphite_parse_errors: 1,
            dropped_series_limit: 0,
            dropped_values: 0,
            samples_flushed: flushed,
        }
    );
    assert_eq!(flushed, 3);
}

#[test]
fn graphite_streams_are_joined_across_reads_and_overlong_lines_counted() {
    let mut agg = aggregator();
    let mut stream = outrider_local_metrics::graphite::LineBuffer::default();
    let long = vec![b'x'; outrider_local_metrics::graphite::MAX_LINE_BYTES + 10];
    let reads: [&[u8]; 5] = [
        b"a.b 1 10",
        b"0\r\na.b 2 1",
        b"10\r\n",
        &long,
        b"\r\nc 3 100\r\n",
    ];
    let mut total = Ingested::default();
    for read in reads {
        let got = agg.ingest_graphite_stream(&mut stream, read, T0);
        total.lines += got.lines;
        total.errors += got.errors;
        if total.first_error.is_none() {
            total.first_error = got.first_error;
        }
    }
    assert_eq!((total.lines, total.errors), (3, 1));
    assert_eq!(
        total.first_error,
        Some(ParseError::UnterminatedLineTooLong {
            limit: outrider_local_metrics::graphite::MAX_LINE_BYTES
        })
    );
    assert_eq!(agg.stats().graphite_parse_errors, 1);
    let got: Vec<_> = agg
        .flush(T0)
        .iter()
        .map(|s| (s.name.clone(), s.timestamp_ms, s.value))
        .collect();
    assert_eq!(
        got,
        [
            ("a.b".to_owned(), 100_000, 1.0),
            ("a.b".to_owned(), 110_000, 2.0),
            ("c".to_owned(), 100_000, 3.0)
        ]
    );
}
