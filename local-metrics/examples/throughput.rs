//! Parser and aggregator throughput on one core, in lines per second, over
//! a generated corpus shaped like real traffic: StatsD datagrams of about
//! 1,400 bytes (a LAN MTU) mixing counters with sample rates, gauges,
//! timers, packed histograms and sets, most with DogStatsD tags; Graphite
//! lines as collectd's `write_graphite` sends them, in 64 KiB chunks.
//! 1,000 series each, flushed every 100,000 lines.
//!
//! Not a test: numbers depend on the machine. Run in release mode:
//!
//! ```sh
//! cargo run --release -p outrider-local-metrics --example throughput
//! ```
//!
//! Each figure is the best of [`ROUNDS`] passes over [`LINES`] lines.
//! Targets: 500,000 StatsD and 300,000 Graphite lines/s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use outrider_local_metrics::{Aggregator, AggregatorConfig, graphite, statsd};

/// Lines per pass.
const LINES: usize = 1_000_000;
/// Passes per measurement; the fastest counts (least disturbed by the
/// other work on the machine).
const ROUNDS: usize = 5;
/// Distinct series in each corpus.
const SERIES: usize = 1_000;
/// Lines between flushes, as an interval's worth of traffic.
const FLUSH_EVERY: usize = 100_000;

fn main() {
    let statsd = statsd_corpus();
    let graphite = graphite_corpus();
    println!(
        "corpus: {} StatsD lines in {} datagrams ({} bytes), {} Graphite lines in {} chunks ({} bytes)",
        LINES,
        statsd.len(),
        statsd.iter().map(Vec::len).sum::<usize>(),
        LINES,
        graphite.len(),
        graphite.iter().map(Vec::len).sum::<usize>(),
    );
    report("statsd parse", best(|| parse_statsd(&statsd)));
    report(
        "statsd parse+aggregate+flush",
        best(|| aggregate_statsd(&statsd)),
    );
    report("graphite parse", best(|| parse_graphite(&graphite)));
    report(
        "graphite parse+aggregate+flush",
        best(|| aggregate_graphite(&graphite)),
    );
}

fn report(what: &str, elapsed: Duration) {
    let per_sec = LINES as f64 / elapsed.as_secs_f64();
    println!(
        "{what:<32} {:>12.0} lines/s  ({:.1} ns/line)",
        per_sec,
        1e9 / per_sec
    );
}

/// The fastest of [`ROUNDS`] runs of `f`, which must handle [`LINES`] lines.
fn best(mut f: impl FnMut() -> usize) -> Duration {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let lines = f();
            let elapsed = start.elapsed();
            assert_eq!(lines, LINES, "every generated line is valid");
            elapsed
        })
        .min()
        .unwrap_or_default()
}

fn parse_statsd(datagrams: &[Vec<u8>]) -> usize {
    let mut lines = 0;
    for d in datagrams {
        for line in statsd::parse_datagram(d).flatten() {
            lines += 1;
            black_box(line.values().count() + line.tags().count());
        }
    }
    lines
}

fn aggregate_statsd(datagrams: &[Vec<u8>]) -> usize {
    let mut agg = Aggregator::new(AggregatorConfig::default()).expect("default config");
    let (mut lines, mut since_flush, mut now) = (0, 0, 1_733_300_000_000);
    for d in datagrams {
        let got = agg.ingest_statsd(d);
        lines += got.lines;
        since_flush += got.lines;
        if since_flush >= FLUSH_EVERY {
            now += 10_000;
            black_box(agg.flush(now));
            since_flush = 0;
        }
    }
    black_box(agg.flush(now + 10_000));
    lines
}

fn parse_graphite(chunks: &[Vec<u8>]) -> usize {
    let mut lines = 0;
    for c in chunks {
        for line in graphite::parse_lines(c).flatten() {
            lines += 1;
            black_box(line.value + line.tags().count() as f64);
        }
    }
    lines
}

fn aggregate_graphite(chunks: &[Vec<u8>]) -> usize {
    let mut agg = Aggregator::new(AggregatorConfig::default()).expect("default config");
    let (mut lines, mut since_flush, mut now) = (0, 0, 1_733_300_000_000);
    for c in chunks {
        let got = agg.ingest_graphite(c, now);
        lines += got.lines;
        since_flush += got.lines;
        if since_flush >= FLUSH_EVERY {
            now += 10_000;
            black_box(agg.flush(now));
            since_flush = 0;
        }
    }
    black_box(agg.flush(now + 10_000));
    lines
}

/// `LINES` StatsD lines in datagrams of at most ~1,400 bytes.
fn statsd_corpus() -> Vec<Vec<u8>> {
    let mut datagrams = Vec::new();
    let mut current = Vec::new();
    for i in 0..LINES {
        let s = i % SERIES;
        let env = ["prod", "staging"][s % 2];
        let line = match s % 10 {
            0..=3 => format!("app.requests.{s}:1|c|@0.5|#env:{env},service:web"),
            4 | 5 => format!("app.latency.{s}:{}.{}|ms|#env:{env}", i % 500, i % 10),
            6 | 7 => format!("app.queue.{s}:{}{}|g", ["+", "-", ""][i % 3], i % 100),
            8 => format!("app.size.{s}:{}:{}:{}|h|#env:{env}", i % 7, i % 13, i % 17),
            _ => format!("app.users.{s}:user{}|s", i % 5_000),
        };
        if current.len() + line.len() + 1 > 1_400 {
            datagrams.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(line.as_bytes());
        current.push(b'\n');
    }
    datagrams.push(current);
    datagrams
}

/// `LINES` collectd-style Graphite lines with CRLF, in 64 KiB chunks (what
/// one TCP read would hand over).
fn graphite_corpus() -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    for i in 0..LINES {
        let s = i % SERIES;
        let t = 1_733_300_000 + (i / SERIES) * 10;
        let line = format!(
            "collectd.host_example_com.cpu-{}.cpu-{} {}.{} {t}\r\n",
            s / 8,
            [
                "idle",
                "user",
                "system",
                "wait",
                "nice",
                "interrupt",
                "softirq",
                "steal"
            ][s % 8],
            i % 100,
            i % 1000,
        );
        if current.len() + line.len() > 64 << 10 {
            chunks.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(line.as_bytes());
    }
    chunks.push(current);
    chunks
}
