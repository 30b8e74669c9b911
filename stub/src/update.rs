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

/// Reads the trusted root the installer (or an earlier chain walk) wrote,
/// checking its signatures but not its expiry: an expired root, or a clock
/// that makes it look expired, must never stop the installed build from
/// running. Expiry is checked by every update check (the end of the root
/// walk, `Root(Expired)`), which then refuses the update and says so.
pub fn load_root(path: &Path) -> Result<TrustedRoot, StubError> {
    let bytes = std::fs::read(path).map_err(StubError::io("reading trusted root", path))?;
    // Time 0: before any expiry, so only the signature checks apply.
    TrustedRoot::from_bytes_self_signed(&bytes, 0).map_err(|source| StubError::Root {
        path: path.to_owned(),
        source,
    })
}

/// The stub's idea of now for update checks: the wall clock, shifted by
/// `OUTRIDER_STUB_CLOCK_SKEW_SECS` (signed seconds) when set. The variable
/// is the e2e tests' way to run a stub with a skewed clock; unset in
/// production, where it costs one environment lookup per check.
fn wall_clock_unix() -> u64 {
    let now = outrider_signing::now_unix();
    match std::env::var("OUTRIDER_STUB_CLOCK_SKEW_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        Some(skew) => now.saturating_add_signed(skew),
        None => now,
    }
}

/// What the supervisor needs from the update side; [`Updater`] in the
/// process, something else in a test of the shell.
pub trait Updates: std::fmt::Debug {
    /// See [`Updater::fetch_latest`].
    fn fetch_latest(&mut self, state: &mut StubState) -> Result<Build, StubError>;
    /// See [`Updater::installed`].
    fn installed(&self, sha256: &Sha256, version: Option<&str>) -> Option<Build>;
    /// See [`Updater::stub_offer`].
    fn stub_offer(&self) -> Option<outrider_signing::Artifact>;
    /// See [`Updater::fetch_stub`].
    fn fetch_stub(
        &self,
        artifact: &outrider_signing::Artifact,
        dest: &Path,
    ) -> Result<(), StubError>;
    /// See [`Updater::reconfigure`].
    fn reconfigure(&mut self, config: &StubConfig);
}

impl Updates for Updater {
    fn fetch_latest(&mut self, state: &mut StubState) -> Result<Build, StubError> {
        Updater::fetch_latest(self, state)
    }

    fn installed(&self, sha256: &Sha256, version: Option<&str>) -> Option<Build> {
        Updater::installed(self, sha256, version)
    }

    fn stub_offer(&self) -> Option<outrider_signing::Artifact> {
        Updater::stub_offer(self).cloned()
    }

    fn fetch_stub(
        &self,
        artifact: &outrider_signing::Artifact,
        dest: &Path,
    ) -> Result<(), StubError> {
        Updater::fetch_stub(self, artifact, dest)
    }

    fn reconfigure(&mut self, config: &StubConfig) {
        Updater::reconfigure(self, config)
    }
}

/// File in the data dir where the library names the server URL it was
/// last welcomed at (`agent-lib/src/connection/saved.rs`): one line.
pub const LAST_SERVER_URL_FILE: &str = "last_server_url";

/// The base URLs updates may come from, in order: `update_url` alone when
/// set (a mirror); else the server URL the library was last welcomed at
/// (`last`, the content of [`LAST_SERVER_URL_FILE`], when it is one of the
/// URLs agent.toml configures), so updates follow the library to a node
/// that is up, then `server_url` and each of `extra_server_urls`, each
/// once. Any other URL in the file is ignored: the library can only have
/// been welcomed at a configured URL, so another one was written by
/// something else (a compromised library, another process), and although
/// every download is signature-checked the stub fetches only from where
/// agent.toml says. A check uses
/// the first that the checks before it, in a row, could not reach (see
/// [`Updater::fetch_latest`]), so neither a down `server_url` (a first
/// start, before the library ever connected) nor a stale file (a retired
/// node; an older library after a rollback does not write it) strands the
/// updates.
pub fn update_bases(config: &StubConfig, last: Option<&str>) -> Vec<String> {
    if let Some(mirror) = &config.update_url {
        return vec![mirror.clone()];
    }
    let last = last
        .and_then(|l| crate::config::checked_url(LAST_SERVER_URL_FILE, l.trim()).ok())
        .filter(|l| config.server_urls.contains(l));
    let mut bases: Vec<String> = last.into_iter().collect();
    for url in &config.server_urls {
        if !bases.contains(url) {
            bases.push(url.clone());
        }
    }
    bases
}

