//! One update check, through [`outrider_update_client`] (DESIGN.md §5):
//! walk the root chain (persisting a newer `root.json`), fetch and verify
//! the manifest against the sequence floor, decide by cohort, fetch by delta
//! from the running build or in full, and only then install the verified
//! bytes under `versions/<sha256>/` (temp dir + fsync + rename).
//!
//! An installed build is hashed again every time it is used, so a file
//! changed on disk is never loaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use outrider_signing::{Sha256, TrustedRoot};
use outrider_update_client::{ClientView, HttpTransport, Plan, UpdateClient, Via};
use sha2::Digest;
use tracing::{info, warn};

use crate::StubError;
use crate::config::StubConfig;
use crate::layout::{LIBRARY_FILE, Layout};
use crate::state::{StubState, write_atomic};

/// Chunk size for hashing files.
const CHUNK: usize = 64 * 1024;

/// A verified build, installed under `versions/`.
#[derive(Clone, Debug)]
pub struct Build {
    pub sha256: Sha256,
    pub version: String,
    pub path: PathBuf,
    /// Payload hash of the manifest that offered it (`None` when it comes
    /// from disk only); a build that fails probation is bad for that
    /// manifest, and only a newer manifest may offer it again.
    pub manifest_sha256: Option<Sha256>,
    /// Downloaded and installed by this very check (an `installed` event).
    pub fresh: bool,
}

/// Reads the trusted root the installer (or an earlier chain walk) wrote.
pub fn load_root(path: &Path) -> Result<TrustedRoot, StubError> {
    let bytes = std::fs::read(path).map_err(StubError::io("reading trusted root", path))?;
    TrustedRoot::from_bytes_self_signed(&bytes, outrider_signing::now_unix()).map_err(|source| {
        StubError::Root {
            path: path.to_owned(),
            source,
        }
    })
}

/// Talks to one update repository for one channel.
#[derive(Debug)]
pub struct Updater {
    client: UpdateClient<HttpTransport>,
    channel: outrider_signing::Channel,
    /// The stub artifact the last verified manifest offers for our triple.
    stub_offer: Option<outrider_signing::Artifact>,
    layout: Layout,
    root: TrustedRoot,
}

impl Updater {
    /// An updater for the channel and server of `config`.
    pub fn new(config: &StubConfig, layout: &Layout, root: TrustedRoot) -> Updater {
        let transport = HttpTransport::new(&format!("{}/v1/updates", config.update_url));
        let client = UpdateClient::new(
            transport,
            config.channel.clone(),
            &layout.data_dir.join("downloads"),
        );
        Updater {
            client,
            channel: config.channel.clone(),
            stub_offer: None,
            layout: layout.clone(),
            root,
        }
    }

    /// Runs one update check and returns the build to run, installing it
    /// first if needed. Raises `state.floor` to the accepted manifest and
    /// records the build in `state` (the caller persists it).
    pub fn fetch_latest(&mut self, state: &mut StubState) -> Result<Build, StubError> {
        let now = outrider_update_client::trusted_now(
            outrider_signing::now_unix(),
            state.time_floor_unix,
        );
        let result = self.check(state, now);
        state.time_floor_unix = outrider_update_client::next_time_floor(
            state.time_floor_unix,
            now,
            state.manifest_expires_unix,
        );
        result
    }

