//! The StatsD line format with the DogStatsD extensions.
//!
//! ```text
//! <name>:<value>[:<value>...]|<type>[|@<rate>][|#<tag>[,<tag>...]][|c:<container>][|T<unix seconds>]
//! ```
//!
//! - Types (statsd `docs/metric_types.md`, DogStatsD datagram format): `c`
//!   counter, `g` gauge (a value with a leading `+` or `-` is a delta, a
//!   plain value sets it), `ms` timer, `h` histogram, `d` distribution, `s`
//!   set (values are arbitrary member strings, not numbers).
//! - `@<rate>` in (0, 1]: the client sent one in `1/rate` events. It scales
//!   counters and timer counts; gauges and sets ignore it, as StatsD does.
//! - `#tags`: comma-separated `key:value` or bare `key` (DogStatsD).
//! - Several values in one line, `name:1:2:3|h` (DogStatsD 1.1 packing), for
//!   every type: each value counts as if sent on its own line.
//! - `|c:<container id>` (DogStatsD 1.2) and `|T<unix seconds>` (1.3) are
//!   parsed, checked and exposed on [`Line`], but the aggregator ignores
//!   both: every listener client is on this host, and a StatsD sample
//!   belongs to the interval it arrived in (the Datadog Agent instead sends
//!   timestamped metrics without aggregating; we aggregate everything so
//!   that one rule bounds the output).
//! - Other fields (`|x...`, e.g. fields of a later DogStatsD version) are
//!   skipped, so a newer client is not refused wholesale; empty fields and
//!   repeated known fields are errors.
//! - Events (`_e{...}`) and service checks (`_sc|...`) are refused with
//!   [`ParseError::Unsupported`].
//! - The old etsy form with several typed values after one name
//!   (`name:1|c:2|ms`) is refused ([`ParseError::UnknownType`] `c:2`):
//!   DogStatsD packing gave `:` between values another meaning, and no
//!   current client sends it.
//!
//! A datagram holds lines separated by `\n` (a trailing `\r` is dropped);
//! [`parse_datagram`] parses them one by one, so a bad line never affects
//! its neighbours. Empty lines are skipped without an error.
//!
//! Every line is bounded: [`MAX_LINE_BYTES`], [`MAX_NAME_BYTES`],
//! [`MAX_VALUES_PER_LINE`], [`MAX_TAGS`], [`MAX_TAG_BYTES`]. Parsing borrows
//! from the input and allocates only to describe an error.

use crate::error::{ParseError, snippet};

/// Longest line accepted, without its line end. Larger than any single
/// metric a client builds (clients keep whole datagrams within 1432 or 8932
/// bytes, statsd `docs/metric_types.md`), small enough that a line's tags
/// and name stay a few KiB in memory per series.
pub const MAX_LINE_BYTES: usize = 8192;

/// Longest metric name. Datadog truncates names at 200 characters; 255
/// leaves room for prefixes and stays within one file-name component for
/// carbon, which names its files after the path.
pub const MAX_NAME_BYTES: usize = 255;

/// Most values in one packed line (`name:1:2:3|h`).
pub const MAX_VALUES_PER_LINE: usize = 256;

/// Most tags on one line; each tag makes its own series dimension, and the
/// server's label is the name plus all tags.
pub const MAX_TAGS: usize = 64;

/// Longest tag (`key:value`). Datadog's own limit is 200 characters.
pub const MAX_TAG_BYTES: usize = 200;

/// The StatsD metric types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `c`
    Counter,
    /// `g`
    Gauge,
    /// `ms`
    Timer,
    /// `h` (DogStatsD), aggregated like a timer but without a unit.
    Histogram,
    /// `d` (DogStatsD), aggregated like a histogram: the agent has no
    /// server-side distribution to forward raw values to.
    Distribution,
    /// `s`
    Set,
}

impl MetricType {
    /// The type for its wire spelling; `None` for anything else.
    pub fn from_wire(text: &str) -> Option<MetricType> {
        Some(match text {
            "c" => MetricType::Counter,
            "g" => MetricType::Gauge,
            "ms" => MetricType::Timer,
            "h" => MetricType::Histogram,
            "d" => MetricType::Distribution,
            "s" => MetricType::Set,
            _ => return None,
        })
    }

    /// The wire spelling.
    pub fn as_wire(self) -> &'static str {
        match self {
            MetricType::Counter => "c",
            MetricType::Gauge => "g",
            MetricType::Timer => "ms",
            MetricType::Histogram => "h",
            MetricType::Distribution => "d",
            MetricType::Set => "s",
        }
    }
}

