//! One series' state during an interval, how a line updates it and what
//! it flushes. The rules are in the parent module's doc.

use std::collections::HashSet;

use super::{Ctx, GaugeRetention};
use crate::sample::{Percentile, Sample, SampleKind, Tag, TimerStat};
use crate::statsd::{self, MetricType, Value};

/// Estimated bytes of a series besides its name, tags and values: the map
/// entry, the struct, the vectors' headers.
const SERIES_OVERHEAD_BYTES: usize = 160;
/// Estimated bytes of one tag besides its text (two `String` headers).
const TAG_OVERHEAD_BYTES: usize = 48;
/// Estimated bytes of a reservoir value.
const TIMER_VALUE_BYTES: usize = 8;
/// Estimated bytes of a Graphite point (time and value).
const POINT_BYTES: usize = 16;
/// Estimated bytes of a set member besides its text (the boxed string's
/// header and the hash table slot).
const MEMBER_OVERHEAD_BYTES: usize = 24;

/// What a series aggregates; part of its key, so each name and tag set
/// has one series per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Counter,
    Gauge,
    /// `ms`, `h` and `d`, with the unit of the line that created it.
    Timer {
        unit: &'static str,
    },
    Set,
    Graphite,
}

impl Kind {
    pub(super) fn of(metric_type: MetricType) -> Kind {
        match metric_type {
            MetricType::Counter => Kind::Counter,
            MetricType::Gauge => Kind::Gauge,
            MetricType::Timer => Kind::Timer { unit: "ms" },
            MetricType::Histogram | MetricType::Distribution => Kind::Timer { unit: "" },
            MetricType::Set => Kind::Set,
        }
    }

    fn key_byte(self) -> char {
        match self {
            Kind::Counter => 'c',
            Kind::Gauge => 'g',
            Kind::Timer { .. } => 't',
            Kind::Set => 's',
            Kind::Graphite => 'G',
        }
    }
}

/// Writes the map key of `(kind, name, tags)` into `key`: the kind, the
/// name, then each tag as `\0key\x01value`. Names and tags cannot contain
/// control characters (the parsers refuse them), so distinct series have
/// distinct keys.
pub(super) fn write_key(key: &mut String, kind: Kind, name: &str, tags: &[(&str, &str)]) {
    key.clear();
    key.push(kind.key_byte());
    key.push_str(name);
    for (k, v) in tags {
        key.push('\0');
        key.push_str(k);
        key.push('\x01');
        key.push_str(v);
    }
}

/// Estimated bytes a new series holds before any value.
pub(super) fn overhead_bytes(key: &str, name: &str, tags: &[Tag]) -> usize {
    let tags: usize = tags
        .iter()
        .map(|t| t.key.len() + t.value.len() + TAG_OVERHEAD_BYTES)
        .sum();
    SERIES_OVERHEAD_BYTES + key.len() + name.len() + tags
}

#[derive(Debug)]
pub(super) struct Series {
    pub(super) name: Box<str>,
    pub(super) tags: Vec<Tag>,
    /// Estimated bytes held, counted in `Ctx::bytes`.
    pub(super) bytes: usize,
    pub(super) state: State,
}

#[derive(Debug)]
pub(super) enum State {
    Counter {
        sum: f64,
    },
    Gauge {
        value: f64,
        /// Whether it was set or changed since the last flush.
        updated: bool,
        /// Flushes since the last update.
        idle_flushes: u32,
    },
    Timer(Box<Timer>),
    Set {
        members: HashSet<Box<str>>,
    },
    Graphite {
        /// `(Unix ms, value)` in arrival order.
        points: Vec<(i64, f64)>,
    },
}

#[derive(Debug)]
pub(super) struct Timer {
    unit: &'static str,
    /// Values received (unscaled): the reservoir's denominator and the
    /// mean's.
    received: u64,
    /// `Σ 1 / rate`.
    count: f64,
    sum: f64,
    lower: f64,
    upper: f64,
    reservoir: Vec<f64>,
}

