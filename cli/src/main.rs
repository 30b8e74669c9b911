//! `outrider`: the operator CLI.
//!
//! Every subcommand that reads or changes fleet state talks to the server's
//! REST API with an admin token; every subcommand that signs (`keys`,
//! `release`) does so locally — private keys never leave this machine.

mod agents;
mod alerts;
mod checks;
mod client;
mod collectors;
mod duration;
mod files;
mod keys;
mod output;
mod plugins;
mod quickstart;
mod receivers;
mod release;
mod run;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::ApiClient;

/// Exit code for bad usage or configuration (sysexits `EX_USAGE`).
const EXIT_USAGE: u8 = 64;
/// Exit code for any other failure.
const EXIT_FAILURE: u8 = 1;

/// Outrider operator CLI.
#[derive(Debug, Parser)]
#[command(name = "outrider", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Base URL of the outrider server.
    #[arg(long, global = true, env = "OUTRIDER_SERVER", default_value = client::DEFAULT_SERVER_URL)]
    pub server: String,
    /// Admin API token. Defaults to the token file below. On the command
    /// line it is visible to every user (`ps`): prefer `OUTRIDER_TOKEN` or
    /// the token file.
    #[arg(long, global = true, env = "OUTRIDER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin API token (written by the server on first start).
    #[arg(long, global = true, env = "OUTRIDER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and inspect signing keys and the update root.
    Keys(keys::KeysArgs),
    /// Publish agent builds to a release channel.
    Release(release::ReleaseArgs),
    /// List agents, their presence and tags; set tags and permissions.
    Agents(agents::AgentsArgs),
    /// Define checks and show their latest results.
    Checks(checks::ChecksArgs),
    /// Define, list and remove collectors (metric programs agents keep running).
    Collectors(collectors::CollectorsArgs),
    /// Upload, list and remove plugins.
    Plugins(plugins::PluginsArgs),
    /// Create, list and revoke enrollment tokens.
    Tokens(tokens::TokensArgs),
    /// Run a check or an ad-hoc script on an agent now.
    Run(run::RunArgs),
    /// Open alerts (muted ones and why) and the notifications decided.
    Alerts(alerts::AlertsArgs),
    /// Add, list and expire silences (maintenance windows).
    Silences(alerts::SilencesArgs),

    /// Add, list, test and delete alert receivers; list dead letters.
    Receivers(receivers::ReceiversArgs),
    /// Choose which receivers get which alerts (by tag and severity).
    Routes(receivers::RoutesArgs),
    /// Build everything, start a server and a local agent on the embedded defaults.
    Quickstart(quickstart::QuickstartArgs),
}

/// A failure that is the user's to fix: printed and mapped to exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result =
        match cli.command {
            Command::Keys(args) => keys::run(args, &cli.global),
            Command::Release(args) => {
                ApiClient::from_args(&cli.global).and_then(|c| release::run(&c, &cli.global, args))
            }
            Command::Agents(args) => {
                ApiClient::from_args(&cli.global).and_then(|c| agents::run(&c, &cli.global, args))
            }
            Command::Checks(args) => {
                ApiClient::from_args(&cli.global).and_then(|c| checks::run(&c, &cli.global, args))
            }
            Command::Collectors(args) => ApiClient::from_args(&cli.global)
                .and_then(|c| collectors::run(&c, &cli.global, args)),
            Command::Plugins(args) => {
                ApiClient::from_args(&cli.global).and_then(|c| plugins::run(&c, &cli.global, args))
            }
            Command::Tokens(args) => {
                ApiClient::from_args(&cli.global).and_then(|c| tokens::run(&c, &cli.global, args))
            }
            Command::Run(args) => {
                ApiClient::from_args(&cli.global).and_then(|c| run::run(&c, &cli.global, args))
            }
            Command::Alerts(args) => ApiClient::from_args(&cli.global)
                .and_then(|c| alerts::run_alerts(&c, &cli.global, args)),
            Command::Silences(args) => ApiClient::from_args(&cli.global)
                .and_then(|c| alerts::run_silences(&c, &cli.global, args)),

            Command::Receivers(args) => ApiClient::from_args(&cli.global)
                .and_then(|c| receivers::run(&c, &cli.global, args)),
            Command::Routes(args) => ApiClient::from_args(&cli.global)
                .and_then(|c| receivers::run_routes(&c, &cli.global, args)),
            Command::Quickstart(args) => quickstart::run(args),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Errors may quote an agent (a refused run, a host name).
            eprintln!("error: {}", output::clean(&format!("{err:#}")));
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}