    /// The body of [`Updater::fetch_latest`], at trusted time `now`.
    fn check(&mut self, state: &mut StubState, now: u64) -> Result<Build, StubError> {
        // Step 1: root chain.
        let root = self.client.refresh_root(&self.root, now)?;
        if root.root().version != self.root.root().version {
            write_atomic(&self.layout.root_json, root.envelope_bytes())?;
            info!(version = root.root().version, "trusted update root rotated");
            self.root = root;
        }
        // Step 2: manifest (the sequence floor is per channel).
        if state.floor_channel.as_deref() != Some(self.channel.as_str()) {
            state.floor = None;
        }
        let manifest = self
            .client
            .fetch_manifest(&self.root, state.floor.clone(), now)?;
        state.floor_channel = Some(self.channel.to_string());
        state.floor = Some(manifest.floor());
        state.manifest_expires_unix = Some(manifest.manifest.expires_unix);
        self.stub_offer = manifest
            .manifest
            .targets
            .get(&outrider_signing::host_triple())
            .and_then(|t| t.stub.clone());
        // Step 3: plan.
        let fingerprint = agent_fingerprint(&self.layout.config_dir);
        let triple = outrider_signing::host_triple();
        let view = ClientView {
            triple: &triple,
            abi_major: outrider_abi::ABI_MAJOR,
            fingerprint: fingerprint.as_deref(),
            current: state.current.as_ref().map(|b| b.sha256),
        };
        let manifest_sha256 = Some(manifest.payload_sha256);
        let current = state
            .current
            .as_ref()
            .and_then(|b| self.installed(&b.sha256, Some(&b.version)))
            .map(|b| Build {
                manifest_sha256,
                ..b
            });
        let install = match outrider_update_client::plan(&manifest, &view)? {
            Plan::UpToDate { version } => match current {
                Some(build) => return Ok(Build { version, ..build }),
                // Recorded but gone or modified on disk: fetch it again.
                None => full_reinstall(&manifest, &triple)?,
            },
            Plan::Stay => match current {
                Some(build) => return Ok(build),
                None => full_reinstall(&manifest, &triple)?,
            },
            Plan::Install(install) => install,
        };
        // A build that failed probation under this manifest is never retried.
        if state.is_bad(&install.artifact.sha256, manifest_sha256.as_ref())
            && let Some(build) = current
        {
            return Ok(build);
        }
        if let Some(build) = self.installed(&install.artifact.sha256, Some(&install.version)) {
            return Ok(Build {
                manifest_sha256,
                ..build
            });
        }
        // Step 4: fetch (delta from the running build when possible) and install.
        let base = match (&install.delta, &current) {
            (Some(_), Some(build)) => std::fs::read(&build.path).ok(),
            _ => None,
        };
        let tmp_dir = self
            .layout
            .versions_dir
            .join(format!(".tmp-{}", install.artifact.sha256));
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir).map_err(StubError::io("creating", &tmp_dir))?;
        let fetched = self
            .client
            .fetch(&install, base.as_deref(), &tmp_dir.join(LIBRARY_FILE));
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp_dir);
                return Err(e.into());
            }
        };
        crate::supervisor::crash_point("install-before-rename");
        let path = self.install(&install.artifact.sha256, &tmp_dir)?;
        let via = match fetched.via {
            Via::Delta(format) => format!("delta ({format:?})"),
            Via::Full => "full download".to_owned(),
        };
        info!(sha256 = %install.artifact.sha256, version = %install.version, %via, "installed verified agent build");
        Ok(Build {
            sha256: install.artifact.sha256,
            version: install.version,
            path,
            manifest_sha256,
            fresh: true,
        })
    }

    /// The installed build with hash `sha256`, if present and intact.
    pub fn installed(&self, sha256: &Sha256, version: Option<&str>) -> Option<Build> {
        let path = self.layout.version_file(sha256);
        let actual = hash_file(&path).ok()?;
        if &actual != sha256 {
            warn!(path = %path.display(), expected = %sha256, %actual, "installed build was modified on disk; ignoring it");
            return None;
        }
        let version = version.map_or_else(
            || format!("sha256:{}", &sha256.to_string()[..12]),
            str::to_owned,
        );
        Some(Build {
            sha256: *sha256,
            version,
            path,
            manifest_sha256: None,
            fresh: false,
        })
    }

    /// The stub binary the last accepted manifest offers, if any.
    pub fn stub_offer(&self) -> Option<&outrider_signing::Artifact> {
        self.stub_offer.as_ref()
    }

    /// Downloads the offered stub binary and writes it, verified, to `dest`.
    pub fn fetch_stub(
        &self,
        artifact: &outrider_signing::Artifact,
        dest: &Path,
    ) -> Result<(), StubError> {
        Ok(self.client.fetch_full(artifact, dest)?)
    }

    /// Follows a reloaded configuration (channel, update URL); the trusted
    /// root and the downloads stay.
    pub fn reconfigure(&mut self, config: &StubConfig) {
        let transport = HttpTransport::new(&format!("{}/v1/updates", config.update_url));
        self.client = UpdateClient::new(
            transport,
            config.channel.clone(),
            &self.layout.data_dir.join("downloads"),
        );
        self.channel = config.channel.clone();
    }

    /// Moves a verified library from its temp dir to `versions/<sha>/`
    /// (rename + directory fsync: after a crash it is either whole or absent).
    fn install(&self, sha256: &Sha256, tmp_dir: &Path) -> Result<PathBuf, StubError> {
        let final_dir = self.layout.versions_dir.join(sha256.to_string());
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(tmp_dir, &final_dir)
            .map_err(StubError::io("renaming into place", &final_dir))?;
        std::fs::File::open(&self.layout.versions_dir)
            .and_then(|d| d.sync_all())
            .map_err(StubError::io(
                "syncing directory",
                &self.layout.versions_dir,
            ))?;
        Ok(final_dir.join(LIBRARY_FILE))
    }
}

/// The target's full build, for when the recorded build is missing on disk.
fn full_reinstall(
    manifest: &outrider_signing::VerifiedManifest,
    triple: &str,
) -> Result<outrider_update_client::Install, StubError> {
    let target = manifest.manifest.targets.get(triple).ok_or_else(|| {
        outrider_update_client::UpdateError::NoTarget {
            triple: triple.to_owned(),
        }
    })?;
    Ok(outrider_update_client::Install {
        version: target.version.clone(),
        artifact: target.artifact.clone(),
        delta: None,
    })
}

/// The agent's fingerprint for rollout cohorts, read from the identity key
/// the library created (`<config_dir>/identity.key`: 64 hex characters of
/// the ed25519 seed). Same definition as `outrider_protocol::fingerprint_of`
/// — the first 10 bytes of SHA-256 of the public key, in hex — which the
/// stub cannot import (it depends on no agent crate). `None` before the
/// first run of the library, or if the file is unreadable.
fn agent_fingerprint(config_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config_dir.join("identity.key")).ok()?;
    let seed: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let digest = sha2::Sha256::digest(public.as_bytes());
    Some(hex::encode(&digest[..10]))
}

/// SHA-256 of a file, streamed.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<Sha256> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256::from_bytes(hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_the_agent_definition() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(agent_fingerprint(dir.path()), None);
        std::fs::write(
            dir.path().join("identity.key"),
            format!("{}\n", "07".repeat(32)),
        )
        .unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let expected = hex::encode(&sha2::Sha256::digest(key.verifying_key().as_bytes())[..10]);
        assert_eq!(
            agent_fingerprint(dir.path()).as_deref(),
            Some(expected.as_str())
        );
        std::fs::write(dir.path().join("identity.key"), "not hex").unwrap();
        assert_eq!(agent_fingerprint(dir.path()), None);
    }
}
