//! `outrider checks`: latest results, and check definitions.

use anyhow::Result;
use outrider_protocol::api::{CheckAlert, CheckDefinition, CheckInfo, ResultInfo};
use outrider_protocol::{CheckSpec, PLUGIN_PREFIX};
use serde_json::Value;

use crate::client::{ApiClient, path_segment};
use crate::output::{Align, Table, ago, print_json};
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
        #[arg(long, value_parser = path_segment)]
        agent: Option<String>,
    },
    /// The defined checks.
    List,
    /// Define (or replace) a check, run by every agent or by the agents
    /// carrying all of `--tags`.
    Add {
        /// Check name: a-z, 0-9, '_', '.', '-'.
        #[arg(value_parser = path_segment)]
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
        /// Alert after this many consecutive non-OK results (server default: 3).
        #[arg(long, conflicts_with = "alert_after_secs")]
        alert_after_failures: Option<u32>,
        /// Alert once results are non-OK without interruption for this many
        /// seconds, instead of a count.
        #[arg(long)]
        alert_after_secs: Option<u64>,
        /// Recovered after this many consecutive OK results (server default: 2).
        #[arg(long)]
        recover_after: Option<u32>,
        /// The program and its arguments (or the plugin's arguments), after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Delete a check from every agent.
    Remove {
        #[arg(value_parser = path_segment)]
        name: String,
    },
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
                print_json(&checks)?;
            } else if checks.is_empty() {
                println!("no checks defined; add one with `outrider checks add`");
            } else {
                let mut table = Table::new(&[
                    ("NAME", Align::Left),
                    ("INTERVAL", Align::Right),
                    ("TIMEOUT", Align::Right),
                    ("TAGS", Align::Left),
                    ("COMMAND", Align::Left),
                ]);
                for c in checks {
                    let tags = if c.tags.is_empty() {
                        "(all agents)".to_owned()
                    } else {
                        c.tags.join(",")
                    };
                    table.row(vec![
                        c.name,
                        format!("{}s", c.interval_secs),
                        format!("{}s", c.timeout_secs),
                        tags,
                        c.command.join(" "),
                    ]);
                }
                table.print();
            }
            Ok(())
        }
        ChecksCommand::Add {
            name,
            interval_secs,
            timeout_secs,
            tags,
            plugin,
            alert_after_failures,
            alert_after_secs,
            recover_after,
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
            let alert = CheckAlert {
                after_failures: alert_after_failures,
                after_secs: alert_after_secs,
                recover_after,
            };
            let def = CheckDefinition {
                command,
                interval_secs,
                timeout_secs,
                tags,
                alert: (alert != CheckAlert::default()).then_some(alert),
            };
            let answer: Value = client.send_json("PUT", &format!("/api/v1/checks/{name}"), &def)?;
            if global.json {
                print_json(&answer)?;
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
                print_json(&answer)?;
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
        print_json(&results)?;
        return Ok(());
    }
    if results.is_empty() {
        println!("no check results yet");
        return Ok(());
    }
    let mut table = Table::new(&[
        ("HOST", Align::Left),
        ("CHECK", Align::Left),
        ("STATE", Align::Left),
        ("AGE", Align::Left),
        ("SUMMARY", Align::Left),
        ("PERFDATA", Align::Left),
    ]);
    for r in &results {
        let perf: Vec<String> = r
            .perfdata
            .iter()
            .map(|p| format!("{}={}{}", p.label, p.value, p.uom))
            // Undetermined values as the plugin printed them.
            .chain(
                r.unknown_perfdata
                    .iter()
                    .map(|u| format!("{}=U{}", u.label, u.uom)),
            )
            .collect();
        table.row(vec![
            r.hostname.clone(),
            r.check.clone(),
            r.state.as_str().to_owned(),
            ago(r.started_at_ms),
            r.summary.clone(),
            perf.join(" "),
        ]);
    }
    table.print();
    Ok(())
}
