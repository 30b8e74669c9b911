//! Fetching, verifying and installing agent builds (DESIGN.md §5).
//!
//! Order of checks for one update, each a distinct [`StubError`]:
//! 1. the manifest is at most 1 MiB and verifies against the trusted root
//!    (signatures, threshold, type, channel, expiry, sequence floor);
//! 2. it names a build for this platform, of this stub's ABI major;
//! 3. the compressed download is capped at its declared size *while
//!    streaming* and must hash to the declared value;
//! 4. decompression is capped at the declared library size, and the result
//!    must hash to the declared value;
//! 5. only then is it written under `versions/` (temp dir + fsync + rename).
//!
//! An installed build is hashed again every time it is used, so a file
//! changed on disk is never loaded.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outrider_signing::{ManifestPolicy, SequenceFloor, Sha256, TrustedRoot};
use tracing::info;

use crate::StubError;
use crate::config::StubConfig;
use crate::layout::{LIBRARY_FILE, Layout};
use crate::state::StubState;

/// Largest manifest the stub downloads.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Chunk size for streaming downloads and hashing.
const CHUNK: usize = 64 * 1024;

/// A verified build, installed under `versions/`.
#[derive(Clone, Debug)]
pub struct Build {
    pub sha256: Sha256,
    pub version: String,
    pub path: PathBuf,
}

/// Reads the trusted root the installer wrote.
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
    base: String,
    channel: outrider_signing::Channel,
    layout: Layout,
    root: TrustedRoot,
    http: ureq::Agent,
}

impl Updater {
    /// An updater for the channel and server of `config`.
    pub fn new(config: &StubConfig, layout: &Layout, root: TrustedRoot) -> Updater {
        let http = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .build();
        Updater {
            base: format!("{}/v1/updates", config.server_url),
            channel: config.channel.clone(),
            layout: layout.clone(),
            root,
            http,
        }
    }

    /// Fetches and verifies the channel manifest and makes sure the build it
    /// names is installed. Raises `state.floor` to the accepted manifest
    /// (the caller persists it).
    pub fn fetch_latest(&self, state: &mut StubState) -> Result<Build, StubError> {
        // Step 1: manifest.
        let url = format!("{}/channels/{}/manifest.json", self.base, self.channel);
        let bytes = match self.get(&url, MAX_MANIFEST_BYTES, "manifest")? {
            Some(b) => b,
            None => {
                return Err(StubError::NoManifest {
                    channel: self.channel.to_string(),
                    url,
                });
            }
        };
        let policy = ManifestPolicy {
            channel: &self.channel,
            now_unix: outrider_signing::now_unix(),
            floor: state.floor.clone(),
        };
        let verified =
            outrider_signing::verify_manifest(&self.root, &bytes, &policy).map_err(|source| {
                StubError::Manifest {
                    channel: self.channel.to_string(),
                    source,
                }
            })?;
        state.floor = Some(SequenceFloor {
            sequence: verified.manifest.sequence,
            payload_sha256: verified.payload_sha256,
        });

        // Step 2: our platform, our ABI.
        let triple = outrider_signing::host_triple();
        let target = verified
            .manifest
            .targets
            .get(&triple)
            .ok_or_else(|| StubError::NoTarget {
                channel: self.channel.to_string(),
                triple: triple.clone(),
            })?;
        if target.abi_major != outrider_abi::ABI_MAJOR {
            return Err(StubError::AbiMajor {
                version: target.version.clone(),
                got: target.abi_major,
                ours: outrider_abi::ABI_MAJOR,
            });
        }
        let artifact = &target.artifact;
        if let Some(build) = self.installed(&artifact.sha256) {
            return Ok(Build {
                version: target.version.clone(),
                ..build
            });
        }

        // Step 3: download, capped and hashed.
        let blob_url = format!("{}/blobs/{}", self.base, artifact.zstd_sha256);
        let compressed = self
            .get(&blob_url, artifact.zstd_size, "compressed build")?
            .ok_or_else(|| StubError::Truncated {
                what: "compressed build",
                url: blob_url.clone(),
                got: 0,
                expected: artifact.zstd_size,
            })?;
        if (compressed.len() as u64) < artifact.zstd_size {
            return Err(StubError::Truncated {
                what: "compressed build",
                url: blob_url,
                got: compressed.len() as u64,
                expected: artifact.zstd_size,
            });
        }
        check_hash("compressed build", &artifact.zstd_sha256, &compressed)?;

        // Step 4: decompress, capped and hashed.
        let library = decompress_capped(&compressed, artifact.size, &artifact.sha256)?;
        check_hash("agent library", &artifact.sha256, &library)?;

        // Step 5: install.
        let path = self.install(&artifact.sha256, &library)?;
        info!(sha256 = %artifact.sha256, version = %target.version, "installed verified agent build");
        Ok(Build {
            sha256: artifact.sha256,
            version: target.version.clone(),
            path,
        })
    }

