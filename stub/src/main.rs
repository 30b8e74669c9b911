//! `outrider-agent`: the stub. Parses flags, sets up logging, runs.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use outrider_agent_stub::{Layout, StubError, error_chain};

/// Exit code for bad usage or configuration (sysexits `EX_USAGE`).
const EXIT_USAGE: u8 = 64;
/// Rolled log files kept in the log directory (one per day).
const LOG_FILES_KEPT: usize = 7;

/// The Outrider agent: fetches, verifies and runs the agent library.
#[derive(Debug, Parser)]
#[command(name = "outrider-agent", version, about)]
struct Cli {
    /// Install prefix of a non-root install: PREFIX/etc/agent.toml,
    /// PREFIX/etc/root.json, data in PREFIX, logs in PREFIX/log.
    /// Without it the system paths /etc/outrider, /opt/outrider and
    /// /var/log/outrider are used.
    #[arg(long)]
    prefix: Option<std::path::PathBuf>,
    /// Print `outrider-agent <version> abi <major>.<minor>` and exit 0: the
    /// check a running stub makes before it trusts this binary to replace it.
    #[arg(long)]
    self_test: bool,
}

fn main() -> ExitCode {
    // Before any thread exists (see the module's note on why).
    let tuned = outrider_agent_stub::memory::tune();
    let cli = Cli::parse();
    if cli.self_test {
        println!("{}", outrider_agent_stub::stub_update::self_test_line());
        return ExitCode::SUCCESS;
    }
    let layout = match cli.prefix {
        Some(prefix) => Layout::under_prefix(&prefix),
        None => Layout::system(),
    };
    init_logging(&layout);
    if !tuned {
        tracing::warn!("glibc refused the allocator settings; idle memory may grow after swaps");
    }
    match outrider_agent_stub::run(&layout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{}", error_chain(&err));
            match err {
                StubError::Config { .. } => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Logs to stderr (journald, a terminal) and to daily-rolled files in the
/// log directory. The file writer is the blocking one: no background thread
/// in the stub, and nothing lost if the process aborts right after a line.
fn init_logging(layout: &Layout) {
    // `Targets` ("debug", "info,outrider_agent_stub=trace") rather than
    // `EnvFilter`: the same syntax for what the stub needs, without the
    // regex engine it would add to the stub (docs/benchmarks.md, stub size).
    let filter = || {
        std::env::var("OUTRIDER_LOG")
            .ok()
            .and_then(|s| s.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let file = std::fs::create_dir_all(&layout.log_dir)
        .ok()
        .and_then(|()| {
            tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("outrider-agent")
                .filename_suffix("log")
                .max_log_files(LOG_FILES_KEPT)
                .build(&layout.log_dir)
                .ok()
        });
    let file = file.map(|appender| {
        tracing_subscriber::fmt::layer()
            .with_writer(appender)
            .with_ansi(false)
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
}
