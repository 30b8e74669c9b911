//! Per-interval aggregation: lines in, [`Sample`]s out at each
//! [`Aggregator::flush`]. No clock: the caller passes the receive time
//! (Graphite's "now") and the flush time.
//!
//! # Rules
//!
//! | input | kept during the interval | flushed as | after the flush |
//! |---|---|---|---|
//! | counter `c` | sum of `value / rate` | one sample, the sum | forgotten |
//! | gauge `g` | the level: a plain value sets it, `+N`/`-N` add to it | the level, if updated in the interval (see [`GaugeRetention`]) | kept for the next deltas, forgotten after [`AggregatorConfig::gauge_max_idle_flushes`] idle flushes |
//! | timer `ms`, `h`, `d` | count (`Σ 1/rate`), sum, min, max, and a reservoir of at most [`AggregatorConfig::percentile_limit`] values | `.mean .upper .lower .sum .count` and one `.pNN` per percentile | forgotten |
//! | set `s` | the distinct members | one sample, the number of members | forgotten |
//! | Graphite | every point, with its own time | every point | forgotten |
//!
//! Idle counters, timers and sets flush nothing (Telegraf's `delete_*`
//! defaults) rather than StatsD's zeros: an absent sample says that nothing
//! was sent, where a zero would claim that nothing happened, and idle
//! series cost no spool space.
//!
//! **Percentiles** are nearest-rank ([`Percentile::rank`]) over the
//! reservoir, so they are exact whenever an interval has at most
//! `percentile_limit` values. Beyond that the reservoir is a uniform random
//! sample of all the interval's values (Vitter's algorithm R, driven by a
//! seeded generator so a run is reproducible); mean, upper, lower, sum and
//! count always cover every value.
//!
//! **Graphite points** pass through unaggregated: collectd may send more
//! often than we flush, and the server stores each point at its own time.
//! A point with the same timestamp as the series' previous one replaces it
//! (carbon keeps the last write per time slot; the server's store is keyed
//! by series and time).
//!
//! # Bounds
//!
//! - At most [`AggregatorConfig::max_series`] series at once (gauges kept
//!   across flushes count). A line that would create one more is dropped
//!   and its values counted in [`Stats::dropped_series_limit`].
//! - At most [`AggregatorConfig::max_bytes`] of names, tags and stored
//!   values (an estimate of heap use, not allocator slack). A new series past
//!   it is dropped like one past `max_series`; a set member or Graphite
//!   point past it is dropped and counted in [`Stats::dropped_values`]; a
//!   timer value past it still counts in the timer's statistics but not in
//!   its reservoir.
//! - A flushed value that is not finite (a counter sum or a gauge that
//!   overflowed `f64`) is dropped and counted in [`Stats::dropped_values`];
//!   such a gauge is forgotten.
//!
//! Series are keyed by type, name and canonical tags (sorted; DogStatsD
//! duplicates removed; for a repeated Graphite tag name the last value, as
//! carbon): `x:1|c` and `x:1|g` are two series; `ms`, `h` and `d` are one
//! kind (the unit comes from the line that created the series).

mod series;

use std::collections::HashMap;

use crate::error::{ConfigError, ParseError};
use crate::sample::{Percentile, Sample, Tag};
use crate::{graphite, statsd};
use series::{Series, State};

/// Default percentiles of timers: StatsD's 90 with the median and 99.
pub const DEFAULT_PERCENTILES: [f64; 3] = [50.0, 90.0, 99.0];
/// Default reservoir size per timer (Telegraf's `percentile_limit`).
pub const DEFAULT_PERCENTILE_LIMIT: usize = 1_000;
/// Default bound on series: far above what one host's collectd (a few
/// hundred series) and applications send, far below what would strain the
/// spool or the server's per-agent series limit.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// Default bound on the aggregator's memory estimate.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
/// Default number of flushes a gauge may go without an update before it is
/// forgotten: an hour at the default 10 s interval.
pub const DEFAULT_GAUGE_MAX_IDLE_FLUSHES: u32 = 360;
/// Default seed of the reservoir sampling generator.
pub const DEFAULT_SEED: u64 = 0x6f75_7472_6964_6572;

