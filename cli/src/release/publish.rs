//! `outrider release publish`: a new build for one target triple of a channel.
//!
//! Steps: hash and zstd-compress the library; upload `root.json` (a no-op if
//! the server has it) and the blob; fetch and verify the channel's manifest;
//! make deltas from the channel's last N builds (below); sign a manifest with
//! the next sequence in which this triple's target is the new build (other
//! triples kept), its `previous` the build it replaces and, below 100%, a
//! rollout with a fresh cohort salt; upload it.
//!
//! Deltas: for each of the last N distinct builds of this channel and triple
//! (the server's manifest history), download its blob, check the zstd hash,
//! decompress at most the declared size, check the library hash, and ask
//! `outrider_delta` for the smallest patch to the new library in a format
//! every released client knows (`outrider_delta::FIRST_FORMATS`), and for
//! the smallest in a newer format. A patch is kept only if it is smaller than
//! the new build's zstd blob, and a newer-format one only if it is also
//! smaller than the first (see [`offer`]); each is uploaded as a blob and
//! listed under the *base library's* SHA-256, the first in `deltas`, the
//! newer one in `more_deltas`, which older clients ignore. A base that
//! cannot be fetched or checked is skipped with a warning: clients on it
//! take the full build.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use outrider_delta::{DeltaError, FIRST_FORMATS};
use outrider_signing::{
    Artifact, Channel, Delta, DeltaFormat, PreviousBuild, ReleaseManifest, Rollout, Sha256, Target,
    host_triple, sha256,
};

use super::{
    FULL_ROLLOUT, Percent, SignArgs, Signer, channel_arg, current_manifest, fetch_builds,
    fetch_library, random_salt, triple_arg,
};
use crate::UsageError;
use crate::client::ApiClient;

/// The agent library ABI major version this CLI publishes
/// (`outrider_abi::ABI_MAJOR`; the CLI does not depend on the ABI crate).
const ABI_MAJOR: u32 = 1;
/// Default zstd level for the library blob: quick for a 30 MB debug build
/// published many times a minute in tests or quickstart. `packaging/release`
/// ships with `--zstd-level 19`: publishing happens once per release and
/// decompression speed does not depend on the level, so there the ratio
/// wins (the `dist` build is 1,435,056 B at 19 against 1,570,534 at 10,
/// docs/benchmarks.md).
const ZSTD_LEVEL: i32 = 10;

#[derive(Debug, clap::Args)]
pub(super) struct PublishArgs {
    /// Channel to publish to (1-32 of a-z, 0-9, '-').
    #[arg(long)]
    channel: String,
    #[command(flatten)]
    sign: SignArgs,
    /// Version string of the build [default: 0.0.0+<first 12 hex of its sha256>].
    #[arg(long)]
    version: Option<String>,
    /// Target triple the build is for [default: this machine's, e.g. x86_64-linux].
    #[arg(long)]
    target: Option<String>,
    /// Share of the fleet that takes the build (0.01 to 100); the rest keeps
    /// its build, and fresh installs outside the share get the previous one.
    #[arg(long, default_value = "100")]
    percent: Percent,
    /// Make deltas from this many of the channel's most recent builds (0: none).
    #[arg(long, default_value_t = 3)]
    deltas: usize,
    /// zstd level of the build's blob (1-22). The blob is compressed in one
    /// shot, so its frame records the library's size and the agent's
    /// decoder window is never larger than the library, whatever the level.
    #[arg(long, default_value_t = ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd_level: i32,
    /// The agent library file (e.g. liboutrider_agent.so).
    path: PathBuf,
}

