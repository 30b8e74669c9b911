//! Per-channel release manifests and their verification (DESIGN §5).
//!
//! Payload format (`"type": "release"`): `channel`, `sequence` (monotonic per
//! channel), `expires_unix`, and `targets`: target triple (e.g.
//! `"x86_64-linux"`) → `{version, abi_major, artifact: {sha256, size,
//! zstd_sha256, zstd_size}}`. Unknown fields are ignored, so deltas, rollout
//! and stub artifacts can be added without breaking older verifiers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::envelope::{PayloadType, Tagged};
use crate::{Envelope, Error, KeyPair, KeyRole, Sha256, TrustedRoot, sha256};

/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 32;

/// A release channel name: 1 to 32 characters of `[a-z0-9-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Channel(String);

impl Channel {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Channel {
    type Err = Error;

    /// Fails with [`Error::Malformed`] unless `s` is 1 to 32 of `[a-z0-9-]`.
    fn from_str(s: &str) -> Result<Channel, Error> {
        let valid = (1..=MAX_CHANNEL_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(Error::Malformed {
                what: "channel name",
                reason: format!(
                    "{s:?} must be 1 to {MAX_CHANNEL_LEN} characters of a-z, 0-9 and '-'"
                ),
            });
        }
        Ok(Channel(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Channel, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", self.0)
    }
}

/// The content of a release manifest envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// The channel this manifest is for; verified against the client's.
    pub channel: Channel,
    /// Strictly increasing per channel; clients refuse lower ones.
    pub sequence: u64,
    /// Unix time (seconds) from which this manifest is no longer valid.
    pub expires_unix: u64,
    /// Builds by target triple (`"x86_64-linux"`, see [`crate::host_triple`]).
    pub targets: BTreeMap<String, Target>,
    /// Fields written by newer publishers, kept so that re-signing a manifest
    /// built from this one does not drop them.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The build published for one target triple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The agent library's version string.
    pub version: String,
    /// The stub ↔ library ABI major version the build implements.
    pub abi_major: u32,
    /// The full build.
    pub artifact: Artifact,
    /// Patches that turn an older library into this one, keyed by the
    /// SHA-256 of the *uncompressed base library*. Optional: a client
    /// without a matching base (or whose patch fails) takes `artifact`.
    ///
    /// Only formats every released client knows go here (see
    /// [`Target::more_deltas`]): a client that finds a format it does not
    /// know reads it as [`DeltaFormat::Unknown`] and takes `artifact`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deltas: BTreeMap<Sha256, Delta>,
    /// More patches to this build, keyed like [`Target::deltas`], in formats
    /// newer than the first release's (e.g.
    /// [`DeltaFormat::ElfX86BsdiffZstd`]). Clients released before this
    /// field keep it among the unknown fields and use `deltas`, so a
    /// publisher offers a new format here *beside* a `deltas` entry every
    /// client can apply; newer clients take the smallest of both that they
    /// know.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub more_deltas: BTreeMap<Sha256, Vec<Delta>>,
    /// Staged rollout; absent means every client takes this build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The build for clients outside the rollout cohort that have no build
    /// yet (a fresh install); clients outside the cohort that run a build
    /// keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousBuild>,
    /// A new stub binary, published rarely (see the stub self-update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stub: Option<Artifact>,
    /// Fields written by newer publishers, preserved on re-signing.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ReleaseManifest {
    /// Every blob this manifest references, with its declared size: each
    /// target's artifact, previous build, stub, deltas and more deltas. The release store
    /// requires them all before accepting the manifest; an export copies them.
    ///
    /// The stub is referenced twice: zstd-compressed (what stubs download to
    /// replace themselves) and uncompressed under its own SHA-256 (what
    /// `install.sh` downloads: a fresh host need not have zstd).
    pub fn referenced_blobs(&self) -> Vec<(Sha256, u64)> {
        let mut out = Vec::new();
        for target in self.targets.values() {
            if let Some(stub) = &target.stub {
                out.push((stub.sha256, stub.size));
            }
            let artifacts = std::iter::once(&target.artifact)
                .chain(target.previous.as_ref().map(|p| &p.artifact))
                .chain(target.stub.as_ref());
            out.extend(artifacts.map(|a| (a.zstd_sha256, a.zstd_size)));
            out.extend(target.deltas.values().map(|d| (d.sha256, d.size)));
            out.extend(
                target
                    .more_deltas
                    .values()
                    .flatten()
                    .map(|d| (d.sha256, d.size)),
            );
        }
        out
    }

    /// A manifest with no extra fields.
    pub fn new(
        channel: Channel,
        sequence: u64,
        expires_unix: u64,
        targets: BTreeMap<String, Target>,
    ) -> Self {
        ReleaseManifest {
            channel,
            sequence,
            expires_unix,
            targets,
            extra: BTreeMap::new(),
        }
    }
}

impl Target {
    /// A target offering only the full build to everyone.
    pub fn full(version: String, abi_major: u32, artifact: Artifact) -> Target {
        Target {
            version,
            abi_major,
            artifact,
            deltas: BTreeMap::new(),
            more_deltas: BTreeMap::new(),
            rollout: None,
            previous: None,
            stub: None,
            extra: BTreeMap::new(),
        }
    }
}

/// A build as stored: the library, zstd-compressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// SHA-256 of the uncompressed library.
    pub sha256: Sha256,
    /// Size in bytes of the uncompressed library.
    pub size: u64,
    /// SHA-256 of the zstd blob; also its name in the blob store.
    pub zstd_sha256: Sha256,
    /// Size in bytes of the zstd blob.
    pub zstd_size: u64,
}

/// A patch blob from one base library to a [`Target`]'s library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// How the patch is encoded.
    pub format: DeltaFormat,
    /// SHA-256 of the patch blob; also its name in the blob store.
    pub sha256: Sha256,
    /// Size in bytes of the patch blob.
    pub size: u64,
}