/// What happens to a gauge at a flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GaugeRetention {
    /// Telegraf's `delete_gauges = true`: forgotten at each flush, so a
    /// delta in a later interval starts from 0.
    Forget,
    /// The level is kept so later deltas apply to it, but flushed only in
    /// intervals where the gauge was updated: a gauge whose sender went
    /// away stops reporting instead of repeating its last level.
    #[default]
    Remember,
    /// StatsD's default: the level is kept and flushed every interval,
    /// updated or not (until `gauge_max_idle_flushes`).
    Repeat,
}

/// How an [`Aggregator`] aggregates; every field has a default
/// (`AggregatorConfig::default()`).
#[derive(Clone, Debug, PartialEq)]
pub struct AggregatorConfig {
    /// Timer percentiles, each in (0, 100] with at most two decimals.
    pub percentiles: Vec<f64>,
    /// Values kept per timer per interval for percentiles.
    pub percentile_limit: usize,
    /// Most series at once.
    pub max_series: usize,
    /// Most bytes of names, tags and stored values (an estimate).
    pub max_bytes: usize,
    pub gauges: GaugeRetention,
    /// A kept gauge not updated for more than this many flushes is
    /// forgotten.
    pub gauge_max_idle_flushes: u32,
    /// Seed of the reservoir sampling generator.
    pub seed: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            percentiles: DEFAULT_PERCENTILES.to_vec(),
            percentile_limit: DEFAULT_PERCENTILE_LIMIT,
            max_series: DEFAULT_MAX_SERIES,
            max_bytes: DEFAULT_MAX_BYTES,
            gauges: GaugeRetention::default(),
            gauge_max_idle_flushes: DEFAULT_GAUGE_MAX_IDLE_FLUSHES,
            seed: DEFAULT_SEED,
        }
    }
}

/// Counts since the aggregator was made, for the caller to report as
/// self-metrics. They only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// StatsD lines accepted (parsed and given to the aggregator).
    pub statsd_lines: u64,
    /// StatsD lines rejected by the parser.
    pub statsd_parse_errors: u64,
    /// Graphite lines accepted.
    pub graphite_lines: u64,
    /// Graphite lines rejected by the parser.
    pub graphite_parse_errors: u64,
    /// Values of accepted lines that were dropped because their series
    /// would have exceeded `max_series` or `max_bytes`.
    pub dropped_series_limit: u64,
    /// Set members and Graphite points dropped past `max_bytes`, and
    /// flushed values that were not finite.
    pub dropped_values: u64,
    /// Samples returned by [`Aggregator::flush`].
    pub samples_flushed: u64,
}

/// What one call to [`Aggregator::ingest_statsd`] or
/// [`Aggregator::ingest_graphite`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ingested {
    /// Lines accepted.
    pub lines: usize,
    /// Lines rejected.
    pub errors: usize,
    /// Why the first rejected line was rejected, for a (rate-limited) log.
    pub first_error: Option<ParseError>,
}

impl Ingested {
    fn record<T>(&mut self, result: Result<T, ParseError>) -> Option<T> {
        match result {
            Ok(line) => {
                self.lines += 1;
                Some(line)
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                None
            }
        }
    }
}

/// Aggregates StatsD and Graphite lines per flush interval (module doc).
/// Synchronous and bounded: the listener tasks call it with a lock held
/// only for the call.
#[derive(Debug)]
pub struct Aggregator {
    series: HashMap<Box<str>, Series>,
    ctx: Ctx,
    /// Scratch buffer for the key of the line being added, so a line of an
    /// existing series allocates nothing.
    key: String,
}

/// Everything but the series map, so a series can be updated while the
/// rest is borrowed.
#[derive(Debug)]
struct Ctx {
    percentiles: Vec<Percentile>,
    percentile_limit: usize,
    max_series: usize,
    max_bytes: usize,
    gauges: GaugeRetention,
    gauge_max_idle_flushes: u32,
    /// Estimated bytes held (module doc, "Bounds").
    bytes: usize,
    rng: u64,
    stats: Stats,
}

