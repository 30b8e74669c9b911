//! What the listing commands print: pretty JSON under `--json`, else an
//! aligned table.
//!
//! A [`Table`] sizes each column to its widest cell (header included), so a
//! long host name shifts the columns instead of running into the next one.
//! The last column is never padded: it holds free text (a command line,
//! tags, a note) and trailing spaces would only confuse `grep`/`awk`.

use anyhow::Result;
use serde::Serialize;

/// Prints `value` as pretty JSON (the `--json` output of every command).
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "cells per column");
        self.rows.push(cells);
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
