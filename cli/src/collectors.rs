//! `outrider collectors`: collector definitions (long-running metric
//! programs the agents keep alive), assigned by tags like checks.

use anyhow::Result;
use outrider_protocol::api::{CollectorDefinition, CollectorInfo};
use outrider_protocol::{CollectorSpecWire, KindWire, PluginWire};
use serde_json::Value;

use crate::client::{ApiClient, path_segment};
use crate::output::{Align, Table, print_json};
use crate::{GlobalArgs, UsageError};

/// Arguments of `outrider collectors`.
#[derive(Debug, clap::Args)]
pub struct CollectorsArgs {
    #[command(subcommand)]
    command: CollectorsCommand,
}

/// A collector kind on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// collectd, configured by the agent.
    Collectd,
    /// Any program, given after `--`; the agent keeps it running.
    Command,
}

#[derive(Debug, clap::Subcommand)]
enum CollectorsCommand {
    /// The defined collectors.
    List,
    /// Define (or replace) a collector, run by every agent or by the agents
    /// carrying all of `--tags`. Results come as `outrider.collector.<name>`.
    Add {
        /// Collector name: a-z, 0-9, '_', '-' (no dots).
        #[arg(value_parser = path_segment)]
        name: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Seconds between collections (collectd's `Interval`), or how often a
        /// command sends data.
        #[arg(long)]
        interval_secs: Option<u32>,
        /// collectd only: plugins the agent configures (cpu, memory, load, df,
        /// interface; comma-separated).
        #[arg(long, value_delimiter = ',')]
        plugins: Vec<String>,
        /// collectd only: a file whose text is appended to collectd's config.
        /// Agents run it only with `[policy] allow_raw_collector_config = true`.
        #[arg(long)]
        raw_config_file: Option<std::path::PathBuf>,
        /// Loopback port of the agent's Graphite listener (default 2003).
        #[arg(long)]
        graphite_port: Option<u16>,
        /// Only agents with all of these tags (comma-separated) run it.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// command only: the program and its arguments, after `--`.
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Delete a collector; every agent running it stops it.
    Remove {
        #[arg(value_parser = path_segment)]
        name: String,
    },
}

/// Runs `outrider collectors …`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: CollectorsArgs) -> Result<()> {
    match args.command {
        CollectorsCommand::List => {
            let collectors: Vec<CollectorInfo> = client.get_json("/api/v1/collectors")?;
            if global.json {
                print_json(&collectors)?;
            } else if collectors.is_empty() {
                println!("no collectors defined; add one with `outrider collectors add`");
            } else {
                let mut table = Table::new(&[
                    ("NAME", Align::Left),
                    ("KIND", Align::Left),
                    ("TAGS", Align::Left),
                    ("WHAT", Align::Left),
                ]);
                for c in collectors {
                    let tags = if c.tags.is_empty() {
                        "(all agents)".to_owned()
                    } else {
                        c.tags.join(",")
                    };
                    table.row(vec![
                        c.collector.name.clone(),
                        kind_name(&c.collector).into(),
                        tags,
                        what(&c.collector),
                    ]);
                }
                table.print();
            }
            Ok(())
        }
        CollectorsCommand::Add {
            name,
            kind,
            interval_secs,
            plugins,
            raw_config_file,
            graphite_port,
            tags,
            argv,
        } => {
            let raw_config = raw_config_file
                .map(|path| {
                    std::fs::read_to_string(&path)
                        .map_err(|e| UsageError(format!("{}: {e}", path.display())))
                })
                .transpose()?;
            let collector = CollectorSpecWire {
                name: name.clone(),
                kind: match kind {
                    Kind::Collectd => KindWire::Collectd,
                    Kind::Command => KindWire::Command,
                },
                argv: (kind == Kind::Command || !argv.is_empty()).then_some(argv),
                interval_secs,
                plugins: (!plugins.is_empty()).then(|| {
                    plugins
                        .into_iter()
                        .map(|plugin| PluginWire {
                            plugin,
                            mount_points: None,
                            interfaces: None,
                        })
                        .collect()
                }),
                raw_config,
                graphite_port,
            };
            collector
                .validate()
                .map_err(|e| UsageError(e.to_string()))?;
            let def = CollectorDefinition { collector, tags };
            let answer: Value =
                client.send_json("PUT", &format!("/api/v1/collectors/{name}"), &def)?;
            if global.json {
                print_json(&answer)?;
            } else if answer["changed"] == true {
                println!("collector {name} saved; the agents it selects start it now");
            } else {
                println!("collector {name} is unchanged");
            }
            Ok(())
        }
        CollectorsCommand::Remove { name } => {
            let answer: Value = client.delete_json(&format!("/api/v1/collectors/{name}"))?;
            if global.json {
                print_json(&answer)?;
            } else {
                println!("collector {name} removed; every agent running it stops it");
            }
            Ok(())
        }
    }
}

fn kind_name(c: &CollectorSpecWire) -> &'static str {
    match c.kind {
        KindWire::Collectd => "collectd",
        KindWire::Command => "command",
    }
}

/// What runs: the command line, or collectd's plugins and fragment size.
fn what(c: &CollectorSpecWire) -> String {
    match c.kind {
        KindWire::Command => c.argv.as_deref().unwrap_or_default().join(" "),
        KindWire::Collectd => {
            let plugins: Vec<&str> = c
                .plugins
                .iter()
                .flatten()
                .map(|p| p.plugin.as_str())
                .collect();
            let mut s = format!(
                "plugins: {}",
                if plugins.is_empty() {
                    "-".to_owned()
                } else {
                    plugins.join(",")
                }
            );
            if let Some(raw) = &c.raw_config {
                s.push_str(&format!(", raw config: {} bytes", raw.len()));
            }
            s
        }
    }
}
