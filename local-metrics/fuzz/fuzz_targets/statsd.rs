//! `cargo fuzz run statsd`: any datagram through the StatsD parser and a
//! small aggregator must return without panicking, every accepted line
//! must keep the documented bounds, and every flushed value must be finite
//! with the aggregator's limits held.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_local_metrics::statsd::{self, MAX_NAME_BYTES, MAX_TAGS, MAX_VALUES_PER_LINE};
use outrider_local_metrics::{Aggregator, AggregatorConfig, GaugeRetention};

fuzz_target!(|data: &[u8]| {
    let mut lines = 0;
    for result in statsd::parse_datagram(data) {
        match result {
            Ok(line) => {
                lines += 1;
                assert!(!line.name.is_empty() && line.name.len() <= MAX_NAME_BYTES);
                let n = line.value_count();
                assert!((1..=MAX_VALUES_PER_LINE).contains(&n));
                // Values were checked when parsed: walking them again loses none.
                assert_eq!(line.values().count(), n);
                assert!(line.tags().count() <= MAX_TAGS);
                assert!(line.sample_rate > 0.0 && line.sample_rate <= 1.0);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let mut agg = Aggregator::new(AggregatorConfig {
        max_series: 16,
        max_bytes: 16 << 10,
        percentile_limit: 8,
        gauges: GaugeRetention::Repeat,
        gauge_max_idle_flushes: 1,
        ..AggregatorConfig::default()
    })
    .expect("a valid config");
    for round in 0..3 {
        let got = agg.ingest_statsd(data);
        assert_eq!(got.lines, lines);
        assert!(agg.series_count() <= 16 && agg.bytes() <= 16 << 10);
        for sample in agg.flush(round) {
            assert!(sample.value.is_finite());
        }
    }
});
