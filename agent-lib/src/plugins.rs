//! The content-addressed plugin cache and verified plugin downloads.
//!
//! Layout: `<data_dir>/plugins/<sha256>` — the file whose SHA-256 is its
//! name, mode 0755. The runner executes exactly that path for a check whose
//! command is `plugin:<name>`; a missing file means "not downloaded".
//! Downloads in progress are `<data_dir>/plugins/<sha256>.tmp`.
//!
//! Invariants of a [`Download`] (every violation is its own error and
//! nothing is installed):
//! - the server's announced `total` equals the size the config declares
//!   (at most `MAX_PLUGIN_BYTES`, checked by `AgentConfig::validate`);
//! - chunks arrive in order, each at most `PLUGIN_CHUNK_BYTES`, and never
//!   carry the file past the declared size;
//! - the SHA-256 is computed while writing and must equal the name; only
//!   then the temp file is fsynced, made executable and renamed into place
//!   (the directory is fsynced too), so a reader never sees a partial or
//!   wrong file under a hash name;
//! - an abandoned download removes its temp file (drop guard).
//!
//! A plugin whose download fails is not asked for again until its
//! [`PluginRetries`] deadline: one jittered exponential [`Backoff`] per
//! content hash, reset when the file installs, forgotten when no config
//! needs it any more (so the table holds at most the running config's
//! plugins).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use outrider_protocol::{AgentConfig, PLUGIN_CHUNK_BYTES, PluginRef, is_sha256_hex};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::AgentError;

/// Directory (in the data dir) of the plugin cache.
pub const PLUGIN_DIR: &str = "plugins";
/// Suffix of a download in progress.
const TMP_SUFFIX: &str = ".tmp";
/// Longest base64 text of one chunk: 4 characters per 3 bytes, padded.
const MAX_CHUNK_BASE64: usize = PLUGIN_CHUNK_BYTES.div_ceil(3) * 4;

/// The plugin directory of one agent.
#[derive(Clone, Debug)]
pub struct PluginCache {
    dir: PathBuf,
}

impl PluginCache {
    /// The cache under `<data_dir>/plugins`.
    pub fn new(data_dir: &Path) -> PluginCache {
        PluginCache {
            dir: data_dir.join(PLUGIN_DIR),
        }
    }

    /// Where plugin `sha256` lives once installed.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Re-hashes installed plugin `sha256` before it runs (blocking: reads
    /// the whole file). A file that no longer hashes to its name was
    /// modified after download: it is removed, so it is fetched again, and
    /// never run. Fails with [`AgentError::PluginModified`] then, or
    /// [`AgentError::PluginIo`] when it cannot be read.
    pub fn verify(&self, name: &str, sha256: &str) -> Result<(), AgentError> {
        let path = self.path_of(sha256);
        let io_err = |source| AgentError::PluginIo {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io_err)?;
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(io_err)?;
        let actual = hex::encode(hasher.finalize());
        if actual == sha256 {
            return Ok(());
        }
        let _ = fs::remove_file(&path);
        Err(AgentError::PluginModified {
            name: name.to_owned(),
            path,
            actual,
        })
    }

    /// The plugins of `config` not installed yet, each content hash once.
    /// A file of the wrong size counts as missing (it is replaced).
    pub fn missing(&self, config: &AgentConfig) -> Vec<PluginRef> {
        let mut seen = HashSet::new();
        config
            .plugins
            .iter()
            .filter(|p| seen.insert(p.sha256.as_str()))
            .filter(|p| {
                fs::metadata(self.path_of(&p.sha256))
                    .map_or(true, |m| !m.is_file() || m.len() != p.size)
            })
            .cloned()
            .collect()
    }

    /// Removes cached plugins (and leftover temp files) that `config` does
    /// not reference. Returns the names removed. Files that do not look like
    /// ours are left alone. Fails only when the directory cannot be listed.
    pub fn prune(&self, config: &AgentConfig) -> io::Result<Vec<String>> {
        let keep: HashSet<&str> = config.plugins.iter().map(|p| p.sha256.as_str()).collect();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let hash = name.strip_suffix(TMP_SUFFIX).unwrap_or(&name);
            let stale = is_sha256_hex(hash) && (name.ends_with(TMP_SUFFIX) || !keep.contains(hash));
            if stale && fs::remove_file(self.dir.join(&name)).is_ok() {
                removed.push(name);
            }
        }
        removed.sort();
        Ok(removed)
    }
}