impl State {
    pub(super) fn new(kind: Kind) -> State {
        match kind {
            Kind::Counter => State::Counter { sum: 0.0 },
            // A delta to a gauge never seen starts from 0 (StatsD, Telegraf).
            Kind::Gauge => State::Gauge {
                value: 0.0,
                updated: false,
                idle_flushes: 0,
            },
            Kind::Timer { unit } => State::Timer(Box::new(Timer {
                unit,
                received: 0,
                count: 0.0,
                sum: 0.0,
                lower: f64::INFINITY,
                upper: f64::NEG_INFINITY,
                reservoir: Vec::new(),
            })),
            Kind::Set => State::Set {
                members: HashSet::new(),
            },
            Kind::Graphite => State::Graphite { points: Vec::new() },
        }
    }

    /// Applies a StatsD line. The caller found this series by the line's
    /// kind, so the state matches the type.
    pub(super) fn add_statsd(&mut self, line: &statsd::Line<'_>, ctx: &mut Ctx) {
        for v in line.values() {
            match (&mut *self, v) {
                (State::Counter { sum }, Value::Number(x)) => *sum += x / line.sample_rate,
                (
                    State::Gauge {
                        value,
                        updated,
                        idle_flushes,
                    },
                    v,
                ) => {
                    match v {
                        Value::Delta(d) => *value += d,
                        Value::Number(x) => *value = x,
                        Value::Member(_) => continue,
                    }
                    *updated = true;
                    *idle_flushes = 0;
                }
                (State::Timer(timer), Value::Number(x)) => {
                    timer.add(x, line.sample_rate, ctx);
                }
                (State::Set { members }, Value::Member(m)) => {
                    if members.contains(m) {
                        continue;
                    }
                    if ctx.reserve(m.len() + MEMBER_OVERHEAD_BYTES) {
                        members.insert(m.into());
                    } else {
                        ctx.stats.dropped_values += 1;
                    }
                }
                // Unreachable: the series kind is the line's type, and the
                // parser gives each type only its own value forms.
                _ => {}
            }
        }
    }

    /// Adds a Graphite point.
    pub(super) fn add_graphite(&mut self, time_ms: i64, value: f64, ctx: &mut Ctx) {
        let State::Graphite { points } = self else {
            return;
        };
        if let Some(last) = points.last_mut()
            && last.0 == time_ms
        {
            last.1 = value;
            return;
        }
        if ctx.reserve(POINT_BYTES) {
            points.push((time_ms, value));
        } else {
            ctx.stats.dropped_values += 1;
        }
    }

    /// Estimated bytes of the values held (not of the series itself).
    fn value_bytes(&self) -> usize {
        match self {
            State::Counter { .. } | State::Gauge { .. } => 0,
            State::Timer(timer) => timer.reservoir.len() * TIMER_VALUE_BYTES,
            State::Set { members } => members
                .iter()
                .map(|m| m.len() + MEMBER_OVERHEAD_BYTES)
                .sum(),
            State::Graphite { points } => points.len() * POINT_BYTES,
        }
    }
}

impl Timer {
    fn add(&mut self, x: f64, rate: f64, ctx: &mut Ctx) {
        self.received += 1;
        self.count += 1.0 / rate;
        self.sum += x;
        self.lower = self.lower.min(x);
        self.upper = self.upper.max(x);
        if self.reservoir.len() < ctx.percentile_limit && ctx.reserve(TIMER_VALUE_BYTES) {
            self.reservoir.push(x);
            return;
        }
        // Algorithm R: the received-th value replaces a random slot with
        // probability len / received, which keeps the reservoir a uniform
        // sample of everything received.
        let slot = ctx.random_below(self.received);
        if let Some(v) = usize::try_from(slot)
            .ok()
            .and_then(|i| self.reservoir.get_mut(i))
        {
            *v = x;
        }
    }

