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
        let target = Target {
            version: format!("1.0.{sequence}"),
            abi_major: 1,
            artifact: Artifact {
                sha256: sha256(b"uncompressed"),
                size: 12,
                zstd_sha256: sha256(blob),
                zstd_size: blob.len() as u64,
            },
        };
        let manifest = ReleaseManifest {
            channel: channel.parse::<Channel>().unwrap(),
            sequence,
            expires_unix: now_unix() + DAY,
            targets: BTreeMap::from([("x86_64-linux".to_owned(), target)]),
        };
        make_manifest(&manifest, &[&self.release])
            .unwrap()
            .to_bytes()
    }
}
