//! Conformance fixtures (`tests/fixtures/`), written byte for byte in the
//! formats the senders document:
//!
//! - `collectd_write_graphite.txt`: collectd's `write_graphite` with its
//!   defaults (`Prefix "collectd."`, `EscapeCharacter "_"` for the dots of
//!   the host name, values printed `%.15g`, lines `"%s %s %u\r\n"` as
//!   `src/utils_format_graphite.c` writes them), including the `nan` it
//!   sends for an undefined value.
//! - `graphite_tagged.txt`: Graphite 1.1 tagged paths as Telegraf's
//!   `graphite_tag_support` writes them, plus the tag mistakes carbon
//!   refuses.
//! - `statsd_clients.txt`: the examples of statsd `docs/metric_types.md`,
//!   what the Python `statsd` client sends (`%0.6f|ms`; a negative gauge as
//!   `0|g` then `-10|g`), Node clients with DogStatsD tags before and after
//!   the rate, and datadog-go (packed histogram values, container id,
//!   timestamp, bare tags, an event and a service check).

use outrider_local_metrics::{ParseError, Sample, SampleKind, TimerStat};

use crate::{T0, aggregator};

const COLLECTD: &[u8] = include_bytes!("../fixtures/collectd_write_graphite.txt");
const GRAPHITE_TAGGED: &[u8] = include_bytes!("../fixtures/graphite_tagged.txt");
const STATSD_CLIENTS: &[u8] = include_bytes!("../fixtures/statsd_clients.txt");

/// The value of the sample labelled `label` (name and tags) of `kind`.
fn labelled(samples: &[Sample], label: &str, kind: SampleKind) -> Option<f64> {
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.label() == label && s.kind == kind)
        .collect();
    assert!(found.len() <= 1, "{label}: {found:#?}");
    found.first().map(|s| s.value)
}

#[test]
fn collectd_write_graphite() {
    assert!(
        COLLECTD.ends_with(b"\r\n"),
        "the fixture keeps collectd's CRLF"
    );
    let mut agg = aggregator();
    let got = agg.ingest_graphite(COLLECTD, T0);
    assert_eq!((got.lines, got.errors), (13, 1));
    assert_eq!(got.first_error, Some(ParseError::NotANumber));
    let samples = agg.flush(T0 + 10_000);
    assert_eq!(samples.len(), 13);
    let idle: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "collectd.host_example_com.cpu-0.cpu-idle")
        .map(|s| (s.timestamp_ms, s.value))
        .collect();
    assert_eq!(idle, [(1_733_300_000_000, 98.5), (1_733_300_010_000, 97.9)]);
    let cases = [
        ("collectd.host_example_com.load.load.shortterm", 0.15),
        (
            "collectd.host_example_com.memory.memory-free",
            6_871_947_670.0,
        ),
        (
            "collectd.host_example_com.df-root.df_complex-free",
            10_485_760_000.0,
        ),
        (
            "collectd.host_example_com.interface-eth0.if_octets.tx",
            812.633333333333,
        ),
    ];
    for (path, want) in cases {
        assert_eq!(
            labelled(&samples, path, SampleKind::Graphite),
            Some(want),
            "{path}"
        );
    }
    assert!(
        samples
            .iter()
            .all(|s| s.tags.is_empty() && s.unit.is_empty())
    );
}

#[test]
fn graphite_tagged() {
    let mut agg = aggregator();
    let got = agg.ingest_graphite(GRAPHITE_TAGGED, T0);
    // `name=` is reserved; a value may not start with `~`.
    assert_eq!((got.lines, got.errors), (4, 2));
    assert_eq!(got.first_error, Some(ParseError::ReservedTagName));
    let samples = agg.flush(T0);
    let cases = [
        ("cpu.usage_idle;cpu=cpu-total;dc=us-east-1;host=tars", 98.09),
        ("cpu.usage_user;cpu=cpu-total;dc=us-east-1;host=tars", 0.89),
        ("disk.used;host=web01;path=/var/lib", 2.5e9),
        // Carbon keeps the last value of a repeated tag.
        ("app.requests;env=staging", 12.0),
    ];
    for (label, want) in cases {
        assert_eq!(
            labelled(&samples, label, SampleKind::Graphite),
            Some(want),
            "{label}"
        );
    }
    assert!(samples.iter().all(|s| s.timestamp_ms == 1_455_320_660_000));
}

#[test]
fn statsd_clients() {
    let mut agg = aggregator();
    let got = agg.ingest_statsd(STATSD_CLIENTS);
    assert_eq!((got.lines, got.errors), (21, 2));
    assert_eq!(
        got.first_error,
        Some(ParseError::Unsupported { what: "events" })
    );
    let samples = agg.flush(T0);
    let timer = SampleKind::Timer;
    let p = |v: f64| TimerStat::Percentile(outrider_local_metrics::Percentile::new(v).unwrap());
    let cases = [
        ("gorets", SampleKind::Counter, 1.0),
        // 320 at rate 1 and 320 at rate 0.1: counted 1 + 10 times.
        ("glork.count", timer(TimerStat::Count), 11.0),
        ("glork.mean", timer(TimerStat::Mean), 320.0),
        // 333, then the deltas -10 and +4.
        ("gaugor", SampleKind::Gauge, 327.0),
        ("uniques", SampleKind::Set, 2.0),
        ("py.requests", SampleKind::Counter, 1.0),
        ("py.timer.mean", timer(TimerStat::Mean), 320.0),
        // The Python client's way to set a negative gauge: 0, then -10.
        ("py.level", SampleKind::Gauge, -10.0),
        ("py.users", SampleKind::Set, 1.0),
        // Two lines at rate 0.25, tags in either order: one series, 8.
        ("node.requests;env=prod;region=eu", SampleKind::Counter, 8.0),
        (
            "dd.page.views;env=prod;service=web",
            SampleKind::Counter,
            1.0,
        ),
        // 12.5, 13, 14.5 packed, then 20: p50 is the 2nd, p90 the 4th.
        (
            "dd.request.latency.count;env=prod",
            timer(TimerStat::Count),
            4.0,
        ),
        (
            "dd.request.latency.mean;env=prod",
            timer(TimerStat::Mean),
            15.0,
        ),
        (
            "dd.request.latency.lower;env=prod",
            timer(TimerStat::Lower),
            12.5,
        ),
        ("dd.request.latency.p50;env=prod", timer(p(50.0)), 13.0),
        ("dd.request.latency.p90;env=prod", timer(p(90.0)), 20.0),
        ("dd.queue.depth;env=prod", SampleKind::Gauge, 5.0),
        ("dd.payload.size.p50;canary;env=prod", timer(p(50.0)), 512.0),
    ];
    for (label, kind, want) in cases {
        assert_eq!(labelled(&samples, label, kind), Some(want), "{label}");
    }
    // StatsD samples are stamped with the flush time, `|T` included.
    assert!(samples.iter().all(|s| s.timestamp_ms == T0));
    let units: Vec<_> = samples
        .iter()
        .filter(|s| s.name.starts_with("glork."))
        .map(|s| (s.name.as_str(), s.unit))
        .collect();
    assert!(units.contains(&("glork.mean", "ms")) && units.contains(&("glork.count", "")));
}
