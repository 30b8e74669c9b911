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
    fn payload_has_type_and_tolerates_unknown_fields() {
        let manifest = ReleaseManifest {
            channel: "stable".parse().unwrap(),
            sequence: 3,
            expires_unix: 10,
            targets: BTreeMap::new(),
        };
        let key = KeyPair::generate(KeyRole::Release).unwrap();
        let env = make_manifest(&manifest, &[&key]).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(env.payload()).unwrap();
        assert_eq!(value["type"], "release");
        value["rollout"] = serde_json::json!({"percent": 10});
        let back: Tagged<ReleaseManifest> = serde_json::from_value(value).unwrap();
        assert_eq!(back.body, manifest);
    }
}
