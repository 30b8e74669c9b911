//! `outrider agents`: the fleet, its presence, tags and permissions.

use anyhow::Result;
use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, AgentTags, AllowAdhoc};

use crate::client::ApiClient;
use crate::output::{Align, Table, ago, clean, clean_line, print_json};
use crate::{GlobalArgs, UsageError};

/// Arguments of `outrider agents`.
#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    #[command(subcommand)]
    command: Option<AgentsCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentsCommand {
    /// Every agent with its presence (the default).
    List,
    /// One agent in detail, with its current config document.
    Show {
        /// Fingerprint or unique hostname.
        agent: String,
    },
    /// Set the tags the server assigns to an agent (replacing earlier ones);
    /// no tags clears them. Checks select agents by tag.
    Tags {
        /// Fingerprint or unique hostname.
        agent: String,
        tags: Vec<String>,
    },
    /// Remove an agent: unpin its key and close its session. It can only
    /// come back with a new enrollment token in its agent.toml.
    Remove {
        /// Fingerprint or unique hostname.
        agent: String,
    },
    /// Allow or forbid ad-hoc scripts (`outrider run --script`) on an agent.
    AllowAdhoc {
        /// Fingerprint or unique hostname.
        agent: String,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
}

/// Runs `outrider agents …`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: AgentsArgs) -> Result<()> {
    match args.command.unwrap_or(AgentsCommand::List) {
        AgentsCommand::List => list(client, global),
        AgentsCommand::Show { agent } => {
            let fp = resolve(client, &agent)?;
            let info: AgentInfo = client.get_json(&format!("/api/v1/agents/{fp}"))?;
            let config: serde_json::Value =
                client.get_json(&format!("/api/v1/agents/{fp}/config"))?;
            if global.json {
                let both = serde_json::json!({ "agent": info, "config": config });
                print_json(&both)?;
                return Ok(());
            }
            print_agent(&info);
            println!("config:       version {}", info.config_version);
            for check in config["checks"].as_array().into_iter().flatten() {
                println!(
                    "  {:<20} every {}s: {}",
                    clean_line(check["name"].as_str().unwrap_or_default()),
                    check["interval_secs"],
                    clean_line(
                        &check["command"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                );
            }
            Ok(())
        }
        AgentsCommand::Tags { agent, tags } => {
            let fp = resolve(client, &agent)?;
            let info: AgentInfo = client.send_json(
                "PUT",
                &format!("/api/v1/agents/{fp}/tags"),
                &AgentTags { tags },
            )?;
            print_result(global, &info, || {
                format!(
                    "agent {} ({}) now has tags: {}",
                    info.fingerprint,
                    info.hostname,
                    info.tags.join(", ")
                )
            })
        }
        AgentsCommand::Remove { agent } => {
            let fp = resolve(client, &agent)?;
            let answer: serde_json::Value = client.delete_json(&format!("/api/v1/agents/{fp}"))?;
            if global.json {
                print_json(&answer)?;
            } else {
                let session = if answer["was_connected"] == true {
                    "its session was closed; "
                } else {
                    ""
                };
                println!(
                    "agent {fp} removed: {session}its key is no longer accepted, and it comes back \
                     only with a new enrollment token in its agent.toml"
                );
            }
            Ok(())
        }
        AgentsCommand::AllowAdhoc { agent, setting } => {
            let fp = resolve(client, &agent)?;
            let allow_adhoc = setting == "on";
            let info: AgentInfo = client.send_json(
                "PUT",
                &format!("/api/v1/agents/{fp}/allow-adhoc"),
                &AllowAdhoc { allow_adhoc },
            )?;
            print_result(global, &info, || {
                if info.allow_adhoc {
                    format!(
                        "the server now sends ad-hoc scripts to agent {} ({}); its host runs them \
                         only with `[policy] allow_adhoc = true` in agent.toml",
                        info.fingerprint, info.hostname
                    )
                } else {
                    format!(
                        "agent {} ({}) refuses ad-hoc scripts",
                        info.fingerprint, info.hostname
                    )
                }
            })
        }
    }
}

fn print_result(
    global: &GlobalArgs,
    info: &AgentInfo,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if global.json {
        print_json(info)?;
    } else {
        println!("{}", clean(&text()));
    }
    Ok(())
}

/// A fingerprint as given, or the fingerprint of the one agent with that
/// hostname. Fails with a [`UsageError`] when no or several agents match.
pub fn resolve(client: &ApiClient, agent: &str) -> Result<Fingerprint> {
    if let Ok(fp) = agent.parse::<Fingerprint>() {
        return Ok(fp);
    }
    let agents: Vec<AgentInfo> = client.get_json("/api/v1/agents")?;
    let mut matches = agents.into_iter().filter(|a| a.hostname == agent);
    match (matches.next(), matches.next()) {
        (Some(one), None) => Ok(one.fingerprint),
        (None, _) => Err(UsageError(format!(
            "no agent has fingerprint or hostname {agent:?} (see `outrider agents`)"
        ))
        .into()),
        (Some(_), Some(_)) => Err(UsageError(format!(
            "several agents are called {agent:?}; give a fingerprint (see `outrider agents`)"
        ))
        .into()),
    }
}

fn print_agent(a: &AgentInfo) {
    // Everything but the fingerprint and times is reported by the agent.
    println!("fingerprint:  {}", a.fingerprint);
    println!("hostname:     {}", clean_line(&a.hostname));
    println!(
        "platform:     {}/{}",
        clean_line(&a.os),
        clean_line(&a.arch)
    );
    println!("version:      {}", clean_line(a.host_version()));
    println!("library:      {}", clean_line(&a.agent_version));
    if let Some(sha) = &a.build_sha256 {
        println!("build:        {}", clean_line(sha));
    }
    println!(
        "stub:         {}",
        clean_line(a.stub_version.as_deref().unwrap_or("-"))
    );
    println!(
        "channel:      {}",
        clean_line(a.channel.as_deref().unwrap_or("-"))
    );
    println!(
        "presence:     {} (since {})",
        a.presence.as_str(),
        ago(a.presence_since_ms)
    );
    println!("last seen:    {}", ago(a.last_seen_ms));
    println!("tags:         {}", clean_line(&a.tags.join(", ")));
    println!("server tags:  {}", clean_line(&a.server_tags.join(", ")));
    if let Some(allowed) = &a.allowed_tags {
        println!("allowed tags: {}", clean_line(&allowed.join(", ")));
    }
    if !a.refused_tags.is_empty() {
        println!(
            "ignored tags: {} (declared, not allowed by its enrollment token)",
            clean_line(&a.refused_tags.join(", "))
        );
    }
    if let Some(token) = &a.enrollment_token {
        println!("enrolled by:  token {}", clean_line(token));
    }
    println!(
        "ad-hoc:       {}",
        if a.allow_adhoc { "allowed" } else { "refused" }
    );
}

fn list(client: &ApiClient, global: &GlobalArgs) -> Result<()> {
    let agents: Vec<AgentInfo> = client.get_json("/api/v1/agents")?;
    if global.json {
        print_json(&agents)?;
        return Ok(());
    }
    if agents.is_empty() {
        println!("no agents have registered with {} yet", client.base());
        return Ok(());
    }
    let mut table = Table::new(&[
        ("FINGERPRINT", Align::Left),
        ("HOSTNAME", Align::Left),
        ("PLATFORM", Align::Left),
        ("VERSION", Align::Left),
        ("STUB", Align::Left),
        ("PRESENCE", Align::Left),
        ("SINCE", Align::Left),
        ("TAGS", Align::Left),
    ]);
    for a in &agents {
        table.row(vec![
            a.fingerprint.to_string(),
            a.hostname.clone(),
            format!("{}/{}", a.os, a.arch),
            a.host_version().to_owned(),
            a.stub_version.clone().unwrap_or_else(|| "-".into()),
            a.presence.as_str().to_owned(),
            ago(a.presence_since_ms),
            a.tags.join(","),
        ]);
    }
    table.print();
    Ok(())
}
