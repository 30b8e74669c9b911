//! The Graphite plaintext protocol, as carbon reads it
//! (graphite-project/carbon `lib/carbon/protocols.py`):
//!
//! ```text
//! <path>[;<tag>=<value>...] <value> [<unix seconds>]
//! ```
//!
//! - Fields are separated by any run of ASCII whitespace and the line is
//!   trimmed, as carbon's `line.strip().split()`, so collectd's `\r\n` line
//!   ends (`src/utils_format_graphite.c` writes `"%s %s %u\r\n"`) and stray
//!   spaces are fine.
//! - The timestamp may be fractional; `-1` means "now" (carbon), and so does
//!   a missing timestamp (an extension: carbon wants three fields). "Now" is
//!   the receive time the caller passes to the aggregator.
//! - `nan` values are refused ([`ParseError::NotANumber`]), as carbon drops
//!   them; so are infinities, which the server cannot store.
//! - Graphite 1.1 tags (graphite-web `TaggedSeries.parse`, the "Graphite Tag
//!   Support" docs): each `;`-separated segment is `name=value`, the name
//!   non-empty and without `;!^=`, the value non-empty and not starting
//!   with `~`; the tag `name` is reserved for the path (carbon overwrites
//!   it silently; we refuse the line instead of dropping data unseen). A
//!   repeated tag name keeps the last value, as carbon's dict does.
//! - No pickle protocol: unpickling runs code chosen by the sender.
//!
//! Bounds: [`MAX_LINE_BYTES`], [`MAX_PATH_BYTES`], [`MAX_TAGS`],
//! [`MAX_TAG_BYTES`]. Parsing borrows from the input and allocates only to
//! describe an error.

use crate::error::{ParseError, snippet};
use crate::statsd::{MAX_UNIX_SECS, number};

/// Longest line accepted, without its line end: a path, a value and a
/// timestamp with room to spare.
pub const MAX_LINE_BYTES: usize = 4096;

/// Longest path, tags included. Carbon stores a path as file names; the
/// server's own Graphite output refuses lines past 512 bytes
/// (`server/src/metrics/graphite.rs`), so longer paths could not be
/// forwarded anyway.
pub const MAX_PATH_BYTES: usize = 512;

/// Most tags on one path.
pub const MAX_TAGS: usize = 64;

/// Longest tag segment (`name=value`).
pub const MAX_TAG_BYTES: usize = 200;

/// When a point was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timestamp {
    /// `-1` or no timestamp: the time the line was received.
    Now,
    /// Unix milliseconds (fractional seconds rounded to the millisecond).
    UnixMs(i64),
}

/// One parsed Graphite line, borrowing from the input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line<'a> {
    /// The path without its tags.
    pub name: &'a str,
    /// The `;`-separated tag segments after the name, checked; empty when
    /// none.
    raw_tags: &'a str,
    /// Finite.
    pub value: f64,
    pub timestamp: Timestamp,
}

impl<'a> Line<'a> {
    /// The tags as `(name, value)` in the order sent (the aggregator sorts
    /// them and keeps the last of a repeated name).
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.raw_tags
            .split(';')
            .filter(|t| !t.is_empty())
            .map(|seg| seg.split_once('=').unwrap_or((seg, "")))
    }
}

/// The lines of a chunk of a stream or a datagram, each parsed on its own;
/// empty lines are skipped. A TCP listener splits the stream at `\n` itself
/// and hands whole lines to [`parse_line`].
pub fn parse_lines(buf: &[u8]) -> impl Iterator<Item = Result<Line<'_>, ParseError>> {
    crate::lines(buf).map(parse_line)
}

/// Parses one line (without its `\n`; surrounding whitespace, `\r`
/// included, is ignored).
///
/// Fails with the [`ParseError`] naming the first thing wrong with it.
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, ParseError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ParseError::LineTooLong {
            len: line.len(),
            limit: MAX_LINE_BYTES,
        });
    }
    let line = std::str::from_utf8(line).map_err(|e| ParseError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let mut fields = line.split_ascii_whitespace();
    let (path, value, time) = match (fields.next(), fields.next(), fields.next()) {
        (Some(path), Some(value), time) if fields.next().is_none() => (path, value, time),
        _ => {
            return Err(ParseError::WrongFieldCount {
                found: line.split_ascii_whitespace().count(),
            });
        }
    };
    let (name, tags) = match path.split_once(';') {
        Some((name, tags)) => (name, Some(tags)),
        None => (path, None),
    };
    check_path(path, name)?;
    if let Some(tags) = tags {
        check_tags(tags)?;
    }
    let raw_tags = tags.unwrap_or("");
    let value = match number(value) {
        Err(ParseError::NonFiniteValue { .. }) if value.parse::<f64>().is_ok_and(f64::is_nan) => {
            return Err(ParseError::NotANumber);
        }
        other => other?,
    };
    let timestamp = match time {
        None => Timestamp::Now,
        Some(text) => timestamp(text)?,
    };
    Ok(Line {
        name,
        raw_tags,
        value,
        timestamp,
    })
}