/// The content of `<data_dir>/last_server_url`, if it is there and small.
fn last_server_url(data_dir: &Path) -> Option<String> {
    let path = data_dir.join(LAST_SERVER_URL_FILE);
    std::fs::metadata(&path)
        .ok()
        .filter(|m| m.len() <= 2048)
        .and_then(|_| std::fs::read_to_string(&path).ok())
}

/// Talks to one update repository for one channel.
pub struct Updater {
    client: UpdateClient<HttpTransport>,
    /// The base URL `client` talks to (one of [`update_bases`]).
    base: String,
    /// The configuration the base is chosen from again before each check.
    config: StubConfig,
    /// The bases the last checks, in a row, could not reach
    /// ([`UpdateError::is_transient`]); the next check skips them (until
    /// every base is in here, which starts the round over). At most one
    /// entry per configured base.
    ///
    /// [`UpdateError::is_transient`]: outrider_update_client::UpdateError::is_transient
    unreachable: Vec<String>,
    channel: outrider_signing::Channel,
    /// The stub artifact the last verified manifest offers for our triple.
    stub_offer: Option<outrider_signing::Artifact>,
    layout: Layout,
    root: TrustedRoot,
}

/// By hand: a derived one would print `config`, whose TLS configuration's
/// `Debug` costs the stub ~10 KB (docs/benchmarks.md, "stub size").
impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("base", &self.base)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Updater {
    /// An updater for the channel and server of `config`.
    pub fn new(config: &StubConfig, layout: &Layout, root: TrustedRoot) -> Updater {
        let base = update_bases(config, last_server_url(&layout.data_dir).as_deref()).remove(0);
        Updater {
            client: client(config, &base, layout),
            base,
            config: config.clone(),
            unreachable: Vec::new(),
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
        // Follow the library to another server node, or on to the next
        // base after one that could not be reached.
        let mut bases = update_bases(
            &self.config,
            last_server_url(&self.layout.data_dir).as_deref(),
        );
        if bases.iter().all(|b| self.unreachable.contains(b)) {
            self.unreachable.clear();
        }
        let at = bases
            .iter()
            .position(|b| !self.unreachable.contains(b))
            .unwrap_or(0);
        let base = bases.swap_remove(at);
        if base != self.base {
            self.client = client(&self.config, &base, &self.layout);
            self.base = base;
        }
        let now = outrider_update_client::trusted_now(wall_clock_unix(), state.time_floor_unix);
        let result = self.check(state, now);
        match &result {
            Err(StubError::Update(e)) if e.is_transient() => {
                self.unreachable.push(self.base.clone());
            }
            _ => self.unreachable.clear(),
        }
        state.time_floor_unix = outrider_update_client::next_time_floor(
            state.time_floor_unix,
            now,
            state.manifest_expires_unix,
        );
        result
    }

    /// The body of [`Updater::fetch_latest`], at trusted time `now`.
    fn check(&mut self, state: &mut StubState, now: u64) -> Result<Build, StubError> {
        // Step 1: root chain, never below the highest root ever trusted
        // (a root.json put back on disk does not lower the bar).
        let trusted = state.root_version.unwrap_or(0);
        if self.root.root().version < trusted {
            return Err(StubError::RootRollback {
                path: self.layout.root_json.clone(),
                trusted,
                got: self.root.root().version,
            });
        }
        let root = self.client.refresh_root(&self.root, now)?;
        if root.root().version != self.root.root().version {
            write_atomic(&self.layout.root_json, root.envelope_bytes())?;
            info!(version = root.root().version, "trusted update root rotated");
            self.root = root;
        }
        state.trust_root_version(self.root.root().version);
        // Step 2: manifest, against this channel's own sequence floor.
        let manifest =
            self.client
                .fetch_manifest(&self.root, state.floor_of(self.channel.as_str()), now)?;
        state.raise_floor(self.channel.as_str(), manifest.floor());
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
        self.base =
            update_bases(config, last_server_url(&self.layout.data_dir).as_deref()).remove(0);
        self.client = client(config, &self.base, &self.layout);
        self.config = config.clone();
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

/// The update client for the repository at `base` (`<base>/v1/updates`).
fn client(config: &StubConfig, base: &str, layout: &Layout) -> UpdateClient<HttpTransport> {
    UpdateClient::new(
        HttpTransport::new(&format!("{base}/v1/updates"), config.tls.clone()),
        config.channel.clone(),
        &layout.data_dir.join("downloads"),
    )
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
    use outrider_signing::{KeyPair, KeyRole, make_root};

    /// A stub prefix whose `root.json` is a root of `version` expiring at
    /// `expires_unix`, and whose `agent.toml` points at `server_url`.
    fn prefix(version: u64, expires_unix: u64, server_url: &str) -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under_prefix(dir.path());
        layout.prepare().unwrap();
        let root_key = KeyPair::generate(KeyRole::Root).unwrap();
        let release_key = KeyPair::generate(KeyRole::Release).unwrap();
        let root = make_root(
            &[&root_key],
            &[(&release_key, expires_unix)],
            1,
            version,
            expires_unix,
        )
        .unwrap();
        std::fs::create_dir_all(layout.root_json.parent().unwrap()).unwrap();
        std::fs::write(&layout.root_json, root.to_bytes()).unwrap();
        std::fs::write(
            &layout.agent_toml,
            format!("server_url = \"{server_url}\"\n"),
        )
        .unwrap();
        (dir, layout)
    }

    /// An HTTP server on loopback that answers 404 to everything: a
    /// repository that has no newer root (and nothing else).
    /// The updater a stub of `layout` starts with (its agent.toml, its
    /// root).
    fn updater_of(layout: &Layout) -> Updater {
        let root = load_root(&layout.root_json).unwrap();
        let config = StubConfig::load(&layout.agent_toml).unwrap();
        Updater::new(&config, layout, root)
    }

    fn empty_repository() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut buf);
                let _ = std::io::Write::write_all(
                    &mut stream,
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        url
    }

    #[test]
    fn an_expired_root_still_loads_and_updates_are_refused_as_expired() {
        let url = empty_repository();
        let (_dir, layout) = prefix(1, 1_000, &url);
        // The installed build can run: the root loads despite its expiry.
        let root = load_root(&layout.root_json).expect("an expired root still loads");
        let config = StubConfig::load(&layout.agent_toml).unwrap();
        let mut updater = Updater::new(&config, &layout, root);
        let mut state = StubState::default();
        // But no update is taken under it, with exactly that error.
        let err = updater.fetch_latest(&mut state).unwrap_err();
        assert!(
            matches!(
                &err,
                StubError::Update(outrider_update_client::UpdateError::Root(
                    outrider_signing::Error::Expired { what: "root", .. }
                ))
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_root_older_than_one_trusted_before_is_refused_for_updates() {
        let (_dir, layout) = prefix(1, u64::MAX / 2, "http://127.0.0.1:9");
        let mut updater = updater_of(&layout);
        let mut state = StubState::default();
        state.trust_root_version(5);
        let err = updater.fetch_latest(&mut state).unwrap_err();
        assert!(
            matches!(
                err,
                StubError::RootRollback {
                    trusted: 5,
                    got: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(state.root_version, Some(5), "never lowered");
    }

    /// Adds `extra_server_urls = urls` to the prefix's agent.toml.
    fn configure_extra_urls(layout: &Layout, urls: &[&str]) {
        let toml = std::fs::read_to_string(&layout.agent_toml).unwrap();
        std::fs::write(
            &layout.agent_toml,
            format!("{toml}extra_server_urls = {urls:?}\n"),
        )
        .unwrap();
    }

    /// A loopback URL nothing listens on.
    fn closed_url() -> String {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        format!("http://{addr}")
    }

    #[test]
    fn updates_follow_the_server_node_the_library_was_last_welcomed_at() {
        use outrider_update_client::UpdateError;
        let live = empty_repository();
        let (closed, other_closed) = (closed_url(), closed_url());
        let (_dir, layout) = prefix(1, u64::MAX / 2, &closed);
        // Without the file, the second check would go to other_closed.
        configure_extra_urls(&layout, &[&other_closed, &live]);
        let mut updater = updater_of(&layout);
        let mut state = StubState::default();
        // server_url is down.
        let err = updater.fetch_latest(&mut state).unwrap_err();
        assert!(
            matches!(&err, StubError::Update(UpdateError::Transport { .. })),
            "{err:?}"
        );
        // The library was welcomed at another node: the next check asks
        // that node's repository (empty here, so: no manifest).
        let file = layout.data_dir.join(LAST_SERVER_URL_FILE);
        std::fs::write(&file, format!("{live}/\n")).unwrap();
        let err = updater.fetch_latest(&mut state).unwrap_err();
        assert!(
            matches!(&err, StubError::Update(UpdateError::NoManifest { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn a_stale_last_server_url_sends_the_next_check_to_server_url() {
        use outrider_update_client::UpdateError;
        let live = empty_repository();
        let closed = closed_url();
        let (_dir, layout) = prefix(1, u64::MAX / 2, &live);
        configure_extra_urls(&layout, &[&closed]);
        // The node the library last reached is gone.
        let file = layout.data_dir.join(LAST_SERVER_URL_FILE);
        std::fs::write(&file, format!("{closed}\n")).unwrap();
        let mut updater = updater_of(&layout);
        let mut state = StubState::default();
        // (the error of each check in turn: the gone node, server_url, the
        // gone node again — it may be back —, server_url)
        for expect_reached in [false, true, false, true] {
            let err = updater.fetch_latest(&mut state).unwrap_err();
            let reached = matches!(&err, StubError::Update(UpdateError::NoManifest { .. }));
            let unreachable = matches!(&err, StubError::Update(UpdateError::Transport { .. }));
            assert!(reached || unreachable, "{err:?}");
            assert_eq!(reached, expect_reached, "{err:?}");
        }
    }

    /// A last_server_url that agent.toml does not configure (written by
    /// something other than the library) is not fetched from, even when it
    /// answers and server_url does not.
    #[test]
    fn a_last_server_url_agent_toml_does_not_configure_is_ignored() {
        use outrider_update_client::UpdateError;
        let elsewhere = empty_repository();
        let (_dir, layout) = prefix(1, u64::MAX / 2, &closed_url());
        let file = layout.data_dir.join(LAST_SERVER_URL_FILE);
        std::fs::write(&file, format!("{elsewhere}\n")).unwrap();
        let mut updater = updater_of(&layout);
        let mut state = StubState::default();
        for _ in 0..2 {
            let err = updater.fetch_latest(&mut state).unwrap_err();
            assert!(
                matches!(&err, StubError::Update(UpdateError::Transport { .. })),
                "reached the URL of the file: {err:?}"
            );
        }
    }

    #[test]
    fn update_bases_are_the_mirror_else_the_last_server_then_the_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let config = |extra: &str| {
            let path = dir.path().join("agent.toml");
            std::fs::write(&path, format!("server_url = \"https://a\"\n{extra}")).unwrap();
            StubConfig::load(&path).unwrap()
        };
        let mirror = "update_url = \"https://cdn/o\"";
        let nodes = "extra_server_urls = [\"https://b\", \"https://c/\"]";
        // (agent.toml extra, last_server_url content, bases)
        let table: &[(&str, Option<&str>, &[&str])] = &[
            ("", None, &["https://a"]),
            // Not configured: ignored.
            ("", Some("https://b:8443/\n"), &["https://a"]),
            ("", Some("https://a\n"), &["https://a"]),
            ("", Some("ftp://b\n"), &["https://a"]),
            ("", Some(""), &["https://a"]),
            (nodes, None, &["https://a", "https://b", "https://c"]),
            (
                nodes,
                Some("https://c"),
                &["https://c", "https://a", "https://b"],
            ),
            (
                nodes,
                Some("https://b/\n"),
                &["https://b", "https://a", "https://c"],
            ),
            (
                nodes,
                Some("https://d\n"),
                &["https://a", "https://b", "https://c"],
            ),
            (
                nodes,
                Some("https://b.evil\n"),
                &["https://a", "https://b", "https://c"],
            ),
            (mirror, None, &["https://cdn/o"]),
            (
                &format!("{mirror}\n{nodes}"),
                Some("https://b\n"),
                &["https://cdn/o"],
            ),
        ];
        for (extra, last, bases) in table {
            assert_eq!(
                &update_bases(&config(extra), *last),
                bases,
                "{extra} {last:?}"
            );
        }
    }

    #[test]
    fn the_server_s_other_nodes_serve_updates_while_server_url_is_down() {
        use outrider_update_client::UpdateError;
        let live = empty_repository();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // A first start: no library has connected yet, no last_server_url.
        let (_dir, layout) = prefix(1, u64::MAX / 2, &format!("http://{closed}"));
        let toml = std::fs::read_to_string(&layout.agent_toml).unwrap();
        std::fs::write(
            &layout.agent_toml,
            format!("{toml}extra_server_urls = [\"{live}\"]\n"),
        )
        .unwrap();
        let mut updater = updater_of(&layout);
        let mut state = StubState::default();
        let err = updater.fetch_latest(&mut state).unwrap_err();
        assert!(
            matches!(&err, StubError::Update(UpdateError::Transport { .. })),
            "{err:?}"
        );
        let err = updater.fetch_latest(&mut state).unwrap_err();
        assert!(
            matches!(&err, StubError::Update(UpdateError::NoManifest { .. })),
            "the next check reaches the other node: {err:?}"
        );
    }

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