impl Aggregator {
    /// An empty aggregator; fails if a percentile is invalid or listed
    /// twice, or a limit is zero.
    pub fn new(config: AggregatorConfig) -> Result<Aggregator, ConfigError> {
        let mut percentiles = Vec::with_capacity(config.percentiles.len());
        for &value in &config.percentiles {
            let p = Percentile::new(value)?;
            if percentiles.contains(&p) {
                return Err(ConfigError::DuplicatePercentile { value });
            }
            percentiles.push(p);
        }
        for (what, limit) in [
            ("percentile_limit", config.percentile_limit),
            ("max_series", config.max_series),
            ("max_bytes", config.max_bytes),
        ] {
            if limit == 0 {
                return Err(ConfigError::ZeroLimit { what });
            }
        }
        Ok(Aggregator {
            series: HashMap::new(),
            ctx: Ctx {
                percentiles,
                percentile_limit: config.percentile_limit,
                max_series: config.max_series,
                max_bytes: config.max_bytes,
                gauges: config.gauges,
                gauge_max_idle_flushes: config.gauge_max_idle_flushes,
                bytes: 0,
                rng: config.seed,
                stats: Stats::default(),
            },
            key: String::new(),
        })
    }

    /// Parses and adds every line of a StatsD datagram; rejected lines are
    /// counted and skipped.
    pub fn ingest_statsd(&mut self, datagram: &[u8]) -> Ingested {
        let mut ingested = Ingested::default();
        for result in statsd::parse_datagram(datagram) {
            match ingested.record(result) {
                Some(line) => self.add_statsd(&line),
                None => self.ctx.stats.statsd_parse_errors += 1,
            }
        }
        ingested
    }

    /// Parses and adds every line of a chunk of Graphite plaintext received
    /// at `now_ms` (Unix milliseconds, the time of `-1` timestamps);
    /// rejected lines are counted and skipped.
    pub fn ingest_graphite(&mut self, buf: &[u8], now_ms: i64) -> Ingested {
        let mut ingested = Ingested::default();
        for result in graphite::parse_lines(buf) {
            match ingested.record(result) {
                Some(line) => self.add_graphite(&line, now_ms),
                None => self.ctx.stats.graphite_parse_errors += 1,
            }
        }
        ingested
    }

    /// Feeds one read of a Graphite TCP connection through its
    /// [`graphite::LineBuffer`] and adds its complete lines, received at
    /// `now_ms`; an overlong line the buffer drops counts as a parse error
    /// ([`ParseError::UnterminatedLineTooLong`]).
    pub fn ingest_graphite_stream(
        &mut self,
        stream: &mut graphite::LineBuffer,
        chunk: &[u8],
        now_ms: i64,
    ) -> Ingested {
        let mut ingested = Ingested::default();
        let dropped = stream.feed(chunk, |lines| {
            let got = self.ingest_graphite(lines, now_ms);
            ingested.lines += got.lines;
            ingested.errors += got.errors;
            if ingested.first_error.is_none() {
                ingested.first_error = got.first_error;
            }
        });
        if dropped > 0 {
            ingested.errors += dropped;
            ingested
                .first_error
                .get_or_insert(ParseError::UnterminatedLineTooLong {
                    limit: graphite::MAX_LINE_BYTES,
                });
            self.ctx.stats.graphite_parse_errors += dropped as u64;
        }
        ingested
    }

    /// Adds one parsed StatsD line (counted in [`Stats::statsd_lines`]).
    pub fn add_statsd(&mut self, line: &statsd::Line<'_>) {
        self.ctx.stats.statsd_lines += 1;
        let kind = series::Kind::of(line.metric_type);
        let mut tags: Vec<(&str, &str)> = line.tags().collect();
        tags.sort_unstable();
        tags.dedup();
        self.upsert(kind, line.name, &tags, line.value_count(), |state, ctx| {
            state.add_statsd(line, ctx);
        });
    }

    /// Adds one parsed Graphite line received at `now_ms` (counted in
    /// [`Stats::graphite_lines`]).
    pub fn add_graphite(&mut self, line: &graphite::Line<'_>, now_ms: i64) {
        self.ctx.stats.graphite_lines += 1;
        // Carbon keeps the last value of a repeated tag name and sorts by
        // name: reverse, stable-sort by name, keep the first of each name.
        let mut tags: Vec<(&str, &str)> = line.tags().collect();
        tags.reverse();
        tags.sort_by(|a, b| a.0.cmp(b.0));
        tags.dedup_by(|a, b| a.0 == b.0);
        let time_ms = match line.timestamp {
            graphite::Timestamp::Now => now_ms,
            graphite::Timestamp::UnixMs(ms) => ms,
        };
        self.upsert(series::Kind::Graphite, line.name, &tags, 1, |state, ctx| {
            state.add_graphite(time_ms, line.value, ctx);
        });
    }

