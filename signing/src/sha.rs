//! [`Sha256`]: a parsed SHA-256 digest, written as 64 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

use crate::Error;

/// A SHA-256 digest. Parsing accepts exactly 64 lowercase hex digits, the form
/// [`Display`](fmt::Display) writes and serde uses, so one digest has one spelling
/// (it is also a file name in the blob store).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256 {
    Sha256(sha2::Sha256::digest(bytes).into())
}

impl Sha256 {
    /// Wraps a digest computed elsewhere (e.g. by a streaming `sha2::Sha256`).
    pub fn from_bytes(bytes: [u8; 32]) -> Sha256 {
        Sha256(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Sha256 {
    type Err = Error;

    /// Fails with [`Error::Malformed`] unless `s` is 64 lowercase hex digits.
    fn from_str(s: &str) -> Result<Sha256, Error> {
        let malformed = |reason: &str| Error::Malformed {
            what: "sha256",
            reason: format!("{s:?}: {reason}"),
        };
        if s.len() != 64 {
            return Err(malformed("expected 64 hex digits"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(malformed("expected lowercase hex digits only"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| malformed(&e.to_string()))?;
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Sha256, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_serde() {
        let digest = sha256(b"abc");
        let text = digest.to_string();
        assert_eq!(
            text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(text.parse::<Sha256>().unwrap(), digest);
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), digest);
    }

    #[test]
    fn rejects_bad_spellings() {
        let upper = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        for bad in [
            "",
            "abc",
            upper,
            &"g".repeat(64),
            &"a".repeat(65),
            "../etc/passwd",
        ] {
            assert!(
                matches!(bad.parse::<Sha256>(), Err(Error::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_str::<Sha256>("\"abc\"").is_err());
    }
}
