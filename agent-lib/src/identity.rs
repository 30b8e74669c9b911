//! The agent's ed25519 identity key.
//!
//! On disk: `<config_dir>/identity.key`, the 32-byte seed as 64 lowercase hex
//! characters plus a newline, mode 0600. Created on first start (temp file +
//! fsync + rename, so a crash never leaves half a key); afterwards only read.
//! A malformed file stops the agent with a clear message rather than being
//! replaced: a new key would be a new agent identity on the server.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use outrider_protocol::{Fingerprint, auth_message, fingerprint_of};

use crate::error::AgentError;

/// File name of the key inside the config directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// A loaded identity: the signing key and its fingerprint.
pub struct Identity {
    key: SigningKey,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `<config_dir>/identity.key`, creating it when absent. Fails when
    /// the file cannot be read or written, or exists but is malformed.
    pub fn load_or_create(config_dir: &Path) -> Result<Identity, AgentError> {
        let path = config_dir.join(IDENTITY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            Err(source) => Err(AgentError::IdentityIo { path, source }),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<Identity, AgentError> {
        let malformed = |reason: &str| AgentError::IdentityMalformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed("not hex"))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| malformed("expected 32 bytes (64 hex characters)"))?;
        Ok(Identity::from_seed(seed))
    }

    fn create(path: &Path) -> Result<Identity, AgentError> {
        let io_err = |source| AgentError::IdentityIo {
            path: path.to_owned(),
            source,
        };
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| io_err(std::io::Error::other(e)))?;
        let tmp: PathBuf = path.with_extension("key.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(format!("{}\n", hex::encode(seed)).as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            if let Some(dir) = path.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })?;
        Ok(Identity::from_seed(seed))
    }

    fn from_seed(seed: [u8; 32]) -> Identity {
        let key = SigningKey::from_bytes(&seed);
        let fingerprint = fingerprint_of(&key.verifying_key());
        Identity { key, fingerprint }
    }

    /// The agent's fingerprint.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Hex of the 32-byte public key.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Hex signature over `auth_message(nonce, fingerprint)` for a Hello.
    pub fn sign_challenge(&self, nonce_hex: &str) -> String {
        hex::encode(
            self.key
                .sign(&auth_message(nonce_hex, &self.fingerprint))
                .to_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_once_then_loaded_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(&path).unwrap().trim().len(), 64);
        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.public_key_hex(), again.public_key_hex());
        // Fingerprint = the first 10 bytes of SHA-256 over the public key.
        let public = hex::decode(first.public_key_hex()).unwrap();
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&public);
        assert_eq!(first.fingerprint().as_str(), hex::encode(&digest[..10]));
        assert!(!dir.path().join("identity.key.tmp").exists());
    }

    #[test]
    fn signature_verifies_with_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        let sig = id.sign_challenge("abcd");
        outrider_protocol::verify_proof(id.fingerprint(), &id.public_key_hex(), "abcd", &sig)
            .unwrap();
    }

    #[test]
    fn malformed_key_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        for bad in ["zz", "abcd", ""] {
            fs::write(&path, bad).unwrap();
            let err = Identity::load_or_create(dir.path()).unwrap_err();
            assert!(matches!(err, AgentError::IdentityMalformed { .. }), "{err}");
            assert!(err.is_config());
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
    }

    #[test]
    fn missing_config_dir_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Identity::load_or_create(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, AgentError::IdentityIo { .. }), "{err}");
    }
}
