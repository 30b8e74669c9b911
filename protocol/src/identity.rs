//! Agent identity on the wire: fingerprints and the key-possession proof.
//!
//! Fingerprint = the first 10 bytes of SHA-256 over the 32-byte ed25519
//! public key, as 20 lowercase hex characters. Short enough to read aloud,
//! long enough (80 bits) that a collision needs a deliberate 2^40 search and
//! still fails: the server pins the full public key on first registration.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const FINGERPRINT_BYTES: usize = 10;

/// Domain separation for the auth signature, so it can never be replayed as
/// a signature of anything else.
const AUTH_CONTEXT: &[u8] = b"outrider-agent-auth-v1\n";

/// An agent's identity: short hash of its public key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

/// Why a string is not a fingerprint, or a proof does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    #[error("fingerprint {0:?} is not {n} lowercase hex characters", n = FINGERPRINT_BYTES * 2)]
    Malformed(String),
    #[error("public key is not 32 bytes of hex")]
    BadPublicKey,
    #[error("fingerprint {claimed} does not match the public key (expected {actual})")]
    Mismatch {
        claimed: Fingerprint,
        actual: Fingerprint,
    },
    #[error("signature is not 64 bytes of hex")]
    MalformedSignature,
    #[error("signature does not prove possession of the key")]
    BadSignature,
}

impl Fingerprint {
    /// The fingerprint as 20 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = FingerprintError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = s.len() == FINGERPRINT_BYTES * 2
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Fingerprint(s))
        } else {
            Err(FingerprintError::Malformed(s))
        }
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fingerprint::try_from(s.to_owned())
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fingerprint of a public key.
pub fn fingerprint_of(key: &VerifyingKey) -> Fingerprint {
    let digest = Sha256::digest(key.as_bytes());
    Fingerprint(hex::encode(&digest[..FINGERPRINT_BYTES]))
}

/// The bytes an agent signs to prove possession of its key for one session.
pub fn auth_message(nonce_hex: &str, fingerprint: &Fingerprint) -> Vec<u8> {
    let mut msg = Vec::with_capacity(AUTH_CONTEXT.len() + nonce_hex.len() + 21);
    msg.extend_from_slice(AUTH_CONTEXT);
    msg.extend_from_slice(nonce_hex.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(fingerprint.as_str().as_bytes());
    msg
}

/// Server side: checks that `public_key_hex` hashes to `claimed` and that
/// `signature_hex` signs [`auth_message`]`(nonce_hex, claimed)` with it.
/// Returns the parsed key for pinning.
pub fn verify_proof(
    claimed: &Fingerprint,
    public_key_hex: &str,
    nonce_hex: &str,
    signature_hex: &str,
) -> Result<VerifyingKey, FingerprintError> {
    let key_bytes: [u8; 32] = hex::decode(public_key_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(FingerprintError::BadPublicKey)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| FingerprintError::BadPublicKey)?;
    let actual = fingerprint_of(&key);
    if &actual != claimed {
        return Err(FingerprintError::Mismatch {
            claimed: claimed.clone(),
            actual,
        });
    }
    let sig_bytes: [u8; 64] = hex::decode(signature_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(FingerprintError::MalformedSignature)?;
    key.verify_strict(
        &auth_message(nonce_hex, claimed),
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| FingerprintError::BadSignature)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn fingerprint_is_20_hex_and_parses_back() {
        let fp = fingerprint_of(&key(1).verifying_key());
        assert_eq!(fp.as_str().len(), 20);
        assert_eq!(fp.as_str().parse::<Fingerprint>().unwrap(), fp);
        assert!("XYZ".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn proof_verifies_and_rejects_each_forgery() {
        let k = key(2);
        let fp = fingerprint_of(&k.verifying_key());
        let pk = hex::encode(k.verifying_key().as_bytes());
        let sig = hex::encode(k.sign(&auth_message("aa", &fp)).to_bytes());
        assert!(verify_proof(&fp, &pk, "aa", &sig).is_ok());
        // Replayed against another nonce.
        assert_eq!(
            verify_proof(&fp, &pk, "bb", &sig),
            Err(FingerprintError::BadSignature)
        );
        // Someone else's fingerprint with our key.
        let other = fingerprint_of(&key(3).verifying_key());
        assert!(matches!(
            verify_proof(&other, &pk, "aa", &sig),
            Err(FingerprintError::Mismatch { .. })
        ));
        assert_eq!(
            verify_proof(&fp, "zz", "aa", &sig),
            Err(FingerprintError::BadPublicKey)
        );
        assert_eq!(
            verify_proof(&fp, &pk, "aa", "00"),
            Err(FingerprintError::MalformedSignature)
        );
    }
}