/// When each failed plugin download may be tried again; see the module docs.
#[derive(Debug)]
pub struct PluginRetries {
    base: std::time::Duration,
    cap: std::time::Duration,
    /// Per content hash: its backoff and the earliest next attempt.
    failed: HashMap<String, (Backoff, Instant)>,
}

impl PluginRetries {
    /// Retries starting at most `base` after the first failure, the
    /// ceiling doubling per failure up to `cap`.
    pub fn new(base: std::time::Duration, cap: std::time::Duration) -> PluginRetries {
        PluginRetries {
            base,
            cap,
            failed: HashMap::new(),
        }
    }

    /// Records a failed download of `sha256` at `now`; returns the delay
    /// until it may be tried again.
    pub fn failed(&mut self, sha256: &str, now: Instant) -> std::time::Duration {
        let (backoff, next) = self
            .failed
            .entry(sha256.to_owned())
            .or_insert_with(|| (Backoff::new(self.base, self.cap), now));
        let delay = backoff.next_delay();
        *next = now + delay;
        delay
    }

    /// Forgets `sha256`'s failures (it installed).
    pub fn succeeded(&mut self, sha256: &str) {
        self.failed.remove(sha256);
    }

    /// Whether `sha256` may be downloaded at `now`.
    pub fn ready(&self, sha256: &str, now: Instant) -> bool {
        self.failed.get(sha256).is_none_or(|(_, next)| *next <= now)
    }

    /// Keeps only the hashes in `missing` (the plugins still lacking).
    pub fn retain(&mut self, missing: &[PluginRef]) {
        self.failed
            .retain(|sha, _| missing.iter().any(|p| p.sha256 == *sha));
    }

    /// The earliest moment a failed plugin may be tried again.
    pub fn next_due(&self) -> Option<Instant> {
        self.failed.values().map(|(_, next)| *next).min()
    }
}

/// What a download needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Ask for the bytes from `offset`.
    More { offset: u64 },
    /// Every declared byte arrived; call [`Download::finish`].
    Complete,
}

/// One plugin being written to its temp file; see the module docs.
#[derive(Debug)]
pub struct Download {
    plugin: PluginRef,
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    hasher: Sha256,
    received: u64,
    installed: bool,
}

impl Download {
    /// Creates the temp file (replacing a leftover one). Fails when the
    /// plugin directory or the file cannot be created.
    pub fn start(cache: &PluginCache, plugin: PluginRef) -> Result<Download, AgentError> {
        let io_err = |path: &Path, source| AgentError::PluginIo {
            path: path.to_owned(),
            source,
        };
        // 0755 whatever the umask: nobody else may swap files in the cache.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&cache.dir)
            .map_err(|e| io_err(&cache.dir, e))?;
        let dest = cache.path_of(&plugin.sha256);
        let tmp = cache.dir.join(format!("{}{TMP_SUFFIX}", plugin.sha256));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        Ok(Download {
            plugin,
            tmp,
            dest,
            file,
            hasher: Sha256::new(),
            received: 0,
            installed: false,
        })
    }

    /// The plugin being downloaded.
    pub fn plugin(&self) -> &PluginRef {
        &self.plugin
    }

