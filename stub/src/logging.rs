//! The stub's logger: every event of the stub and of the agent library
//! (which logs through the stub, `generation.rs` `host_log`) as one line on
//! stderr (journald, a terminal) and in the day's file of the log directory.
//!
//! Why not `tracing-subscriber` and `tracing-appender`: together with the
//! date-time crate they pull in they cost the stub about 100 KB, and the
//! stub, which can never be updated, needs none of their span machinery
//! (docs/benchmarks.md, "The stub since then"). This logger records events
//! only; spans are accepted and ignored. `log` records (from `ureq` and
//! `rustls`) are taken in too, through the same filter.
//!
//! A line is `<RFC 3339 UTC time> <LEVEL> <target>: <message> <k=v>...`,
//! the format the stub wrote before, without colours; control characters
//! in it are escaped, so a message can neither forge a second line nor
//! reach a terminal as an escape sequence. Writes are unbuffered and
//! synchronous: no background thread, and a line logged before an abort is
//! on disk.

mod filter;
mod rolling;
mod time;

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

pub use self::filter::{Filter, FilterError};
use self::rolling::DailyFile;
use self::time::Timestamp;

/// Installs the logger for the whole process: stderr, plus daily files in
/// `log_dir` (created if missing; without it, stderr only).
///
/// Call once, first thing; later calls leave the first logger in place.
pub fn init(filter: Filter, log_dir: &Path) {
    let file = std::fs::create_dir_all(log_dir)
        .ok()
        .map(|()| Mutex::new(DailyFile::new(log_dir)));
    let logger: &'static Logger = Box::leak(Box::new(Logger { filter, file }));
    if tracing::subscriber::set_global_default(Handle(logger)).is_ok()
        && log::set_logger(logger).is_ok()
    {
        log::set_max_level(to_log_filter(logger.filter.max_level()));
    }
}

/// Where lines go, and which.
struct Logger {
    filter: Filter,
    /// `None` when the log directory could not be created.
    file: Option<Mutex<DailyFile>>,
}

impl Logger {
    fn enabled(&self, level: Level, target: &str) -> bool {
        level <= self.filter.level_for(target)
    }

    fn write(&self, now: Timestamp, level: Level, target: &str, body: fmt::Arguments<'_>) {
        let line = format_line(now, level, target, body);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        if let Some(file) = &self.file {
            // A poisoned lock only means another thread panicked mid-write;
            // the file handle is still good.
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = file.write(now.date, line.as_bytes());
        }
    }
}

/// One log line, newline included, control characters escaped.
fn format_line(now: Timestamp, level: Level, target: &str, body: fmt::Arguments<'_>) -> String {
    let mut raw = String::with_capacity(128);
    let _ = write!(raw, "{level:>5} {target}: {body}");
    let mut line = String::with_capacity(raw.len() + 32);
    let _ = write!(line, "{now} ");
    for c in raw.chars() {
        match c {
            '\t' => line.push(c),
            c if c.is_control() => {
                let _ = write!(line, "{}", c.escape_default());
            }
            c => line.push(c),
        }
    }
    line.push('\n');
    line
}

/// The logger as the process's `tracing` subscriber.
struct Handle(&'static Logger);

impl Subscriber for Handle {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // The filter never changes after `init`: decide once per callsite.
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(*metadata.level(), metadata.target())
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(self.0.filter.max_level())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not recorded; every span gets the same (non-zero) id.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.0.write(
            Timestamp::now(),
            *meta.level(),
            meta.target(),
            format_args!("{}{}", fields.message, fields.rest),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        Logger::enabled(self, to_tracing_level(metadata.level()), metadata.target())
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = to_tracing_level(record.level());
        if Logger::enabled(self, level, record.target()) {
            self.write(Timestamp::now(), level, record.target(), *record.args());
        }
    }

    fn flush(&self) {}
}

fn to_tracing_level(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::ERROR,
        log::Level::Warn => Level::WARN,
        log::Level::Info => Level::INFO,
        log::Level::Debug => Level::DEBUG,
        log::Level::Trace => Level::TRACE,
    }
}

fn to_log_filter(level: tracing::level_filters::LevelFilter) -> log::LevelFilter {
    match level.into_level() {
        None => log::LevelFilter::Off,
        Some(Level::ERROR) => log::LevelFilter::Error,
        Some(Level::WARN) => log::LevelFilter::Warn,
        Some(Level::INFO) => log::LevelFilter::Info,
        Some(Level::DEBUG) => log::LevelFilter::Debug,
        Some(_) => log::LevelFilter::Trace,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at() -> Timestamp {
        Timestamp::at(Duration::new(1_798_373_700, 123_456_000))
    }

    #[test]
    fn lines_by_table() {
        let cases: &[(Level, &str, &str, &str)] = &[
            (
                Level::INFO,
                "outrider_agent_stub",
                "agent library loaded and running sha256=ab",
                "2026-12-27T12:15:00.123456Z  INFO outrider_agent_stub: agent library loaded and running sha256=ab\n",
            ),
            (
                Level::ERROR,
                "agent",
                "two\nlines\r",
                "2026-12-27T12:15:00.123456Z ERROR agent: two\\nlines\\r\n",
            ),
            (
                Level::WARN,
                "agent",
                "\u{1b}[31mred\ttab",
                "2026-12-27T12:15:00.123456Z  WARN agent: \\u{1b}[31mred\ttab\n",
            ),
            (
                Level::TRACE,
                "rustls::client",
                "ünïcode",
                "2026-12-27T12:15:00.123456Z TRACE rustls::client: ünïcode\n",
            ),
        ];
        for (level, target, message, want) in cases {
            let line = format_line(at(), *level, target, format_args!("{message}"));
            assert_eq!(line, *want);
        }
    }

    #[test]
    fn events_and_log_records_reach_the_day_s_file_through_the_filter() {
        let dir = tempfile::tempdir().unwrap();
        let logger: &'static Logger = Box::leak(Box::new(Logger {
            filter: Filter::parse("info,noisy=warn").unwrap(),
            file: Some(Mutex::new(DailyFile::new(dir.path()))),
        }));
        tracing::subscriber::with_default(Handle(logger), || {
            tracing::info!(sha256 = "ab12", path = %"/x", "loaded");
            tracing::info!(target: "noisy", "dropped by the filter");
            tracing::warn!(target: "noisy::inner", "kept");
            tracing::debug!("below the default level");
            let _span = tracing::info_span!("ignored").entered();
            tracing::error!(target: "agent", "inside a span");
        });
        log::Log::log(
            logger,
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("rustls::conn")
                .args(format_args!("alert {}", 42))
                .build(),
        );
        log::Log::log(
            logger,
            &log::Record::builder()
                .level(log::Level::Debug)
                .target("ureq")
                .args(format_args!("dropped"))
                .build(),
        );
        // One file, whatever the day (a test running over midnight UTC
        // writes to two).
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(' ').expect("a timestamp first").1)
            .collect();
        assert_eq!(
            lines,
            [
                format!(" INFO {}: loaded sha256=\"ab12\" path=/x", module_path!()).as_str(),
                " WARN noisy::inner: kept",
                "ERROR agent: inside a span",
                " WARN rustls::conn: alert 42",
            ]
        );
    }
}
