//! `outrider release`: publish agent builds, steer channels, export the
//! repository.
//!
//! Every command that changes a channel signs locally with the release
//! key(s) of the keys directory; the server only verifies and stores. Each
//! follows the same steps: (1) fetch the channel's current manifest, (2)
//! verify it against the local `root.json`, (3) derive the new manifest with
//! sequence + 1 and a fresh expiry, (4) sign it with enough release keys for
//! the root's threshold, (5) `PUT` it. The server refuses a manifest whose
//! sequence is not above its current one, so two operators racing each other
//! cannot silently overwrite one another: the loser retries.
//!
//! - [`publish`]: a new build, with deltas and an optional staged rollout.
//! - [`channel`]: `promote`, `rollout`, `pause`, `rollback`, `status`.
//! - [`export`]: the whole repository as static files.

mod channel;
mod export;
mod history;
mod publish;
mod stub;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use outrider_signing::{
    Artifact, Channel, Error as SigningError, KeyPair, KeyRole, ManifestPolicy, ReleaseManifest,
    TrustedRoot, VerifiedManifest, make_manifest, now_unix, sha256, verify_manifest,
};
use serde::{Deserialize, Serialize};

use crate::GlobalArgs;
use crate::UsageError;
use crate::client::ApiClient;
use crate::keys::{default_keys_dir, load_root};

const DAY_SECS: u64 = 86_400;
/// Basis points of a full rollout (100%).
const FULL_ROLLOUT: u32 = 10_000;

/// Arguments of `outrider release`.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Sign and upload an agent library build to a channel.
    Publish(publish::PublishArgs),
    /// Make one channel's build (e.g. beta's) the build of another (e.g. stable).
    Promote(channel::PromoteArgs),
    /// Change the share of the fleet that takes a channel's build.
    Rollout(channel::RolloutArgs),
    /// Stop a channel's rollout: nobody new takes the build.
    Pause(channel::PauseArgs),
    /// Point a channel back at an older build with a new, higher sequence.
    Rollback(channel::RollbackArgs),
    /// Show channels, rollouts and how many agents run each version.
    Status(channel::StatusArgs),
    /// Write the whole repository as static files for a web server or CDN.
    Export(export::ExportArgs),
    /// Sign and upload a new outrider-agent stub binary for a channel (rare).
    PublishStub(stub::PublishStubArgs),
}

/// Runs `outrider release ...`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: ReleaseArgs) -> Result<()> {
    match args.command {
        ReleaseCommand::Publish(args) => publish::run(client, args),
        ReleaseCommand::Promote(args) => channel::promote(client, args),
        ReleaseCommand::Rollout(args) => channel::rollout(client, args),
        ReleaseCommand::Pause(args) => channel::pause(client, args),
        ReleaseCommand::Rollback(args) => channel::rollback(client, args),
        ReleaseCommand::Status(args) => channel::status(client, global.json, args),
        ReleaseCommand::Export(args) => export::run(client, args),
        ReleaseCommand::PublishStub(args) => stub::run(client, args),
    }
}

/// Options of every command that signs a new manifest.
#[derive(Debug, clap::Args)]
struct SignArgs {
    /// Keys directory holding root.json and the release key file(s) [default: $OUTRIDER_HOME/keys].
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Days until the new manifest expires; agents refuse an expired manifest.
    #[arg(long, default_value_t = 30)]
    expires_days: u64,
}

/// The local trust material: the root and the release keys that sign.
#[derive(Debug)]
struct Signer {
    /// The keys directory; its `published/` is the local record of what it
    /// signed (see [`history`]).
    dir: PathBuf,
    root: TrustedRoot,
    keys: Vec<KeyPair>,
    expires_unix: u64,
}

impl Signer {
    /// Loads `root.json` and every `*.key` file of the keys directory that
    /// is a release key the root lists and has not expired. Fails with a
    /// [`UsageError`] when they do not reach the root's release threshold.
    fn load(args: &SignArgs) -> Result<Signer> {
        if args.expires_days == 0 {
            return Err(UsageError("--expires-days must be at least 1".to_owned()).into());
        }
        let dir = args.keys.clone().unwrap_or_else(default_keys_dir);
        let now = now_unix();
        let root = load_root(&dir, now)?;
        let keys = release_keys(&dir, &root, now)?;
        Ok(Signer {
            dir,
            root,
            keys,
            expires_unix: now.saturating_add(args.expires_days.saturating_mul(DAY_SECS)),
        })
    }

    /// The channel's current manifest, verified, or a [`UsageError`] if the
    /// channel has none.
    fn require_current(&self, client: &ApiClient, channel: &Channel) -> Result<ReleaseManifest> {
        match current_manifest(client, &self.root, channel)? {
            Some(v) => Ok(v.manifest),
            None => Err(UsageError(format!(
                "channel {channel} has no manifest yet; publish a build to it first"
            ))
            .into()),
        }
    }

    /// Step 3: the manifest following `base`, with sequence + 1 and this
    /// signer's expiry; the caller then changes its targets.
    fn next(&self, base: ReleaseManifest) -> ReleaseManifest {
        next_manifest(base, self.expires_unix)
    }

