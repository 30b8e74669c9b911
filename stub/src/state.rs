//! `state.json`: what the stub remembers between starts.
//!
//! Format (version 1): `{"version":1,"current":"<sha256>"|null,
//! "current_version":"<release version>"|null, "time_floor_unix":N|null,
//! "manifest_expires_unix":N|null,
//! "floor":{"sequence":N,"payload_sha256":"<sha256>"}|null}`. `floor` is the
//! newest manifest ever accepted; anything older is a rollback attack.
//! Written as temp file + fsync + rename, so a crash leaves the old or the
//! new file, never a torn one.

use std::io::Write;
use std::path::Path;

use outrider_signing::{SequenceFloor, Sha256};
use serde::{Deserialize, Serialize};

use crate::StubError;

const STATE_VERSION: u32 = 1;

/// The persisted stub state.
#[derive(Clone, Debug, Default)]
pub struct StubState {
    /// The build that runs (or ran last).
    pub current: Option<Sha256>,
    /// Its release version, as the signed manifest named it.
    pub current_version: Option<String>,
    /// The latest time an update check trusted; expiry is never checked
    /// against an earlier time, so setting the clock back cannot revive an
    /// expired manifest (see `outrider_update_client::next_time_floor`).
    pub time_floor_unix: Option<u64>,
    /// Expiry of the newest manifest accepted; caps the time floor.
    pub manifest_expires_unix: Option<u64>,
    /// The newest manifest accepted so far.
    pub floor: Option<SequenceFloor>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    current: Option<Sha256>,
    #[serde(default)]
    current_version: Option<String>,
    #[serde(default)]
    time_floor_unix: Option<u64>,
    #[serde(default)]
    manifest_expires_unix: Option<u64>,
    floor: Option<FloorOnDisk>,
}

#[derive(Serialize, Deserialize)]
struct FloorOnDisk {
    sequence: u64,
    payload_sha256: Sha256,
}

impl StubState {
    /// Reads the state, or the empty state when the file does not exist.
    /// Fails on a corrupt file rather than silently forgetting the floor.
    pub fn load(path: &Path) -> Result<StubState, StubError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StubState::default()),
            Err(e) => {
                return Err(StubError::Io {
                    action: "reading",
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        let corrupt = |reason: String| StubError::State {
            path: path.to_owned(),
            reason,
        };
        let disk: OnDisk = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if disk.version != STATE_VERSION {
            return Err(corrupt(format!("unsupported version {}", disk.version)));
        }
        Ok(StubState {
            current: disk.current,
            current_version: disk.current_version,
            time_floor_unix: disk.time_floor_unix,
            manifest_expires_unix: disk.manifest_expires_unix,
            floor: disk.floor.map(|f| SequenceFloor {
                sequence: f.sequence,
                payload_sha256: f.payload_sha256,
            }),
        })
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> Result<(), StubError> {
        let disk = OnDisk {
            version: STATE_VERSION,
            current: self.current,
            current_version: self.current_version.clone(),
            time_floor_unix: self.time_floor_unix,
            manifest_expires_unix: self.manifest_expires_unix,
            floor: self.floor.as_ref().map(|f| FloorOnDisk {
                sequence: f.sequence,
                payload_sha256: f.payload_sha256,
            }),
        };
        // Serialising plain data with string keys cannot fail.
        let bytes = serde_json::to_vec_pretty(&disk).expect("state serialises");
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` via a temp file in the same directory, fsyncs
/// the file, renames it into place and fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StubError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(StubError::io("creating", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(StubError::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(StubError::io("renaming into place", path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StubError::io("syncing directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(StubState::load(&path).unwrap().current.is_none());
        let sha = outrider_signing::sha256(b"build");
        let state = StubState {
            current: Some(sha),
            current_version: Some("1.2.3".into()),
            time_floor_unix: Some(1_800_000_000),
            manifest_expires_unix: Some(1_900_000_000),
            floor: Some(SequenceFloor {
                sequence: 4,
                payload_sha256: sha,
            }),
        };
        state.save(&path).unwrap();
        let back = StubState::load(&path).unwrap();
        assert_eq!(back.current, Some(sha));
        assert_eq!(back.floor.unwrap().sequence, 4);
        std::fs::write(&path, "{\"version\":1,").unwrap();
        assert!(matches!(
            StubState::load(&path),
            Err(StubError::State { .. })
        ));
    }
}
