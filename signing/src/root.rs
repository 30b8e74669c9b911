//! The update root: which keys sign roots and release manifests.
//!
//! Payload format (`"type": "root"`): `version`, `expires_unix`, `root_keys`
//! (key id → hex public key), `root_threshold`, `release_keys` (key id →
//! `{public_key, expires_unix}`), `release_threshold`. Unknown fields are
//! ignored so older verifiers accept roots with newer fields.
//!
//! The first root is trusted because it was installed with the stub; each
//! later root must have version `n + 1` and be signed by a threshold of the
//! previous root's root keys **and** of its own (DESIGN §5). A client several
//! versions behind catches up one version at a time with [`walk_roots`].
//!
//! Revocation: a release key missing from the newest root, or past its
//! `expires_unix`, no longer counts toward the release threshold.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::envelope::{PayloadType, Tagged};
use crate::key::parse_public_key;
use crate::{Envelope, Error, KeyId, KeyPair, KeyRole};

/// The content of a root envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Monotonic; each rotation adds exactly one.
    pub version: u64,
    /// Unix time (seconds) from which this root is no longer valid.
    pub expires_unix: u64,
    /// Root keys: key id → hex public key.
    pub root_keys: BTreeMap<KeyId, String>,
    /// How many root keys must sign a root.
    pub root_threshold: u32,
    /// Release keys: key id → public key and expiry.
    pub release_keys: BTreeMap<KeyId, ReleaseKey>,
    /// How many unexpired release keys must sign a manifest.
    pub release_threshold: u32,
    /// Fields written by newer tools, kept so that signing the next root
    /// built from this one does not drop them.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A key allowed to sign release manifests until `expires_unix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseKey {
    /// Hex public key.
    pub public_key: String,
    /// Unix time (seconds) from which signatures by this key no longer count.
    pub expires_unix: u64,
}

/// A [`Root`] whose envelope verified, with its keys parsed.
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    root: Root,
    envelope: Vec<u8>,
    root_keys: BTreeMap<KeyId, VerifyingKey>,
    release_keys: BTreeMap<KeyId, (VerifyingKey, u64)>,
}

impl TrustedRoot {
    /// The initial trust anchor (`root.json` written at install): verifies the
    /// envelope is signed by a threshold of its own root keys and has not
    /// expired. Fails with the [`Error`] of the first check that fails.
    pub fn from_bytes_self_signed(bytes: &[u8], now_unix: u64) -> Result<TrustedRoot, Error> {
        // 1. Parse the envelope (size-capped).
        let envelope = Envelope::from_bytes(bytes)?;
        // 2. It must be a root, not some other signed metadata.
        envelope.expect_type(PayloadType::Root)?;
        // 3. Decode the root and its keys.
        let candidate = decode(&envelope, bytes)?;
        // 4. A threshold of its own root keys signed it.
        envelope.verify_threshold(
            PayloadType::Root,
            &candidate.root_keys,
            candidate.root.root_threshold,
            KeyRole::Root,
        )?;
        // 5. It has not expired.
        candidate.check_expiry(now_unix)?;
        Ok(candidate)
    }

    /// Verifies `bytes` as the next root after this one: version exactly one
    /// higher ([`Error::Rollback`] if not higher, [`Error::RootVersionSkipped`]
    /// if more), signed by a threshold of this root's root keys and of its
    /// own. Expiry is not checked, so a client can walk through expired
    /// intermediate roots; check the last one with [`TrustedRoot::check_expiry`].
    pub fn successor(&self, bytes: &[u8]) -> Result<TrustedRoot, Error> {
        // 1. Parse the envelope (size-capped).
        let envelope = Envelope::from_bytes(bytes)?;
        // 2. It must be a root.
        envelope.expect_type(PayloadType::Root)?;
        // 3. Decode it.
        let candidate = decode(&envelope, bytes)?;
        // 4. Its version is exactly the next one (no rollback, no skipping).
        //    Checked before the signatures only to refuse with a clear error;
        //    nothing is accepted until both thresholds are met.
        let (current, got) = (self.root.version, candidate.root.version);
        if got <= current {
            return Err(Error::Rollback { seen: current, got });
        }
        if got != current + 1 {
            return Err(Error::RootVersionSkipped { current, got });
        }
        // 5. A threshold of the trusted (old) root keys signed it.
        envelope.verify_threshold(
            PayloadType::Root,
            &self.root_keys,
            self.root.root_threshold,
            KeyRole::Root,
        )?;
        // 6. A threshold of its own root keys signed it too.
        envelope.verify_threshold(
            PayloadType::Root,
            &candidate.root_keys,
            candidate.root.root_threshold,
            KeyRole::Root,
        )?;
        Ok(candidate)
    }

