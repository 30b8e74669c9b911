//! The builds a signer may point a channel at again: only those of manifests
//! that verify against the local `root.json`.
//!
//! `rollback --to` (and the ABI of a default rollback) used to come from the
//! server's `builds` listing, which is the server's word and signed by
//! nobody: a compromised server could list a build of its own and have the
//! operator's release keys sign it. Now the candidates come from two sources,
//! each envelope verified here before anything is taken from it:
//!
//! 1. the server's stored manifest history
//!    (`GET /api/v1/releases/channels/{channel}/manifests`, exact envelopes;
//!    a server too old for the route answers 404 and contributes nothing);
//! 2. the local record of what this keys directory signed
//!    (`<keys>/published/<channel>/<sequence>.json`, written after every
//!    accepted upload, the newest [`RECORD_KEEP`] kept per channel).
//!
//! An envelope that fails verification is kept aside with the versions it
//! claims, so that an operator asking for one of them is told exactly which
//! manifest lied and why ([`Refusal`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use outrider_signing::{Channel, Envelope, Error as SigningError, ReleaseManifest, TrustedRoot};

use super::{BuildInfo, fetch_builds, verify_even_if_expired};
use crate::client::ApiClient;
use crate::files::write_atomic;

/// How many manifests are read from each source, and kept in the local
/// record per channel.
pub(super) const RECORD_KEEP: usize = 100;

/// Why the CLI will not sign a build; one variant per refusal.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The build is named only by manifests that do not verify: doctored on
    /// the server, signed by a key the local root does not trust, or made for
    /// another channel.
    #[error(
        "refusing build {version} of channel {channel} for {triple}: it appears only in manifest \
         sequence {sequence}, which does not verify against the local root.json ({reason}); \
         the server's release history has been tampered with"
    )]
    ForgedManifest {
        channel: Channel,
        triple: String,
        version: String,
        sequence: u64,
        /// The verification error, as a sentence.
        reason: String,
    },
    /// The server lists the build, but no verified manifest contains it.
    #[error(
        "refusing build {version} of channel {channel} for {triple}: the server lists it \
         (artifact {sha256}), but no manifest that verifies against the local root.json \
         contains it, so no release key ever signed it"
    )]
    UnsignedBuild {
        channel: Channel,
        triple: String,
        version: String,
        sha256: String,
    },
    /// Nobody knows the version.
    #[error(
        "version {version:?} is not among the signed builds of channel {channel} for {triple} ({known})"
    )]
    UnknownVersion {
        channel: Channel,
        triple: String,
        version: String,
        known: String,
    },
    /// The channel's current manifest itself does not verify, so nothing in
    /// it (the build a promote copies, the previous build a rollback goes
    /// to) may be signed again.
    #[error(
        "refusing the current manifest of channel {channel} (sequence {sequence}, build(s) {builds}): \
         it does not verify against the local root.json ({reason})"
    )]
    ForgedCurrent {
        channel: Channel,
        sequence: u64,
        builds: String,
        /// The verification error, as a sentence.
        reason: String,
    },
}

/// A manifest envelope that failed verification, with what it claims.
#[derive(Debug)]
struct Rejected {
    sequence: u64,
    /// Triple → version, as claimed by the unverified payload.
    versions: BTreeMap<String, String>,
    reason: SigningError,
}

/// The verified manifests of one channel, newest first, and the rejected ones.
#[derive(Debug)]
pub(super) struct SignedHistory {
    channel: Channel,
    verified: Vec<ReleaseManifest>,
    rejected: Vec<Rejected>,
}

impl SignedHistory {
    /// Reads both sources (see the module note) and verifies every envelope
    /// against `root`. Fails only on transport errors other than a 404 or
    /// an unreadable local record directory.
    pub(super) fn load(
        client: &ApiClient,
        root: &TrustedRoot,
        record: &Path,
        channel: &Channel,
    ) -> Result<SignedHistory> {
        let mut envelopes: Vec<Vec<u8>> = Vec::new();
        let path = format!("/api/v1/releases/channels/{channel}/manifests?limit={RECORD_KEEP}");
        if let Some(body) = client
            .get_bytes_opt(&path)
            .with_context(|| format!("fetching the manifest history of channel {channel}"))?
        {
            let listed: Vec<String> = serde_json::from_slice(&body)
                .with_context(|| format!("decoding the manifest history of channel {channel}"))?;
            envelopes.extend(listed.into_iter().map(String::into_bytes));
        }
        envelopes.extend(read_record(&record_dir(record, channel))?);
        Ok(SignedHistory::verify(root, channel, envelopes))
    }

