//! Nagios plugin output parsing.
//!
//! Format (Nagios 3 plugin API):
//! ```text
//! SUMMARY | PERFDATA
//! LONG OUTPUT LINE 1
//! LONG OUTPUT LINE N | PERFDATA
//! PERFDATA
//! ```
//! The first line is the summary (text before `|`); after the first `|` on a
//! later line every following line is perfdata too. CRLF line ends are
//! accepted. Perfdata items are `'label'=value[UOM];[warn];[crit];[min];[max]`
//! separated by whitespace; a quoted label may contain spaces and `=`, and
//! `''` inside it stands for one `'`. Trailing fields may be missing. A value
//! of `U` means the plugin could not determine it: the item is kept as an
//! explicit unknown sample ([`PluginOutput::unknown`]), not dropped. Parsing
//! never fails: a malformed perfdata item is skipped (and named in
//! [`PluginOutput::skipped`], so the result can say so), everything else kept.

use outrider_protocol::{PerfData, UnknownPerfData};

/// A plugin's stdout split into its parts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginOutput {
    /// First line, before `|`, trimmed.
    pub summary: String,
    /// Later lines with perfdata removed, joined by `\n`.
    pub long_output: String,
    /// Every well-formed perfdata item with a value, in order.
    pub perfdata: Vec<PerfData>,
    /// Every well-formed item whose value is `U` (undetermined), in order.
    pub unknown: Vec<UnknownPerfData>,
    /// The first [`MAX_SKIPPED_NOTED`] malformed perfdata items (each cut to
    /// [`SKIPPED_ITEM_CHARS`] characters), and how many there were in all.
    pub skipped: Vec<String>,
    pub skipped_count: usize,
}

/// How many malformed perfdata items a [`PluginOutput`] names.
pub const MAX_SKIPPED_NOTED: usize = 5;
/// Characters kept of each named malformed item.
pub const SKIPPED_ITEM_CHARS: usize = 40;

impl PluginOutput {
    /// A note for the long output naming the skipped perfdata items, if any.
    pub fn skipped_note(&self) -> Option<String> {
        if self.skipped_count == 0 {
            return None;
        }
        let more = self.skipped_count - self.skipped.len();
        let list = self
            .skipped
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Some(format!(
            "[perfdata skipped, not label=value[UOM][;warn;crit;min;max]: {list}{more}]"
        ))
    }
}

/// Splits plugin output into summary, long output and perfdata.
pub fn parse_output(text: &str) -> PluginOutput {
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    let (summary, first_perf) = split_pipe(first);
    let mut perf_text = vec![first_perf.unwrap_or("")];
    let mut long = Vec::new();
    let mut in_perf = false;
    for line in lines {
        if in_perf {
            perf_text.push(line);
        } else if let (before, Some(after)) = split_pipe(line) {
            long.push(before);
            perf_text.push(after);
            in_perf = true;
        } else {
            long.push(line);
        }
    }
    while long.last().is_some_and(|l| l.trim().is_empty()) {
        long.pop();
    }
    let mut out = PluginOutput {
        summary: summary.trim().to_owned(),
        long_output: long.join("\n"),
        ..PluginOutput::default()
    };
    for text in perf_text {
        parse_into(text, &mut out);
    }
    out
}

fn split_pipe(line: &str) -> (&str, Option<&str>) {
    match line.split_once('|') {
        Some((before, after)) => (before, Some(after)),
        None => (line, None),
    }
}

/// Parses a run of perfdata items, skipping malformed ones.
pub fn parse_perfdata(text: &str) -> Vec<PerfData> {
    let mut out = PluginOutput::default();
    parse_into(text, &mut out);
    out.perfdata
}

/// Adds the items of `text` to `out.perfdata`, noting malformed ones.
fn parse_into(text: &str, out: &mut PluginOutput) {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return;
        }
        let (item, next) = next_item(rest);
        match item {
            Some(Item::Known(item)) => out.perfdata.push(item),
            Some(Item::Unknown(item)) => out.unknown.push(item),
            None => {
                out.skipped_count += 1;
                if out.skipped.len() < MAX_SKIPPED_NOTED {
                    let token = rest[..rest.len() - next.len()].trim_end();
                    out.skipped
                        .push(token.chars().take(SKIPPED_ITEM_CHARS).collect());
                }
            }
        }
        rest = next;
    }
}