    /// Steps 4 and 5: signs `manifest`, uploads it and, once the server
    /// took it, adds it to the local record (a failure there is a warning:
    /// the release happened).
    fn sign_and_put(&self, client: &ApiClient, manifest: &ReleaseManifest) -> Result<()> {
        let keys: Vec<&KeyPair> = self.keys.iter().collect();
        let envelope = make_manifest(manifest, &keys)?.to_bytes();
        client
            .put_bytes(
                &format!("/api/v1/releases/channels/{}/manifest", manifest.channel),
                &envelope,
            )
            .context("uploading the manifest")?;
        if let Err(e) = history::record(&self.dir, manifest, &envelope) {
            eprintln!("warning: the manifest is published but not recorded locally: {e:#}");
        }
        Ok(())
    }
}

/// `base` with the next sequence and a new expiry; targets and unknown
/// fields kept.
fn next_manifest(base: ReleaseManifest, expires_unix: u64) -> ReleaseManifest {
    ReleaseManifest {
        sequence: base.sequence + 1,
        expires_unix,
        ..base
    }
}

/// The release keys in `dir` that `root` trusts now, at least its threshold.
fn release_keys(dir: &Path, root: &TrustedRoot, now: u64) -> Result<Vec<KeyPair>> {
    let listing = std::fs::read_dir(dir).map_err(|e| {
        UsageError(format!(
            "cannot list the keys directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    paths.sort();
    let mut keys: Vec<KeyPair> = Vec::new();
    for path in paths {
        let key = KeyPair::read(&path)
            .map_err(|e| UsageError(format!("cannot use key file {}: {e}", path.display())))?;
        let trusted = root
            .root()
            .release_keys
            .get(&key.key_id())
            .is_some_and(|k| k.expires_unix > now);
        if key.role() == KeyRole::Release
            && trusted
            && keys.iter().all(|k| k.key_id() != key.key_id())
        {
            keys.push(key);
        }
    }
    let need = root.root().release_threshold as usize;
    if keys.len() < need {
        return Err(UsageError(format!(
            "{} holds {} unexpired release key(s) that its root.json trusts, but manifests need {need}; \
             add release keys with `outrider keys` or pass --keys",
            dir.display(),
            keys.len()
        ))
        .into());
    }
    Ok(keys)
}

/// Steps 1 and 2: the channel's current manifest, verified against the local
/// root, or `None` if the channel has none yet. An expired manifest is still
/// used as the base (verified as of just before it expired): signing a new
/// one is how an expired channel is brought back.
fn current_manifest(
    client: &ApiClient,
    root: &TrustedRoot,
    channel: &Channel,
) -> Result<Option<VerifiedManifest>> {
    let path = format!("/v1/updates/channels/{channel}/manifest.json");
    let Some(bytes) = client
        .get_bytes_opt(&path)
        .context("fetching the current manifest")?
    else {
        return Ok(None);
    };
    verify_even_if_expired(root, &bytes, channel)
        .map(Some)
        .map_err(|reason| history::forged_current(channel, &bytes, reason).into())
}

/// [`verify_manifest`] without a floor; an expired manifest is verified as of
/// the second before it expired.
fn verify_even_if_expired(
    root: &TrustedRoot,
    bytes: &[u8],
    channel: &Channel,
) -> Result<VerifiedManifest, SigningError> {
    let policy = ManifestPolicy {
        channel,
        now_unix: now_unix(),
        floor: None,
    };
    match verify_manifest(root, bytes, &policy) {
        Err(SigningError::Expired {
            what: "release manifest",
            expired_at,
            ..
        }) => {
            let policy = ManifestPolicy {
                now_unix: expired_at.saturating_sub(1),
                ..policy
            };
            verify_manifest(root, bytes, &policy)
        }
        other => other,
    }
}

/// Parses a `--channel`-style flag value.
fn channel_arg(flag: &str, raw: &str) -> Result<Channel> {
    raw.parse()
        .map_err(|e| UsageError(format!("bad {flag} {raw:?}: {e}")).into())
}

/// Parses a `--target` triple (`x86_64-linux`).
fn triple_arg(raw: &str) -> Result<String> {
    if raw.is_empty()
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(UsageError(format!(
            "bad --target {raw:?}: expected a triple like x86_64-linux"
        ))
        .into());
    }
    Ok(raw.to_owned())
}

/// The triples a channel command acts on: `--target` if given (it must be in
/// the manifest), else every triple of the manifest.
fn selected_triples(manifest: &ReleaseManifest, target: Option<&str>) -> Result<Vec<String>> {
    match target {
        Some(raw) => {
            let triple = triple_arg(raw)?;
            if !manifest.targets.contains_key(&triple) {
                return Err(UsageError(format!(
                    "channel {} has no build for target {triple}",
                    manifest.channel
                ))
                .into());
            }
            Ok(vec![triple])
        }
        None => Ok(manifest.targets.keys().cloned().collect()),
    }
}

/// A rollout share: more than 0% and at most 100%, with up to two decimals,
/// held as basis points (hundredths of a percent, `0.01%` = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Percent(u32);

impl Percent {
    const FULL: Percent = Percent(FULL_ROLLOUT);

    fn basis_points(self) -> u32 {
        self.0
    }
}

impl FromStr for Percent {
    type Err = String;

    fn from_str(raw: &str) -> Result<Percent, String> {
        let bad = || {
            format!(
                "{raw:?} is not a percentage above 0 and at most 100 with up to two decimals (e.g. 5, 0.5, 12.25)"
            )
        };
        let s = raw.trim().trim_end_matches('%');
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || whole.len() > 3 || frac.len() > 2 || !digits(whole) || !digits(frac)
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        let bp = whole * 100 + frac;
        if bp == 0 || bp > FULL_ROLLOUT {
            return Err(bad());
        }
        Ok(Percent(bp))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_basis_points(self.0))
    }
}

/// `500` → `5%`, `50` → `0.5%`, `1234` → `12.34%`.
fn format_basis_points(bp: u32) -> String {
    let (whole, frac) = (bp / 100, bp % 100);
    match frac {
        0 => format!("{whole}%"),
        f if f % 10 == 0 => format!("{whole}.{}%", f / 10),
        f => format!("{whole}.{f:02}%"),
    }
}

/// A new cohort salt: 16 random bytes, hex.
fn random_salt() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness for a rollout salt: {e}"))?;
    Ok(hex::encode(bytes))
}

/// A row of `GET /api/v1/releases/channels`.
#[derive(Debug, Serialize, Deserialize)]
struct ChannelInfo {
    channel: String,
    sequence: u64,
    versions: BTreeMap<String, String>,
    published_unix: u64,
}

/// A row of `GET /api/v1/releases/channels/{channel}/builds`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BuildInfo {
    version: String,
    #[serde(default)]
    abi_major: Option<u32>,
    artifact: Artifact,
}

