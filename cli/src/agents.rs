//! `outrider agents`: the fleet and its presence.

use anyhow::Result;
use outrider_protocol::api::AgentInfo;

use crate::GlobalArgs;
use crate::checks::ago;
use crate::client::ApiClient;

/// Arguments of `outrider agents`.
#[derive(Debug, clap::Args)]
pub struct AgentsArgs {}

/// Prints every agent with its presence.
pub fn run(client: &ApiClient, global: &GlobalArgs, _args: AgentsArgs) -> Result<()> {
    let agents: Vec<AgentInfo> = client.get_json("/api/v1/agents")?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(());
    }
    if agents.is_empty() {
        println!("no agents have registered with {} yet", client.base());
        return Ok(());
    }
    println!(
        "{:<20}  {:<24}  {:<14}  {:<12}  {:<12}  SINCE",
        "FINGERPRINT", "HOSTNAME", "PLATFORM", "VERSION", "PRESENCE"
    );
    for a in &agents {
        println!(
            "{:<20}  {:<24}  {:<14}  {:<12}  {:<12}  {}",
            a.fingerprint,
            a.hostname,
            format!("{}/{}", a.os, a.arch),
            a.agent_version,
            a.presence.as_str(),
            ago(a.presence_since_ms)
        );
    }
    Ok(())
}
