//! `outrider release`: publish agent builds to a channel and show channels.
//!
//! `publish` signs locally with the release key; the server only stores and
//! verifies. Steps: hash and zstd-compress the library, upload `root.json`,
//! upload the blob, fetch and verify the channel's current manifest, sign a
//! new one with the next sequence (other targets kept, this target
//! replaced), upload it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use outrider_signing::{
    Artifact, Channel, Error as SigningError, KeyRole, ManifestPolicy, ReleaseManifest, Target,
    TrustedRoot, VerifiedManifest, host_triple, make_manifest, now_unix, sha256, verify_manifest,
};
use serde::{Deserialize, Serialize};

use crate::GlobalArgs;
use crate::UsageError;
use crate::client::ApiClient;
use crate::keys::{RELEASE_KEY_FILE, default_keys_dir, load_key, load_root};

/// The agent library ABI major version this CLI publishes
/// (`outrider_abi::ABI_MAJOR`; the CLI does not depend on the ABI crate).
const ABI_MAJOR: u32 = 1;
/// zstd level for blobs: good ratio, still fast to decompress.
const ZSTD_LEVEL: i32 = 10;
const DAY_SECS: u64 = 86_400;

/// Arguments of `outrider release`.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Sign and upload an agent library build to a channel.
    Publish(PublishArgs),
    /// Show every channel's current sequence and versions.
    Status,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// Channel to publish to (1-32 of a-z, 0-9, '-').
    #[arg(long)]
    channel: String,
    /// Keys directory holding release.key and root.json [default: $OUTRIDER_HOME/keys].
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Version string of the build [default: 0.0.0+<first 12 hex of its sha256>].
    #[arg(long)]
    version: Option<String>,
    /// Target triple the build is for [default: this machine's, e.g. x86_64-linux].
    #[arg(long)]
    target: Option<String>,
    /// Days until the manifest expires; agents refuse an expired manifest.
    #[arg(long, default_value_t = 30)]
    expires_days: u64,
    /// The agent library file (e.g. liboutrider_agent.so).
    path: PathBuf,
}

/// A row of `GET /api/v1/releases/channels`.
#[derive(Debug, Serialize, Deserialize)]
struct ChannelInfo {
    channel: String,
    sequence: u64,
    versions: BTreeMap<String, String>,
    published_unix: u64,
}

/// Runs `outrider release ...`.
pub fn run(client: &ApiClient, global: &GlobalArgs, args: ReleaseArgs) -> Result<()> {
    match args.command {
        ReleaseCommand::Publish(args) => publish(client, args),
        ReleaseCommand::Status => status(client, global.json),
    }
}

