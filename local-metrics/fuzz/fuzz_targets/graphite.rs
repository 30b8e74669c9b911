//! `cargo fuzz run graphite`: any chunk of a Graphite plaintext stream
//! through the parser and a small aggregator must return without
//! panicking; accepted lines keep the documented bounds and finite values,
//! flushed samples are finite and the aggregator's limits hold; read in
//! small pieces through `LineBuffer`, the stream gives the same lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_local_metrics::graphite::{self, MAX_PATH_BYTES, MAX_TAGS, Timestamp};
use outrider_local_metrics::{Aggregator, AggregatorConfig};

/// The receive time handed to the aggregator ("now" for `-1`).
const NOW_MS: i64 = 1_733_300_000_000;

fuzz_target!(|data: &[u8]| {
    let mut lines = 0;
    for result in graphite::parse_lines(data) {
        match result {
            Ok(line) => {
                lines += 1;
                assert!(!line.name.is_empty() && line.name.len() <= MAX_PATH_BYTES);
                assert!(line.value.is_finite());
                assert!(line.tags().count() <= MAX_TAGS);
                for (key, value) in line.tags() {
                    assert!(!key.is_empty() && !value.is_empty() && key != "name");
                }
                if let Timestamp::UnixMs(ms) = line.timestamp {
                    assert!(ms >= 0);
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let mut agg = Aggregator::new(AggregatorConfig {
        max_series: 16,
        max_bytes: 16 << 10,
        ..AggregatorConfig::default()
    })
    .expect("a valid config");
    let got = agg.ingest_graphite(data, NOW_MS);
    assert_eq!(got.lines, lines);
    assert!(agg.series_count() <= 16 && agg.bytes() <= 16 << 10);
    for sample in agg.flush(NOW_MS) {
        assert!(sample.value.is_finite());
    }
    assert_eq!((agg.series_count(), agg.bytes()), (0, 0));

    // The same bytes as a TCP stream cut into reads of 1..=64 bytes: the
    // line buffer must hand over exactly the same lines (no line of an
    // input this short is long enough to be dropped).
    let step = usize::from(data.first().copied().unwrap_or(0) % 64) + 1;
    let mut stream = graphite::LineBuffer::default();
    let (mut streamed, mut errors) = (0, 0);
    for chunk in data.chunks(step) {
        let got = agg.ingest_graphite_stream(&mut stream, chunk, NOW_MS);
        streamed += got.lines;
        errors += got.errors;
        assert!(stream.pending_bytes() <= graphite::MAX_LINE_BYTES + 1);
    }
    stream.finish(|rest| {
        let got = agg.ingest_graphite(rest, NOW_MS);
        streamed += got.lines;
        errors += got.errors;
    });
    if data.len() <= graphite::MAX_LINE_BYTES {
        assert_eq!((streamed, errors), (lines, graphite::parse_lines(data).count() - lines));
    }
});