    /// Takes one `PluginChunk`. Fails (and the download must be dropped)
    /// when the chunk breaks an invariant of the module docs.
    pub fn accept(&mut self, offset: u64, total: u64, data: &str) -> Result<Progress, AgentError> {
        let declared = self.plugin.size;
        let bad = |reason: String| AgentError::PluginChunk {
            name: self.plugin.name.clone(),
            reason,
        };
        if total != declared {
            return Err(bad(format!(
                "the server announces {total} bytes, the config declares {declared}"
            )));
        }
        if offset != self.received {
            return Err(bad(format!(
                "chunk starts at offset {offset}, expected {}",
                self.received
            )));
        }
        // Checked before decoding, so an endless chunk is never buffered twice.
        if data.len() > MAX_CHUNK_BASE64 {
            return Err(bad(format!(
                "chunk of {} base64 characters exceeds the {PLUGIN_CHUNK_BYTES}-byte chunk limit",
                data.len()
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| bad(format!("data is not base64: {e}")))?;
        let len = bytes.len() as u64;
        if self.received + len > declared {
            return Err(AgentError::PluginTooLarge {
                name: self.plugin.name.clone(),
                declared,
            });
        }
        if bytes.is_empty() && self.received < declared {
            return Err(bad(format!(
                "empty chunk at offset {offset} before the declared end"
            )));
        }
        self.file
            .write_all(&bytes)
            .map_err(|source| AgentError::PluginIo {
                path: self.tmp.clone(),
                source,
            })?;
        self.hasher.update(&bytes);
        self.received += len;
        Ok(if self.received == declared {
            Progress::Complete
        } else {
            Progress::More {
                offset: self.received,
            }
        })
    }

    /// Verifies the hash and installs the file (blocking: fsyncs). Fails on
    /// a hash mismatch, an incomplete file or an I/O error; the temp file
    /// is removed then.
    pub fn finish(mut self) -> Result<PathBuf, AgentError> {
        if self.received != self.plugin.size {
            return Err(AgentError::PluginChunk {
                name: self.plugin.name.clone(),
                reason: format!(
                    "download ended after {} of {} bytes",
                    self.received, self.plugin.size
                ),
            });
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.plugin.sha256 {
            return Err(AgentError::PluginHashMismatch {
                name: self.plugin.name.clone(),
                expected: self.plugin.sha256.clone(),
                actual,
            });
        }
        let install = || -> io::Result<()> {
            self.file.sync_all()?;
            self.file
                .set_permissions(fs::Permissions::from_mode(0o755))?;
            fs::rename(&self.tmp, &self.dest)?;
            if let Some(dir) = self.dest.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        install().map_err(|source| AgentError::PluginIo {
            path: self.dest.clone(),
            source,
        })?;
        self.installed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if !self.installed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn plugin_for(body: &[u8]) -> PluginRef {
        PluginRef {
            name: "p".into(),
            sha256: hex::encode(Sha256::digest(body)),
            size: body.len() as u64,
        }
    }

    fn config(plugins: Vec<PluginRef>) -> AgentConfig {
        AgentConfig {
            version: 1,
            plugins,
            ..AgentConfig::default()
        }
    }

    #[test]
    fn chunks_in_order_install_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PluginCache::new(dir.path());
        let body = b"#!/bin/sh\necho OK\n";
        let plugin = plugin_for(body);
        assert_eq!(
            cache.missing(&config(vec![plugin.clone()])),
            std::slice::from_ref(&plugin)
        );
        let mut d = Download::start(&cache, plugin.clone()).unwrap();
        assert_eq!(
            d.accept(0, plugin.size, &b64(&body[..5])).unwrap(),
            Progress::More { offset: 5 }
        );
        assert_eq!(
            d.accept(5, plugin.size, &b64(&body[5..])).unwrap(),
            Progress::Complete
        );
        let path = d.finish().unwrap();
        assert_eq!(path, cache.path_of(&plugin.sha256));
        assert_eq!(fs::read(&path).unwrap(), body);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(cache.missing(&config(vec![plugin])).is_empty());
    }

    #[test]
    fn each_bad_download_is_its_own_error_and_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PluginCache::new(dir.path());
        let body = b"0123456789";
        let plugin = plugin_for(body);
        let attempt = |f: &dyn Fn(&mut Download) -> Result<Progress, AgentError>| {
            let mut d = Download::start(&cache, plugin.clone()).unwrap();
            let r = f(&mut d).and_then(|_| d.finish().map(|_| Progress::Complete));
            assert!(!cache.path_of(&plugin.sha256).exists());
            assert!(
                !dir.path()
                    .join(PLUGIN_DIR)
                    .join(format!("{}.tmp", plugin.sha256))
                    .exists()
            );
            r.unwrap_err()
        };
        let tampered = attempt(&|d| d.accept(0, 10, &b64(b"0123456780")));
        assert!(
            matches!(tampered, AgentError::PluginHashMismatch { .. }),
            "{tampered}"
        );
        let oversize = attempt(&|d| d.accept(0, 10, &b64(b"0123456789X")));
        assert!(
            matches!(oversize, AgentError::PluginTooLarge { declared: 10, .. }),
            "{oversize}"
        );
        let announced = attempt(&|d| d.accept(0, 11, &b64(body)));
        assert!(
            matches!(announced, AgentError::PluginChunk { .. }),
            "{announced}"
        );
        let gap = attempt(&|d| {
            d.accept(0, 10, &b64(&body[..4]))?;
            d.accept(5, 10, &b64(&body[5..]))
        });
        assert!(gap.to_string().contains("offset 5, expected 4"), "{gap}");
        let short = attempt(&|d| d.accept(0, 10, &b64(&body[..4])));
        assert!(short.to_string().contains("4 of 10"), "{short}");
        let stalled = attempt(&|d| d.accept(0, 10, ""));
        assert!(stalled.to_string().contains("empty chunk"), "{stalled}");
        let huge = attempt(&|d| d.accept(0, 10, &"A".repeat(MAX_CHUNK_BASE64 + 4)));
        assert!(huge.to_string().contains("chunk limit"), "{huge}");
        let garbage = attempt(&|d| d.accept(0, 10, "***"));
        assert!(garbage.to_string().contains("base64"), "{garbage}");
    }

    #[test]
    fn failed_downloads_back_off_per_plugin_until_installed() {
        use std::time::Duration;
        let base = Duration::from_secs(60);
        let cap = Duration::from_secs(3600);
        let mut retries = PluginRetries::new(base, cap);
        let (a, b) = (plugin_for(b"a"), plugin_for(b"b"));
        let now = Instant::now();
        assert!(retries.ready(&a.sha256, now) && retries.next_due().is_none());
        // Ceilings 60 s, 120 s, 240 s, … capped at an hour: never sooner
        // than the delay returned, never later than the ceiling.
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let delay = retries.failed(&a.sha256, Instant::now());
            ceilings.push(delay);
            assert!(
                !retries.ready(&a.sha256, Instant::now() + delay - Duration::from_millis(1))
                    || delay.is_zero()
            );
            assert!(retries.ready(&a.sha256, Instant::now() + delay));
        }
        assert!(ceilings.iter().all(|d| *d <= cap));
        assert!(ceilings[0] <= base);
        // Another plugin's failures do not touch a's, nor a's b's.
        assert!(retries.ready(&b.sha256, Instant::now()));
        retries.failed(&b.sha256, Instant::now());
        assert!(retries.next_due().is_some());
        // Installed: a starts over; no longer needed: b is forgotten.
        retries.succeeded(&a.sha256);
        assert!(retries.ready(&a.sha256, Instant::now()));
        retries.retain(std::slice::from_ref(&a));
        assert!(retries.ready(&b.sha256, Instant::now()));
        assert!(
            retries.next_due().is_none(),
            "the table is bounded by the config"
        );
    }

    #[test]
    fn a_plugin_modified_in_the_cache_is_removed_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PluginCache::new(dir.path());
        let body = b"#!/bin/sh\necho OK\n";
        let plugin = plugin_for(body);
        let mut d = Download::start(&cache, plugin.clone()).unwrap();
        d.accept(0, plugin.size, &b64(body)).unwrap();
        let path = d.finish().unwrap();
        cache.verify("p", &plugin.sha256).unwrap();
        // Same size, other content: only the hash can tell.
        fs::write(&path, b"#!/bin/sh\ntouch x\n").unwrap();
        let err = cache.verify("p", &plugin.sha256).unwrap_err();
        assert!(matches!(err, AgentError::PluginModified { .. }), "{err}");
        assert!(err.to_string().contains("modified"), "{err}");
        assert!(!path.exists(), "removed");
        assert_eq!(cache.missing(&config(vec![plugin.clone()])), [plugin]);
    }

    #[test]
    fn prune_keeps_referenced_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PluginCache::new(dir.path());
        let keep = plugin_for(b"keep");
        let old = plugin_for(b"old");
        fs::create_dir_all(dir.path().join(PLUGIN_DIR)).unwrap();
        for name in [
            keep.sha256.clone(),
            old.sha256.clone(),
            format!("{}.tmp", keep.sha256),
            "README".into(),
        ] {
            fs::write(dir.path().join(PLUGIN_DIR).join(name), b"x").unwrap();
        }
        let removed = cache.prune(&config(vec![keep.clone()])).unwrap();
        let mut expected = vec![old.sha256.clone(), format!("{}.tmp", keep.sha256)];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(cache.path_of(&keep.sha256).exists());
        assert!(dir.path().join(PLUGIN_DIR).join("README").exists());
        // A cached file of the wrong size is fetched again.
        assert_eq!(cache.missing(&config(vec![keep.clone()])), [keep]);
    }
}
