//! Signed envelopes over exact bytes.
//!
//! Wire format (JSON): `{"payload": "<base64 of the payload bytes>",
//! "signatures": [{"keyid": "<hex>", "sig": "<hex of 64 bytes>"}]}`.
//! The payload is JSON with a `"type"` field (`"root"` or `"release"`). Each
//! signature is ed25519 over `DOMAIN_PREFIX || type || "\n" || payload`, so a
//! signature made for one type never verifies as another, and verifiers check
//! the exact signed bytes rather than a re-serialization.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::{Error, KeyId, KeyPair, KeyRole};

/// Prefix of every signed message; binds signatures to this scheme and version.
pub const DOMAIN_PREFIX: &[u8] = b"outrider-signed-metadata-v1\n";

/// Largest envelope accepted, checked before parsing.
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// The kinds of signed payloads, as written in their `"type"` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadType {
    Root,
    Release,
}

impl PayloadType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PayloadType::Root => "root",
            PayloadType::Release => "release",
        }
    }
}

/// A payload struct together with its `"type"` tag, for (de)serialization.
#[derive(Serialize, Deserialize)]
pub(crate) struct Tagged<T> {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(flatten)]
    pub(crate) body: T,
}

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Id of the key that signed.
    pub keyid: KeyId,
    /// The ed25519 signature.
    pub sig: [u8; 64],
}

/// A payload and signatures over it. Constructing one verifies nothing; see
/// [`crate::verify_manifest`] and [`crate::TrustedRoot`].
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    payload: Vec<u8>,
    signatures: Vec<Signature>,
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
struct WireSignature {
    keyid: KeyId,
    sig: String,
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

impl Envelope {
    /// Signs `payload` with every key in `keys`, in order. The signed type is
    /// read from the payload's `"type"` field; a payload without one is signed
    /// with an empty type, which no verifier in this crate accepts.
    pub fn sign(payload: Vec<u8>, keys: &[&KeyPair]) -> Envelope {
        let kind = payload_type(&payload).unwrap_or_default();
        let message = signing_message(&kind, &payload);
        let signatures = keys
            .iter()
            .map(|k| Signature {
                keyid: k.key_id(),
                sig: k.sign(&message),
            })
            .collect();
        Envelope {
            payload,
            signatures,
        }
    }

