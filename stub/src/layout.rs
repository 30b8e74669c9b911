//! Where the stub's files live (DESIGN.md §2).
//!
//! System install: `/etc/outrider/{agent.toml,root.json,identity.key}`,
//! data in `/opt/outrider`, logs in `/var/log/outrider`. A non-root install
//! puts the same tree under one prefix: `<p>/etc/…`, data in `<p>`, logs in
//! `<p>/log`.

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

    /// Creates the data directories and removes leftovers of a previous
    /// process: loaded copies in `run/` and half-written temp dirs in
    /// `versions/` (a crash mid-install leaves nothing that looks verified).
    pub fn prepare(&self) -> Result<(), StubError> {
        // Every copy in run/ belongs to a previous process.
        let _ = std::fs::remove_dir_all(&self.run_dir);
        for dir in [
            &self.data_dir,
            &self.versions_dir,
            &self.run_dir,
            &self.log_dir,
        ] {
            std::fs::create_dir_all(dir).map_err(StubError::io("creating directory", dir))?;
        }
        let entries = std::fs::read_dir(&self.versions_dir)
            .map_err(StubError::io("listing", &self.versions_dir))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp") {
                let _ = std::fs::remove_dir_all(entry.path());
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
