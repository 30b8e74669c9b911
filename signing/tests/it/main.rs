//! Integration tests of `outrider-signing`: the attacks DESIGN §5 names, each
//! asserting the exact error variant.

mod attacks;
mod key_files;
mod roots;

use std::collections::BTreeMap;

use outrider_signing::{
    Artifact, Channel, Envelope, KeyPair, KeyRole, ManifestPolicy, ReleaseManifest, RootBuilder,
    Target, TrustedRoot, make_manifest, sha256,
};

/// A fixed "now" so tests do not depend on the clock.
pub const NOW: u64 = 1_700_000_000;
pub const DAY: u64 = 86_400;

/// A root key, two release keys, and a trusted root with the given release threshold.
#[derive(Debug)]
pub struct Repo {
    pub root_key: KeyPair,
    pub release_a: KeyPair,
    pub release_b: KeyPair,
    pub root: TrustedRoot,
    pub channel: Channel,
}

impl Repo {
    /// A repository whose root trusts both release keys with `threshold`; key
    /// `b` expires at `b_expires`.
    pub fn new(threshold: u32, b_expires: u64) -> Repo {
        let root_key = KeyPair::generate(KeyRole::Root).unwrap();
        let release_a = KeyPair::generate(KeyRole::Release).unwrap();
        let release_b = KeyPair::generate(KeyRole::Release).unwrap();
        let envelope = make_root_with(
            &root_key,
            &[(&release_a, NOW + 365 * DAY), (&release_b, b_expires)],
            threshold,
        );
        let root = TrustedRoot::from_bytes_self_signed(&envelope.to_bytes(), NOW).unwrap();
        Repo {
            root_key,
            release_a,
            release_b,
            root,
            channel: "stable".parse().unwrap(),
        }
    }

    pub fn manifest(&self, sequence: u64) -> ReleaseManifest {
        let lib = format!("library build {sequence}").into_bytes();
        let blob = format!("zstd of build {sequence}").into_bytes();
        let target = Target::full(
            format!("1.0.{sequence}"),
            1,
            Artifact {
                sha256: sha256(&lib),
                size: lib.len() as u64,
                zstd_sha256: sha256(&blob),
                zstd_size: blob.len() as u64,
            },
        );
        ReleaseManifest::new(
            self.channel.clone(),
            sequence,
            NOW + 30 * DAY,
            BTreeMap::from([("x86_64-linux".to_owned(), target)]),
        )
    }

    pub fn sign(&self, manifest: &ReleaseManifest, keys: &[&KeyPair]) -> Vec<u8> {
        make_manifest(manifest, keys).unwrap().to_bytes()
    }

    pub fn policy(&self) -> ManifestPolicy<'_> {
        ManifestPolicy {
            channel: &self.channel,
            now_unix: NOW,
            floor: None,
        }
    }
}

/// A root signed by `root_key` alone, with release threshold `threshold`.
pub fn make_root_with(root_key: &KeyPair, release: &[(&KeyPair, u64)], threshold: u32) -> Envelope {
    let mut builder = RootBuilder::new(1, NOW + 5 * 365 * DAY)
        .add_root_key(root_key)
        .unwrap()
        .release_threshold(threshold);
    for (key, expires_unix) in release {
        builder = builder.add_release_key(key, *expires_unix).unwrap();
    }
    builder.sign(&[root_key]).unwrap()
}
