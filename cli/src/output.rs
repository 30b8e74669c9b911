//! What the listing commands print: pretty JSON under `--json`, else an
//! aligned table.
//!
//! A [`Table`] sizes each column to its widest cell (header included), so a
//! long host name shifts the columns instead of running into the next one.
//! The last column is never padded: it holds free text (a command line,
//! tags, a note) and trailing spaces would only confuse `grep`/`awk`.
//!
//! Host names, tags, check names, outputs and errors come from agents, and
//! an agent can be hostile: a terminal obeys escape sequences, a carriage
//! return overwrites what was printed, bidirectional overrides reorder it.
//! Every printer here passes such text through [`clean`] (or
//! [`clean_line`] for one table cell); JSON gets the same characters as
//! `\uXXXX` escapes, so the data stays exact and the terminal stays safe.

use std::borrow::Cow;

use anyhow::Result;
use serde::Serialize;

/// Prints `value` as pretty JSON (the `--json` output of every command),
/// with the characters [`clean`] replaces escaped.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", escape_json(&serde_json::to_string_pretty(value)?));
    Ok(())
}

/// Whether `c` must not reach a terminal raw: C0 controls (tab and newline
/// are judged by the caller), DEL, C1 controls, and the bidirectional
/// overrides and isolates that reorder a line's display.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text from an agent made safe to print: every character of [`is_unsafe`]
/// but newline and tab becomes `?` (an ANSI escape `ESC[31m` prints as
/// `?[31m`: visibly tampered, harmless); a CR before a newline is dropped.
pub fn clean(text: &str) -> Cow<'_, str> {
    clean_with(text, true)
}

/// Like [`clean`] for one line (a table cell): newline and tab become a
/// space too, so a value cannot break the table's rows or columns.
pub fn clean_line(text: &str) -> Cow<'_, str> {
    clean_with(text, false)
}

fn clean_with(text: &str, multiline: bool) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' if multiline => out.push(c),
            '\n' | '\t' => out.push(' '),
            '\r' if chars.peek() == Some(&'\n') => {}
            c if is_unsafe(c) => out.push('?'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `json` (serde_json output) with the characters of [`is_unsafe`] that
/// serde_json leaves raw (DEL, C1, bidi controls) written as `\uXXXX`.
/// They can only occur inside strings, where the escape means the same.
fn escape_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_unsafe_in_json) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_unsafe_in_json(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`is_unsafe`] but for the newlines and indentation of pretty JSON
/// (serde_json escapes every control character inside strings).
fn is_unsafe_in_json(c: char) -> bool {
    is_unsafe(c) && !matches!(c, '\n' | ' ')
}

/// Now as Unix milliseconds.
pub use outrider_protocol::unix_now_ms as now_ms;

/// "5s ago", "3m ago", "2h ago", "4d ago" for a Unix-ms timestamp; a time
/// in the future reads "0s ago".
pub fn ago(ms: i64) -> String {
    let secs = (now_ms().saturating_sub(ms) / 1000).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// How a column's cells are aligned; numbers read best right-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table of text cells with a header row, printed at once.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column (a programming error
    /// otherwise, caught by the tests of each command's table).
    /// Cells are passed through [`clean_line`]: they may come from agents.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "cells per column");
        self.rows.push(
            cells
                .into_iter()
                .map(|c| clean_line(&c).into_owned())
                .collect(),
        );
    }

    /// The table as lines of text, header first.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain([self.columns[i].0.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| match self.columns.get(i).map(|c| c.1) {
                    _ if i == last => cell.clone(),
                    Some(Align::Right) => format!("{cell:>w$}", w = widths[i]),
                    _ => format!("{cell:<w$}", w = widths[i]),
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints [`Table::render`] to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_neutralised_by_table() {
        #[rustfmt::skip]
        let table: &[(&str, &str, &str)] = &[
            // input, clean (multi-line), clean_line
            ("web-01", "web-01", "web-01"),
            ("naïve ünïcode ✓ 日本", "naïve ünïcode ✓ 日本", "naïve ünïcode ✓ 日本"),
            ("\x1b[31mCRITICAL\x1b[0m", "?[31mCRITICAL?[0m", "?[31mCRITICAL?[0m"),
            ("\x1b]0;pwned\x07", "?]0;pwned?", "?]0;pwned?"),
            ("OK\rCRITICAL", "OK?CRITICAL", "OK?CRITICAL"),
            ("line 1\r\nline 2", "line 1\nline 2", "line 1 line 2"),
            ("a\tb\nc", "a\tb\nc", "a b c"),
            ("nul\0bell\x07bs\x08del\x7f", "nul?bell?bs?del?", "nul?bell?bs?del?"),
            // C1: the 8-bit CSI and NEL.
            ("\u{9b}31m\u{85}", "?31m?", "?31m?"),
            // Bidi overrides and isolates ("Trojan source").
            ("abc\u{202e}fed\u{2066}x\u{2069}\u{200f}", "abc?fed?x??", "abc?fed?x??"),
        ];
        for (input, multi, single) in table {
            assert_eq!(clean(input), *multi, "{input:?}");
            assert_eq!(clean_line(input), *single, "{input:?}");
        }
        assert!(
            matches!(clean("plain"), Cow::Borrowed(_)),
            "no copy when clean"
        );
    }

    #[test]
    fn json_escapes_what_serde_leaves_raw_and_keeps_the_data() {
        let value = serde_json::json!({ "summary": "\x1b[2J\u{9b}x\u{202e}y\x7f\r" });
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let escaped = escape_json(&pretty);
        assert!(!escaped.chars().any(is_unsafe_in_json), "{escaped}");
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, value, "the same data");
    }

    #[test]
    fn table_cells_are_cleaned() {
        let mut t = Table::new(&[("HOST", Align::Left), ("SUMMARY", Align::Left)]);
        t.row(vec!["evil\nHOST".into(), "\x1b[8mhidden".into()]);
        assert_eq!(t.render(), "HOST       SUMMARY\nevil HOST  ?[8mhidden\n");
    }

    #[test]
    fn ago_survives_any_timestamp() {
        assert_eq!(ago(now_ms() + 60_000), "0s ago");
        assert!(ago(i64::MIN).ends_with("d ago"));
        assert!(ago(i64::MAX).ends_with("s ago"));
    }

    #[test]
    fn columns_fit_their_widest_cell_and_the_last_is_not_padded() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("BYTES", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a-long-name".into(), "7".into(), "x".into()]);
        t.row(vec!["b".into(), "123456".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME          BYTES  NOTE\n\
             a-long-name       7  x\n\
             b            123456\n"
        );
    }
}