    /// The installed build with hash `sha256`, if present and intact.
    pub fn installed(&self, sha256: &Sha256) -> Option<Build> {
        let path = self.layout.version_file(sha256);
        let actual = hash_file(&path).ok()?;
        if &actual != sha256 {
            tracing::warn!(path = %path.display(), expected = %sha256, %actual, "installed build was modified on disk; ignoring it");
            return None;
        }
        Some(Build {
            sha256: *sha256,
            version: format!("sha256:{}", &sha256.to_string()[..12]),
            path,
        })
    }

    /// GET `url`, reading at most `limit` bytes; `None` on 404.
    fn get(&self, url: &str, limit: u64, what: &'static str) -> Result<Option<Vec<u8>>, StubError> {
        let resp = match self.http.get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(404, _)) => return Ok(None),
            Err(e) => {
                return Err(StubError::Http {
                    url: url.to_owned(),
                    source: Box::new(e),
                });
            }
        };
        let mut body = Vec::with_capacity(limit.min(16 << 20) as usize);
        // Read one byte past the limit to tell "exactly limit" from "more".
        resp.into_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| StubError::Http {
                url: url.to_owned(),
                source: Box::new(ureq::Error::from(e)),
            })?;
        if body.len() as u64 > limit {
            return Err(StubError::TooLarge {
                what,
                url: url.to_owned(),
                limit,
            });
        }
        Ok(Some(body))
    }

    /// Writes a verified library to `versions/<sha>/` atomically.
    fn install(&self, sha256: &Sha256, library: &[u8]) -> Result<PathBuf, StubError> {
        let final_dir = self.layout.versions_dir.join(sha256.to_string());
        let tmp_dir = self.layout.versions_dir.join(format!(".tmp-{sha256}"));
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir).map_err(StubError::io("creating", &tmp_dir))?;
        let tmp_file = tmp_dir.join(LIBRARY_FILE);
        let mut file =
            std::fs::File::create(&tmp_file).map_err(StubError::io("creating", &tmp_file))?;
        file.write_all(library)
            .and_then(|()| file.sync_all())
            .map_err(StubError::io("writing", &tmp_file))?;
        drop(file);
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp_dir, &final_dir)
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

/// Decompresses a zstd blob, refusing output beyond `size` bytes (a zstd
/// bomb stops at the cap instead of filling memory).
fn decompress_capped(compressed: &[u8], size: u64, sha256: &Sha256) -> Result<Vec<u8>, StubError> {
    let decompress_err = |source| StubError::Decompress {
        sha256: *sha256,
        source,
    };
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(decompress_err)?;
    let mut out = Vec::with_capacity(size.min(256 << 20) as usize);
    decoder
        .take(size + 1)
        .read_to_end(&mut out)
        .map_err(decompress_err)?;
    if out.len() as u64 > size {
        return Err(decompress_err(std::io::Error::other(format!(
            "decompressed output exceeds the declared {size} bytes"
        ))));
    }
    Ok(out)
}

fn check_hash(what: &'static str, expected: &Sha256, bytes: &[u8]) -> Result<(), StubError> {
    let actual = outrider_signing::sha256(bytes);
    if &actual != expected {
        return Err(StubError::HashMismatch {
            what,
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

/// SHA-256 of a file, streamed.
fn hash_file(path: &Path) -> std::io::Result<Sha256> {
    use sha2::Digest;
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
    let digest: [u8; 32] = hasher.finalize().into();
    Ok(hex::encode(digest)
        .parse()
        .expect("64 hex characters form a Sha256"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_is_capped_at_the_declared_size() {
        let data = vec![7u8; 100_000];
        let blob = zstd::encode_all(&data[..], 3).unwrap();
        let sha = outrider_signing::sha256(&data);
        assert_eq!(decompress_capped(&blob, 100_000, &sha).unwrap(), data);
        // A bomb: declared small, expands large.
        let err = decompress_capped(&blob, 1_000, &sha).unwrap_err();
        assert!(err.to_string().contains("decompressing"), "{err}");
        assert!(crate::error::chain(&err).contains("exceeds the declared 1000 bytes"));
    }

    #[test]
    fn hash_mismatch_names_both_hashes() {
        let expected = outrider_signing::sha256(b"good");
        let err = check_hash("agent library", &expected, b"evil").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("hash mismatch for agent library"), "{text}");
        assert!(text.contains(&expected.to_string()));
        assert!(text.contains(&outrider_signing::sha256(b"evil").to_string()));
    }
}
