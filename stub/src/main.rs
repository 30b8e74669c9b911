//! `outrider-agent`: the stub. Parses flags, sets up logging, runs.

use std::process::ExitCode;

use clap::Parser;

use outrider_agent_stub::{Layout, StubError, error_chain};

/// Exit code for bad usage or configuration (sysexits `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

/// The Outrider agent: fetches, verifies and runs the agent library.
#[derive(Debug, Parser)]
#[command(name = "outrider-agent", version, about)]
struct Cli {
    /// Install prefix of a non-root install: <prefix>/etc/agent.toml,
    /// <prefix>/etc/root.json, data in <prefix>, logs in <prefix>/log.
    /// Without it the system paths /etc/outrider, /opt/outrider and
    /// /var/log/outrider are used.
    #[arg(long)]
    prefix: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTRIDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let layout = match cli.prefix {
        Some(prefix) => Layout::under_prefix(&prefix),
        None => Layout::system(),
    };
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