fn publish(client: &ApiClient, args: PublishArgs) -> Result<()> {
    let channel: Channel = args
        .channel
        .parse()
        .map_err(|e| UsageError(format!("bad --channel {:?}: {e}", args.channel)))?;
    let triple = args.target.unwrap_or_else(host_triple);
    if triple.is_empty()
        || !triple
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(UsageError(format!(
            "bad --target {triple:?}: expected a triple like x86_64-linux"
        ))
        .into());
    }
    if args.expires_days == 0 {
        return Err(UsageError("--expires-days must be at least 1".to_owned()).into());
    }
    let keys_dir = args.keys.unwrap_or_else(default_keys_dir);
    let now = now_unix();
    let root = load_root(&keys_dir, now)?;
    let release_key = load_key(&keys_dir.join(RELEASE_KEY_FILE), KeyRole::Release)?;
    match root.root().release_keys.get(&release_key.key_id()) {
        None => {
            return Err(UsageError(format!(
                "{} is not a release key of {}/root.json",
                keys_dir.join(RELEASE_KEY_FILE).display(),
                keys_dir.display()
            ))
            .into());
        }
        Some(k) if k.expires_unix <= now => {
            return Err(UsageError(format!(
                "release key {} expired at unix {}; rotate it in a new root",
                release_key.key_id(),
                k.expires_unix
            ))
            .into());
        }
        Some(_) => {}
    }

    // The build: hash it, compress it, hash the blob.
    let library = std::fs::read(&args.path).map_err(|e| {
        UsageError(format!(
            "cannot read the library {}: {e}",
            args.path.display()
        ))
    })?;
    if library.is_empty() {
        return Err(UsageError(format!("the library {} is empty", args.path.display())).into());
    }
    let blob =
        zstd::stream::encode_all(&library[..], ZSTD_LEVEL).context("compressing the library")?;
    let artifact = Artifact {
        sha256: sha256(&library),
        size: library.len() as u64,
        zstd_sha256: sha256(&blob),
        zstd_size: blob.len() as u64,
    };
    let version = args
        .version
        .unwrap_or_else(|| format!("0.0.0+{}", &artifact.sha256.to_string()[..12]));

    // Upload the root first (a no-op if the server has it), then the blob the
    // manifest will reference.
    client
        .put_bytes("/api/v1/releases/root", root.envelope_bytes())
        .context("uploading root.json")?;
    client
        .put_bytes(
            &format!("/api/v1/releases/blobs/{}", artifact.zstd_sha256),
            &blob,
        )
        .context("uploading the build")?;

    let current = current_manifest(client, &root, &channel)?;
    let (sequence, mut targets, extra) = match current {
        Some(v) => (v.manifest.sequence, v.manifest.targets, v.manifest.extra),
        None => (0, BTreeMap::new(), BTreeMap::new()),
    };
    targets.insert(
        triple.clone(),
        Target {
            version: version.clone(),
            abi_major: ABI_MAJOR,
            artifact: artifact.clone(),
            deltas: BTreeMap::new(),
            rollout: None,
            previous: None,
            stub: None,
            extra: BTreeMap::new(),
        },
    );
    let manifest = ReleaseManifest {
        channel: channel.clone(),
        sequence: sequence + 1,
        expires_unix: now + args.expires_days.saturating_mul(DAY_SECS),
        targets,
        extra,
    };
    let envelope = make_manifest(&manifest, &[&release_key])?;
    client
        .put_bytes(
            &format!("/api/v1/releases/channels/{channel}/manifest"),
            &envelope.to_bytes(),
        )
        .context("uploading the manifest")?;

    println!("published to channel {channel}");
    println!("  sequence  {}", manifest.sequence);
    println!("  target    {triple}");
    println!("  version   {version}");
    println!("  sha256    {}  ({} bytes)", artifact.sha256, artifact.size);
    println!(
        "  zstd      {}  ({} bytes)",
        artifact.zstd_sha256, artifact.zstd_size
    );
    Ok(())
}

/// The channel's current manifest, verified against the local root, or
/// `None` if the channel has none yet. An expired manifest is still used as
/// the base (verified as of just before it expired): publishing is how an
/// expired channel is brought back.
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
    let policy = ManifestPolicy {
        channel,
        now_unix: now_unix(),
        floor: None,
    };
    let verified = match verify_manifest(root, &bytes, &policy) {
        Err(SigningError::Expired {
            what: "release manifest",
            expired_at,
            ..
        }) => {
            let policy = ManifestPolicy {
                now_unix: expired_at.saturating_sub(1),
                ..policy
            };
            verify_manifest(root, &bytes, &policy)
        }
        other => other,
    };
    verified
        .map(Some)
        .with_context(|| format!("the server's current manifest for channel {channel} does not verify against the local root.json"))
}

fn status(client: &ApiClient, json: bool) -> Result<()> {
    let channels: Vec<ChannelInfo> = client.get_json("/api/v1/releases/channels")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&channels)?);
        return Ok(());
    }
    if channels.is_empty() {
        println!("no releases have been published to {} yet", client.base());
        return Ok(());
    }
    let now = now_unix();
    println!(
        "{:<16}  {:>8}  {:<16}  {:<28}  {:9}",
        "CHANNEL", "SEQUENCE", "TARGET", "VERSION", "PUBLISHED"
    );
    for c in &channels {
        let published = format!("{}s ago", now.saturating_sub(c.published_unix));
        for (triple, version) in &c.versions {
            println!(
                "{:<16}  {:>8}  {:<16}  {:<28}  {published}",
                c.channel, c.sequence, triple, version
            );
        }
    }
    Ok(())
}