    /// Fails with [`Error::Expired`] if this root expired at or before `now_unix`.
    pub fn check_expiry(&self, now_unix: u64) -> Result<(), Error> {
        if now_unix >= self.root.expires_unix {
            return Err(Error::Expired {
                what: "root",
                expired_at: self.root.expires_unix,
                now: now_unix,
            });
        }
        Ok(())
    }

    /// The verified root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The exact envelope bytes this root was verified from.
    pub fn envelope_bytes(&self) -> &[u8] {
        &self.envelope
    }

    /// The release keys whose signatures count at `now_unix`.
    pub(crate) fn release_keys_at(&self, now_unix: u64) -> BTreeMap<KeyId, VerifyingKey> {
        self.release_keys
            .iter()
            .filter(|(_, (_, expires))| now_unix < *expires)
            .map(|(id, (key, _))| (id.clone(), *key))
            .collect()
    }
}

/// Decodes and validates a root payload: key ids match keys, thresholds are
/// at least one and reachable.
fn decode(envelope: &Envelope, bytes: &[u8]) -> Result<TrustedRoot, Error> {
    let tagged: Tagged<Root> =
        serde_json::from_slice(envelope.payload()).map_err(|e| Error::Malformed {
            what: "root",
            reason: e.to_string(),
        })?;
    let root = tagged.body;
    check_threshold(KeyRole::Root, root.root_threshold, root.root_keys.len())?;
    check_threshold(
        KeyRole::Release,
        root.release_threshold,
        root.release_keys.len(),
    )?;
    let root_keys = root
        .root_keys
        .iter()
        .map(|(id, key)| Ok((id.clone(), parse_public_key(id, key)?)))
        .collect::<Result<_, Error>>()?;
    let release_keys = root
        .release_keys
        .iter()
        .map(|(id, key)| {
            Ok((
                id.clone(),
                (parse_public_key(id, &key.public_key)?, key.expires_unix),
            ))
        })
        .collect::<Result<_, Error>>()?;
    Ok(TrustedRoot {
        root,
        envelope: bytes.to_vec(),
        root_keys,
        release_keys,
    })
}

/// A threshold of zero would accept unsigned metadata; one above the key
/// count could never be met.
fn check_threshold(role: KeyRole, threshold: u32, keys: usize) -> Result<(), Error> {
    if threshold == 0 || threshold as usize > keys {
        return Err(Error::InvalidThreshold {
            role,
            threshold,
            keys,
        });
    }
    Ok(())
}

/// Builds and signs a root: `root_keys` are trusted (threshold `threshold`)
/// and sign it; `release_keys` with their expiry times may sign manifests
/// (also threshold `threshold`). A shorthand for [`RootBuilder`], which sets
/// the two thresholds separately. Fails with [`Error::WrongKeyRole`] for a key
/// of the wrong role and [`Error::InvalidThreshold`] for an unreachable threshold.
pub fn make_root(
    root_keys: &[&KeyPair],
    release_keys: &[(&KeyPair, u64)],
    threshold: u32,
    version: u64,
    expires_unix: u64,
) -> Result<Envelope, Error> {
    let mut builder = RootBuilder::new(version, expires_unix)
        .root_threshold(threshold)
        .release_threshold(threshold);
    for key in root_keys {
        builder = builder.add_root_key(key)?;
    }
    for (key, expires_unix) in release_keys {
        builder = builder.add_release_key(key, *expires_unix)?;
    }
    builder.sign(root_keys)
}