    /// Finds or creates the series `(kind, name, tags)` and applies
    /// `update` to it; `values` is what is dropped if it cannot be created.
    fn upsert(
        &mut self,
        kind: series::Kind,
        name: &str,
        tags: &[(&str, &str)],
        values: usize,
        update: impl FnOnce(&mut State, &mut Ctx),
    ) {
        series::write_key(&mut self.key, kind, name, tags);
        if let Some(series) = self.series.get_mut(self.key.as_str()) {
            update(&mut series.state, &mut self.ctx);
            return;
        }
        let tags: Vec<Tag> = tags
            .iter()
            .map(|&(key, value)| Tag {
                key: key.into(),
                value: value.into(),
            })
            .collect();
        let bytes = series::overhead_bytes(&self.key, name, &tags);
        if self.series.len() >= self.ctx.max_series || !self.ctx.reserve(bytes) {
            self.ctx.stats.dropped_series_limit += values as u64;
            return;
        }
        let mut series = Series {
            name: name.into(),
            tags,
            bytes,
            state: State::new(kind),
        };
        update(&mut series.state, &mut self.ctx);
        self.series.insert(self.key.as_str().into(), series);
    }

    /// The interval's samples, stamped `now_ms` (Unix milliseconds) except
    /// Graphite points, which keep their own time; then starts the next
    /// interval by the rules of the module doc. Sorted by name, tags, time
    /// and kind, so equal input gives equal output.
    pub fn flush(&mut self, now_ms: i64) -> Vec<Sample> {
        let mut out = Vec::new();
        let ctx = &mut self.ctx;
        self.series.retain(|_, series| {
            let keep = series.flush(now_ms, ctx, &mut out);
            if !keep {
                // Every byte of a series was reserved when it was added.
                ctx.bytes = ctx.bytes.saturating_sub(series.total_bytes());
            }
            keep
        });
        out.sort_by(|a, b| {
            (&a.name, &a.tags, a.timestamp_ms, a.kind).cmp(&(
                &b.name,
                &b.tags,
                b.timestamp_ms,
                b.kind,
            ))
        });
        self.ctx.stats.samples_flushed += out.len() as u64;
        out
    }

    /// The counts since this aggregator was made.
    pub fn stats(&self) -> Stats {
        self.ctx.stats
    }

    /// Series held now (gauges kept across flushes included).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The estimated bytes held now (module doc, "Bounds").
    pub fn bytes(&self) -> usize {
        self.ctx.bytes
    }
}

impl Ctx {
    /// Takes `bytes` from the budget if they fit.
    fn reserve(&mut self, bytes: usize) -> bool {
        match self.bytes.checked_add(bytes) {
            Some(total) if total <= self.max_bytes => {
                self.bytes = total;
                true
            }
            _ => false,
        }
    }

    /// A uniform random index in `0..n` (Lemire's multiply-shift over
    /// splitmix64; the bias, below `n / 2^64`, does not matter here).
    fn random_below(&mut self, n: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((u128::from(z) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked() {
        let with = |f: fn(&mut AggregatorConfig)| {
            let mut config = AggregatorConfig::default();
            f(&mut config);
            Aggregator::new(config).err()
        };
        assert_eq!(with(|_| {}), None);
        assert_eq!(
            with(|c| c.percentiles = vec![90.0, 100.5]),
            Some(ConfigError::InvalidPercentile { value: 100.5 })
        );
        assert_eq!(
            with(|c| c.percentiles = vec![90.0, 90.0]),
            Some(ConfigError::DuplicatePercentile { value: 90.0 })
        );
        assert_eq!(
            with(|c| c.percentile_limit = 0),
            Some(ConfigError::ZeroLimit {
                what: "percentile_limit"
            })
        );
        assert_eq!(
            with(|c| c.max_series = 0),
            Some(ConfigError::ZeroLimit { what: "max_series" })
        );
        assert_eq!(
            with(|c| c.max_bytes = 0),
            Some(ConfigError::ZeroLimit { what: "max_bytes" })
        );
        assert_eq!(
            with(|c| c.percentiles.clear()),
            None,
            "no percentiles is fine"
        );
    }

    #[test]
    fn random_indices_stay_in_range_and_cover_it() {
        let mut agg = Aggregator::new(AggregatorConfig::default()).unwrap();
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            let i = agg.ctx.random_below(7);
            seen[i as usize] += 1;
        }
        // Each index about 1000 times; a broken generator is far off.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(agg.ctx.random_below(1), 0);
    }
}
