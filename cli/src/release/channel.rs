//! Channel operations: `promote`, `rollout`, `pause`, `rollback`, `status`.
//!
//! Each changing command is one signed manifest with the next sequence (see
//! the steps in [`super`]). The target transformations are pure functions
//! below the commands, tested on their own.
//!
//! Rollout semantics (computed by each client, DESIGN §5): a client is in the
//! cohort if `rollout_bucket(fingerprint, salt) < basis_points`. Inside, it
//! takes the target; outside, it keeps the build it runs, and a fresh install
//! takes `previous`. Keeping the salt while raising the share makes the
//! cohort grow monotonically: everyone who had the build stays inside.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use outrider_protocol::api::{ChannelHealth, UpdateHealth, host_version};
use outrider_signing::{
    Artifact, Channel, Envelope, PreviousBuild, ReleaseManifest, Rollout, Target, TrustedRoot,
    now_unix,
};
use serde::{Deserialize, Serialize};

use super::history::{SignedHistory, rollback_target};
use super::publish::make_delta;
use super::{
    BuildInfo, ChannelInfo, FULL_ROLLOUT, Percent, SignArgs, Signer, channel_arg, fetch_library,
    format_basis_points, random_salt, selected_triples, verify_even_if_expired,
};
use crate::UsageError;
use crate::client::ApiClient;
use crate::keys::{default_keys_dir, load_root};