/// Builds a [`Root`] and signs it: a first root with [`RootBuilder::new`], a
/// rotation (next version, same keys until changed) with
/// [`RootBuilder::successor_of`].
///
/// The builder checks what it can know alone: key roles, and that both
/// thresholds are at least one and reachable. Whether the signers meet the
/// thresholds of the previous root and of the new one is the verifier's
/// question; confirm a rotation with [`TrustedRoot::successor`] before
/// publishing it.
#[derive(Clone, Debug)]
pub struct RootBuilder {
    root: Root,
}

impl RootBuilder {
    /// A root of `version` expiring at `expires_unix`, without keys, both
    /// thresholds one.
    pub fn new(version: u64, expires_unix: u64) -> RootBuilder {
        RootBuilder {
            root: Root {
                version,
                expires_unix,
                root_keys: BTreeMap::new(),
                root_threshold: 1,
                release_keys: BTreeMap::new(),
                release_threshold: 1,
                extra: BTreeMap::new(),
            },
        }
    }

    /// The next root after `previous`: version + 1, expiring at
    /// `expires_unix`, with the same keys, thresholds and unknown fields
    /// until changed.
    pub fn successor_of(previous: &Root, expires_unix: u64) -> RootBuilder {
        let mut root = previous.clone();
        root.version = previous.version.saturating_add(1);
        root.expires_unix = expires_unix;
        RootBuilder { root }
    }

    /// Trusts `key` as a root key. Fails with [`Error::WrongKeyRole`] unless
    /// it is one.
    pub fn add_root_key(mut self, key: &KeyPair) -> Result<RootBuilder, Error> {
        key.expect_role(KeyRole::Root)?;
        self.root
            .root_keys
            .insert(key.key_id(), key.public_key_hex());
        Ok(self)
    }

    /// Stops trusting the root key `keyid` (no-op if it is not trusted).
    pub fn remove_root_key(mut self, keyid: &KeyId) -> RootBuilder {
        self.root.root_keys.remove(keyid);
        self
    }

    /// Trusts `key` to sign manifests until `expires_unix` (replacing the
    /// expiry if it is already trusted). Fails with [`Error::WrongKeyRole`]
    /// unless it is a release key.
    pub fn add_release_key(
        mut self,
        key: &KeyPair,
        expires_unix: u64,
    ) -> Result<RootBuilder, Error> {
        key.expect_role(KeyRole::Release)?;
        self.root.release_keys.insert(
            key.key_id(),
            ReleaseKey {
                public_key: key.public_key_hex(),
                expires_unix,
            },
        );
        Ok(self)
    }

    /// Revokes the release key `keyid` (no-op if it is not trusted): once
    /// clients hold this root, its signatures no longer count.
    pub fn remove_release_key(mut self, keyid: &KeyId) -> RootBuilder {
        self.root.release_keys.remove(keyid);
        self
    }

    /// How many root keys must sign the next root (and this one).
    pub fn root_threshold(mut self, threshold: u32) -> RootBuilder {
        self.root.root_threshold = threshold;
        self
    }

    /// How many unexpired release keys must sign a manifest.
    pub fn release_threshold(mut self, threshold: u32) -> RootBuilder {
        self.root.release_threshold = threshold;
        self
    }

    /// The root as built so far.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Serializes the root (with `"type": "root"`) and signs it once with
    /// each distinct key of `signers`. Fails with [`Error::InvalidThreshold`]
    /// if a threshold is zero or above its key count, and with
    /// [`Error::WrongKeyRole`] if a signer is not a root key.
    pub fn sign(self, signers: &[&KeyPair]) -> Result<Envelope, Error> {
        let root = self.root;
        check_threshold(KeyRole::Root, root.root_threshold, root.root_keys.len())?;
        check_threshold(
            KeyRole::Release,
            root.release_threshold,
            root.release_keys.len(),
        )?;
        let mut seen = BTreeSet::new();
        let mut distinct = Vec::with_capacity(signers.len());
        for key in signers {
            key.expect_role(KeyRole::Root)?;
            // A key signing twice would make verifiers refuse the envelope.
            if seen.insert(key.key_id()) {
                distinct.push(*key);
            }
        }
        let tagged = Tagged {
            kind: PayloadType::Root.as_str().to_owned(),
            body: &root,
        };
        let payload = serde_json::to_vec_pretty(&tagged).map_err(|e| Error::Malformed {
            what: "root",
            reason: e.to_string(),
        })?;
        Ok(Envelope::sign(payload, &distinct))
    }
}