pub(super) fn run(client: &ApiClient, args: PublishArgs) -> Result<()> {
    let channel = channel_arg("--channel", &args.channel)?;
    let triple = triple_arg(&args.target.unwrap_or_else(host_triple))?;
    let signer = Signer::load(&args.sign)?;

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
        zstd::bulk::compress(&library, args.zstd_level).context("compressing the library")?;
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
        .put_bytes("/api/v1/releases/root", signer.root.envelope_bytes())
        .context("uploading root.json")?;
    client
        .put_bytes(
            &format!("/api/v1/releases/blobs/{}", artifact.zstd_sha256),
            &blob,
        )
        .context("uploading the build")?;

    let current = current_manifest(client, &signer.root, &channel)?.map(|v| v.manifest);
    let deltas = if args.deltas == 0 || current.is_none() {
        BTreeMap::new()
    } else {
        deltas_from_recent(client, &channel, &triple, args.deltas, &library, &artifact)?
    };
    let rollout = if args.percent == Percent::FULL {
        None
    } else {
        Some(Rollout {
            basis_points: args.percent.basis_points(),
            salt: random_salt()?,
            paused: false,
        })
    };
    let mut new = Target::full(version.clone(), ABI_MAJOR, artifact.clone());
    for (base, patches) in deltas {
        patches.add_to(&mut new, base);
    }
    new.rollout = rollout;

    let base =
        current.unwrap_or_else(|| ReleaseManifest::new(channel.clone(), 0, 0, BTreeMap::new()));
    let manifest = with_published(signer.next(base), &triple, new);
    signer.sign_and_put(client, &manifest)?;
    let target = &manifest.targets[&triple];

    println!("published to channel {channel}");
    println!("  sequence  {}", manifest.sequence);
    println!("  target    {triple}");
    println!("  version   {version}");
    println!("  sha256    {}  ({} bytes)", artifact.sha256, artifact.size);
    println!(
        "  zstd      {}  ({} bytes)",
        artifact.zstd_sha256, artifact.zstd_size
    );
    println!(
        "  rollout   {}",
        target.rollout.as_ref().map_or("100%".to_owned(), |r| {
            super::format_basis_points(r.basis_points.min(FULL_ROLLOUT))
        })
    );
    match (&target.previous, &target.rollout) {
        (Some(previous), _) => println!("  previous  {}", previous.version),
        (None, Some(_)) => eprintln!(
            "note: there is no previous build, so fresh installs outside the rollout get no build until it reaches them"
        ),
        (None, None) => {}
    }
    let more = target
        .more_deltas
        .iter()
        .flat_map(|(base, deltas)| deltas.iter().map(move |d| (base, d)));
    for (base, delta) in target.deltas.iter().chain(more) {
        println!(
            "  delta     from {}  {:?}  {} bytes",
            &base.to_string()[..12],
            delta.format,
            delta.size
        );
    }
    Ok(())
}

/// The manifest after publishing `new` for `triple`: the other triples and
/// unknown fields kept; `previous` is the build `new` replaces (so fresh
/// installs outside a partial rollout get it), or the replaced target's own
/// `previous` if `new` is the same build again; the stub artifact carried
/// over.
fn with_published(mut manifest: ReleaseManifest, triple: &str, mut new: Target) -> ReleaseManifest {
    if let Some(old) = manifest.targets.remove(triple) {
        new.previous = if old.artifact.sha256 == new.artifact.sha256 {
            old.previous
        } else {
            Some(PreviousBuild {
                version: old.version,
                artifact: old.artifact,
            })
        };
        new.stub = new.stub.or(old.stub);
    }
    manifest.targets.insert(triple.to_owned(), new);
    manifest
}

/// Deltas to the new library from the last `count` other builds of the
/// channel for `triple`, keyed by base library SHA-256.
fn deltas_from_recent(
    client: &ApiClient,
    channel: &Channel,
    triple: &str,
    count: usize,
    library: &[u8],
    artifact: &Artifact,
) -> Result<BTreeMap<Sha256, Patches>> {
    let builds = fetch_builds(client, channel, triple, count + 1)?;
    let mut deltas = BTreeMap::new();
    for build in builds
        .iter()
        .filter(|b| b.artifact.sha256 != artifact.sha256)
        .take(count)
    {
        match make_delta(client, &build.artifact, library, artifact.zstd_size) {
            Ok(patches) if !patches.is_empty() => {
                deltas.insert(build.artifact.sha256, patches);
            }
            Ok(_) => eprintln!(
                "note: no delta from {}: it would not be smaller than the full build",
                build.version
            ),
            Err(e) => eprintln!("warning: no delta from {}: {e:#}", build.version),
        }
    }
    Ok(deltas)
}

/// The patches from one base build offered to clients of the new one.
#[derive(Debug, Default)]
pub(super) struct Patches {
    /// For `deltas`: a format every released client knows.
    delta: Option<Delta>,
    /// For `more_deltas`: a newer format, smaller still.
    more: Option<Delta>,
}

impl Patches {
    fn is_empty(&self) -> bool {
        self.delta.is_none() && self.more.is_none()
    }

    /// Lists the patches in `target` under `base`.
    pub(super) fn add_to(self, target: &mut Target, base: Sha256) {
        if let Some(delta) = self.delta {
            target.deltas.insert(base, delta);
        }
        if let Some(more) = self.more {
            target.more_deltas.insert(base, vec![more]);
        }
    }
}