/// Encoding of a [`Delta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaFormat {
    /// A bsdiff (BSDIFF40-style, as produced by the `bsdiff` crate) patch
    /// of the uncompressed libraries, zstd-compressed.
    BsdiffZstd,
    /// zstd "patch-from": the new library compressed with the base library
    /// as reference prefix (long-distance matching, window ≥ sizes).
    ZstdPatchFrom,
    /// bsdiff+zstd of x86-64 ELF builds whose branch and RIP-relative
    /// displacements were first replaced by labels matched across the builds
    /// and whose relocation and unwind tables were difference-coded, so code
    /// that moves costs little (`delta/src/exec.rs` in outrider-delta).
    /// Clients released before it parse it as [`DeltaFormat::Unknown`].
    #[serde(rename = "elf-x86-64-bsdiff-zstd")]
    ElfX86BsdiffZstd,
    /// A format this verifier does not know; clients skip such deltas and
    /// take the full artifact, so new formats never break old clients.
    #[serde(other)]
    Unknown,
}

/// A staged rollout: which share of the fleet takes the build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Share of clients in the cohort, in hundredths of a percent (0–10000).
    pub basis_points: u32,
    /// Salt of the cohort hash; a new salt draws a new cohort.
    pub salt: String,
    /// Paused: nobody new joins; clients already on the build keep it.
    #[serde(default)]
    pub paused: bool,
}

/// Bucket of a client for a rollout salt, in `0..10000`:
/// `SHA-256(fingerprint || "\n" || salt)` read as a big-endian u64, mod 10000.
/// Computed by the client, so a static file host can serve a staged rollout.
pub fn rollout_bucket(fingerprint: &str, salt: &str) -> u32 {
    let mut input = Vec::with_capacity(fingerprint.len() + salt.len() + 1);
    input.extend_from_slice(fingerprint.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(salt.as_bytes());
    let digest = sha256(&input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    (u64::from_be_bytes(first) % 10_000) as u32
}

impl Rollout {
    /// Whether the client with `fingerprint` takes the build now.
    pub fn includes(&self, fingerprint: &str) -> bool {
        !self.paused && rollout_bucket(fingerprint, &self.salt) < self.basis_points.min(10_000)
    }
}

/// The build given to clients outside a rollout cohort on a fresh install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousBuild {
    /// The agent library's version string.
    pub version: String,
    /// The full build.
    pub artifact: Artifact,
}

/// What a verifier expects of a manifest.
#[derive(Clone, Debug)]
pub struct ManifestPolicy<'a> {
    /// The channel the client follows.
    pub channel: &'a Channel,
    /// The current time, Unix seconds.
    pub now_unix: u64,
    /// The highest manifest seen before, if any.
    pub floor: Option<SequenceFloor>,
}