/// Most root rotations [`walk_roots`] follows in one call. A real chain
/// grows by a few versions a year; an endless one is an attack.
pub const MAX_ROOT_WALK: u64 = 1024;

/// Why [`walk_roots`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError<E> {
    /// `fetch` failed for `version`; nothing after the last verified root
    /// was trusted. Retrying later is safe.
    #[error("cannot fetch root version {version}: {source}")]
    Fetch {
        version: u64,
        #[source]
        source: E,
    },
    /// Root `version` was refused: a failed chain step
    /// ([`TrustedRoot::successor`]'s errors), a chain longer than
    /// [`MAX_ROOT_WALK`] ([`Error::RootChainTooLong`]), or a final root that
    /// has expired ([`Error::Expired`], a freeze attack).
    #[error("root version {version} refused: {source}")]
    Verify {
        version: u64,
        #[source]
        source: Error,
    },
}

impl<E> WalkError<E> {
    /// The verification error, if the walk stopped on one.
    pub fn verification(&self) -> Option<&Error> {
        match self {
            WalkError::Verify { source, .. } => Some(source),
            WalkError::Fetch { .. } => None,
        }
    }
}

/// Catches a client up with the root chain (DESIGN §5; TUF 5.3). No I/O of
/// its own: `fetch(version)` returns that root's envelope
/// (`/v1/updates/roots/{version}.json`), `Ok(None)` when the repository has
/// no such version (404), or an error.
///
/// Starting at `trusted` (which may have expired: a client offline for a long
/// time still catches up), it fetches version n + 1, n + 2, ... and accepts
/// each only as the [`TrustedRoot::successor`] of the one before (a threshold
/// of the old and of the new root keys, exactly the next version), stopping at
/// the first `None`. The roots in between may have expired; the last one may
/// not. Returns the newest verified root, which the caller persists in place
/// of `trusted`.
///
/// Fails with [`WalkError::Fetch`] if `fetch` fails, and
/// [`WalkError::Verify`] if a root is refused, if more than
/// [`MAX_ROOT_WALK`] rotations follow `trusted`
/// ([`Error::RootChainTooLong`]), or if the newest root has expired at
/// `now_unix` ([`Error::Expired`]).
pub fn walk_roots<E>(
    trusted: &TrustedRoot,
    fetch: impl FnMut(u64) -> Result<Option<Vec<u8>>, E>,
    now_unix: u64,
) -> Result<TrustedRoot, WalkError<E>> {
    walk_roots_with_limit(trusted, fetch, now_unix, MAX_ROOT_WALK)
}

