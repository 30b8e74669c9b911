//! `outrider-server` binary: parse flags, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use outrider_server::ServerConfig;

/// Exit code for bad configuration (sysexits `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

/// The Outrider central server.
#[derive(Debug, Parser)]
#[command(name = "outrider-server", version, about)]
struct Cli {
    #[command(flatten)]
    config: ServerConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(cli.config.listen).await {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on {}: {e} (choose another address with --listen)", cli.config.listen);
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
        let result = outrider_server::run(cli.config, listener, shutdown.clone()).await;
        shutdown.cancel();
        let _ = signals.await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT (or when it is cancelled elsewhere).
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("cannot install signal handlers; stop the server by killing it");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = int.recv() => info!("SIGINT received, shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}
