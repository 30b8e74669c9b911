//! Where the stub's files live (DESIGN.md §2).
//!
//! System install: `/etc/outrider/{agent.toml,root.json,identity.key}`,
//! data in `/opt/outrider`, logs in `/var/log/outrider`. A non-root install
//! puts the same tree under one prefix: `<p>/etc/…`, data in `<p>`, logs in
//! `<p>/log`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::StubError;

/// The stub's file layout.
#[derive(Clone, Debug)]
pub struct Layout {
    pub config_dir: PathBuf,
    pub agent_toml: PathBuf,
    pub root_json: PathBuf,
    pub data_dir: PathBuf,
    /// `versions/<sha256>/liboutrider_agent.so`: verified builds.
    pub versions_dir: PathBuf,
    /// `run/agent.<version>.<generation>.so`: the copies actually loaded.
    pub run_dir: PathBuf,
    pub state_json: PathBuf,
    pub log_dir: PathBuf,
}

/// File name of the library inside a `versions/<sha256>/` directory.
pub const LIBRARY_FILE: &str = "liboutrider_agent.so";

impl Layout {
    /// The system paths of a root install.
    pub fn system() -> Layout {
        Layout::from_parts(
            Path::new("/etc/outrider"),
            Path::new("/opt/outrider"),
            Path::new("/var/log/outrider"),
        )
    }

    /// Everything under one directory, for non-root installs and tests.
    pub fn under_prefix(prefix: &Path) -> Layout {
        Layout::from_parts(&prefix.join("etc"), prefix, &prefix.join("log"))
    }

    fn from_parts(config_dir: &Path, data_dir: &Path, log_dir: &Path) -> Layout {
        Layout {
            config_dir: config_dir.to_owned(),
            agent_toml: config_dir.join("agent.toml"),
            root_json: config_dir.join("root.json"),
            data_dir: data_dir.to_owned(),
            versions_dir: data_dir.join("versions"),
            run_dir: data_dir.join("run"),
            state_json: data_dir.join("state.json"),
            log_dir: log_dir.to_owned(),
        }
    }