/// Which patches to offer, from the size of the smallest in a format every
/// client knows, the size of the smallest in a newer format (if one
/// applies), and the size of the full build's zstd blob: `(first, newer)`.
/// A patch not smaller than the full build is never worth a download, and a
/// newer one not smaller than the first is never worth a second blob.
fn offer(first: u64, newer: Option<u64>, full: u64) -> (bool, bool) {
    let newer = newer.is_some_and(|n| n < full && (n < first || first >= full));
    (first < full, newer)
}

/// The patches from the build `base` to `new_library`, uploaded as blobs:
/// those [`offer`] keeps. Fails if the base cannot be fetched and checked, a
/// patch cannot be made, or an upload fails.
pub(super) fn make_delta(
    client: &ApiClient,
    base: &Artifact,
    new_library: &[u8],
    full_zstd_size: u64,
) -> Result<Patches> {
    let base_library = fetch_library(client, base)?;
    let first = outrider_delta::create_smallest(&FIRST_FORMATS, &base_library, new_library)
        .map_err(|e| anyhow!("making a delta: {e}"))?;
    let newer_formats: Vec<DeltaFormat> = outrider_delta::SUPPORTED
        .into_iter()
        .filter(|f| !FIRST_FORMATS.contains(f))
        .collect();
    let newer = match outrider_delta::create_smallest(&newer_formats, &base_library, new_library) {
        Ok(newer) => Some(newer),
        Err(DeltaError::NotApplicable { .. }) => None,
        Err(e) => return Err(anyhow!("making a delta: {e}")),
    };
    let size = |blob: &Vec<u8>| blob.len() as u64;
    let (keep_first, keep_newer) = offer(
        size(&first.1),
        newer.as_ref().map(|(_, b)| size(b)),
        full_zstd_size,
    );
    let upload = |(format, patch): (DeltaFormat, Vec<u8>)| -> Result<Delta> {
        let sha = sha256(&patch);
        client
            .put_bytes(&format!("/api/v1/releases/blobs/{sha}"), &patch)
            .context("uploading a delta")?;
        Ok(Delta {
            format,
            sha256: sha,
            size: patch.len() as u64,
        })
    };
    Ok(Patches {
        delta: keep_first.then(|| upload(first)).transpose()?,
        more: newer.filter(|_| keep_newer).map(upload).transpose()?,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn offers_a_newer_format_only_when_it_is_smaller_than_the_first() {
        // (first, newer, full) → (first in `deltas`, newer in `more_deltas`)
        let table = [
            ((100, Some(60), 1000), (true, true)),
            ((100, Some(100), 1000), (true, false)),
            ((100, Some(150), 1000), (true, false)),
            ((100, None, 1000), (true, false)),
            ((1000, Some(600), 1000), (false, true)),
            ((1200, Some(1000), 1000), (false, false)),
            ((1000, None, 1000), (false, false)),
        ];
        for ((first, newer, full), expected) in table {
            assert_eq!(
                offer(first, newer, full),
                expected,
                "{first} {newer:?} {full}"
            );
        }
    }

    pub(crate) fn artifact(tag: &str) -> Artifact {
        Artifact {
            sha256: sha256(format!("lib {tag}").as_bytes()),
            size: 100,
            zstd_sha256: sha256(format!("zstd {tag}").as_bytes()),
            zstd_size: 50,
        }
    }

    #[test]
    fn publishing_records_the_replaced_build_as_previous() {
        let stable: Channel = "stable".parse().unwrap();
        let empty = ReleaseManifest::new(stable.clone(), 0, 0, BTreeMap::new());
        let build = |v: &str| Target::full(v.into(), 1, artifact(v));
        let first = with_published(empty, "x86_64-linux", build("1"));
        assert_eq!(first.channel, stable);
        assert_eq!(first.targets["x86_64-linux"].previous, None);

        let mut other = first.clone();
        other.targets.insert("aarch64-linux".into(), build("a"));
        other.targets.get_mut("x86_64-linux").unwrap().stub = Some(artifact("stub"));
        other.extra.insert("future".into(), serde_json::json!(1));
        let second = with_published(other, "x86_64-linux", build("2"));
        let target = &second.targets["x86_64-linux"];
        assert_eq!(target.version, "2");
        assert_eq!(
            target.previous,
            Some(PreviousBuild {
                version: "1".into(),
                artifact: artifact("1")
            })
        );
        assert_eq!(
            target.stub,
            Some(artifact("stub")),
            "the stub is carried over"
        );
        assert_eq!(second.targets["aarch64-linux"].version, "a");
        assert_eq!(second.extra["future"], 1);

        // The same build again (e.g. at another share): previous unchanged.
        let again = with_published(second, "x86_64-linux", build("2"));
        let previous = again.targets["x86_64-linux"].previous.as_ref().unwrap();
        assert_eq!(previous.version, "1");
    }
}
