//! `outrider run`: run a check, or an ad-hoc script, on one agent now and
//! print the result. The schedule of the check is not disturbed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use outrider_protocol::MAX_SCRIPT_BYTES;
use outrider_protocol::api::{
    DEFAULT_SCRIPT_TIMEOUT_SECS, MAX_RUN_TIMEOUT_SECS, RunRequest, RunResponse,
};

use crate::agents::resolve;
use crate::client::ApiClient;
use crate::output::{clean, clean_line, print_json};
use crate::{GlobalArgs, UsageError};

/// Time the CLI waits beyond the run's own timeout for the server to answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(30);

/// Arguments of `outrider run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Fingerprint or unique hostname of the agent.
    agent: String,
    /// A check of the agent's configuration.
    #[arg(required_unless_present = "script", conflicts_with = "script")]
    check: Option<String>,
    /// Run this script file instead (the agent must allow ad-hoc scripts).
    #[arg(long)]
    script: Option<PathBuf>,
    /// How to run the script, as a file extension (sh, py, ps1…);
    /// default: the script file's extension, else sh.
    #[arg(long, requires = "script")]
    interpreter: Option<String>,
    /// Seconds before the script is killed.
    #[arg(long, requires = "script")]
    timeout_secs: Option<u32>,
}

/// Runs `outrider run …`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: RunArgs) -> Result<()> {
    let fp = resolve(client, &args.agent)?;
    let (req, wait) = match (args.check, args.script) {
        (Some(check), None) => (
            RunRequest {
                check: Some(check),
                ..RunRequest::default()
            },
            Duration::from_secs(u64::from(MAX_RUN_TIMEOUT_SECS)),
        ),
        (None, Some(path)) => {
            let script = std::fs::read_to_string(&path)
                .with_context(|| format!("reading script {}", path.display()))?;
            if script.len() > MAX_SCRIPT_BYTES {
                return Err(UsageError(format!(
                    "{} is {} bytes, over the ad-hoc script limit of {MAX_SCRIPT_BYTES}",
                    path.display(),
                    script.len()
                ))
                .into());
            }
            let interpreter = args
                .interpreter
                .or_else(|| path.extension().map(|e| e.to_string_lossy().into_owned()));
            let timeout = args.timeout_secs.unwrap_or(DEFAULT_SCRIPT_TIMEOUT_SECS);
            (
                RunRequest {
                    script: Some(script),
                    interpreter,
                    timeout_secs: args.timeout_secs,
                    ..RunRequest::default()
                },
                Duration::from_secs(u64::from(timeout)),
            )
        }
        _ => return Err(UsageError("give a CHECK or --script FILE, not both".into()).into()),
    };
    let answer: RunResponse = client.post_json_slow(
        &format!("/api/v1/agents/{fp}/run"),
        &req,
        wait + ANSWER_MARGIN,
    )?;
    if global.json {
        print_json(&answer)?;
        return Ok(());
    }
    // The check's name, output and perfdata come from the agent.
    let r = &answer.result;
    println!(
        "{} {}: {}",
        clean_line(&r.check),
        r.state.as_str(),
        clean_line(&r.summary)
    );
    if !r.long_output.is_empty() {
        println!("{}", clean(&r.long_output));
    }
    for p in &r.perfdata {
        println!(
            "  {}={}{}",
            clean_line(&p.label),
            p.value,
            clean_line(&p.uom)
        );
    }
    println!("({} ms on {fp})", r.duration_ms);
    Ok(())
}
