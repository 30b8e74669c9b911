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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = cli.config.validate() {
        error!("{e}");
        return ExitCode::from(EXIT_USAGE);
    }
    runtime.block_on(async move {
        let listener = match outrider_server::listener::bind(cli.config.listen) {
            Ok(l) => l,
            Err(e) => {
                error!(
                    "cannot listen on {}: {e} (choose another address with --listen)",
                    cli.config.listen
                );
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let dashboard = if cli.config.no_dashboard {
            None
        } else {
            match outrider_server::listener::bind(cli.config.dashboard_listen) {
                Ok(l) => Some(l),
                Err(e) => {
                    error!(
                        "cannot listen on {} for the dashboard: {e} (choose another address with \
                         --dashboard-listen, or run with --no-dashboard)",
                        cli.config.dashboard_listen
                    );
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        };
        let shutdown = CancellationToken::new();
        let signals = match SignalThread::start(shutdown.clone()) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result =
            outrider_server::run_with_dashboard(cli.config, listener, dashboard, shutdown.clone())
                .await;
        signals.stop();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Turns SIGTERM/SIGINT into a cancellation of the shutdown token.
///
/// A plain thread with signal-hook rather than `tokio::signal`: enabling
/// tokio's `signal` feature anywhere in the workspace would unify it into
/// the agent library too, whose runtime would then keep signal-driver file
/// descriptors in a static that outlives every generation.
struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: std::thread::JoinHandle<()>,
}

impl SignalThread {
    fn start(shutdown: CancellationToken) -> std::io::Result<SignalThread> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let name = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    info!("{name} received, shutting down");
                    shutdown.cancel();
                }
            })?;
        Ok(SignalThread { handle, thread })
    }

    /// Stops listening and joins the thread.
    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}