/// The last `limit` distinct builds `channel` offered for `triple`, newest first.
fn fetch_builds(
    client: &ApiClient,
    channel: &Channel,
    triple: &str,
    limit: usize,
) -> Result<Vec<BuildInfo>> {
    client
        .get_json(&format!(
            "/api/v1/releases/channels/{channel}/builds?target={triple}&limit={limit}"
        ))
        .with_context(|| format!("listing the builds of channel {channel} for {triple}"))
}

/// Downloads a build and returns the uncompressed library, after checking
/// the blob's size and hash, decompressing at most the declared size, and
/// checking the library's hash. Fails naming the check that failed.
fn fetch_library(client: &ApiClient, artifact: &Artifact) -> Result<Vec<u8>> {
    let sha = artifact.zstd_sha256;
    let blob = client
        .get_bytes_opt(&format!("/v1/updates/blobs/{sha}"))?
        .ok_or_else(|| anyhow!("the server has no blob {sha}"))?;
    if blob.len() as u64 != artifact.zstd_size || sha256(&blob) != sha {
        bail!(
            "blob {sha} from the server does not match its name and declared size {}",
            artifact.zstd_size
        );
    }
    let mut library = Vec::new();
    zstd::stream::read::Decoder::new(&blob[..])
        .context("opening a zstd blob")?
        .take(artifact.size.saturating_add(1))
        .read_to_end(&mut library)
        .with_context(|| format!("decompressing blob {sha}"))?;
    if library.len() as u64 != artifact.size || sha256(&library) != artifact.sha256 {
        bail!(
            "blob {sha} does not decompress to library {} of {} bytes",
            artifact.sha256,
            artifact.size
        );
    }
    Ok(library)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_parsing() {
        for (raw, bp) in [
            ("100", 10_000),
            ("5", 500),
            ("0.5", 50),
            ("0.01", 1),
            ("12.25", 1225),
            ("12.3", 1230),
            ("7%", 700),
            ("100.00", 10_000),
        ] {
            assert_eq!(raw.parse::<Percent>(), Ok(Percent(bp)), "{raw}");
        }
        for raw in [
            "0", "0.00", "100.01", "101", "-5", "", ".5", "1.234", "1e2", "five", "1000",
        ] {
            let err = raw.parse::<Percent>().unwrap_err();
            assert!(err.contains(&format!("{raw:?}")), "{raw}: {err}");
        }
    }

    #[test]
    fn percent_display() {
        for (bp, shown) in [
            (10_000, "100%"),
            (500, "5%"),
            (50, "0.5%"),
            (1, "0.01%"),
            (1225, "12.25%"),
        ] {
            assert_eq!(Percent(bp).to_string(), shown);
        }
    }

    #[test]
    fn next_manifest_bumps_sequence_and_keeps_the_rest() {
        let mut base = ReleaseManifest::new("beta".parse().unwrap(), 41, 5, BTreeMap::new());
        base.extra.insert("future".into(), serde_json::json!(true));
        let next = next_manifest(base.clone(), 99);
        assert_eq!((next.sequence, next.expires_unix), (42, 99));
        assert_eq!((next.channel, next.extra), (base.channel, base.extra));
    }

    #[test]
    fn salts_are_fresh() {
        let (a, b) = (random_salt().unwrap(), random_salt().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
