//! The errors of this crate: why a line was rejected ([`ParseError`]) and
//! why an aggregator configuration was refused ([`ConfigError`]).
//!
//! A rejected line is the sender's mistake, not ours: the listener counts it
//! ([`crate::Stats`]), may log the first one of a datagram, and goes on with
//! the next line. So every variant names what was wrong in one sentence, and
//! carries the offending text cut to [`SNIPPET_BYTES`] (a hostile line must
//! not turn into a megabyte of log).

/// Longest piece of an offending line quoted in an error.
pub const SNIPPET_BYTES: usize = 64;

/// Why one StatsD or Graphite line was rejected. The other lines of the same
/// datagram or stream are not affected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The line is longer than the protocol's limit
    /// ([`crate::statsd::MAX_LINE_BYTES`], [`crate::graphite::MAX_LINE_BYTES`]).
    #[error("line is {len} bytes, more than the limit of {limit}")]
    LineTooLong { len: usize, limit: usize },

    /// Graphite over TCP: a line still unfinished past the limit; dropped up
    /// to its `\n` without being held ([`crate::graphite::LineBuffer`]).
    #[error("line runs past the limit of {limit} bytes without a newline")]
    UnterminatedLineTooLong { limit: usize },

    /// The line is not UTF-8; names and tags become text on the server.
    #[error("line is not valid UTF-8 (at byte {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },

    /// A name (StatsD) or path (Graphite) with nothing in it.
    #[error("metric name is empty")]
    EmptyName,

    /// A name or path longer than the limit.
    #[error("metric name is {len} bytes, more than the limit of {limit}")]
    NameTooLong { len: usize, limit: usize },

    /// A name or path containing a control character or whitespace, which
    /// would split or corrupt it in every output (Graphite lines, labels).
    #[error("metric name {name:?} contains the invalid character {ch:?}")]
    InvalidNameChar { name: String, ch: char },

    /// StatsD: no `:` between the name and the value.
    #[error("no ':' and value after the name {name:?}")]
    MissingValue { name: String },

    /// StatsD: no `|` and type after the value.
    #[error("no '|' and metric type after the value in {line:?}")]
    MissingType { line: String },

    /// StatsD: a type other than `c`, `g`, `ms`, `h`, `d`, `s`.
    #[error("unknown metric type {found:?} (expected c, g, ms, h, d or s)")]
    UnknownType { found: String },

    /// StatsD: an empty value (`name:|c`, `name:1::2|c`) or an empty set
    /// member.
    #[error("empty value")]
    EmptyValue,

    /// A value that is not a number.
    #[error("value {found:?} is not a number")]
    InvalidValue { found: String },

    /// StatsD: a set member containing a control character.
    #[error("set member {member:?} contains the invalid character {ch:?}")]
    InvalidMemberChar { member: String, ch: char },

    /// Graphite: the value `nan`; carbon drops these lines too.
    #[error("value is NaN")]
    NotANumber,

    /// An infinite or NaN value where a finite one is needed (the server's
    /// samples are finite numbers) or a number too large for `f64`.
    #[error("value {found:?} is not finite")]
    NonFiniteValue { found: String },

    /// StatsD: more packed values (`name:1:2:3|c`) than the limit.
    #[error("more than {limit} values in one line")]
    TooManyValues { limit: usize },

    /// StatsD: a sample rate that is not a number in (0, 1].
    #[error("sample rate {found:?} is not a number in (0, 1]")]
    InvalidSampleRate { found: String },

    /// StatsD: a field (`|@`, `|#`, `|c:`, `|T`) given twice.
    #[error("field '|{field}' given twice")]
    DuplicateField { field: &'static str },

    /// StatsD: an empty field between two `|` or at the end of the line.
    #[error("empty field between '|'")]
    EmptyField,

    /// More tags than the limit.
    #[error("more than {limit} tags")]
    TooManyTags { limit: usize },

    /// StatsD: an empty tag (`#a:1,,b`) or a tag with an empty name (`#:v`);
    /// Graphite: a tag with an empty name or value (`;=v`, `;k=`).
    #[error("empty tag name or value in {tag:?}")]
    EmptyTag { tag: String },

    /// A tag longer than the limit.
    #[error("tag is {len} bytes, more than the limit of {limit}")]
    TagTooLong { len: usize, limit: usize },

    /// A tag with a character its protocol forbids: control characters
    /// anywhere; in Graphite also `;!^=` in a name and `~` leading a value
    /// (carbon's rules).
    #[error("tag {tag:?} contains the invalid character {ch:?}")]
    InvalidTagChar { tag: String, ch: char },

    /// Graphite: a tag segment without `=` (`path;tag`).
    #[error("tag {tag:?} has no '='")]
    TagWithoutValue { tag: String },

    /// Graphite: the tag `name`, which carbon reserves for the path itself.
    #[error("tag name 'name' is reserved for the metric path")]
    ReservedTagName,

    /// StatsD `|T<seconds>` or a Graphite timestamp that is not a time
    /// between 1970 and 9999 (or Graphite's `-1`, meaning now).
    #[error("timestamp {found:?} is not a Unix time")]
    InvalidTimestamp { found: String },

    /// StatsD: an empty container id (`|c:`).
    #[error("empty container id")]
    EmptyContainerId,

    /// Graphite: not `path value [timestamp]`.
    #[error("{found} fields, expected 'path value [timestamp]'")]
    WrongFieldCount { found: usize },

    /// DogStatsD events (`_e{..}`) and service checks (`_sc|..`): not
    /// metrics, and not taken by this listener.
    #[error("DogStatsD {what} are not supported")]
    Unsupported { what: &'static str },
}

/// Why an [`crate::AggregatorConfig`] was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A percentile outside (0, 100] or with more than two decimals.
    #[error("percentile {value} is not in (0, 100] with at most two decimals")]
    InvalidPercentile { value: f64 },

    /// The same percentile listed twice.
    #[error("percentile {value} is listed twice")]
    DuplicatePercentile { value: f64 },

    /// A limit that must be at least 1.
    #[error("{what} must be at least 1")]
    ZeroLimit { what: &'static str },
}

/// `text` cut to at most [`SNIPPET_BYTES`] bytes on a character boundary,
/// for quoting in an error.
pub(crate) fn snippet(text: &str) -> String {
    let mut end = text.len().min(SNIPPET_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_bounded_and_cut_on_char_boundaries() {
        let cases: [(&str, &str); 3] = [
            ("short", "short"),
            (&"x".repeat(100), &"x".repeat(SNIPPET_BYTES)),
            // 63 ASCII bytes then a two-byte character straddling the limit.
            (&format!("{}é", "a".repeat(63)), &"a".repeat(63)),
        ];
        for (input, want) in cases {
            assert_eq!(snippet(input), want);
        }
    }
}
