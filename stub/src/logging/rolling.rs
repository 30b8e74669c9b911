//! The log directory's daily files: `outrider-agent.YYYY-MM-DD.log` (UTC),
//! the newest [`KEEP`] kept.
//!
//! The names are the ones `tracing-appender` gave the same files, so a
//! stub update leaves one series of files behind, not two. Writes go
//! straight to the file (no buffer, no background thread): a line written
//! before an abort is on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::time::Date;

/// Log files kept in the log directory (one per day).
pub const KEEP: usize = 7;

const PREFIX: &str = "outrider-agent.";
const SUFFIX: &str = ".log";

/// The open file of the current day in a log directory.
#[derive(Debug)]
pub struct DailyFile {
    dir: PathBuf,
    /// The day of `file`; `None` until the first write.
    open: Option<(Date, File)>,
}

impl DailyFile {
    /// Files in `dir`, which must exist; nothing is opened before the first
    /// write.
    pub fn new(dir: &Path) -> DailyFile {
        DailyFile {
            dir: dir.to_owned(),
            open: None,
        }
    }

    /// Appends `line` to the file of `day`, first opening it (and removing
    /// the files beyond the newest [`KEEP`]) when the day changed.
    ///
    /// Fails when the file cannot be opened or written; the next write tries
    /// to open it again.
    pub fn write(&mut self, day: Date, line: &[u8]) -> io::Result<()> {
        if self.open.as_ref().is_none_or(|(open, _)| *open != day) {
            self.open = None;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(file_name(day)))?;
            self.open = Some((day, file));
            prune(&self.dir, KEEP);
        }
        let (_, file) = self.open.as_mut().expect("opened above");
        file.write_all(line)
    }
}

/// `outrider-agent.2026-12-04.log`.
pub fn file_name(day: Date) -> String {
    format!("{PREFIX}{day}{SUFFIX}")
}

/// Removes the oldest daily files of `dir` beyond the newest `keep`. Other
/// files are left alone; failures are ignored (the next day tries again).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut days: Vec<(Date, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let day = name
                .to_str()?
                .strip_prefix(PREFIX)?
                .strip_suffix(SUFFIX)?
                .parse::<Date>()
                .ok()?;
            Some((day, entry.path()))
        })
        .collect();
    days.sort_unstable_by_key(|(day, _)| std::cmp::Reverse(*day));
    for (_, path) in days.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u8) -> Date {
        Date {
            year: 2026,
            month: 12,
            day: d,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_new_day_opens_a_new_file_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("other.txt"), "kept").unwrap();
        std::fs::write(dir.path().join("outrider-agent.junk.log"), "kept").unwrap();
        let mut file = DailyFile::new(dir.path());
        for d in 1..=9 {
            file.write(day(d), format!("line {d}a\n").as_bytes())
                .unwrap();
            file.write(day(d), format!("line {d}b\n").as_bytes())
                .unwrap();
        }
        let mut want: Vec<String> = (3..=9).map(|d| file_name(day(d))).collect();
        want.push("other.txt".into());
        want.push("outrider-agent.junk.log".into());
        want.sort();
        assert_eq!(names(dir.path()), want);
        let last = std::fs::read_to_string(dir.path().join(file_name(day(9)))).unwrap();
        assert_eq!(last, "line 9a\nline 9b\n");
    }

    #[test]
    fn a_restart_appends_to_the_day_s_file() {
        let dir = tempfile::tempdir().unwrap();
        DailyFile::new(dir.path()).write(day(4), b"one\n").unwrap();
        DailyFile::new(dir.path()).write(day(4), b"two\n").unwrap();
        let text = std::fs::read_to_string(dir.path().join(file_name(day(4)))).unwrap();
        assert_eq!(text, "one\ntwo\n");
    }

    #[test]
    fn a_missing_directory_fails_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("log");
        let mut file = DailyFile::new(&logs);
        assert!(file.write(day(4), b"lost\n").is_err());
        std::fs::create_dir(&logs).unwrap();
        file.write(day(4), b"kept\n").unwrap();
        let text = std::fs::read_to_string(logs.join(file_name(day(4)))).unwrap();
        assert_eq!(text, "kept\n");
    }
}
