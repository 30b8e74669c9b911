//! A real signed repository on disk, laid out like `outrider release export`
//! writes it: `root.json`, `roots/<v>.json`, `channels/<c>/manifest.json`,
//! `blobs/<sha256>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outrider_signing::{
    Artifact, Delta, DeltaFormat, KeyPair, KeyRole, ReleaseManifest, Sha256, Target, TrustedRoot,
    make_manifest, make_root, sha256,
};

/// Far in the future, for expiry fields.
pub const FAR: u64 = 4_000_000_000;
/// "Now" for verification.
pub const NOW: u64 = 1_800_000_000;

/// A library build: its bytes and how it is stored.
#[derive(Clone, Debug)]
pub struct Build {
    pub library: Vec<u8>,
    pub artifact: Artifact,
}

/// Keys plus a directory holding the repository.
pub struct Repo {
    pub dir: tempfile::TempDir,
    pub root_key: KeyPair,
    pub release_key: KeyPair,
    pub root: TrustedRoot,
    sequence: u64,
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root_key = KeyPair::generate(KeyRole::Root).unwrap();
        let release_key = KeyPair::generate(KeyRole::Release).unwrap();
        let root_env = make_root(&[&root_key], &[(&release_key, FAR)], 1, 1, FAR)
            .unwrap()
            .to_bytes();
        std::fs::create_dir_all(dir.path().join("roots")).unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("root.json"), &root_env).unwrap();
        std::fs::write(dir.path().join("roots/1.json"), &root_env).unwrap();
        let root = TrustedRoot::from_bytes_self_signed(&root_env, NOW).unwrap();
        Repo {
            dir,
            root_key,
            release_key,
            root,
            sequence: 0,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn downloads(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// A library of `size` pseudo-random bytes seeded by `seed`, zstd-stored.
    pub fn build(&self, seed: u64, size: usize) -> Build {
        self.store_build(pseudo_random(seed, size))
    }

    /// `base` with a few bytes changed: a small source change.
    pub fn edit(&self, base: &Build) -> Build {
        let mut library = base.library.clone();
        for i in (0..library.len()).step_by(4096) {
            library[i] = library[i].wrapping_add(1);
        }
        self.store_build(library)
    }

    /// Stores `library` as a build.
    pub fn store_build(&self, library: Vec<u8>) -> Build {
        let blob = zstd::encode_all(&library[..], 3).unwrap();
        let artifact = Artifact {
            sha256: sha256(&library),
            size: library.len() as u64,
            zstd_sha256: sha256(&blob),
            zstd_size: blob.len() as u64,
        };
        self.put_blob(&blob);
        Build { library, artifact }
    }

    /// Stores a blob under its hash and returns the hash.
    pub fn put_blob(&self, blob: &[u8]) -> Sha256 {
        let sha = sha256(blob);
        std::fs::write(self.blob_path(&sha), blob).unwrap();
        sha
    }

    pub fn blob_path(&self, sha: &Sha256) -> PathBuf {
        self.dir.path().join("blobs").join(sha.to_string())
    }

    /// Makes and stores a delta in `format` from `base` to `new`.
    pub fn delta_in(&self, format: DeltaFormat, base: &Build, new: &Build) -> Delta {
        let blob = outrider_delta::create(format, &base.library, &new.library).unwrap();
        let sha = self.put_blob(&blob);
        Delta {
            format,
            sha256: sha,
            size: blob.len() as u64,
        }
    }

    /// Makes and stores a delta from `base` to `new`.
    pub fn delta(&self, base: &Build, new: &Build) -> Delta {
        let (format, blob) = outrider_delta::create_smallest(
            &outrider_delta::FIRST_FORMATS,
            &base.library,
            &new.library,
        )
        .unwrap();
        let sha = self.put_blob(&blob);
        Delta {
            format,
            sha256: sha,
            size: blob.len() as u64,
        }
    }

    /// Rotates to root version `version`: a fresh root key replaces the
    /// current one and `release` becomes the release key; signed by the old
    /// and the new root key, as a rotation must be. With `only_new`, the old
    /// key does not sign (a forged link). Returns the envelope bytes.
    pub fn rotate_root(&mut self, version: u64, release: &KeyPair, only_new: bool) -> Vec<u8> {
        let new_root = KeyPair::generate(KeyRole::Root).unwrap();
        let unsigned = make_root(&[&new_root], &[(release, FAR)], 1, version, FAR).unwrap();
        let signers: Vec<&KeyPair> = if only_new {
            vec![&new_root]
        } else {
            vec![&self.root_key, &new_root]
        };
        let bytes =
            outrider_signing::Envelope::sign(unsigned.payload().to_vec(), &signers).to_bytes();
        std::fs::write(
            self.dir.path().join(format!("roots/{version}.json")),
            &bytes,
        )
        .unwrap();
        std::fs::write(self.dir.path().join("root.json"), &bytes).unwrap();
        self.root_key = new_root;
        bytes
    }

    /// Signs and writes the next manifest of `channel` with this target.
    pub fn publish(&mut self, channel: &str, target: Target) -> Vec<u8> {
        self.sequence += 1;
        let manifest = ReleaseManifest::new(
            channel.parse().unwrap(),
            self.sequence,
            FAR,
            BTreeMap::from([(outrider_signing::host_triple(), target)]),
        );
        let bytes = make_manifest(&manifest, &[&self.release_key])
            .unwrap()
            .to_bytes();
        self.write_manifest(channel, &bytes);
        bytes
    }

    /// Writes raw manifest bytes (for tampering and replays).
    pub fn write_manifest(&self, channel: &str, bytes: &[u8]) {
        let dir = self.dir.path().join("channels").join(channel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), bytes).unwrap();
    }
}

/// Deterministic bytes that compress poorly, like machine code.
pub fn pseudo_random(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