    /// The envelope as pretty JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            payload: BASE64.encode(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    keyid: s.keyid.clone(),
                    sig: hex::encode(s.sig),
                })
                .collect(),
        };
        // A struct of strings always serializes.
        let mut out = serde_json::to_vec_pretty(&wire).expect("envelope serializes");
        out.push(b'\n');
        out
    }

    /// Parses an envelope. Fails with [`Error::TooLarge`] above
    /// [`MAX_METADATA_BYTES`] (before parsing) and [`Error::Malformed`] if
    /// the JSON, base64 or hex is invalid. Verifies nothing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, Error> {
        if bytes.len() > MAX_METADATA_BYTES {
            return Err(Error::TooLarge {
                what: "signed metadata",
                limit: MAX_METADATA_BYTES as u64,
                got: bytes.len() as u64,
            });
        }
        let malformed = |reason: String| Error::Malformed {
            what: "envelope",
            reason,
        };
        let wire: WireEnvelope =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let payload = BASE64
            .decode(wire.payload.as_bytes())
            .map_err(|e| malformed(format!("payload: {e}")))?;
        let signatures = wire
            .signatures
            .into_iter()
            .map(|s| {
                let mut sig = [0u8; 64];
                hex::decode_to_slice(&s.sig, &mut sig)
                    .map_err(|e| malformed(format!("signature by {}: {e}", s.keyid)))?;
                Ok(Signature {
                    keyid: s.keyid,
                    sig,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Envelope {
            payload,
            signatures,
        })
    }

    /// The exact signed bytes (not yet verified unless this came from a verifier).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures, in envelope order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Fails with [`Error::WrongPayloadType`] unless the payload's `"type"`
    /// is `expected`. Reads untrusted bytes; the signatures bind the type too,
    /// this check only makes the error say what went wrong.
    pub(crate) fn expect_type(&self, expected: PayloadType) -> Result<(), Error> {
        let got = payload_type(&self.payload)?;
        if got != expected.as_str() {
            return Err(Error::WrongPayloadType {
                expected: expected.as_str().to_owned(),
                got,
            });
        }
        Ok(())
    }

    /// Counts valid signatures by the `trusted` keys over this payload as
    /// `kind`. Signatures by keys not in `trusted` are skipped (a newer root
    /// may add signers); a trusted key that signs twice is
    /// [`Error::DuplicateKey`]; a trusted key whose signature does not verify
    /// is [`Error::BadSignature`]; fewer than `threshold` is
    /// [`Error::BelowThreshold`].
    pub(crate) fn verify_threshold(
        &self,
        kind: PayloadType,
        trusted: &BTreeMap<KeyId, VerifyingKey>,
        threshold: u32,
        role: KeyRole,
    ) -> Result<(), Error> {
        let message = signing_message(kind.as_str(), &self.payload);
        let mut counted = BTreeSet::new();
        for signature in &self.signatures {
            let Some(key) = trusted.get(&signature.keyid) else {
                continue;
            };
            if !counted.insert(&signature.keyid) {
                return Err(Error::DuplicateKey {
                    keyid: signature.keyid.clone(),
                });
            }
            let sig = ed25519_dalek::Signature::from_bytes(&signature.sig);
            key.verify_strict(&message, &sig)
                .map_err(|_| Error::BadSignature {
                    keyid: signature.keyid.clone(),
                })?;
        }
        let have = u32::try_from(counted.len()).unwrap_or(u32::MAX);
        if have < threshold {
            return Err(Error::BelowThreshold {
                role,
                have,
                need: threshold,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("payload_len", &self.payload.len())
            .field(
                "signers",
                &self.signatures.iter().map(|s| &s.keyid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The `"type"` field of a JSON payload.
fn payload_type(payload: &[u8]) -> Result<String, Error> {
    serde_json::from_slice::<TypeOnly>(payload)
        .map(|t| t.kind)
        .map_err(|e| Error::Malformed {
            what: "signed payload",
            reason: e.to_string(),
        })
}

fn signing_message(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN_PREFIX.len() + kind.len() + 1 + payload.len());
    message.extend_from_slice(DOMAIN_PREFIX);
    message.extend_from_slice(kind.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(payload);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(keys: &[&KeyPair]) -> BTreeMap<KeyId, VerifyingKey> {
        keys.iter()
            .map(|k| {
                (
                    k.key_id(),
                    crate::key::parse_public_key(&k.key_id(), &k.public_key_hex()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn round_trips_exact_bytes() {
        let key = KeyPair::generate(KeyRole::Release).unwrap();
        let payload = br#"{"type":"release",  "odd spacing":[1,2]}"#.to_vec();
        let env = Envelope::sign(payload.clone(), &[&key]);
        let back = Envelope::from_bytes(&env.to_bytes()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.payload(), &payload[..]);
        back.verify_threshold(PayloadType::Release, &trusted(&[&key]), 1, KeyRole::Release)
            .unwrap();
    }

    #[test]
    fn signature_is_bound_to_the_type() {
        let key = KeyPair::generate(KeyRole::Release).unwrap();
        let env = Envelope::sign(br#"{"type":"root"}"#.to_vec(), &[&key]);
        let err = env
            .verify_threshold(PayloadType::Release, &trusted(&[&key]), 1, KeyRole::Release)
            .unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
        let err = env.expect_type(PayloadType::Release).unwrap_err();
        assert!(matches!(err, Error::WrongPayloadType { .. }), "{err:?}");
    }

    #[test]
    fn rejects_bad_encodings() {
        for bad in [&b"not json"[..], br#"{"payload":"!!","signatures":[]}"#] {
            assert!(matches!(
                Envelope::from_bytes(bad),
                Err(Error::Malformed { .. })
            ));
        }
        let bad_sig = format!(
            r#"{{"payload":"","signatures":[{{"keyid":"{}","sig":"zz"}}]}}"#,
            "a".repeat(64)
        );
        assert!(matches!(
            Envelope::from_bytes(bad_sig.as_bytes()),
            Err(Error::Malformed { .. })
        ));
    }
}
