//! `outrider-agent`: the stub. Parses flags, sets up logging, runs.

use std::process::ExitCode;

use outrider_agent_stub::args::{self, Command};
use outrider_agent_stub::logging::{self, Filter};
use outrider_agent_stub::{Layout, StubError, error_chain};

/// Exit code for bad usage or configuration (sysexits `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    // Before any thread exists (see the module's note on why).
    let tuned = outrider_agent_stub::memory::tune();
    let prefix = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run { prefix }) => prefix,
        Ok(Command::SelfTest) => {
            println!("{}", outrider_agent_stub::stub_update::self_test_line());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("outrider-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("outrider-agent: error: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let layout = match prefix {
        Some(prefix) => Layout::under_prefix(&prefix),
        None => Layout::system(),
    };
    // `OUTRIDER_LOG` as in stub/src/logging/filter.rs; a bad value logs
    // at the default level and says so rather than stopping the agent.
    let (filter, bad_filter) = match std::env::var("OUTRIDER_LOG") {
        Ok(spec) => match Filter::parse(&spec) {
            Ok(filter) => (filter, None),
            Err(err) => (Filter::default(), Some(err)),
        },
        Err(_) => (Filter::default(), None),
    };
    logging::init(filter, &layout.log_dir);
    if let Some(err) = bad_filter {
        tracing::warn!("{err}; logging at info");
    }
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
