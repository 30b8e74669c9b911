//! Integration tests of the release store and its HTTP routes, on real
//! SQLite files in temp dirs and real sockets on loopback.

mod routes;
mod store;

use std::collections::BTreeMap;

use outrider_signing::{
    Artifact, Channel, KeyPair, KeyRole, ReleaseManifest, Target, make_manifest, make_root,
    now_unix, sha256,
};

pub const DAY: u64 = 86_400;

/// Offline keys and a self-signed root, version 1.
#[derive(Debug)]
pub struct Keys {
    pub root: KeyPair,
    pub release: KeyPair,
    pub root_json: Vec<u8>,
}

impl Keys {
    pub fn generate() -> Keys {
        let root = KeyPair::generate(KeyRole::Root).unwrap();
        let release = KeyPair::generate(KeyRole::Release).unwrap();
        let now = now_unix();
        let root_json = make_root(&[&root], &[(&release, now + DAY)], 1, 1, now + 10 * DAY)
            .unwrap()
            .to_bytes();
        Keys {
            root,
            release,
            root_json,
        }
    }

    /// A signed manifest for `channel` with one x86_64-linux target whose
    /// zstd blob is `blob`.
    pub fn manifest(&self, channel: &str, sequence: u64, blob: &[u8]) -> Vec<u8> {
        let target = Target::full(
            format!("1.0.{sequence}"),
            1,
            Artifact {
                sha256: sha256(b"uncompressed"),
                size: 12,
                zstd_sha256: sha256(blob),
                zstd_size: blob.len() as u64,
            },
        );
        self.manifest_with(channel, sequence, target)
    }

    /// A signed manifest for `channel` with `target` as its x86_64-linux build.
    pub fn manifest_with(&self, channel: &str, sequence: u64, target: Target) -> Vec<u8> {
        let manifest = ReleaseManifest::new(
            channel.parse::<Channel>().unwrap(),
            sequence,
            now_unix() + DAY,
            BTreeMap::from([("x86_64-linux".to_owned(), target)]),
        );
        make_manifest(&manifest, &[&self.release])
            .unwrap()
            .to_bytes()
    }
}

/// A build whose zstd blob is `blob` and whose library is `library`.
pub fn build(version: &str, library: &[u8], blob: &[u8]) -> Target {
    Target::full(
        version.to_owned(),
        1,
        Artifact {
            sha256: sha256(library),
            size: library.len() as u64,
            zstd_sha256: sha256(blob),
            zstd_size: blob.len() as u64,
        },
    )
}
