//! ed25519 key pairs, their ids and roles, and the private key file.
//!
//! Key file format (JSON, mode 0600, never overwritten):
//! `{"type": "ed25519", "role": "root" | "release", "private_key": "<64 hex digits of the seed>"}`.
//! A key's id is the lowercase hex SHA-256 of its 32-byte public key.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, sha256};

/// The only key algorithm, as written in key files.
pub const KEY_TYPE: &str = "ed25519";

/// Largest key file [`KeyPair::read`] accepts; a real one is about 120 bytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The id of a public key: lowercase hex SHA-256 of its 32 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KeyId(String);

impl KeyId {
    /// The id of `public_key`.
    pub fn of_public_key(public_key: &[u8; 32]) -> KeyId {
        KeyId(sha256(public_key).to_string())
    }

    /// The id as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = Error;

    /// Fails with [`Error::Malformed`] unless `s` is 64 lowercase hex digits.
    fn from_str(s: &str) -> Result<KeyId, Error> {
        s.parse::<crate::Sha256>()
            .map(|_| KeyId(s.to_owned()))
            .map_err(|_| Error::Malformed {
                what: "key id",
                reason: format!("{s:?} is not 64 lowercase hex digits"),
            })
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyId, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// What a key may sign: roots (kept offline) or release manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    Root,
    Release,
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyRole::Root => "root",
            KeyRole::Release => "release",
        })
    }
}

/// A role and an ed25519 private key. `Debug` shows the role and key id only.
pub struct KeyPair {
    role: KeyRole,
    signing: SigningKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    role: KeyRole,
    private_key: String,
}

impl KeyPair {
    /// A new key with a seed from the operating system's random number
    /// generator. Fails with [`Error::Entropy`] if that is unavailable.
    pub fn generate(role: KeyRole) -> Result<KeyPair, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Entropy {
            reason: e.to_string(),
        })?;
        Ok(KeyPair {
            role,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// Writes the key to a new file at `path` with mode 0600: temp file,
    /// fsync, then a hard link into place, which (unlike rename) refuses to
    /// replace an existing file. Fails with [`Error::KeyFileExists`] if `path`
    /// exists and with [`Error::Io`] if the directory is missing or unwritable.
    pub fn write_new(&self, path: &Path) -> Result<(), Error> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::KeyFileExists {
                path: path.to_owned(),
            });
        }
        let file = KeyFile {
            kind: KEY_TYPE.to_owned(),
            role: self.role,
            private_key: hex::encode(self.signing.to_bytes()),
        };
        // Serializing a struct of strings into memory cannot fail.
        let mut json = serde_json::to_vec_pretty(&file).expect("key file serializes");
        json.push(b'\n');

        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| Error::Entropy {
            reason: e.to_string(),
        })?;
        let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(nonce)));

        let written = (|| {
            let mut f = create_private(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Io {
                path: tmp,
                source: e,
            });
        }
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::KeyFileExists {
                    path: path.to_owned(),
                });
            }
            Err(e) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source: e,
                });
            }
        }
        sync_dir(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })
    }

    /// Reads a key file written by [`KeyPair::write_new`]. Fails with
    /// [`Error::KeyFilePermissions`] (unix) if the file is readable by group
    /// or others, [`Error::TooLarge`] or [`Error::Malformed`] if it is not a
    /// key file, [`Error::Io`] if it cannot be read.
    pub fn read(path: &Path) -> Result<KeyPair, Error> {
        let io_err = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(Error::KeyFilePermissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(Error::TooLarge {
                what: "key file",
                limit: MAX_KEY_FILE_BYTES,
                got: meta.len(),
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        let malformed = |reason: String| Error::Malformed {
            what: "key file",
            reason: format!("{}: {reason}", path.display()),
        };
        let parsed: KeyFile =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if parsed.kind != KEY_TYPE {
            return Err(malformed(format!(
                "key type {:?} is not {KEY_TYPE:?}",
                parsed.kind
            )));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(parsed.private_key.trim(), &mut seed)
            .map_err(|e| malformed(format!("private_key is not 64 hex digits: {e}")))?;
        Ok(KeyPair {
            role: parsed.role,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The id of this key's public half.
    pub fn key_id(&self) -> KeyId {
        KeyId::of_public_key(self.signing.verifying_key().as_bytes())
    }

    /// What this key may sign.
    pub fn role(&self) -> KeyRole {
        self.role
    }

    /// The public key as 64 lowercase hex digits, as written in `root.json`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// Fails with [`Error::WrongKeyRole`] unless this key has `role`.
    pub fn expect_role(&self, role: KeyRole) -> Result<(), Error> {
        if self.role == role {
            Ok(())
        } else {
            Err(Error::WrongKeyRole {
                keyid: self.key_id(),
                expected: role,
                got: self.role,
            })
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("role", &self.role)
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// Parses a hex public key from signed metadata and checks that `keyid` is its id.
pub(crate) fn parse_public_key(keyid: &KeyId, hex_key: &str) -> Result<VerifyingKey, Error> {
    let malformed = |reason: String| Error::Malformed {
        what: "public key",
        reason: format!("key {keyid}: {reason}"),
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes)
        .map_err(|e| malformed(format!("not 64 hex digits: {e}")))?;
    if KeyId::of_public_key(&bytes) != *keyid {
        return Err(malformed(
            "the key id is not the sha256 of the public key".to_owned(),
        ));
    }
    VerifyingKey::from_bytes(&bytes).map_err(|e| malformed(e.to_string()))
}

#[cfg(unix)]
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Makes a rename or link in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.key");
        let key = KeyPair::generate(KeyRole::Release).unwrap();
        key.write_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = KeyPair::read(&path).unwrap();
        assert_eq!(back.key_id(), key.key_id());
        assert_eq!(back.role(), KeyRole::Release);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        KeyPair::generate(KeyRole::Root)
            .unwrap()
            .write_new(&path)
            .unwrap();
        let before = fs::read(&path).unwrap();
        let err = KeyPair::generate(KeyRole::Root)
            .unwrap()
            .write_new(&path)
            .unwrap_err();
        assert!(matches!(err, Error::KeyFileExists { .. }), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let key = KeyPair::generate(KeyRole::Root).unwrap();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&hex::encode(key.signing.to_bytes())));
        assert!(debug.contains(key.key_id().as_str()));
    }

    #[test]
    fn key_id_is_sha256_of_public_key() {
        let key = KeyPair::generate(KeyRole::Root).unwrap();
        let public = hex::decode(key.public_key_hex()).unwrap();
        assert_eq!(key.key_id().as_str(), sha256(&public).to_string());
        assert!(parse_public_key(&key.key_id(), &key.public_key_hex()).is_ok());
        let other = KeyPair::generate(KeyRole::Root).unwrap().key_id();
        assert!(matches!(
            parse_public_key(&other, &key.public_key_hex()),
            Err(Error::Malformed { .. })
        ));
    }
}