/// Splits a TCP stream into whole lines across reads, with bounded memory.
///
/// [`LineBuffer::feed`] hands over the complete lines of each chunk as one
/// block (borrowed straight from the chunk when nothing is pending) and
/// keeps the unfinished tail for the next read. A tail longer than
/// [`MAX_LINE_BYTES`] (plus its `\r`) can never become a valid line: it is
/// dropped, everything up to the next `\n` with it, and counted, so a
/// sender that never sends `\n` costs at most one line of memory.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
    /// Dropping an overlong line until its `\n`.
    discarding: bool,
}

impl LineBuffer {
    /// Feeds one read; `on_lines` gets each block of complete lines (ending
    /// in `\n`). Returns how many overlong lines were dropped.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_lines: impl FnMut(&[u8])) -> usize {
        let mut dropped = 0;
        if self.discarding {
            let Some(nl) = chunk.iter().position(|&b| b == b'\n') else {
                return 0;
            };
            self.discarding = false;
            chunk = &chunk[nl + 1..];
        }
        if !self.pending.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.pending.extend_from_slice(&chunk[..=nl]);
                    on_lines(&self.pending);
                    self.pending.clear();
                    chunk = &chunk[nl + 1..];
                }
                None => {
                    self.pending.extend_from_slice(chunk);
                    dropped += self.drop_if_overlong();
                    return dropped;
                }
            }
        }
        let tail = match chunk.iter().rposition(|&b| b == b'\n') {
            Some(nl) => {
                on_lines(&chunk[..=nl]);
                &chunk[nl + 1..]
            }
            None => chunk,
        };
        self.pending.extend_from_slice(tail);
        dropped + self.drop_if_overlong()
    }

    /// At the end of the stream: the unfinished last line, if any, as a
    /// line of its own (a sender may omit the final `\n`).
    pub fn finish(&mut self, on_lines: impl FnOnce(&[u8])) {
        if !self.pending.is_empty() {
            on_lines(&self.pending);
        }
        self.pending = Vec::new();
        self.discarding = false;
    }

    /// Bytes held for the unfinished line; at most [`MAX_LINE_BYTES`] + 1.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn drop_if_overlong(&mut self) -> usize {
        if self.pending.len() <= MAX_LINE_BYTES + 1 {
            return 0;
        }
        self.pending = Vec::new();
        self.discarding = true;
        1
    }
}

/// Checks the path: bounded, a non-empty name, no control characters
/// (whitespace cannot occur: it separates fields).
fn check_path(path: &str, name: &str) -> Result<(), ParseError> {
    if name.is_empty() {
        return Err(ParseError::EmptyName);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(ParseError::NameTooLong {
            len: path.len(),
            limit: MAX_PATH_BYTES,
        });
    }
    if let Some(ch) = name.chars().find(|c| c.is_control()) {
        return Err(ParseError::InvalidNameChar {
            name: snippet(name),
            ch,
        });
    }
    Ok(())
}

/// Checks the tag segments after the path's first `;` by carbon's rules
/// (module doc). `path;` has one empty segment, refused as carbon does.
fn check_tags(raw: &str) -> Result<(), ParseError> {
    for (i, segment) in raw.split(';').enumerate() {
        if i == MAX_TAGS {
            return Err(ParseError::TooManyTags { limit: MAX_TAGS });
        }
        if segment.len() > MAX_TAG_BYTES {
            return Err(ParseError::TagTooLong {
                len: segment.len(),
                limit: MAX_TAG_BYTES,
            });
        }
        let Some((key, value)) = segment.split_once('=') else {
            return Err(ParseError::TagWithoutValue {
                tag: snippet(segment),
            });
        };
        if key.is_empty() || value.is_empty() {
            return Err(ParseError::EmptyTag {
                tag: snippet(segment),
            });
        }
        if key == "name" {
            return Err(ParseError::ReservedTagName);
        }
        let bad_key = key.chars().find(|c| c.is_control() || ";!^=".contains(*c));
        let bad_value = value
            .chars()
            .find(|c| c.is_control())
            .or_else(|| value.starts_with('~').then_some('~'));
        if let Some(ch) = bad_key.or(bad_value) {
            return Err(ParseError::InvalidTagChar {
                tag: snippet(segment),
                ch,
            });
        }
    }
    Ok(())
}

