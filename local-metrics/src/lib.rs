//! Parsers and per-interval aggregation for the agent's loopback metric
//! listeners: StatsD (with the DogStatsD extensions) over UDP and Graphite
//! plaintext over TCP, as collectd's `write_graphite` and application
//! StatsD clients send them.
//!
//! Pure: no I/O, no tokio, no clock. Bytes and the time go in, [`Sample`]s
//! and counts come out; the agent's listeners own the sockets, the flush
//! timer and the spool.
//!
//! - [`statsd`] and [`graphite`] parse one line at a time into borrowed
//!   [`statsd::Line`]s and [`graphite::Line`]s, or a typed [`ParseError`]
//!   naming what was wrong. A bad line never affects the others of its
//!   datagram or stream. Every input is bounded (line, name, tags, values)
//!   by named constants in each module, and no input panics (property
//!   tests and the `local-metrics/fuzz` targets).
//! - [`Aggregator`] folds lines into per-interval state (counters summed
//!   with their sample rates, gauges with deltas, timer statistics and
//!   percentiles over a bounded reservoir, set cardinality, Graphite points
//!   passed through) and [`Aggregator::flush`] turns it into samples; the
//!   rules and bounds are in the [`aggregate`] module's doc.
//! - [`graphite::LineBuffer`] joins Graphite lines split across TCP reads,
//!   holding at most one line ([`Aggregator::ingest_graphite_stream`]).
//! - [`Sample`] maps onto the agent's perfdata samples without loss (the
//!   [`sample`] module's doc has the table).
//!
//! # Driving it from a listener
//!
//! ```
//! use outrider_local_metrics::{Aggregator, AggregatorConfig};
//!
//! let mut agg = Aggregator::new(AggregatorConfig::default()).unwrap();
//! // Each UDP datagram as received; each chunk of TCP lines with the
//! // receive time (Unix ms) for Graphite's "now".
//! let got = agg.ingest_statsd(b"api.hits:1|c|@0.5\napi.latency:12|ms|#env:prod\n");
//! assert_eq!((got.lines, got.errors), (2, 0));
//! let mut conn = outrider_local_metrics::graphite::LineBuffer::default();
//! let now_ms = 1_733_300_001_000;
//! agg.ingest_graphite_stream(&mut conn, b"collectd.host.load.shortterm 0.2", now_ms);
//! agg.ingest_graphite_stream(&mut conn, b"5 1733300000\r\n", now_ms);
//! // At the connection's end: its unfinished last line, if any.
//! conn.finish(|rest| {
//!     agg.ingest_graphite(rest, now_ms);
//! });
//! // Every flush interval:
//! let samples = agg.flush(1_733_300_010_000);
//! let hits = samples.iter().find(|s| s.name == "api.hits").unwrap();
//! assert_eq!(hits.value, 2.0);
//! let load = samples.iter().find(|s| s.name.ends_with("shortterm")).unwrap();
//! assert_eq!((load.value, load.timestamp_ms), (0.25, 1_733_300_000_000));
//! assert_eq!(agg.stats().graphite_lines, 1);
//! ```

pub mod aggregate;
pub mod error;
pub mod graphite;
pub mod sample;
pub mod statsd;

pub use aggregate::{Aggregator, AggregatorConfig, GaugeRetention, Ingested, Stats};
pub use error::{ConfigError, ParseError};
pub use sample::{Percentile, Sample, SampleKind, Tag, TimerStat};

/// The non-empty lines of `buf`, split at `\n`, each without a trailing
/// `\r`. Both protocols frame lines this way (collectd ends lines with
/// `\r\n`; a StatsD datagram usually ends with `\n`), and an empty line is
/// not an error in either.
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_split_at_newlines_and_drop_carriage_returns() {
        let cases: [(&[u8], &[&[u8]]); 6] = [
            (b"", &[]),
            (b"\n\r\n\n", &[]),
            (b"a", &[b"a"]),
            (b"a\nb\n", &[b"a", b"b"]),
            (b"a\r\nb\r\n", &[b"a", b"b"]),
            // Only one trailing \r is a line end; a lone \r stays.
            (b"a\r\r\n\rb", &[b"a\r", b"\rb"]),
        ];
        for (input, want) in cases {
            assert_eq!(super::lines(input).collect::<Vec<_>>(), want, "{input:?}");
        }
    }
}