    /// The interval's statistics in flush order: mean, upper, lower, sum,
    /// count, then the percentiles (none if the reservoir is empty).
    fn stats(&mut self, percentiles: &[Percentile]) -> Vec<(TimerStat, f64)> {
        let mut stats = Vec::with_capacity(5 + percentiles.len());
        if self.received == 0 {
            return stats;
        }
        stats.extend([
            (TimerStat::Mean, self.sum / self.received as f64),
            (TimerStat::Upper, self.upper),
            (TimerStat::Lower, self.lower),
            (TimerStat::Sum, self.sum),
            (TimerStat::Count, self.count),
        ]);
        self.reservoir.sort_unstable_by(f64::total_cmp);
        for &p in percentiles {
            let rank = p.rank(self.reservoir.len());
            // `rank` is in 1..=len (`Percentile::rank`); `get` only guards
            // the empty reservoir.
            if let Some(&value) = self.reservoir.get(rank - 1) {
                stats.push((TimerStat::Percentile(p), value));
            }
        }
        stats
    }
}

impl Series {
    /// Pushes this series' samples for the interval onto `out`, stamped
    /// `now_ms` (Graphite points keep their own time), and says whether the
    /// series is kept for the next interval (only gauges may be).
    pub(super) fn flush(&mut self, now_ms: i64, ctx: &mut Ctx, out: &mut Vec<Sample>) -> bool {
        let (name, tags) = (&*self.name, &self.tags);
        match &mut self.state {
            State::Counter { sum } => {
                push(
                    out,
                    ctx,
                    name.into(),
                    tags,
                    *sum,
                    SampleKind::Counter,
                    "",
                    now_ms,
                );
                false
            }
            State::Gauge {
                value,
                updated,
                idle_flushes,
            } => {
                let due = *updated || ctx.gauges == GaugeRetention::Repeat;
                let finite = !due
                    || push(
                        out,
                        ctx,
                        name.into(),
                        tags,
                        *value,
                        SampleKind::Gauge,
                        "",
                        now_ms,
                    );
                if !std::mem::replace(updated, false) {
                    *idle_flushes = idle_flushes.saturating_add(1);
                }
                finite
                    && ctx.gauges != GaugeRetention::Forget
                    && *idle_flushes <= ctx.gauge_max_idle_flushes
            }
            State::Timer(timer) => {
                let unit = timer.unit;
                for (stat, value) in timer.stats(&ctx.percentiles) {
                    let unit = if stat == TimerStat::Count { "" } else { unit };
                    let name = format!("{name}.{}", stat.suffix());
                    push(
                        out,
                        ctx,
                        name,
                        tags,
                        value,
                        SampleKind::Timer(stat),
                        unit,
                        now_ms,
                    );
                }
                false
            }
            State::Set { members } => {
                // Empty only if every member was dropped past `max_bytes`
                // (and counted): a 0 would claim nobody was seen.
                if !members.is_empty() {
                    let count = members.len() as f64;
                    push(
                        out,
                        ctx,
                        name.into(),
                        tags,
                        count,
                        SampleKind::Set,
                        "",
                        now_ms,
                    );
                }
                false
            }
            State::Graphite { points } => {
                for &(time_ms, value) in points.iter() {
                    push(
                        out,
                        ctx,
                        name.into(),
                        tags,
                        value,
                        SampleKind::Graphite,
                        "",
                        time_ms,
                    );
                }
                false
            }
        }
    }

    /// Estimated bytes held, values included: what `Ctx::bytes` gets back
    /// when the series is dropped.
    pub(super) fn total_bytes(&self) -> usize {
        self.bytes + self.state.value_bytes()
    }
}

/// Pushes a sample if its value is finite; otherwise counts it dropped.
/// Returns whether it was pushed.
#[allow(clippy::too_many_arguments)]
fn push(
    out: &mut Vec<Sample>,
    ctx: &mut Ctx,
    name: String,
    tags: &[Tag],
    value: f64,
    kind: SampleKind,
    unit: &'static str,
    timestamp_ms: i64,
) -> bool {
    if !value.is_finite() {
        ctx.stats.dropped_values += 1;
        return false;
    }
    out.push(Sample {
        name,
        tags: tags.to_vec(),
        value,
        kind,
        unit,
        timestamp_ms,
    });
    true
}