/// A Graphite timestamp: `-1` (now) or Unix seconds in
/// `0..=MAX_UNIX_SECS`, possibly fractional.
fn timestamp(text: &str) -> Result<Timestamp, ParseError> {
    let invalid = || ParseError::InvalidTimestamp {
        found: snippet(text),
    };
    let secs = text.parse::<f64>().map_err(|_| invalid())?;
    if secs == -1.0 {
        return Ok(Timestamp::Now);
    }
    if !(0.0..=MAX_UNIX_SECS as f64).contains(&secs) {
        return Err(invalid());
    }
    // In range (checked above), so the product fits an i64 exactly enough.
    Ok(Timestamp::UnixMs((secs * 1000.0).round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks`, then finishes; returns the lines seen and the count
    /// of overlong lines dropped.
    fn split(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut buffer = LineBuffer::default();
        let mut lines = Vec::new();
        let mut dropped = 0;
        for chunk in chunks {
            dropped += buffer.feed(chunk, |block| {
                assert!(block.ends_with(b"\n"), "{block:?}");
                lines.extend(crate::lines(block).map(<[u8]>::to_vec));
            });
            assert!(buffer.pending_bytes() <= MAX_LINE_BYTES + 1);
        }
        buffer.finish(|rest| lines.push(rest.to_vec()));
        (lines, dropped)
    }

    /// Reads, the lines they must give, and how many are dropped.
    type StreamCase<'a> = (Vec<&'a [u8]>, Vec<Vec<u8>>, usize);

    #[test]
    fn line_buffer_joins_lines_split_across_reads() {
        let long = vec![b'x'; MAX_LINE_BYTES + 2];
        let max = vec![b'y'; MAX_LINE_BYTES];
        let v = |s: &[u8]| s.to_vec();
        let cases: Vec<StreamCase<'_>> = vec![
            (vec![b"a 1\r\nb 2\r\n"], vec![v(b"a 1"), v(b"b 2")], 0),
            (
                vec![b"a 1\r", b"\nb", b" 2\r\n"],
                vec![v(b"a 1"), v(b"b 2")],
                0,
            ),
            (vec![b"a", b" ", b"1", b"\n"], vec![v(b"a 1")], 0),
            // An unterminated last line is handed over at the end.
            (vec![b"a 1\nb 2"], vec![v(b"a 1"), v(b"b 2")], 0),
            // A line of exactly the limit, split, is kept whole.
            (
                vec![&max[..100], &max[100..], b"\r\n"],
                vec![max.clone()],
                0,
            ),
            // An overlong line is dropped up to its newline, in one read or
            // across several, and the next line survives.
            (vec![&long, b"\nok 1\n"], vec![v(b"ok 1")], 1),
            (
                vec![&long[..10], &long[10..], b"more", b"\nok 1\n"],
                vec![v(b"ok 1")],
                1,
            ),
            (vec![&long], vec![], 1),
        ];
        for (chunks, want_lines, want_dropped) in cases {
            let (lines, dropped) = split(&chunks);
            assert_eq!((lines, dropped), (want_lines, want_dropped), "{chunks:?}");
        }
    }

    #[test]
    fn timestamps() {
        let cases = [
            ("-1", Ok(Timestamp::Now)),
            ("-1.0", Ok(Timestamp::Now)),
            ("0", Ok(Timestamp::UnixMs(0))),
            ("1733300000", Ok(Timestamp::UnixMs(1_733_300_000_000))),
            ("1733300000.25", Ok(Timestamp::UnixMs(1_733_300_000_250))),
            ("-2", Err(())),
            ("253402300800", Err(())),
            ("nan", Err(())),
            ("now", Err(())),
        ];
        for (text, want) in cases {
            let got = timestamp(text).map_err(|e| {
                assert!(matches!(e, ParseError::InvalidTimestamp { .. }), "{text}");
            });
            assert_eq!(got, want, "{text}");
        }
    }
}