/// The highest manifest a client has accepted, persisted so that older or
/// substituted manifests are refused after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceFloor {
    pub sequence: u64,
    /// SHA-256 of that manifest's payload bytes.
    pub payload_sha256: Sha256,
}

/// A manifest that passed [`verify_manifest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedManifest {
    pub manifest: ReleaseManifest,
    /// SHA-256 of the signed payload bytes.
    pub payload_sha256: Sha256,
}

impl VerifiedManifest {
    /// The floor to persist after accepting this manifest.
    pub fn floor(&self) -> SequenceFloor {
        SequenceFloor {
            sequence: self.manifest.sequence,
            payload_sha256: self.payload_sha256,
        }
    }

    /// The build for `triple`, or [`Error::NoTarget`].
    pub fn target(&self, triple: &str) -> Result<&Target, Error> {
        self.manifest
            .targets
            .get(triple)
            .ok_or_else(|| Error::NoTarget {
                triple: triple.to_owned(),
            })
    }
}

/// Verifies a release manifest envelope against a trusted root. Fails with
/// the [`Error`] variant of the first step that fails.
pub fn verify_manifest(
    root: &TrustedRoot,
    envelope: &[u8],
    policy: &ManifestPolicy,
) -> Result<VerifiedManifest, Error> {
    // 1. The trusted root itself must still be valid (freeze protection).
    root.check_expiry(policy.now_unix)?;
    // 2. Parse the envelope; oversized input is refused before parsing.
    let envelope = Envelope::from_bytes(envelope)?;
    // 3. It must be release metadata (not a root or anything else).
    envelope.expect_type(PayloadType::Release)?;
    // 4. A threshold of the root's unexpired release keys signed the exact
    //    payload; unknown and expired keys are not counted, duplicates and bad
    //    signatures by trusted keys are refused.
    let release_keys = root.release_keys_at(policy.now_unix);
    envelope.verify_threshold(
        PayloadType::Release,
        &release_keys,
        root.root().release_threshold,
        KeyRole::Release,
    )?;
    // 5. Decode the (now authenticated) payload.
    let tagged: Tagged<ReleaseManifest> =
        serde_json::from_slice(envelope.payload()).map_err(|e| Error::Malformed {
            what: "release manifest",
            reason: e.to_string(),
        })?;
    let manifest = tagged.body;
    let payload_sha256 = sha256(envelope.payload());
    // 6. It is for the client's channel (no mix-and-match).
    if manifest.channel != *policy.channel {
        return Err(Error::WrongChannel {
            expected: policy.channel.clone(),
            got: manifest.channel,
        });
    }
    // 7. It has not expired (freeze attack).
    if policy.now_unix >= manifest.expires_unix {
        return Err(Error::Expired {
            what: "release manifest",
            expired_at: manifest.expires_unix,
            now: policy.now_unix,
        });
    }
    // 8. It is not older than the floor (rollback), and a manifest with the
    //    floor's sequence is the very same one (replay of a substitute).
    if let Some(floor) = &policy.floor {
        if manifest.sequence < floor.sequence {
            return Err(Error::Rollback {
                seen: floor.sequence,
                got: manifest.sequence,
            });
        }
        if manifest.sequence == floor.sequence && payload_sha256 != floor.payload_sha256 {
            return Err(Error::Replay {
                sequence: manifest.sequence,
            });
        }
    }
    Ok(VerifiedManifest {
        manifest,
        payload_sha256,
    })
}