/// One well-formed perfdata item.
enum Item {
    Known(PerfData),
    /// Value `U`.
    Unknown(UnknownPerfData),
}

/// Reads one item from the start of `s` (no leading whitespace); returns the
/// item if well-formed and the unread remainder.
fn next_item(s: &str) -> (Option<Item>, &str) {
    let (label, after_label) = if let Some(quoted) = s.strip_prefix('\'') {
        match quoted_label(quoted) {
            Some(x) => x,
            // Unterminated quote: nothing sensible follows.
            None => return (None, ""),
        }
    } else {
        let end = s
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(s.len());
        (s[..end].to_owned(), &s[end..])
    };
    let Some(values) = after_label.strip_prefix('=') else {
        return (None, skip_token(after_label));
    };
    let end = values.find(char::is_whitespace).unwrap_or(values.len());
    let (token, rest) = values.split_at(end);
    (parse_values(label, token), rest)
}

/// Skips the rest of a malformed token.
fn skip_token(s: &str) -> &str {
    s.find(char::is_whitespace).map_or("", |i| &s[i..])
}

/// Reads a quoted label body up to its closing quote; `''` is an escaped quote.
fn quoted_label(s: &str) -> Option<(String, &str)> {
    let mut label = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            label.push(c);
        } else if chars.peek().is_some_and(|&(_, n)| n == '\'') {
            chars.next();
            label.push('\'');
        } else {
            return Some((label, &s[i + 1..]));
        }
    }
    None
}

fn parse_values(label: String, token: &str) -> Option<Item> {
    if label.is_empty() {
        return None;
    }
    let mut fields = token.split(';');
    let first = fields.next().unwrap_or("");
    let mut text = || fields.next().filter(|f| !f.is_empty()).map(str::to_owned);
    let warn = text();
    let crit = text();
    let min = text().and_then(|f| split_number(&f).map(|(v, _)| v));
    let max = text().and_then(|f| split_number(&f).map(|(v, _)| v));
    if let Some(uom) = undetermined(first) {
        return Some(Item::Unknown(UnknownPerfData {
            label,
            uom: uom.to_owned(),
            warn,
            crit,
            min,
            max,
        }));
    }
    let (value, uom) = split_number(first)?;
    Some(Item::Known(PerfData {
        label,
        value,
        uom: uom.to_owned(),
        warn,
        crit,
        min,
        max,
    }))
}

/// The unit after a `U` value (`U` → `""`, `Ums` → `"ms"`), or `None` if
/// `field` is not an undetermined value. Units are letters or `%`, so `Up`
/// counts but `U2` does not.
fn undetermined(field: &str) -> Option<&str> {
    let uom = field.strip_prefix('U')?;
    uom.chars()
        .all(|c| c.is_ascii_alphabetic() || c == '%')
        .then_some(uom)
}

/// Splits `12.5ms` into `(12.5, "ms")`; `None` unless it starts with a finite
/// number (`U`, "undetermined", is [`undetermined`]'s business).
fn split_number(s: &str) -> Option<(f64, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let digits_start = i;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    // Exponent only if digits follow, so a unit like "e" stays a unit.
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'-' || b[j] == b'+') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    let value: f64 = s[..i].parse().ok()?;
    value.is_finite().then_some((value, &s[i..]))
}

/// A Nagios threshold range (plugin guidelines, "Threshold and ranges"):
/// `10` alerts outside `0..=10`, `10:` below 10, `~:10` above 10, `10:20`
/// outside `10..=20`, and a leading `@` inverts (alert *inside*).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// Lower bound (`-inf` for `~`).
    pub start: f64,
    /// Upper bound (`+inf` when omitted after `:`).
    pub end: f64,
    /// `@`: alert when the value is inside.
    pub inside: bool,
}