    /// Verifies each envelope; the pure half of [`SignedHistory::load`].
    fn verify(root: &TrustedRoot, channel: &Channel, envelopes: Vec<Vec<u8>>) -> SignedHistory {
        let mut verified: Vec<ReleaseManifest> = Vec::new();
        let mut rejected = Vec::new();
        for bytes in envelopes {
            match verify_even_if_expired(root, &bytes, channel) {
                Ok(v) => {
                    if !verified.contains(&v.manifest) {
                        verified.push(v.manifest);
                    }
                }
                Err(reason) => {
                    let claimed = claimed(&bytes);
                    rejected.push(Rejected {
                        sequence: claimed.as_ref().map_or(0, |m| m.sequence),
                        versions: claimed
                            .map(|m| {
                                m.targets
                                    .into_iter()
                                    .map(|(triple, t)| (triple, t.version))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        reason,
                    });
                }
            }
        }
        verified.sort_by_key(|m| std::cmp::Reverse(m.sequence));
        SignedHistory {
            channel: channel.clone(),
            verified,
            rejected,
        }
    }

    /// The distinct builds verified manifests made the target of `triple`,
    /// newest first.
    pub(super) fn builds(&self, triple: &str) -> Vec<BuildInfo> {
        let mut out: Vec<BuildInfo> = Vec::new();
        for target in self.verified.iter().filter_map(|m| m.targets.get(triple)) {
            if out
                .iter()
                .all(|b| b.artifact.sha256 != target.artifact.sha256)
            {
                out.push(BuildInfo {
                    version: target.version.clone(),
                    abi_major: Some(target.abi_major),
                    artifact: target.artifact.clone(),
                });
            }
        }
        out
    }

    /// The signed build `version` of `triple`, or the refusal that explains
    /// why there is none; `server_builds` is the server's unsigned listing,
    /// consulted only to word the refusal.
    pub(super) fn build(
        &self,
        triple: &str,
        version: &str,
        server_builds: &[BuildInfo],
    ) -> Result<BuildInfo, Refusal> {
        let signed = self.builds(triple);
        if let Some(build) = signed.iter().find(|b| b.version == version) {
            return Ok(build.clone());
        }
        if let Some(bad) = self
            .rejected
            .iter()
            .find(|r| r.versions.get(triple).is_some_and(|v| v == version))
        {
            return Err(Refusal::ForgedManifest {
                channel: self.channel.clone(),
                triple: triple.to_owned(),
                version: version.to_owned(),
                sequence: bad.sequence,
                reason: bad.reason.to_string(),
            });
        }
        if let Some(listed) = server_builds.iter().find(|b| b.version == version) {
            return Err(Refusal::UnsignedBuild {
                channel: self.channel.clone(),
                triple: triple.to_owned(),
                version: version.to_owned(),
                sha256: listed.artifact.sha256.to_string(),
            });
        }
        let known: Vec<&str> = signed.iter().map(|b| b.version.as_str()).collect();
        Err(Refusal::UnknownVersion {
            channel: self.channel.clone(),
            triple: triple.to_owned(),
            version: version.to_owned(),
            known: if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
        })
    }
}

/// The signed build `version` of `channel`/`triple` for `rollback --to`:
/// [`SignedHistory::build`], with the server's listing fetched only when the
/// version is not signed (a failing listing just words the refusal less
/// precisely).
pub(super) fn rollback_target(
    client: &ApiClient,
    history: &SignedHistory,
    triple: &str,
    version: &str,
) -> Result<BuildInfo, Refusal> {
    history
        .build(triple, version, &[])
        .or_else(|refusal| match refusal {
            Refusal::UnknownVersion { .. } => {
                let listed =
                    fetch_builds(client, &history.channel, triple, RECORD_KEEP).unwrap_or_default();
                history.build(triple, version, &listed)
            }
            other => Err(other),
        })
}

/// The refusal for a current manifest that does not verify: names the
/// builds its unverified payload claims.
pub(super) fn forged_current(channel: &Channel, bytes: &[u8], reason: SigningError) -> Refusal {
    let claimed = claimed(bytes);
    let builds = claimed
        .as_ref()
        .map(|m| {
            m.targets
                .iter()
                .map(|(triple, t)| format!("{} for {triple}", t.version))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unreadable".to_owned());
    Refusal::ForgedCurrent {
        channel: channel.clone(),
        sequence: claimed.map_or(0, |m| m.sequence),
        builds,
        reason: reason.to_string(),
    }
}

/// The payload an envelope claims, unverified: only for wording refusals.
fn claimed(bytes: &[u8]) -> Option<ReleaseManifest> {
    let envelope = Envelope::from_bytes(bytes).ok()?;
    serde_json::from_slice(envelope.payload()).ok()
}

/// `<keys>/published/<channel>`.
fn record_dir(keys: &Path, channel: &Channel) -> PathBuf {
    keys.join("published").join(channel.as_str())
}

/// Adds a manifest this keys directory signed and the server accepted to the
/// local record, then drops all but the newest [`RECORD_KEEP`].
pub(super) fn record(keys: &Path, manifest: &ReleaseManifest, envelope: &[u8]) -> Result<()> {
    let dir = record_dir(keys, &manifest.channel);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(
        &dir.join(format!("{:020}.json", manifest.sequence)),
        envelope,
    )?;
    let mut names = record_names(&dir)?;
    names.sort();
    let excess = names.len().saturating_sub(RECORD_KEEP);
    for name in &names[..excess] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(())
}

fn record_names(dir: &Path) -> Result<Vec<String>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    Ok(listing
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect())
}

/// The newest [`RECORD_KEEP`] envelopes of the local record.
fn read_record(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut names = record_names(dir)?;
    names.sort_by(|a, b| b.cmp(a));
    names
        .iter()
        .take(RECORD_KEEP)
        .map(|n| {
            let path = dir.join(n);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use outrider_signing::{KeyPair, KeyRole, Target, make_manifest, make_root, now_unix};

    use super::super::publish::tests::artifact;
    use super::*;

    const TRIPLE: &str = "x86_64-linux";

    struct Keys {
        root: TrustedRoot,
        release: KeyPair,
    }

    fn keys() -> Keys {
        let root_key = KeyPair::generate(KeyRole::Root).unwrap();
        let release = KeyPair::generate(KeyRole::Release).unwrap();
        let now = now_unix();
        let bytes = make_root(&[&root_key], &[(&release, now + 3600)], 1, 1, now + 3600)
            .unwrap()
            .to_bytes();
        Keys {
            root: TrustedRoot::from_bytes_self_signed(&bytes, now).unwrap(),
            release,
        }
    }

    fn manifest(channel: &str, sequence: u64, version: &str) -> ReleaseManifest {
        let target = Target::full(version.into(), 1, artifact(version));
        ReleaseManifest::new(
            channel.parse().unwrap(),
            sequence,
            now_unix() + 3600,
            BTreeMap::from([(TRIPLE.to_owned(), target)]),
        )
    }

    fn signed(key: &KeyPair, m: &ReleaseManifest) -> Vec<u8> {
        make_manifest(m, &[key]).unwrap().to_bytes()
    }

    /// `envelope` with its payload replaced by `m`, the signatures kept: what
    /// a server that edits its stored history serves.
    pub(crate) fn doctored(envelope: &[u8], m: &ReleaseManifest) -> Vec<u8> {
        let mut wire: serde_json::Value = serde_json::from_slice(envelope).unwrap();
        let mut payload: serde_json::Value = serde_json::to_value(m).unwrap();
        payload["type"] = "release".into();
        wire["payload"] = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&payload).unwrap())
            .into();
        serde_json::to_vec(&wire).unwrap()
    }

    fn listed(version: &str) -> BuildInfo {
        BuildInfo {
            version: version.into(),
            abi_major: Some(1),
            artifact: artifact(version),
        }
    }

    #[test]
    fn only_verified_manifests_offer_builds_and_each_refusal_is_its_own_variant() {
        let k = keys();
        let intruder = KeyPair::generate(KeyRole::Release).unwrap();
        let beta: Channel = "beta".parse().unwrap();
        let genuine1 = signed(&k.release, &manifest("beta", 1, "1.0.0"));
        let genuine2 = signed(&k.release, &manifest("beta", 2, "2.0.0"));
        let history = SignedHistory::verify(
            &k.root,
            &beta,
            vec![
                genuine1.clone(),
                doctored(&genuine1, &manifest("beta", 3, "6.6.6")),
                signed(&intruder, &manifest("beta", 4, "6.6.7")),
                signed(&k.release, &manifest("stable", 5, "6.6.8")),
                genuine2.clone(),
                // The same manifest from the local record: counted once.
                genuine2,
            ],
        );
        let versions: Vec<String> = history
            .builds(TRIPLE)
            .into_iter()
            .map(|b| b.version)
            .collect();
        assert_eq!(versions, ["2.0.0", "1.0.0"], "newest first, deduplicated");
        let server = [listed("6.6.6"), listed("9.9.9"), listed("1.0.0")];

        let good = history.build(TRIPLE, "1.0.0", &server).unwrap();
        assert_eq!(good.artifact, artifact("1.0.0"));
        for (version, sequence) in [("6.6.6", 3), ("6.6.7", 4), ("6.6.8", 5)] {
            match history.build(TRIPLE, version, &server) {
                Err(e @ Refusal::ForgedManifest { sequence: s, .. }) => {
                    assert_eq!(s, sequence);
                    assert!(e.to_string().contains(version), "{e}");
                }
                other => panic!("{version}: {other:?}"),
            }
        }
        match history.build(TRIPLE, "9.9.9", &server) {
            Err(e @ Refusal::UnsignedBuild { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("9.9.9") && text.contains(&artifact("9.9.9").sha256.to_string()),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        match history.build(TRIPLE, "0.1", &server) {
            Err(e @ Refusal::UnknownVersion { .. }) => {
                assert!(e.to_string().contains("(2.0.0, 1.0.0)"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            history.build("aarch64-linux", "1.0.0", &[]),
            Err(Refusal::UnknownVersion { .. })
        ));
    }

    #[test]
    fn a_forged_current_manifest_is_refused_naming_its_builds() {
        let k = keys();
        let beta: Channel = "beta".parse().unwrap();
        let bytes = doctored(
            &signed(&k.release, &manifest("beta", 7, "1.0.0")),
            &manifest("beta", 7, "6.6.6"),
        );
        let reason = verify_even_if_expired(&k.root, &bytes, &beta).unwrap_err();
        let refusal = forged_current(&beta, &bytes, reason);
        assert!(matches!(
            refusal,
            Refusal::ForgedCurrent { sequence: 7, .. }
        ));
        assert!(
            refusal.to_string().contains("6.6.6 for x86_64-linux"),
            "{refusal}"
        );
    }

    #[test]
    fn the_local_record_keeps_the_newest_manifests() {
        let k = keys();
        let dir = tempfile::tempdir().unwrap();
        for sequence in 1..=(RECORD_KEEP as u64 + 2) {
            let m = manifest("beta", sequence, &format!("1.0.{sequence}"));
            record(dir.path(), &m, &signed(&k.release, &m)).unwrap();
        }
        let beta: Channel = "beta".parse().unwrap();
        let envelopes = read_record(&record_dir(dir.path(), &beta)).unwrap();
        assert_eq!(envelopes.len(), RECORD_KEEP);
        let history = SignedHistory::verify(&k.root, &beta, envelopes);
        let builds = history.builds(TRIPLE);
        assert_eq!(builds.len(), RECORD_KEEP);
        assert_eq!(builds[0].version, format!("1.0.{}", RECORD_KEEP + 2));
        assert_eq!(builds[RECORD_KEEP - 1].version, "1.0.3", "1 and 2 pruned");
        assert!(read_record(&dir.path().join("none")).unwrap().is_empty());
    }
}
