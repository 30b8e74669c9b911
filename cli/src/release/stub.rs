//! `publish-stub`: put a new `outrider-agent` stub binary into a channel's
//! manifest (rare: the stub is built to never change).
//!
//! The stub artifact rides on the channel's current target for the triple:
//! the next manifest (sequence + 1) is the current one with `stub` set, so
//! the library build, rollout and deltas are untouched. Stubs verify it like
//! a library build (size cap, both hashes) before replacing themselves.

use std::path::PathBuf;

use anyhow::{Context, Result};
use outrider_signing::{Artifact, host_triple, sha256};

use super::{SignArgs, Signer, channel_arg, triple_arg};
use crate::UsageError;
use crate::client::ApiClient;

/// zstd level for the stub binary (the level `publish` uses for libraries).
const ZSTD_LEVEL: i32 = 10;

#[derive(Debug, clap::Args)]
pub(super) struct PublishStubArgs {
    /// Channel whose stubs update themselves.
    #[arg(long)]
    channel: String,
    /// Target triple of the binary [default: this machine's].
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    sign: SignArgs,
    /// Path of the new `outrider-agent` binary.
    path: PathBuf,
}

/// Uploads the binary and signs a manifest that names it as the stub.
pub(super) fn run(client: &ApiClient, args: PublishStubArgs) -> Result<()> {
    let channel = channel_arg("--channel", &args.channel)?;
    let triple = triple_arg(&args.target.unwrap_or_else(host_triple))?;
    let signer = Signer::load(&args.sign)?;
    let binary = std::fs::read(&args.path).map_err(|e| {
        UsageError(format!(
            "cannot read the stub binary {}: {e}",
            args.path.display()
        ))
    })?;
    if !binary.starts_with(b"\x7fELF") {
        return Err(UsageError(format!("{} is not an ELF executable", args.path.display())).into());
    }
    let blob = zstd::stream::encode_all(&binary[..], ZSTD_LEVEL).context("compressing the stub")?;
    let artifact = Artifact {
        sha256: sha256(&binary),
        size: binary.len() as u64,
        zstd_sha256: sha256(&blob),
        zstd_size: blob.len() as u64,
    };
    let mut next = signer.next(signer.require_current(client, &channel)?);
    let target = next.targets.get_mut(&triple).ok_or_else(|| {
        UsageError(format!(
            "channel {channel} has no build for {triple}; publish a library build first"
        ))
    })?;
    target.stub = Some(artifact.clone());
    client
        .put_bytes(
            &format!("/api/v1/releases/blobs/{}", artifact.zstd_sha256),
            &blob,
        )
        .context("uploading the stub")?;
    // Uncompressed too, for install.sh (see `ReleaseManifest::referenced_blobs`).
    client
        .put_bytes(
            &format!("/api/v1/releases/blobs/{}", artifact.sha256),
            &binary,
        )
        .context("uploading the uncompressed stub")?;
    signer.sign_and_put(client, &next)?;
    println!("stub published to channel {channel}");
    println!("  sequence  {}", next.sequence);
    println!("  target    {triple}");
    println!("  sha256    {}  ({} bytes)", artifact.sha256, artifact.size);
    Ok(())
}
