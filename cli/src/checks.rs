//! `outrider checks`: latest results, and check definitions.

use anyhow::Result;
use outrider_protocol::CheckSpec;
use outrider_protocol::api::{CheckDefinition, ResultInfo};
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
    /// Define (or replace) a check that every agent runs.
    Add {
        /// Check name: a-z, 0-9, '_', '.', '-'.
        name: String,
        /// Seconds between runs.
        #[arg(long, default_value_t = DEFAULT_INTERVAL_SECS)]
        interval_secs: u32,
        /// Seconds before the plugin is killed and the result is UNKNOWN.
        #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
        timeout_secs: u32,
        /// The plugin and its arguments, after `--`.
        #[arg(last = true, required = true)]
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
            let checks: Vec<CheckSpec> = client.get_json("/api/v1/checks")?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                println!(
                    "{:<24}  {:>8}  {:>7}  COMMAND",
                    "NAME", "INTERVAL", "TIMEOUT"
                );
                for c in checks {
                    println!(
                        "{:<24}  {:>7}s  {:>6}s  {}",
                        c.name,
                        c.interval_secs,
                        c.timeout_secs,
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
            command,
        } => {
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
            };
            let answer: Value = client.send_json("PUT", &format!("/api/v1/checks/{name}"), &def)?;
            println!(
                "check {name} saved; agents receive config version {}",
                answer["config_version"]
            );
            Ok(())
        }
        ChecksCommand::Remove { name } => {
            let answer: Value =
                client.send_json("DELETE", &format!("/api/v1/checks/{name}"), &Value::Null)?;
            println!(
                "check {name} removed; agents receive config version {}",
                answer["config_version"]
            );
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
