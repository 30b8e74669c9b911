//! `outrider plugins`: upload, list and remove plugin files. Agents fetch a
//! plugin by its hash when one of their checks names it
//! (`outrider checks add NAME --plugin PLUGIN`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use outrider_protocol::api::PluginInfo;
use outrider_protocol::{MAX_PLUGIN_BYTES, is_valid_name};
use serde_json::Value;

use crate::client::{ApiClient, path_segment};
use crate::output::{Align, Table, ago, print_json};
use crate::{GlobalArgs, UsageError};

/// Arguments of `outrider plugins`.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    #[command(subcommand)]
    command: Option<PluginsCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum PluginsCommand {
    /// Every plugin on the server (the default).
    List,
    /// Upload FILE (replacing a plugin of the same name).
    Add {
        file: PathBuf,
        /// Plugin name; default: the file name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a plugin no check uses.
    Remove {
        #[arg(value_parser = path_segment)]
        name: String,
    },
}

/// Runs `outrider plugins …`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: PluginsArgs) -> Result<()> {
    match args.command.unwrap_or(PluginsCommand::List) {
        PluginsCommand::List => {
            let plugins: Vec<PluginInfo> = client.get_json("/api/v1/plugins")?;
            if global.json {
                print_json(&plugins)?;
            } else if plugins.is_empty() {
                println!("no plugins; upload one with `outrider plugins add FILE`");
            } else {
                let mut table = Table::new(&[
                    ("NAME", Align::Left),
                    ("BYTES", Align::Right),
                    ("UPDATED", Align::Left),
                    ("SHA256", Align::Left),
                ]);
                for p in plugins {
                    table.row(vec![
                        p.name,
                        p.size.to_string(),
                        ago(p.updated_at_ms),
                        p.sha256,
                    ]);
                }
                table.print();
            }
            Ok(())
        }
        PluginsCommand::Add { file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            if !is_valid_name(&name) || path_segment(&name).is_err() {
                return Err(UsageError(format!(
                    "plugin name {name:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'; choose one with --name"
                ))
                .into());
            }
            let size = std::fs::metadata(&file)
                .with_context(|| format!("reading {}", file.display()))?
                .len();
            if size > MAX_PLUGIN_BYTES {
                return Err(UsageError(format!(
                    "{} is {size} bytes, over the plugin limit of {MAX_PLUGIN_BYTES}",
                    file.display()
                ))
                .into());
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let info: PluginInfo =
                client.put_bytes_json(&format!("/api/v1/plugins/{name}"), &bytes)?;
            if global.json {
                print_json(&info)?;
            } else {
                println!(
                    "plugin {} uploaded ({} bytes, sha256 {}); use it with `outrider checks add CHECK --plugin {}`",
                    info.name, info.size, info.sha256, info.name
                );
            }
            Ok(())
        }
        PluginsCommand::Remove { name } => {
            let answer: Value = client.delete_json(&format!("/api/v1/plugins/{name}"))?;
            if global.json {
                print_json(&answer)?;
            } else {
                println!("plugin {name} removed");
            }
            Ok(())
        }
    }
}