#[derive(Debug, clap::Args)]
pub(super) struct PromoteArgs {
    /// Channel whose build is promoted (e.g. beta).
    #[arg(long)]
    from: String,
    /// Channel that gets the build (e.g. stable).
    #[arg(long)]
    to: String,
    /// Only this target triple [default: every triple of --from].
    #[arg(long)]
    target: Option<String>,
    /// Share of --to's fleet that takes the build, with a new cohort.
    #[arg(long, default_value = "100")]
    percent: Percent,
    #[command(flatten)]
    sign: SignArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct RolloutArgs {
    #[arg(long)]
    channel: String,
    /// New share (0.01 to 100); the cohort salt is kept, so raising the share
    /// only adds clients. Also ends a pause.
    #[arg(long)]
    percent: Percent,
    /// Only this target triple [default: every triple of the channel].
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    sign: SignArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct PauseArgs {
    #[arg(long)]
    channel: String,
    /// Only this target triple [default: every triple of the channel].
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    sign: SignArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct RollbackArgs {
    #[arg(long)]
    channel: String,
    /// Version to go back to, from the channel's history [default: the
    /// target's previous build].
    #[arg(long)]
    to: Option<String>,
    /// Only this target triple [default: every triple of the channel].
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    sign: SignArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct StatusArgs {
    /// Only this channel [default: every channel].
    #[arg(long)]
    channel: Option<String>,
    /// Keys directory whose root.json verifies the manifests [default: $OUTRIDER_HOME/keys].
    #[arg(long)]
    keys: Option<PathBuf>,
}

/// `promote`: `--from`'s target (version, artifact, deltas, stub) becomes
/// `--to`'s, with `previous` the build it replaces.
pub(super) fn promote(client: &ApiClient, args: PromoteArgs) -> Result<()> {
    let from = channel_arg("--from", &args.from)?;
    let to = channel_arg("--to", &args.to)?;
    if from == to {
        return Err(UsageError("--from and --to name the same channel".to_owned()).into());
    }
    let signer = Signer::load(&args.sign)?;
    let source = signer.require_current(client, &from)?;
    let triples = selected_triples(&source, args.target.as_deref())?;
    let base = super::current_manifest(client, &signer.root, &to)?
        .map(|v| v.manifest)
        .unwrap_or_else(|| ReleaseManifest::new(to.clone(), 0, 0, BTreeMap::new()));
    let mut next = signer.next(base);
    for triple in &triples {
        let rollout = fresh_rollout(args.percent)?;
        let replaced = next.targets.remove(triple);
        next.targets.insert(
            triple.clone(),
            promoted(&source.targets[triple], replaced, rollout),
        );
    }
    signer.sign_and_put(client, &next)?;
    println!("promoted {from} to {to} (sequence {})", next.sequence);
    print_targets(&next, &triples);
    Ok(())
}

/// `rollout`: a new share for the channel's targets.
pub(super) fn rollout(client: &ApiClient, args: RolloutArgs) -> Result<()> {
    let channel = channel_arg("--channel", &args.channel)?;
    let signer = Signer::load(&args.sign)?;
    let mut next = signer.next(signer.require_current(client, &channel)?);
    let triples = selected_triples(&next, args.target.as_deref())?;
    for triple in &triples {
        let target = next
            .targets
            .get_mut(triple)
            .expect("selected triples exist");
        with_share(target, args.percent, random_salt()?);
    }
    signer.sign_and_put(client, &next)?;
    println!(
        "channel {channel} rolls out at {} (sequence {})",
        args.percent, next.sequence
    );
    print_targets(&next, &triples);
    Ok(())
}

/// `pause`: nobody new takes the channel's build; clients already on it keep
/// it, and clients outside keep theirs (fresh installs get `previous`). A
/// target without a rollout gets one at 100%, paused, so that a pause is
/// always visible and `rollout --percent P` resumes with the same cohort.
/// Pausing does not take the build away from anyone: that is `rollback`.
pub(super) fn pause(client: &ApiClient, args: PauseArgs) -> Result<()> {
    let channel = channel_arg("--channel", &args.channel)?;
    let signer = Signer::load(&args.sign)?;
    let mut next = signer.next(signer.require_current(client, &channel)?);
    let triples = selected_triples(&next, args.target.as_deref())?;
    for triple in &triples {
        let target = next
            .targets
            .get_mut(triple)
            .expect("selected triples exist");
        paused(target, random_salt()?);
    }
    signer.sign_and_put(client, &next)?;
    println!("paused channel {channel} (sequence {})", next.sequence);
    print_targets(&next, &triples);
    Ok(())
}

/// `rollback`: the channel's target becomes an older build, at 100%, with a
/// delta from the bad build when one is smaller than the full build (so the
/// fleet rolls back cheaply). Clients accept it because the sequence is
/// higher (an operator rollback, DESIGN §5).
pub(super) fn rollback(client: &ApiClient, args: RollbackArgs) -> Result<()> {
    let channel = channel_arg("--channel", &args.channel)?;
    let signer = Signer::load(&args.sign)?;
    let mut next = signer.next(signer.require_current(client, &channel)?);
    let triples = selected_triples(&next, args.target.as_deref())?;
    // Only builds of manifests verified against the local root are
    // candidates, never the server's unsigned listing (see `history`).
    let history = SignedHistory::load(client, &signer.root, &signer.dir, &channel)?;
    for triple in &triples {
        let bad = next.targets[triple].clone();
        let chosen = match args.to.as_deref() {
            Some(version) => Some(rollback_target(client, &history, triple, version)?),
            None => None,
        };
        let good = rollback_build(&bad, chosen, &history.builds(triple)).map_err(|reason| {
            UsageError(format!("cannot roll back {channel} for {triple}: {reason}"))
        })?;
        let delta = fetch_library(client, &good.artifact).and_then(|library| {
            make_delta(client, &bad.artifact, &library, good.artifact.zstd_size)
        });
        let patches = match delta {
            Ok(patches) => patches,
            Err(e) => {
                eprintln!(
                    "warning: no delta from {} to {}: {e:#}",
                    bad.version, good.version
                );
                Default::default()
            }
        };
        let mut target = rolled_back(&bad, &good);
        patches.add_to(&mut target, bad.artifact.sha256);
        next.targets.insert(triple.clone(), target);
    }
    signer.sign_and_put(client, &next)?;
    println!("rolled back channel {channel} (sequence {})", next.sequence);
    print_targets(&next, &triples);
    Ok(())
}

fn fresh_rollout(percent: Percent) -> Result<Option<Rollout>> {
    Ok((percent != Percent::FULL).then_some(Rollout {
        basis_points: percent.basis_points(),
        salt: random_salt()?,
        paused: false,
    }))
}

/// The target `source` promoted over `replaced`: `source`'s build with
/// `rollout` (a fresh cohort, or none for 100%); `previous` is the replaced
/// build, or its own `previous` if it is the same build.
fn promoted(source: &Target, replaced: Option<Target>, rollout: Option<Rollout>) -> Target {
    let mut target = source.clone();
    target.rollout = rollout;
    target.previous = match replaced {
        Some(old) if old.artifact.sha256 == source.artifact.sha256 => old.previous,
        Some(old) => Some(PreviousBuild {
            version: old.version,
            artifact: old.artifact,
        }),
        // A new channel: its fleet has no build, `source`'s previous is the
        // best guess of a known-good one.
        None => source.previous.clone(),
    };
    target
}

/// Sets the share of `target`'s rollout and unpauses it. An existing salt is
/// kept (the cohort only grows when the share does); a target without a
/// rollout gets `fresh_salt`, or stays without one at 100%.
fn with_share(target: &mut Target, percent: Percent, fresh_salt: String) {
    match &mut target.rollout {
        Some(rollout) => {
            rollout.basis_points = percent.basis_points();
            rollout.paused = false;
        }
        None if percent == Percent::FULL => {}
        None => {
            target.rollout = Some(Rollout {
                basis_points: percent.basis_points(),
                salt: fresh_salt,
                paused: false,
            });
        }
    }
}

/// Pauses `target`'s rollout; a target without one gets a paused rollout at
/// 100% with `fresh_salt`.
fn paused(target: &mut Target, fresh_salt: String) {
    target
        .rollout
        .get_or_insert(Rollout {
            basis_points: FULL_ROLLOUT,
            salt: fresh_salt,
            paused: false,
        })
        .paused = true;
}

/// The build a rollback of `bad` goes to: `chosen` (the signed build of
/// `--to`), else `bad`'s previous build with its ABI from `signed` (the
/// builds of verified manifests; the bad build's ABI if none lists it).
/// Fails with a sentence saying why none fits.
fn rollback_build(
    bad: &Target,
    chosen: Option<BuildInfo>,
    signed: &[BuildInfo],
) -> Result<BuildInfo, String> {
    let good = match chosen {
        Some(build) => build,
        None => {
            let previous = bad
                .previous
                .as_ref()
                .ok_or("the target records no previous build; pass --to VERSION".to_owned())?;
            let abi_major = signed
                .iter()
                .find(|b| b.artifact.sha256 == previous.artifact.sha256)
                .and_then(|b| b.abi_major);
            BuildInfo {
                version: previous.version.clone(),
                abi_major,
                artifact: previous.artifact.clone(),
            }
        }
    };
    if good.artifact.sha256 == bad.artifact.sha256 {
        return Err(format!("{} is already the current build", good.version));
    }
    Ok(good)
}

/// The target after rolling `bad` back to `good`: everyone takes `good`
/// (no rollout, no previous); the stub artifact is kept. Deltas are added by
/// the caller.
fn rolled_back(bad: &Target, good: &BuildInfo) -> Target {
    let mut target = Target::full(
        good.version.clone(),
        good.abi_major.unwrap_or(bad.abi_major),
        good.artifact.clone(),
    );
    target.stub = bad.stub.clone();
    target
}

fn print_targets(manifest: &ReleaseManifest, triples: &[String]) {
    for triple in triples {
        let t = &manifest.targets[triple];
        println!(
            "  {triple:<16}  {:<24}  {}",
            t.version,
            share(t.rollout.as_ref())
        );
    }
}

/// `100%`, `5%`, `5% paused`.
fn share(rollout: Option<&Rollout>) -> String {
    match rollout {
        None => "100%".to_owned(),
        Some(r) => {
            let pct = format_basis_points(r.basis_points.min(FULL_ROLLOUT));
            if r.paused {
                format!("{pct} paused")
            } else {
                pct
            }
        }
    }
}

/// A row of `GET /api/v1/agents`, only what status needs. The build fields
/// are newer than the endpoint; older servers leave them out.
#[derive(Debug, Deserialize)]
struct AgentRow {
    agent_version: String,
    #[serde(default)]
    build_sha256: Option<String>,
    #[serde(default)]
    build_version: Option<String>,
    #[serde(default)]
    stub_version: Option<String>,
}

impl AgentRow {
    /// Whether this agent runs `artifact` (by build hash when reported, else
    /// by version).
    fn runs(&self, version: &str, artifact: &Artifact) -> bool {
        match (&self.build_sha256, &self.build_version) {
            (Some(sha), _) => *sha == artifact.sha256.to_string(),
            (None, Some(v)) => v == version,
            (None, None) => self.agent_version == version,
        }
    }

    /// The host's version as every view shows it.
    fn version(&self) -> &str {
        host_version(self.build_version.as_deref(), &self.agent_version)
    }
}

/// `status --json` output.
#[derive(Debug, Serialize)]
struct StatusReport {
    channels: Vec<ChannelStatus>,
    /// Agents per version they report running ([`host_version`]).
    agents_by_version: BTreeMap<String, usize>,
    /// Agents per version of their stub (`unknown` when not reported).
    stubs_by_version: BTreeMap<String, usize>,
    /// Per channel the agents report: builds, failing updates, rollbacks
    /// (`GET /api/v1/update-health`; absent from older servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    update_health: Option<UpdateHealth>,
}

#[derive(Debug, Serialize)]
struct ChannelStatus {
    channel: Channel,
    sequence: u64,
    expires_unix: u64,
    /// Whether the manifest verified against the local root.json.
    verified: bool,
    targets: Vec<TargetStatus>,
}

#[derive(Debug, Serialize)]
struct TargetStatus {
    triple: String,
    version: String,
    basis_points: u32,
    paused: bool,
    previous: Option<String>,
    deltas: usize,
    /// Agents running this target's build.
    agents: usize,
    /// Agents running the previous build.
    agents_on_previous: usize,
}

/// `status`: per channel its sequence, expiry and per triple the version,
/// share, previous version, deltas and how many agents run it.
pub(super) fn status(client: &ApiClient, json: bool, args: StatusArgs) -> Result<()> {
    let names: Vec<Channel> = match &args.channel {
        Some(raw) => vec![channel_arg("--channel", raw)?],
        None => {
            let listed: Vec<ChannelInfo> = client.get_json("/api/v1/releases/channels")?;
            listed
                .iter()
                .map(|c| channel_arg("channel", &c.channel))
                .collect::<Result<_>>()?
        }
    };
    let dir = args.keys.clone().unwrap_or_else(default_keys_dir);
    let root = match load_root(&dir, now_unix()) {
        Ok(root) => Some(root),
        Err(e) => {
            eprintln!("note: manifests are shown unverified: {e:#}");
            None
        }
    };
    // A bare release repository has no fleet; the channels are still worth showing.
    let agents: Vec<AgentRow> = client.get_json("/api/v1/agents").unwrap_or_else(|e| {
        eprintln!("note: agent counts unavailable: {e:#}");
        Vec::new()
    });
    let mut report = StatusReport {
        channels: Vec::new(),
        agents_by_version: BTreeMap::new(),
        stubs_by_version: BTreeMap::new(),
        update_health: client
            .get_json("/api/v1/update-health")
            .map_err(|e| eprintln!("note: update health unavailable: {e:#}"))
            .ok(),
    };
    for agent in &agents {
        *report
            .agents_by_version
            .entry(agent.version().to_owned())
            .or_default() += 1;
        let stub = agent.stub_version.as_deref().unwrap_or("unknown");
        *report.stubs_by_version.entry(stub.to_owned()).or_default() += 1;
    }
    for channel in names {
        let path = format!("/v1/updates/channels/{channel}/manifest.json");
        let Some(bytes) = client.get_bytes_opt(&path)? else {
            continue;
        };
        let (manifest, verified) = decode(root.as_ref(), &bytes, &channel)?;
        report
            .channels
            .push(channel_status(manifest, verified, &agents));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_status(client, &report);
    }
    Ok(())
}

/// The manifest in `bytes`, verified against `root` if there is one.
fn decode(
    root: Option<&TrustedRoot>,
    bytes: &[u8],
    channel: &Channel,
) -> Result<(ReleaseManifest, bool)> {
    if let Some(root) = root {
        let verified = verify_even_if_expired(root, bytes, channel).with_context(|| {
            format!("the manifest of channel {channel} does not verify against the local root.json")
        })?;
        return Ok((verified.manifest, true));
    }
    let envelope = Envelope::from_bytes(bytes)?;
    let manifest = serde_json::from_slice(envelope.payload())
        .with_context(|| format!("decoding the manifest of channel {channel}"))?;
    Ok((manifest, false))
}

fn channel_status(manifest: ReleaseManifest, verified: bool, agents: &[AgentRow]) -> ChannelStatus {
    let count = |version: &str, artifact: &Artifact| {
        agents.iter().filter(|a| a.runs(version, artifact)).count()
    };
    let targets = manifest
        .targets
        .iter()
        .map(|(triple, t)| TargetStatus {
            triple: triple.clone(),
            version: t.version.clone(),
            basis_points: t.rollout.as_ref().map_or(FULL_ROLLOUT, |r| r.basis_points),
            paused: t.rollout.as_ref().is_some_and(|r| r.paused),
            previous: t.previous.as_ref().map(|p| p.version.clone()),
            deltas: t.deltas.len(),
            agents: count(&t.version, &t.artifact),
            agents_on_previous: t
                .previous
                .as_ref()
                .map_or(0, |p| count(&p.version, &p.artifact)),
        })
        .collect();
    ChannelStatus {
        channel: manifest.channel,
        sequence: manifest.sequence,
        expires_unix: manifest.expires_unix,
        verified,
        targets,
    }
}

fn print_status(client: &ApiClient, report: &StatusReport) {
    if report.channels.is_empty() {
        println!("no releases have been published to {} yet", client.base());
    }
    let now = now_unix();
    for c in &report.channels {
        let expiry = if c.expires_unix <= now {
            "EXPIRED".to_owned()
        } else {
            format!("expires in {}d", (c.expires_unix - now).div_ceil(86_400))
        };
        let unverified = if c.verified { "" } else { "  (unverified)" };
        println!(
            "{}  sequence {}  {expiry}{unverified}",
            c.channel, c.sequence
        );
        println!(
            "  {:<16}  {:<24}  {:<14}  {:<24}  {:>6}  {:>6}",
            "TARGET", "VERSION", "ROLLOUT", "PREVIOUS", "DELTAS", "AGENTS"
        );
        for t in &c.targets {
            let rollout = share(Some(&Rollout {
                basis_points: t.basis_points,
                salt: String::new(),
                paused: t.paused,
            }));
            let previous = match &t.previous {
                Some(v) => format!("{v} ({} agents)", t.agents_on_previous),
                None => "-".to_owned(),
            };
            println!(
                "  {:<16}  {:<24}  {rollout:<14}  {previous:<24}  {:>6}  {:>6}",
                t.triple, t.version, t.deltas, t.agents
            );
        }
        if let Some(health) = channel_health(report, c.channel.as_str()) {
            print_health(health);
        }
    }
    // Agents of channels without a manifest here (or reporting none).
    for health in report.update_health.iter().flat_map(|h| &h.channels) {
        if !report
            .channels
            .iter()
            .any(|c| c.channel.as_str() == health.channel)
        {
            let name = if health.channel.is_empty() {
                "(no channel reported)"
            } else {
                &health.channel
            };
            println!("{name}  no manifest");
            print_health(health);
        }
    }
    if !report.agents_by_version.is_empty() {
        println!("agents by version:");
        for (version, n) in &report.agents_by_version {
            println!("  {version:<24}  {n:>6}");
        }
        println!("agents by stub version:");
        for (version, n) in &report.stubs_by_version {
            println!("  {version:<24}  {n:>6}");
        }
    }
}

fn channel_health<'a>(report: &'a StatusReport, channel: &str) -> Option<&'a ChannelHealth> {
    report
        .update_health
        .as_ref()?
        .channels
        .iter()
        .find(|h| h.channel == channel)
}

/// The update health lines of one channel: `3 agents refuse 1.4.0: …`.
fn print_health(health: &ChannelHealth) {
    println!("  agents on each build:");
    for b in &health.builds {
        let sha = b
            .build_sha256
            .as_deref()
            .map_or("-", |s| s.get(..12).unwrap_or(s));
        println!("    {:<24}  {sha:<12}  {:>6}", b.version, b.agents);
    }
    for group in &health.failing {
        println!("  {}", group.describe());
    }
    println!("  rollbacks in the last 24 h: {}", health.rollbacks_24h);
}

#[cfg(test)]
mod tests {
    use super::super::next_manifest;
    use super::super::publish::tests::artifact;
    use super::*;

    fn build(v: &str) -> Target {
        Target::full(v.into(), 1, artifact(v))
    }

    fn manifest(channel: &str, sequence: u64, targets: &[(&str, Target)]) -> ReleaseManifest {
        let targets = targets
            .iter()
            .map(|(t, target)| (t.to_string(), target.clone()))
            .collect();
        ReleaseManifest::new(channel.parse().unwrap(), sequence, 10, targets)
    }

    #[test]
    fn promote_copies_the_build_and_records_what_it_replaces() {
        let mut beta_target = build("2");
        beta_target.deltas.insert(
            artifact("1").sha256,
            outrider_signing::Delta {
                format: outrider_signing::DeltaFormat::BsdiffZstd,
                sha256: artifact("d").zstd_sha256,
                size: 3,
            },
        );
        beta_target.rollout = Some(Rollout {
            basis_points: 500,
            salt: "beta".into(),
            paused: true,
        });
        let stable = manifest("stable", 7, &[("x86_64-linux", build("1"))]);
        let mut next = next_manifest(stable, 99);
        let replaced = next.targets.remove("x86_64-linux");
        let target = promoted(&beta_target, replaced, None);
        next.targets.insert("x86_64-linux".into(), target.clone());

        assert_eq!(next.sequence, 8);
        assert_eq!(next.channel.as_str(), "stable");
        assert_eq!(
            (target.version.as_str(), &target.artifact),
            ("2", &artifact("2"))
        );
        assert_eq!(target.deltas, beta_target.deltas);
        assert_eq!(target.rollout, None, "100% unless --percent");
        assert_eq!(target.previous.unwrap().version, "1");

        // Promoting the same build again keeps the recorded previous.
        let again = promoted(
            &beta_target,
            Some(next.targets["x86_64-linux"].clone()),
            None,
        );
        assert_eq!(again.previous.unwrap().version, "1");
    }

    #[test]
    fn rollout_keeps_the_salt_and_unpauses() {
        let mut target = build("2");
        with_share(&mut target, Percent(10_000), "s1".into());
        assert_eq!(target.rollout, None);
        with_share(&mut target, Percent(500), "s1".into());
        paused(&mut target, "s2".into());
        with_share(&mut target, Percent(2500), "s3".into());
        assert_eq!(
            target.rollout,
            Some(Rollout {
                basis_points: 2500,
                salt: "s1".into(),
                paused: false
            })
        );
    }

    #[test]
    fn pause_without_rollout_is_full_and_paused() {
        let mut target = build("2");
        target.previous = Some(PreviousBuild {
            version: "1".into(),
            artifact: artifact("1"),
        });
        let mut next = next_manifest(manifest("stable", 3, &[("x86_64-linux", target)]), 99);
        paused(next.targets.get_mut("x86_64-linux").unwrap(), "s".into());
        let t = &next.targets["x86_64-linux"];
        assert_eq!(next.sequence, 4);
        assert_eq!(
            t.rollout,
            Some(Rollout {
                basis_points: 10_000,
                salt: "s".into(),
                paused: true
            })
        );
        assert_eq!(t.previous.as_ref().unwrap().version, "1", "previous kept");
        assert_eq!(t.version, "2");
    }

    #[test]
    fn rollback_goes_to_previous_or_named_version() {
        let history: Vec<BuildInfo> = ["3", "2", "1"]
            .iter()
            .map(|v| BuildInfo {
                version: v.to_string(),
                abi_major: Some(1),
                artifact: artifact(v),
            })
            .collect();
        let mut bad = build("3");
        bad.rollout = Some(Rollout {
            basis_points: 100,
            salt: "s".into(),
            paused: false,
        });
        bad.stub = Some(artifact("stub"));
        let err = rollback_build(&bad, None, &history).unwrap_err();
        assert!(err.contains("--to"), "{err}");

        bad.previous = Some(PreviousBuild {
            version: "2".into(),
            artifact: artifact("2"),
        });
        let good = rollback_build(&bad, None, &history).unwrap();
        assert_eq!((good.version.as_str(), good.abi_major), ("2", Some(1)));
        let unsigned_previous = rollback_build(&bad, None, &[]).unwrap();
        assert_eq!(unsigned_previous.abi_major, None, "ABI only from signed");
        let good = rollback_build(&bad, Some(history[2].clone()), &history).unwrap();
        assert_eq!(good.artifact, artifact("1"));
        let err = rollback_build(&bad, Some(history[0].clone()), &history).unwrap_err();
        assert!(err.contains("already"), "{err}");

        let next = next_manifest(manifest("stable", 5, &[("x86_64-linux", bad.clone())]), 99);
        let target = rolled_back(&next.targets["x86_64-linux"], &good);
        assert_eq!(next.sequence, 6);
        assert_eq!(target.version, "1");
        assert_eq!(target.rollout, None, "everyone goes back");
        assert_eq!(target.previous, None);
        assert_eq!(target.stub, bad.stub);
    }

    #[test]
    fn status_counts_agents_by_build() {
        let mut target = build("2");
        target.previous = Some(PreviousBuild {
            version: "1".into(),
            artifact: artifact("1"),
        });
        let agents = [
            AgentRow {
                agent_version: "0.1.0".into(),
                build_sha256: Some(artifact("2").sha256.to_string()),
                build_version: Some("2".into()),
                stub_version: None,
            },
            AgentRow {
                agent_version: "0.1.0".into(),
                build_sha256: Some(artifact("1").sha256.to_string()),
                build_version: None,
                stub_version: None,
            },
            AgentRow {
                agent_version: "1".into(),
                build_sha256: None,
                build_version: None,
                stub_version: None,
            },
        ];
        let status = channel_status(
            manifest("stable", 1, &[("x86_64-linux", target)]),
            true,
            &agents,
        );
        let t = &status.targets[0];
        assert_eq!((t.agents, t.agents_on_previous), (1, 2));
        assert_eq!((t.basis_points, t.paused), (10_000, false));
    }
}