/// One parsed StatsD line, borrowing from the datagram. Its values and
/// tags were checked when it was parsed; [`Line::values`] and [`Line::tags`]
/// walk them again instead of storing them, so a line costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line<'a> {
    pub name: &'a str,
    pub metric_type: MetricType,
    /// The `:`-separated values, checked.
    raw_values: &'a str,
    /// `1.0` when the line has no `|@`.
    pub sample_rate: f64,
    /// The comma-separated tags after `|#`, checked; empty when none.
    raw_tags: &'a str,
    /// `|c:<id>`, if given.
    pub container_id: Option<&'a str>,
    /// `|T<unix seconds>`, if given.
    pub timestamp_secs: Option<i64>,
}

/// One value of a line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A counter increment, a timer value, or a gauge value to set.
    Number(f64),
    /// A gauge value with a leading `+` or `-`: added to the gauge.
    Delta(f64),
    /// A set member.
    Member(&'a str),
}

impl<'a> Line<'a> {
    /// The line's values in order, as checked by [`parse_line`].
    pub fn values(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let metric_type = self.metric_type;
        // Every part parsed when the line was checked; a part that did not
        // would have made `parse_line` fail, so nothing is skipped here.
        self.raw_values
            .split(':')
            .filter_map(move |part| value(metric_type, part).ok())
    }

    /// How many values the line holds.
    pub fn value_count(&self) -> usize {
        self.raw_values.split(':').count()
    }

    /// The tags as `(key, value)` in the order sent; `value` is empty for a
    /// bare tag. Not sorted or deduplicated (the aggregator does that).
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.raw_tags
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|tag| tag.split_once(':').unwrap_or((tag, "")))
    }
}

/// The lines of one datagram, each parsed on its own; empty lines are
/// skipped.
pub fn parse_datagram(datagram: &[u8]) -> impl Iterator<Item = Result<Line<'_>, ParseError>> {
    crate::lines(datagram).map(parse_line)
}

/// Parses one line (without its `\n`; a trailing `\r` is tolerated).
///
/// Fails with the [`ParseError`] naming the first thing wrong with it.
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, ParseError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE_BYTES {
        return Err(ParseError::LineTooLong {
            len: line.len(),
            limit: MAX_LINE_BYTES,
        });
    }
    let line = std::str::from_utf8(line).map_err(|e| ParseError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    if line.starts_with("_e{") {
        return Err(ParseError::Unsupported { what: "events" });
    }
    if line.starts_with("_sc|") {
        return Err(ParseError::Unsupported {
            what: "service checks",
        });
    }
    let (head, fields) = match line.split_once('|') {
        Some(split) => split,
        None => (line, ""),
    };
    let Some((name, raw_values)) = head.split_once(':') else {
        return Err(ParseError::MissingValue {
            name: snippet(head),
        });
    };
    check_name(name)?;
    if fields.is_empty() && !line.contains('|') {
        return Err(ParseError::MissingType {
            line: snippet(line),
        });
    }
    let mut fields = fields.split('|');
    let type_field = fields.next().unwrap_or("");
    let metric_type = MetricType::from_wire(type_field).ok_or_else(|| ParseError::UnknownType {
        found: snippet(type_field),
    })?;
    check_values(metric_type, raw_values)?;
    let mut parsed = Line {
        name,
        metric_type,
        raw_values,
        sample_rate: 1.0,
        raw_tags: "",
        container_id: None,
        timestamp_secs: None,
    };
    parsed.optional_fields(fields)?;
    Ok(parsed)
}

