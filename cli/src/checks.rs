//! `outrider checks`: latest results, and check definitions.

use anyhow::Result;
use outrider_protocol::api::{CheckDefinition, CheckInfo, ResultInfo};
use outrider_protocol::{CheckSpec, PLUGIN_PREFIX};
use serde_json::Value;

use crate::client::ApiClient;
use crate::{GlobalArgs, UsageError};

/// Default seconds between runs of a new check.
const DEFAULT_INTERVAL_SECS: u32 = 60;
/// Default plugin timeout of a new check.
const DEFAULT_TIMEOUT_SECS: u32 = 10;

/// Arguments of `outrider checks`.
#[derive(Debug, clap::Args)]
pub struct ChecksArgs {
    #[command(subcommand)]
    command: Option<ChecksCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum ChecksCommand {
    /// Latest result of every check on every agent (the default).
    Results {
        /// Only this agent (fingerprint).
        #[arg(long)]
        agent: Option<String>,
    },
    /// The defined checks.
    List,
    /// Define (or replace) a check, run by every agent or by the agents
    /// carrying all of `--tags`.
    Add {
        /// Check name: a-z, 0-9, '_', '.', '-'.
        name: String,
        /// Seconds between runs.
        #[arg(long, default_value_t = DEFAULT_INTERVAL_SECS)]
        interval_secs: u32,
        /// Seconds before the plugin is killed and the result is UNKNOWN.
        #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
        timeout_secs: u32,
        /// Only agents with all of these tags (comma-separated) run it.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Run this uploaded plugin (`outrider plugins add`); the words after
        /// `--` are then its arguments.
        #[arg(long)]
        plugin: Option<String>,
        /// The program and its arguments (or the plugin's arguments), after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Delete a check from every agent.
    Remove { name: String },
}

/// Runs `outrider checks …`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: ChecksArgs) -> Result<()> {
    match args
        .command
        .unwrap_or(ChecksCommand::Results { agent: None })
    {
        ChecksCommand::Results { agent } => results(client, global, agent),
        ChecksCommand::List => {
            let checks: Vec<CheckInfo> = client.get_json("/api/v1/checks")?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else if checks.is_empty() {
                println!("no checks defined; add one with `outrider checks add`");
            } else {
                println!(
                    "{:<24}  {:>8}  {:>7}  {:<16}  COMMAND",
                    "NAME", "INTERVAL", "TIMEOUT", "TAGS"
                );
                for c in checks {
                    let tags = if c.tags.is_empty() {
                        "(all agents)".to_owned()
                    } else {
                        c.tags.join(",")
                    };
                    println!(
                        "{:<24}  {:>7}s  {:>6}s  {:<16}  {}",
                        c.name,
                        c.interval_secs,
                        c.timeout_secs,
                        tags,
                        c.command.join(" ")
                    );
                }
            }
            Ok(())
        }
        ChecksCommand::Add {
            name,
            interval_secs,
            timeout_secs,
            tags,
            plugin,
            command,
        } => {
            let command = match plugin {
                Some(plugin) => [vec![format!("{PLUGIN_PREFIX}{plugin}")], command].concat(),
                None if command.is_empty() => {
                    return Err(UsageError(
                        "give the check's command after `--`, or --plugin NAME".into(),
                    )
                    .into());
                }
                None => command,
            };
            let spec = CheckSpec {
                name: name.clone(),
                command: command.clone(),
                interval_secs,
                timeout_secs,
            };
            spec.validate().map_err(|e| UsageError(e.to_string()))?;
            let def = CheckDefinition {
                command,
                interval_secs,
                timeout_secs,
                tags,
            };
            let answer: Value = client.send_json("PUT", &format!("/api/v1/checks/{name}"), &def)?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else if answer["changed"] == true {
                println!("check {name} saved; the agents it selects receive it now");
            } else {
                println!("check {name} is unchanged");
            }
            Ok(())
        }
        ChecksCommand::Remove { name } => {
            let answer: Value = client.delete_json(&format!("/api/v1/checks/{name}"))?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                println!("check {name} removed from every agent");
            }
            Ok(())
        }
    }
}

fn results(client: &ApiClient, global: &GlobalArgs, agent: Option<String>) -> Result<()> {
    let path = match &agent {
        Some(a) => format!("/api/v1/results/latest?agent={a}"),
        None => "/api/v1/results/latest".to_owned(),
    };
    let results: Vec<ResultInfo> = client.get_json(&path)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    if results.is_empty() {
        println!("no check results yet");
        return Ok(());
    }
    println!(
        "{:<20}  {:<16}  {:<8}  {:<10}  {:<40}  PERFDATA",
        "HOST", "CHECK", "STATE", "AGE", "SUMMARY"
    );
    for r in &results {
        let perf: Vec<String> = r
            .perfdata
            .iter()
            .map(|p| format!("{}={}{}", p.label, p.value, p.uom))
            .collect();
        println!(
            "{:<20}  {:<16}  {:<8}  {:<10}  {:<40}  {}",
            r.hostname,
            r.check,
            r.state.as_str(),
            ago(r.started_at_ms),
            r.summary,
            perf.join(" ")
        );
    }
    Ok(())
}

/// "5s ago", "3m ago", "2h ago", "4d ago" for a Unix-ms timestamp.
pub fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let secs = ((now - ms) / 1000).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}