    /// Creates the data directories (mode 0755 whatever the umask), checks
    /// that nobody else can change what the stub loads ([`Layout::check_ownership`]),
    /// and removes leftovers of a previous process: loaded copies in `run/`
    /// and half-written temp dirs in `versions/` (a crash mid-install leaves
    /// nothing that looks verified).
    pub fn prepare(&self) -> Result<(), StubError> {
        // Every copy in run/ belongs to a previous process.
        let _ = std::fs::remove_dir_all(&self.run_dir);
        for dir in [
            &self.data_dir,
            &self.versions_dir,
            &self.run_dir,
            &self.log_dir,
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(StubError::io("creating directory", dir))?;
        }
        self.check_ownership(current_euid())?;
        let entries = std::fs::read_dir(&self.versions_dir)
            .map_err(StubError::io("listing", &self.versions_dir))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// Checks the directories the stub reads trust and code from: its own
    /// (`config_dir`, the data dir, `versions/`, `run/`) must be owned by
    /// `euid` or root and writable by nobody else; their ancestors too,
    /// except that a sticky directory such as `/tmp` may be writable by all
    /// (others cannot rename or remove what is ours in it). Fails naming
    /// the first unsafe directory and why ([`StubError::UnsafeDirectory`]).
    pub fn check_ownership(&self, euid: u32) -> Result<(), StubError> {
        let own = [
            &self.config_dir,
            &self.data_dir,
            &self.versions_dir,
            &self.run_dir,
        ];
        for dir in own {
            // A config dir that does not exist holds nothing to protect
            // (the data dirs were just created).
            if !dir.exists() {
                continue;
            }
            let absolute = std::path::absolute(dir)
                .map_err(StubError::io("resolving directory", dir.as_path()))?;
            for (i, path) in absolute.ancestors().enumerate() {
                let meta =
                    std::fs::metadata(path).map_err(StubError::io("inspecting directory", path))?;
                let kind = if i == 0 {
                    DirKind::Own
                } else {
                    DirKind::Ancestor
                };
                if let Some(reason) = unsafe_dir(meta.uid(), meta.mode(), euid, kind) {
                    return Err(StubError::UnsafeDirectory {
                        path: path.to_owned(),
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// Path of the installed library with content hash `sha256`.
    pub fn version_file(&self, sha256: &outrider_signing::Sha256) -> PathBuf {
        self.versions_dir
            .join(sha256.to_string())
            .join(LIBRARY_FILE)
    }
}

/// The effective user id of this process.
#[allow(unsafe_code)]
fn current_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a directory is one the stub keeps files in, or above one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    Own,
    Ancestor,
}

/// Why a directory owned by `uid` with `mode` is unsafe for a stub running
/// as `euid`, or `None`: see [`Layout::check_ownership`].
pub fn unsafe_dir(uid: u32, mode: u32, euid: u32, kind: DirKind) -> Option<String> {
    const STICKY: u32 = 0o1000;
    if uid != euid && uid != 0 {
        return Some(format!(
            "it is owned by uid {uid}, not by this user (uid {euid}) or root; chown it"
        ));
    }
    let writable_by_others = mode & 0o022 != 0;
    let sticky_ancestor = kind == DirKind::Ancestor && mode & STICKY != 0;
    if writable_by_others && !sticky_ancestor {
        return Some(format!(
            "it is writable by {} (mode {:04o}); run `chmod go-w` on it",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn unsafe_directories_by_table() {
        use DirKind::{Ancestor, Own};
        let me = 1000;
        #[rustfmt::skip]
        let table: &[(u32, u32, DirKind, Option<&str>)] = &[
            (me, 0o700, Own, None),
            (me, 0o755, Own, None),
            (0, 0o755, Own, None),
            (0, 0o755, Ancestor, None),
            // /tmp: everyone may write, nobody may rename what is ours.
            (0, 0o1777, Ancestor, None),
            (0, 0o1777, Own, Some("writable by everyone (mode 1777)")),
            (me, 0o775, Own, Some("writable by its group (mode 0775)")),
            (me, 0o757, Own, Some("writable by everyone (mode 0757)")),
            (0, 0o777, Ancestor, Some("writable by everyone (mode 0777)")),
            (0, 0o775, Ancestor, Some("writable by its group (mode 0775)")),
            (1001, 0o755, Own, Some("owned by uid 1001, not by this user (uid 1000) or root")),
            (1001, 0o755, Ancestor, Some("owned by uid 1001")),
        ];
        for (uid, mode, kind, expected) in table {
            let got = unsafe_dir(*uid, *mode, me, *kind);
            match (expected, &got) {
                (None, None) => {}
                (Some(needle), Some(reason)) => {
                    assert!(reason.contains(needle), "{uid} {mode:o} {kind:?}: {reason}")
                }
                _ => panic!("{uid} {mode:o} {kind:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_writable_directory_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under_prefix(dir.path());
        std::fs::create_dir_all(&layout.config_dir).unwrap();
        layout.prepare().unwrap();
        std::fs::set_permissions(&layout.versions_dir, std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = layout.prepare().unwrap_err();
        assert!(
            matches!(&err, StubError::UnsafeDirectory { path, .. } if *path == layout.versions_dir),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&layout.versions_dir.display().to_string())
                && text.contains("chmod go-w"),
            "{text}"
        );
        std::fs::set_permissions(&layout.versions_dir, std::fs::Permissions::from_mode(0o755))
            .unwrap();
        layout.prepare().unwrap();
        // A directory of another user.
        let euid = current_euid();
        let err = if euid == 0 {
            std::os::unix::fs::chown(&layout.run_dir, Some(4242), None).unwrap();
            layout.check_ownership(0).unwrap_err()
        } else {
            layout.check_ownership(euid + 1).unwrap_err()
        };
        assert!(
            matches!(&err, StubError::UnsafeDirectory { reason, .. } if reason.contains("owned by uid")),
            "{err}"
        );
    }
}