impl Range {
    /// Parses a range; fails naming what is wrong.
    pub fn parse(text: &str) -> Result<Range, String> {
        let bad = |why: &str| format!("{text:?} is not a Nagios range ({why})");
        let (inside, body) = match text.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let number = |s: &str| -> Result<f64, String> {
            match split_number(s) {
                Some((v, "")) => Ok(v),
                _ => Err(bad(&format!("{s:?} is not a number"))),
            }
        };
        let (start, end) = match body.split_once(':') {
            None if body.is_empty() => return Err(bad("it is empty")),
            None => (0.0, number(body)?),
            Some((lo, hi)) => {
                let start = if lo == "~" {
                    f64::NEG_INFINITY
                } else if lo.is_empty() {
                    0.0
                } else {
                    number(lo)?
                };
                let end = if hi.is_empty() {
                    f64::INFINITY
                } else {
                    number(hi)?
                };
                (start, end)
            }
        };
        if start > end {
            return Err(bad("the start is above the end"));
        }
        Ok(Range { start, end, inside })
    }

    /// Whether `value` raises the alert this range describes.
    pub fn alerts(&self, value: f64) -> bool {
        let within = self.start <= value && value <= self.end;
        within == self.inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd(label: &str, value: f64) -> PerfData {
        PerfData {
            label: label.into(),
            value,
            uom: String::new(),
            warn: None,
            crit: None,
            min: None,
            max: None,
        }
    }

    #[test]
    fn summary_only() {
        let out = parse_output("OK - all good\n");
        assert_eq!(
            out,
            PluginOutput {
                summary: "OK - all good".into(),
                ..Default::default()
            }
        );
        assert_eq!(parse_output(""), PluginOutput::default());
    }

    #[test]
    fn full_item_with_uom_and_thresholds() {
        let out = parse_output("DISK OK | /=2643MB;5948;5958;0;5968");
        assert_eq!(out.summary, "DISK OK");
        assert_eq!(
            out.perfdata,
            [PerfData {
                label: "/".into(),
                value: 2643.0,
                uom: "MB".into(),
                warn: Some("5948".into()),
                crit: Some("5958".into()),
                min: Some(0.0),
                max: Some(5968.0),
            }]
        );
    }

    #[test]
    fn missing_trailing_and_empty_middle_fields() {
        let items = parse_perfdata("a=1 b=2s;; c=3%;~:10;@5:6 d=4;;;0");
        assert_eq!(items[0], pd("a", 1.0));
        assert_eq!(
            items[1],
            PerfData {
                uom: "s".into(),
                ..pd("b", 2.0)
            }
        );
        assert_eq!(items[2].warn.as_deref(), Some("~:10"));
        assert_eq!(items[2].crit.as_deref(), Some("@5:6"));
        assert_eq!(items[2].uom, "%");
        assert_eq!(
            items[3],
            PerfData {
                min: Some(0.0),
                ..pd("d", 4.0)
            }
        );
    }

    #[test]
    fn quoted_labels_with_spaces_equals_and_escaped_quotes() {
        let items = parse_perfdata("'in use'=5 'a=b'=6 'it''s'=7 ''''=8");
        let labels: Vec<_> = items.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["in use", "a=b", "it's", "'"]);
        assert_eq!(items[2].value, 7.0);
    }