impl<'a> Line<'a> {
    /// Reads the fields after the type (`@rate`, `#tags`, `c:id`, `T<ts>`,
    /// unknown ones skipped) into `self`.
    fn optional_fields(&mut self, fields: impl Iterator<Item = &'a str>) -> Result<(), ParseError> {
        let (mut seen_rate, mut seen_tags) = (false, false);
        for field in fields {
            match field.as_bytes().first() {
                None => return Err(ParseError::EmptyField),
                Some(b'@') => {
                    once(&mut seen_rate, "@")?;
                    self.sample_rate = sample_rate(&field[1..])?;
                }
                Some(b'#') => {
                    once(&mut seen_tags, "#")?;
                    check_tags(&field[1..])?;
                    self.raw_tags = &field[1..];
                }
                Some(b'c') if field.starts_with("c:") => {
                    if self.container_id.is_some() {
                        return Err(ParseError::DuplicateField { field: "c:" });
                    }
                    let id = &field[2..];
                    if id.is_empty() {
                        return Err(ParseError::EmptyContainerId);
                    }
                    self.container_id = Some(id);
                }
                Some(b'T') => {
                    if self.timestamp_secs.is_some() {
                        return Err(ParseError::DuplicateField { field: "T" });
                    }
                    self.timestamp_secs = Some(timestamp(&field[1..])?);
                }
                // A field of a later protocol version: skipped (module doc).
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn once(seen: &mut bool, field: &'static str) -> Result<(), ParseError> {
    if std::mem::replace(seen, true) {
        return Err(ParseError::DuplicateField { field });
    }
    Ok(())
}

/// Checks a StatsD name: not empty, bounded, no control characters or
/// whitespace (`:` and `|` cannot occur: they end the name).
fn check_name(name: &str) -> Result<(), ParseError> {
    if name.is_empty() {
        return Err(ParseError::EmptyName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ParseError::NameTooLong {
            len: name.len(),
            limit: MAX_NAME_BYTES,
        });
    }
    if let Some(ch) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(ParseError::InvalidNameChar {
            name: snippet(name),
            ch,
        });
    }
    Ok(())
}

fn check_values(metric_type: MetricType, raw: &str) -> Result<(), ParseError> {
    for (i, part) in raw.split(':').enumerate() {
        if i == MAX_VALUES_PER_LINE {
            return Err(ParseError::TooManyValues {
                limit: MAX_VALUES_PER_LINE,
            });
        }
        value(metric_type, part)?;
    }
    Ok(())
}

/// One value of a line of type `metric_type`.
fn value(metric_type: MetricType, part: &str) -> Result<Value<'_>, ParseError> {
    if part.is_empty() {
        return Err(ParseError::EmptyValue);
    }
    if metric_type == MetricType::Set {
        if let Some(ch) = part.chars().find(|c| c.is_control()) {
            return Err(ParseError::InvalidMemberChar {
                member: snippet(part),
                ch,
            });
        }
        return Ok(Value::Member(part));
    }
    let number = number(part)?;
    let delta = metric_type == MetricType::Gauge && part.starts_with(['+', '-']);
    Ok(if delta {
        Value::Delta(number)
    } else {
        Value::Number(number)
    })
}

/// A finite number. Rust's float syntax is a superset of what clients send
/// (`1`, `-1.5`, `1e3`, `.5`); `inf` and `nan` parse but are refused.
pub(crate) fn number(text: &str) -> Result<f64, ParseError> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(ParseError::NonFiniteValue {
            found: snippet(text),
        }),
        Err(_) => Err(ParseError::InvalidValue {
            found: snippet(text),
        }),
    }
}

fn sample_rate(text: &str) -> Result<f64, ParseError> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1.0 => Ok(rate),
        _ => Err(ParseError::InvalidSampleRate {
            found: snippet(text),
        }),
    }
}

/// Latest accepted time: 9999-12-31T23:59:59Z, so milliseconds fit an i64
/// many times over and a typo is not taken for a date.
pub(crate) const MAX_UNIX_SECS: i64 = 253_402_300_799;

fn timestamp(text: &str) -> Result<i64, ParseError> {
    match text.parse::<i64>() {
        Ok(secs) if (0..=MAX_UNIX_SECS).contains(&secs) => Ok(secs),
        _ => Err(ParseError::InvalidTimestamp {
            found: snippet(text),
        }),
    }
}

/// Checks the tags after `|#`: at most [`MAX_TAGS`], none empty or with an
/// empty key, none longer than [`MAX_TAG_BYTES`], no control characters.
/// `#` alone (no tags) is accepted as no tags.
fn check_tags(raw: &str) -> Result<(), ParseError> {
    if raw.is_empty() {
        return Ok(());
    }
    for (i, tag) in raw.split(',').enumerate() {
        if i == MAX_TAGS {
            return Err(ParseError::TooManyTags { limit: MAX_TAGS });
        }
        if tag.is_empty() || tag.starts_with(':') {
            return Err(ParseError::EmptyTag { tag: snippet(tag) });
        }
        if tag.len() > MAX_TAG_BYTES {
            return Err(ParseError::TagTooLong {
                len: tag.len(),
                limit: MAX_TAG_BYTES,
            });
        }
        if let Some(ch) = tag.chars().find(|c| c.is_control()) {
            return Err(ParseError::InvalidTagChar {
                tag: snippet(tag),
                ch,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_spellings_round_trip() {
        for t in ["c", "g", "ms", "h", "d", "s"] {
            assert_eq!(MetricType::from_wire(t).unwrap().as_wire(), t);
        }
        for t in ["", "C", "m", "msx", "gauge"] {
            assert_eq!(MetricType::from_wire(t), None, "{t:?}");
        }
    }

    #[test]
    fn gauge_signs_make_deltas_and_other_types_ignore_them() {
        let cases: [(&str, Vec<Value<'_>>); 5] = [
            ("g:5|g", vec![Value::Number(5.0)]),
            (
                "g:+5:-2:7|g",
                vec![Value::Delta(5.0), Value::Delta(-2.0), Value::Number(7.0)],
            ),
            ("c:-3|c", vec![Value::Number(-3.0)]),
            ("t:+1.5|ms", vec![Value::Number(1.5)]),
            ("s:-1:a|s", vec![Value::Member("-1"), Value::Member("a")]),
        ];
        for (line, want) in cases {
            let parsed = parse_line(line.as_bytes()).unwrap();
            assert_eq!(parsed.values().collect::<Vec<_>>(), want, "{line}");
            assert_eq!(parsed.value_count(), want.len());
        }
    }
}