/// Serializes `manifest` (with `"type": "release"`) and signs it with
/// `release_keys`. Fails with [`Error::WrongKeyRole`] if any key is not a
/// release key.
pub fn make_manifest(
    manifest: &ReleaseManifest,
    release_keys: &[&KeyPair],
) -> Result<Envelope, Error> {
    for key in release_keys {
        key.expect_role(KeyRole::Release)?;
    }
    let tagged = Tagged {
        kind: PayloadType::Release.as_str().to_owned(),
        body: manifest,
    };
    let payload = serde_json::to_vec_pretty(&tagged).map_err(|e| Error::Malformed {
        what: "release manifest",
        reason: e.to_string(),
    })?;
    Ok(Envelope::sign(payload, release_keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        for good in ["stable", "beta-2", "a", &"x".repeat(32)] {
            assert_eq!(good.parse::<Channel>().unwrap().as_str(), good);
        }
        for bad in ["", "Stable", "a b", "../x", "a_b", &"x".repeat(33)] {
            assert!(
                matches!(bad.parse::<Channel>(), Err(Error::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_str::<Channel>("\"UPPER\"").is_err());
    }

    #[test]
    fn payload_has_type_and_keeps_unknown_fields() {
        let manifest = ReleaseManifest::new("stable".parse().unwrap(), 3, 10, BTreeMap::new());
        let key = KeyPair::generate(KeyRole::Release).unwrap();
        let env = make_manifest(&manifest, &[&key]).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(env.payload()).unwrap();
        assert_eq!(value["type"], "release");
        value["future"] = serde_json::json!({"percent": 10});
        value["targets"]["x86_64-linux"] = serde_json::json!({
            "version": "1", "abi_major": 1,
            "artifact": {"sha256": "00".repeat(32), "size": 1, "zstd_sha256": "11".repeat(32), "zstd_size": 1},
            "deltas": {"22".repeat(32): {"format": "vcdiff-9", "sha256": "33".repeat(32), "size": 5}},
            "signed_by_robots": true
        });
        let back: Tagged<ReleaseManifest> = serde_json::from_value(value).unwrap();
        // Unknown fields survive a round trip, so re-signing keeps them.
        assert_eq!(back.body.extra["future"]["percent"], 10);
        let target = &back.body.targets["x86_64-linux"];
        assert_eq!(target.extra["signed_by_robots"], true);
        // An unknown delta format parses (and is skipped by clients).
        let delta = target.deltas.values().next().unwrap();
        assert_eq!(delta.format, DeltaFormat::Unknown);
        let again = serde_json::to_value(&back).unwrap();
        assert_eq!(again["future"]["percent"], 10);
        assert_eq!(again["targets"]["x86_64-linux"]["signed_by_robots"], true);
    }

    #[test]
    fn unknown_float_fields_survive_re_serialising_bit_for_bit() {
        // Found by update-client/fuzz `manifest`: this number parsed one
        // ULP off, so every re-signing of the manifest changed it again.
        let number = "50077777777777777777777777777777777777777777777777777777777777777777777777777777777700";
        let text = format!(
            r#"{{"channel":"stable","sequence":1,"expires_unix":2,"targets":{{}},"future":{number}}}"#
        );
        let parsed: ReleaseManifest = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed.extra["future"].as_f64(),
            Some(number.parse::<f64>().unwrap())
        );
        let again: ReleaseManifest =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn rollout_bucket_is_stable_uniform_and_respects_pause() {
        // Stable: the same inputs always land in the same bucket.
        assert_eq!(
            rollout_bucket("0123456789abcdef0123", "s1"),
            rollout_bucket("0123456789abcdef0123", "s1")
        );
        // Roughly uniform: about 5% of 20,000 fingerprints fall under 500.
        let inside = (0..20_000u32)
            .filter(|i| rollout_bucket(&format!("{i:020x}"), "salt") < 500)
            .count();
        assert!((800..1200).contains(&inside), "{inside} of 20000 under 5%");
        let all = Rollout {
            basis_points: 10_000,
            salt: "x".into(),
            paused: false,
        };
        let none = Rollout {
            basis_points: 0,
            salt: "x".into(),
            paused: false,
        };
        assert!(all.includes("0123456789abcdef0123"));
        assert!(!none.includes("0123456789abcdef0123"));
        assert!(
            !Rollout {
                paused: true,
                ..all
            }
            .includes("0123456789abcdef0123")
        );
    }
}
