//! `outrider release export DIR`: the repository as static files, so that any
//! plain web server or CDN can serve updates.
//!
//! Layout (mirrors the URL paths of the server's public routes):
//! - `DIR/v1/updates/blobs/<sha256>` — every blob a current manifest
//!   references (artifact, previous build, deltas, stub)
//! - `DIR/v1/updates/roots/<version>.json` — every root version, when the
//!   server serves the chain (`/v1/updates/roots/1.json` exists)
//! - `DIR/v1/updates/root.json` — the current root
//! - `DIR/v1/updates/channels/<channel>/manifest.json` — every channel
//!
//! They are written in that order, each as a temp file + fsync + rename, so
//! a mirror served while it is refreshed never lists a blob it lacks. Every
//! manifest is verified against the local `root.json` and every blob's hash
//! is checked before it is written; blobs already present with the right
//! hash are skipped, so a re-export only fetches what is new. Files no
//! longer referenced are left in place (a client may be mid-download).
//! Serve manifests with `Cache-Control: no-cache` and blobs as immutable.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use outrider_signing::{Sha256, TrustedRoot, now_unix, sha256};

use super::{ChannelInfo, channel_arg, verify_even_if_expired};
use crate::client::ApiClient;
use crate::files::write_atomic;
use crate::keys::{default_keys_dir, load_root};

#[derive(Debug, clap::Args)]
pub(super) struct ExportArgs {
    /// Keys directory whose root.json verifies the manifests [default: $OUTRIDER_HOME/keys].
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Directory to write the repository into (created if missing).
    dir: PathBuf,
}

pub(super) fn run(client: &ApiClient, args: ExportArgs) -> Result<()> {
    let root = load_root(&args.keys.unwrap_or_else(default_keys_dir), now_unix())?;
    let out = args.dir.join("v1").join("updates");

    let root_bytes = client
        .get_bytes_opt("/v1/updates/root.json")?
        .ok_or_else(|| anyhow!("the server has no root.json; publish a release first"))?;
    // Only its version is needed here; clients verify the chain themselves.
    let root_version = TrustedRoot::from_bytes_self_signed(&root_bytes, 0)
        .context("the server's root.json does not verify")?
        .root()
        .version;

    let listed: Vec<ChannelInfo> = client.get_json("/api/v1/releases/channels")?;
    let mut manifests = Vec::new();
    let mut blobs: BTreeMap<Sha256, u64> = BTreeMap::new();
    for info in &listed {
        let channel = channel_arg("channel", &info.channel)?;
        let path = format!("/v1/updates/channels/{channel}/manifest.json");
        let Some(bytes) = client.get_bytes_opt(&path)? else {
            continue;
        };
        let manifest = verify_even_if_expired(&root, &bytes, &channel)
            .with_context(|| {
                format!(
                    "the manifest of channel {channel} does not verify against the local root.json"
                )
            })?
            .manifest;
        blobs.extend(manifest.referenced_blobs());
        manifests.push((channel, bytes));
    }

    let blob_dir = out.join("blobs");
    create_dir(&blob_dir)?;
    let (mut fetched, mut kept) = (0usize, 0usize);
    for (sha, size) in &blobs {
        let path = blob_dir.join(sha.to_string());
        if fs::read(&path).is_ok_and(|b| sha256(&b) == *sha) {
            kept += 1;
            continue;
        }
        let bytes = client
            .get_bytes_opt(&format!("/v1/updates/blobs/{sha}"))?
            .ok_or_else(|| anyhow!("the server lacks blob {sha}, which a manifest references"))?;
        if bytes.len() as u64 != *size || sha256(&bytes) != *sha {
            bail!("blob {sha} from the server does not match its name and declared size {size}");
        }
        write_atomic(&path, &bytes)?;
        fetched += 1;
    }

    // The root chain, if the server serves it: every version up to the current.
    let mut chain = 0;
    if let Some(first) = client.get_bytes_opt("/v1/updates/roots/1.json")? {
        let roots = out.join("roots");
        create_dir(&roots)?;
        write_atomic(&roots.join("1.json"), &first)?;
        for version in 2..=root_version {
            let bytes = client
                .get_bytes_opt(&format!("/v1/updates/roots/{version}.json"))?
                .ok_or_else(|| anyhow!("the server lacks root version {version}"))?;
            write_atomic(&roots.join(format!("{version}.json")), &bytes)?;
        }
        chain = root_version;
    }
    write_atomic(&out.join("root.json"), &root_bytes)?;

    for (channel, bytes) in &manifests {
        let dir = out.join("channels").join(channel.as_str());
        create_dir(&dir)?;
        write_atomic(&dir.join("manifest.json"), bytes)?;
    }

    println!("exported {} to {}", client.base(), args.dir.display());
    println!("  root      version {root_version} ({chain} chain files)");
    println!("  channels  {}", manifests.len());
    println!(
        "  blobs     {} ({fetched} fetched, {kept} already present)",
        blobs.len()
    );
    Ok(())
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outrider_signing::ReleaseManifest;

    use outrider_signing::{Delta, DeltaFormat, PreviousBuild, Target};

    use super::super::publish::tests::artifact;
    use super::*;

    #[test]
    fn every_kind_of_blob_is_referenced() {
        let mut target = Target::full("2".into(), 1, artifact("2"));
        target.previous = Some(PreviousBuild {
            version: "1".into(),
            artifact: artifact("1"),
        });
        target.stub = Some(artifact("stub"));
        target.deltas.insert(
            artifact("1").sha256,
            Delta {
                format: DeltaFormat::ZstdPatchFrom,
                sha256: sha256(b"patch"),
                size: 7,
            },
        );
        let manifest = ReleaseManifest::new(
            "stable".parse().unwrap(),
            1,
            2,
            BTreeMap::from([("x86_64-linux".into(), target)]),
        );
        let blobs: BTreeMap<Sha256, u64> = manifest.referenced_blobs().into_iter().collect();
        let want: BTreeMap<Sha256, u64> = [
            (artifact("2").zstd_sha256, 50),
            (artifact("1").zstd_sha256, 50),
            (artifact("stub").zstd_sha256, 50),
            // The stub also uncompressed, for install.sh.
            (artifact("stub").sha256, 100),
            (sha256(b"patch"), 7),
        ]
        .into();
        assert_eq!(blobs, want);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