    #[test]
    fn malformed_items_are_skipped_not_fatal() {
        let items = parse_perfdata("junk a= b=U c=x1 ''=3 =4 'open=5 ok=1");
        // Everything after the unterminated quote is unreadable; the rest skip one by one.
        assert!(items.is_empty(), "{items:?}");
        let items = parse_perfdata("junk a= b=U c=x1 ''=3 =4 ok=1;2;3;zz;5");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].label, "ok");
        assert_eq!((items[0].min, items[0].max), (None, Some(5.0)));
    }

    #[test]
    fn skipped_items_are_named() {
        let out = parse_output("OK | a=1 junk b=U c=2 d=U2\nx | 'open=5");
        assert_eq!(out.perfdata.len(), 2);
        assert_eq!(out.skipped, ["junk", "d=U2", "'open=5"]);
        assert_eq!(
            out.skipped_note().unwrap(),
            "[perfdata skipped, not label=value[UOM][;warn;crit;min;max]: \"junk\", \"d=U2\", \"'open=5\"]"
        );
        assert_eq!(parse_output("OK | a=1").skipped_note(), None);
    }

    #[test]
    fn undetermined_values_are_kept_as_unknown_samples() {
        let out = parse_output(
            "PING CRITICAL - no reply | rta=U;100;500;0 'packet loss'=100%;20;60 pl=U% x=Ums\n",
        );
        assert_eq!(out.perfdata.len(), 1);
        assert_eq!(out.perfdata[0].label, "packet loss");
        let unknown: Vec<_> = out
            .unknown
            .iter()
            .map(|u| {
                (
                    u.label.as_str(),
                    u.uom.as_str(),
                    u.warn.as_deref(),
                    u.crit.as_deref(),
                    u.min,
                )
            })
            .collect();
        assert_eq!(
            unknown,
            [
                ("rta", "", Some("100"), Some("500"), Some(0.0)),
                ("pl", "%", None, None, None),
                ("x", "ms", None, None, None),
            ]
        );
        assert_eq!(out.skipped_count, 0, "U is not malformed");
    }

    /// Every unit the plugin guidelines name is kept as printed.
    #[test]
    fn units_of_the_plugin_guidelines() {
        for (text, value, uom) in [
            ("a=5", 5.0, ""),
            ("a=5s", 5.0, "s"),
            ("a=5ms", 5.0, "ms"),
            ("a=5us", 5.0, "us"),
            ("a=5%", 5.0, "%"),
            ("a=5B", 5.0, "B"),
            ("a=5KB", 5.0, "KB"),
            ("a=5MB", 5.0, "MB"),
            ("a=5GB", 5.0, "GB"),
            ("a=5TB", 5.0, "TB"),
            ("a=123456c", 123_456.0, "c"),
            ("a=-0.25", -0.25, ""),
        ] {
            let items = parse_perfdata(text);
            assert_eq!(items.len(), 1, "{text}");
            assert_eq!(
                (items[0].value, items[0].uom.as_str()),
                (value, uom),
                "{text}"
            );
        }
    }

    #[test]
    fn thresholds_are_kept_as_printed_ranges() {
        let items = parse_perfdata("a=1;@10:20;~: b=2;10:;-5:-1;;");
        assert_eq!(items[0].warn.as_deref(), Some("@10:20"));
        assert_eq!(items[0].crit.as_deref(), Some("~:"));
        assert_eq!(items[1].warn.as_deref(), Some("10:"));
        assert_eq!(items[1].crit.as_deref(), Some("-5:-1"));
        assert_eq!((items[1].min, items[1].max), (None, None));
        for range in ["@10:20", "~:", "10:", "-5:-1"] {
            assert!(Range::parse(range).is_ok(), "{range}");
        }
    }

    #[test]
    fn numbers_signs_exponents_and_units() {
        let items = parse_perfdata("a=-1.5 b=+2e3 c=1.5e-1s d=3e e=.5");
        let vals: Vec<_> = items.iter().map(|p| (p.value, p.uom.as_str())).collect();
        assert_eq!(
            vals,
            [(-1.5, ""), (2000.0, ""), (0.15, "s"), (3.0, "e"), (0.5, "")]
        );
    }

    #[test]
    fn long_output_and_multiline_perfdata_with_crlf() {
        let text = "WARN - load high | load1=5;4;8\r\nline one\r\nline two | load5=3\r\nload15=2;;;0\r\n\r\n";
        let out = parse_output(text);
        assert_eq!(out.summary, "WARN - load high");
        assert_eq!(out.long_output, "line one\nline two ");
        let labels: Vec<_> = out.perfdata.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["load1", "load5", "load15"]);
        assert_eq!(out.perfdata[2].min, Some(0.0));
    }

    #[test]
    fn long_output_without_perfdata_keeps_inner_blank_lines() {
        let out = parse_output("CRIT\nfirst\n\nthird\n\n");
        assert_eq!(out.long_output, "first\n\nthird");
        assert!(out.perfdata.is_empty());
    }

    #[test]
    fn ranges_follow_the_plugin_guidelines() {
        let alerts = |r: &str, v: f64| Range::parse(r).unwrap().alerts(v);
        assert!(!alerts("10", 10.0) && alerts("10", 10.5) && alerts("10", -1.0));
        assert!(alerts("10:", 9.0) && !alerts("10:", 1e9));
        assert!(alerts("~:10", 11.0) && !alerts("~:10", -1e9));
        assert!(alerts("10:20", 9.0) && !alerts("10:20", 15.0) && alerts("10:20", 21.0));
        assert!(alerts("@10:20", 15.0) && !alerts("@10:20", 25.0));
        assert!(alerts("@5", 0.0) && !alerts("@5", 6.0));
        // `~:` is everything: never alerts, and inverted always does.
        assert!(!alerts("~:", -1e300) && !alerts("~:", 1e300) && alerts("@~:", 0.0));
        assert!(alerts("-5:-1", 0.0) && !alerts("-5:-1", -3.0));
        assert!(alerts("0.5:1.5", 2.0) && !alerts("0.5:1.5", 1.0));
        for bad in ["", "x", "5:1", "1:x", "@"] {
            let err = Range::parse(bad).unwrap_err();
            assert!(err.contains("not a Nagios range"), "{err}");
        }
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const UOMS: &[&str] = &["", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c"];

    /// Renders one item the way a careful plugin would: quoted label with
    /// `''` escapes, trailing empty fields left out.
    fn render(p: &PerfData) -> String {
        let label = format!("'{}'", p.label.replace('\'', "''"));
        let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let mut fields = vec![
            format!("{}{}", p.value, p.uom),
            p.warn.clone().unwrap_or_default(),
            p.crit.clone().unwrap_or_default(),
            num(p.min),
            num(p.max),
        ];
        while fields.len() > 1 && fields.last().is_some_and(String::is_empty) {
            fields.pop();
        }
        format!("{label}={}", fields.join(";"))
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1_000_000i64..1_000_000).prop_map(|v| v as f64),
            (-1e6f64..1e6),
            Just(0.5),
        ]
    }

    fn range() -> impl Strategy<Value = String> {
        (0u8..6, 0u32..1000, 0u32..1000).prop_map(|(kind, a, b)| {
            let (lo, hi) = (a.min(b), a.max(b));
            match kind {
                0 => format!("{hi}"),
                1 => format!("{lo}:"),
                2 => format!("~:{hi}"),
                3 => format!("{lo}:{hi}"),
                4 => format!("@{lo}:{hi}"),
                _ => format!("@~:{hi}"),
            }
        })
    }

    fn item() -> impl Strategy<Value = PerfData> {
        (
            "[^'\r\n]{0,3}('[^'\r\n]{0,3})?[^\r\n]{0,8}",
            number(),
            proptest::sample::select(UOMS),
            proptest::option::of(range()),
            proptest::option::of(range()),
            proptest::option::of(number()),
            proptest::option::of(number()),
        )
            .prop_filter("a label is never empty", |t| !t.0.is_empty())
            .prop_map(|(label, value, uom, warn, crit, min, max)| PerfData {
                label,
                value,
                uom: uom.to_owned(),
                warn,
                crit,
                min,
                max,
            })
    }

    proptest! {
        #[test]
        fn rendered_perfdata_parses_back(items in proptest::collection::vec(item(), 0..6)) {
            let text = items.iter().map(render).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(&parse_perfdata(&text), &items);
        }

        #[test]
        fn perfdata_spread_over_lines_is_collected_in_order(
            first in proptest::collection::vec(item(), 0..3),
            later in proptest::collection::vec(item(), 0..3),
            long in "[^|\r\n]{0,20}",
        ) {
            let perf = |v: &[PerfData]| v.iter().map(render).collect::<Vec<_>>().join(" ");
            let text = format!("OK - summary | {}\r\n{long}\r\nmore | {}\n", perf(&first), perf(&later));
            let out = parse_output(&text);
            prop_assert_eq!(out.summary, "OK - summary");
            let all: Vec<PerfData> = first.iter().chain(&later).cloned().collect();
            prop_assert_eq!(out.perfdata, all);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_output(&text);
            let _ = parse_output(&String::from_utf8_lossy(&bytes));
            for word in text.split([' ', ';']) {
                if let Ok(r) = Range::parse(word) {
                    let _ = r.alerts(0.0);
                }
            }
        }

        #[test]
        fn ranges_in_plugin_syntax_parse(r in range()) {
            prop_assert!(Range::parse(&r).is_ok(), "{}", r);
        }
    }
}