/// [`walk_roots`] with a cap of `max_steps` rotations instead of
/// [`MAX_ROOT_WALK`]; [`Error::RootChainTooLong`] carries `max_steps`.
pub fn walk_roots_with_limit<E>(
    trusted: &TrustedRoot,
    mut fetch: impl FnMut(u64) -> Result<Option<Vec<u8>>, E>,
    now_unix: u64,
    max_steps: u64,
) -> Result<TrustedRoot, WalkError<E>> {
    let mut current = trusted.clone();
    let mut steps = 0u64;
    // The last possible version has no successor.
    while let Some(next) = current.root.version.checked_add(1) {
        // 1. Fetch version n + 1; none means `current` is the newest.
        let Some(bytes) = fetch(next).map_err(|source| WalkError::Fetch {
            version: next,
            source,
        })?
        else {
            break;
        };
        // 2. Bound the walk, so a repository cannot keep a client busy forever.
        if steps == max_steps {
            return Err(WalkError::Verify {
                version: next,
                source: Error::RootChainTooLong {
                    from: trusted.root.version,
                    limit: max_steps,
                },
            });
        }
        // 3. Accept it only as the verified successor of the current root.
        current = current
            .successor(&bytes)
            .map_err(|source| WalkError::Verify {
                version: next,
                source,
            })?;
        steps += 1;
    }
    // 4. The newest root must be unexpired (freeze attack).
    current
        .check_expiry(now_unix)
        .map_err(|source| WalkError::Verify {
            version: current.root.version,
            source,
        })?;
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn keys() -> (KeyPair, KeyPair) {
        (
            KeyPair::generate(KeyRole::Root).unwrap(),
            KeyPair::generate(KeyRole::Release).unwrap(),
        )
    }

    #[test]
    fn self_signed_root_verifies_and_keeps_bytes() {
        let (root_key, release_key) = keys();
        let bytes = make_root(&[&root_key], &[(&release_key, NOW + 100)], 1, 1, NOW + 100)
            .unwrap()
            .to_bytes();
        let trusted = TrustedRoot::from_bytes_self_signed(&bytes, NOW).unwrap();
        assert_eq!(trusted.envelope_bytes(), &bytes[..]);
        assert_eq!(trusted.root().version, 1);
        assert!(
            trusted
                .root()
                .release_keys
                .contains_key(&release_key.key_id())
        );
        let err = TrustedRoot::from_bytes_self_signed(&bytes, NOW + 100).unwrap_err();
        assert!(
            matches!(err, Error::Expired { what: "root", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn make_root_checks_roles_and_thresholds() {
        let (root_key, release_key) = keys();
        let err = make_root(&[&release_key], &[(&release_key, NOW)], 1, 1, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                Error::WrongKeyRole {
                    expected: KeyRole::Root,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = make_root(&[&root_key], &[(&release_key, NOW)], 0, 1, NOW).unwrap_err();
        assert!(matches!(err, Error::InvalidThreshold { .. }), "{err:?}");
        let err =
            make_root(&[&root_key, &root_key], &[(&release_key, NOW)], 2, 1, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidThreshold {
                    role: KeyRole::Root,
                    keys: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rotation_needs_old_and_new_threshold_and_next_version() {
        let (old_root, release_key) = keys();
        let new_root = KeyPair::generate(KeyRole::Root).unwrap();
        let rel = [(&release_key, NOW + 100)];
        let v1 = make_root(&[&old_root], &rel, 1, 1, NOW + 100)
            .unwrap()
            .to_bytes();
        let trusted = TrustedRoot::from_bytes_self_signed(&v1, NOW).unwrap();

        // Signed by both: accepted.
        let mut v2 = make_root(&[&new_root], &rel, 1, 2, NOW + 100).unwrap();
        let by_old = Envelope::sign(v2.payload().to_vec(), &[&old_root, &new_root]);
        let next = trusted.successor(&by_old.to_bytes()).unwrap();
        assert_eq!(next.root().version, 2);

        // Signed by the new key only: the old root's threshold is not met.
        let err = trusted.successor(&v2.to_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BelowThreshold {
                    role: KeyRole::Root,
                    have: 0,
                    need: 1
                }
            ),
            "{err:?}"
        );

        // Signed by the old key only: the new root's own threshold is not met.
        v2 = Envelope::sign(v2.payload().to_vec(), &[&old_root]);
        let err = trusted.successor(&v2.to_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BelowThreshold {
                    role: KeyRole::Root,
                    have: 0,
                    need: 1
                }
            ),
            "{err:?}"
        );

        // Same version again, and a skipped version.
        let err = trusted.successor(&v1).unwrap_err();
        assert!(
            matches!(err, Error::Rollback { seen: 1, got: 1 }),
            "{err:?}"
        );
        let v3 = make_root(&[&old_root], &rel, 1, 3, NOW + 100)
            .unwrap()
            .to_bytes();
        let err = trusted.successor(&v3).unwrap_err();
        assert!(
            matches!(err, Error::RootVersionSkipped { current: 1, got: 3 }),
            "{err:?}"
        );
    }
}
