//! Fixed keys and the documents they sign, for the signing and update
//! fuzz targets: a root chain v1 → v2 → v3 and release manifests, all
//! deterministic (ed25519 signatures are), so a corpus input signed here
//! verifies in every later run.
//!
//! The oracle the targets rely on: nobody without these private keys can
//! make a new valid signature, so any envelope a verifier accepts must
//! carry exactly one of the payloads signed here that it may accept
//! ([`Fixtures::root_payloads`], the first two of
//! [`Fixtures::manifest_payloads`]). Anything else accepted is a forgery
//! the verifier let through.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

use outrider_signing::{
    Artifact, Channel, Delta, DeltaFormat, Envelope, KEY_TYPE, KeyPair, KeyRole, PreviousBuild,
    ReleaseManifest, Rollout, RootBuilder, Sha256, Target, TrustedRoot, make_manifest,
};

/// The verifiers' clock: every fixture is valid now, except what is
/// expired on purpose.
pub const NOW: u64 = 1_800_000_000;
/// Expiry of the documents and keys meant to stay valid.
pub const FAR: u64 = 4_000_000_000;
/// The channel of the manifests.
pub const CHANNEL: &str = "stable";
/// The target triple of the manifests.
pub const TRIPLE: &str = "x86_64-linux";

/// Every fixed key and signed document.
pub struct Fixtures {
    /// Root key of v1 and v2 (removed in v3).
    pub root1: KeyPair,
    /// Root key added in v2.
    pub root2: KeyPair,
    /// Release key trusted by every root.
    pub release1: KeyPair,
    /// Release key added in v2.
    pub release2: KeyPair,
    /// Release key of v1 that expired before [`NOW`].
    pub expired: KeyPair,
    /// Envelope bytes of root v1 (the trust anchor), v2 and v3.
    pub roots: [Vec<u8>; 3],
    /// Root v1, verified.
    pub trusted: TrustedRoot,
    /// Manifest envelopes: by `release1`; by `release1` and `release2`; by
    /// the expired key only (refused); of another channel (refused).
    pub manifests: [Vec<u8>; 4],
    /// The signed payload bytes of `roots`, in the same order.
    pub root_payloads: [Vec<u8>; 3],
    /// The signed payload bytes of `manifests`, in the same order.
    pub manifest_payloads: [Vec<u8>; 4],
}

/// The fixtures, built once per process.
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(build)
}

/// A key from a fixed seed. `KeyPair` is made only by `generate` (random)
/// or `read` (a 0600 key file), so the seed goes through a private file.
pub fn fixed_key(role: KeyRole, seed: u8) -> KeyPair {
    let role_name = match role {
        KeyRole::Root => "root",
        KeyRole::Release => "release",
    };
    let json = format!(
        r#"{{"type":"{KEY_TYPE}","role":"{role_name}","private_key":"{}"}}"#,
        format!("{seed:02x}").repeat(32)
    );
    let path = std::env::temp_dir().join(format!(
        "outrider-fuzz-key-{}-{role_name}-{seed}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("create key file in the temp dir");
    file.write_all(json.as_bytes()).expect("write key file");
    drop(file);
    let key = KeyPair::read(&path).expect("read back the key file");
    let _ = std::fs::remove_file(&path);
    key
}

fn sha(byte: u8) -> Sha256 {
    Sha256::from_bytes([byte; 32])
}

fn artifact(byte: u8, size: u64) -> Artifact {
    Artifact {
        sha256: sha(byte),
        size,
        zstd_sha256: sha(byte.wrapping_add(1)),
        zstd_size: size / 3,
    }
}

/// A manifest using every optional part: deltas in both formats, a staged
/// rollout, a previous build, a stub and an unknown field.
fn manifest(channel: &str, sequence: u64) -> ReleaseManifest {
    let mut target = Target::full("1.2.3".into(), 1, artifact(0x10, 3_000_000));
    target.deltas.insert(
        sha(0x20),
        Delta {
            format: DeltaFormat::BsdiffZstd,
            sha256: sha(0x21),
            size: 40_000,
        },
    );
    target.deltas.insert(
        sha(0x22),
        Delta {
            format: DeltaFormat::ZstdPatchFrom,
            sha256: sha(0x23),
            size: 50_000,
        },
    );
    target.rollout = Some(Rollout {
        basis_points: 2_500,
        salt: "salt-1".into(),
        paused: false,
    });
    target.previous = Some(PreviousBuild {
        version: "1.2.2".into(),
        artifact: artifact(0x30, 2_900_000),
    });
    target.stub = Some(artifact(0x40, 900_000));
    target
        .extra
        .insert("future_field".into(), serde_json::json!({"n": 1}));
    let mut targets = BTreeMap::new();
    targets.insert(TRIPLE.to_owned(), target);
    targets.insert(
        "aarch64-linux".to_owned(),
        Target::full("1.2.3".into(), 2, artifact(0x50, 2_800_000)),
    );
    let channel: Channel = channel.parse().expect("fixture channel is valid");
    ReleaseManifest::new(channel, sequence, FAR, targets)
}

fn build() -> Fixtures {
    let root1 = fixed_key(KeyRole::Root, 1);
    let root2 = fixed_key(KeyRole::Root, 2);
    let release1 = fixed_key(KeyRole::Release, 11);
    let release2 = fixed_key(KeyRole::Release, 12);
    let expired = fixed_key(KeyRole::Release, 13);
    let ok = "fixture roots are well formed";
    // v1: one root key, release1 valid, `expired` past its expiry.
    let v1 = RootBuilder::new(1, FAR)
        .add_root_key(&root1)
        .and_then(|b| b.add_release_key(&release1, FAR))
        .and_then(|b| b.add_release_key(&expired, NOW - 1))
        .expect(ok);
    let v1_root = v1.root().clone();
    let v1 = v1.sign(&[&root1]).expect(ok);
    // v2: adds root2 (threshold 2) and release2.
    let v2 = RootBuilder::successor_of(&v1_root, FAR)
        .add_root_key(&root2)
        .and_then(|b| b.add_release_key(&release2, FAR))
        .expect(ok)
        .root_threshold(2);
    let v2_root = v2.root().clone();
    let v2 = v2.sign(&[&root1, &root2]).expect(ok);
    // v3: drops root1 and release1, threshold back to 1; both v2 keys sign.
    let v3 = RootBuilder::successor_of(&v2_root, FAR)
        .remove_root_key(&root1.key_id())
        .remove_release_key(&release1.key_id())
        .root_threshold(1)
        .sign(&[&root1, &root2])
        .expect(ok);
    let trusted = TrustedRoot::from_bytes_self_signed(&v1.to_bytes(), NOW).expect(ok);

    let ok = "fixture manifests are well formed";
    let manifests: [Envelope; 4] = [
        make_manifest(&manifest(CHANNEL, 5), &[&release1]).expect(ok),
        make_manifest(&manifest(CHANNEL, 6), &[&release1, &release2]).expect(ok),
        make_manifest(&manifest(CHANNEL, 7), &[&expired]).expect(ok),
        make_manifest(&manifest("beta", 8), &[&release1]).expect(ok),
    ];
    Fixtures {
        root1,
        root2,
        release1,
        release2,
        expired,
        roots: [v1.to_bytes(), v2.to_bytes(), v3.to_bytes()],
        root_payloads: [&v1, &v2, &v3].map(|e| e.payload().to_vec()),
        trusted,
        manifest_payloads: manifests.each_ref().map(|e| e.payload().to_vec()),
        manifests: manifests.map(|e| e.to_bytes()),
    }
}
