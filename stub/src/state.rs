//! `state.json`: what the stub remembers between starts.
//!
//! One JSON object, `"version": 1`, every other field optional (a missing
//! field reads as empty, so older files stay readable):
//!
//! | field | meaning |
//! |---|---|
//! | `current` | the build that runs (or ran last) and passed probation |
//! | `previous` | the build that ran before it: the first rollback target |
//! | `last_good` | the newest build that ever passed probation: the last resort |
//! | `pending` | a build started on probation; found at start = it crashed the process |
//! | `bad` | builds that failed probation, with the manifest that offered them |
//! | `events` | rollbacks not yet reported to the server by a healthy generation |
//! | `floor` | the newest manifest accepted (rollback/replay defence) |
//! | `time_floor_unix`, `manifest_expires_unix` | the freeze-attack time floor |
//!
//! Written as temp file + fsync + rename, so a crash leaves the old or the
//! new file, never a torn one.

use std::io::Write;
use std::path::Path;

use outrider_signing::{SequenceFloor, Sha256};
use serde::{Deserialize, Serialize};

use crate::StubError;

const STATE_VERSION: u32 = 1;

/// Most bad builds remembered; the oldest are forgotten first.
const MAX_BAD: usize = 32;
/// Most unreported events kept.
const MAX_EVENTS: usize = 32;

/// A build the stub can name: hash and release version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRef {
    pub sha256: Sha256,
    pub version: String,
}

/// A build on probation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub build: BuildRef,
    /// Payload hash of the manifest that offered it.
    pub manifest_sha256: Option<Sha256>,
}

/// A build that failed probation under a given manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadBuild {
    pub sha256: Sha256,
    /// The manifest that offered it; a different (newer) manifest offering
    /// the same build may try it again, the same one never.
    pub manifest_sha256: Option<Sha256>,
    pub reason: String,
}

/// The persisted stub state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StubState {
    #[serde(default = "state_version")]
    version: u32,
    #[serde(default)]
    pub current: Option<BuildRef>,
    #[serde(default)]
    pub previous: Option<BuildRef>,
    #[serde(default)]
    pub last_good: Option<BuildRef>,
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub bad: Vec<BadBuild>,
    #[serde(default)]
    pub events: Vec<String>,
    /// The newest manifest accepted so far, of channel `floor_channel`.
    #[serde(default)]
    pub floor: Option<SequenceFloor>,
    /// The channel `floor` belongs to: sequences are per channel, so an
    /// operator moving a host to another channel (agent.toml) starts afresh.
    #[serde(default)]
    pub floor_channel: Option<String>,
    /// The latest time an update check trusted; expiry is never checked
    /// against an earlier time, so setting the clock back cannot revive an
    /// expired manifest (see `outrider_update_client::next_time_floor`).
    #[serde(default)]
    pub time_floor_unix: Option<u64>,
    /// Expiry of the newest manifest accepted; caps the time floor.
    #[serde(default)]
    pub manifest_expires_unix: Option<u64>,
}

fn state_version() -> u32 {
    STATE_VERSION
}

impl StubState {
    /// Reads the state, or the empty state when the file does not exist.
    /// Fails on a corrupt file rather than silently forgetting the floor.
    pub fn load(path: &Path) -> Result<StubState, StubError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StubState {
                    version: STATE_VERSION,
                    ..StubState::default()
                });
            }
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
        let state: StubState = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!("unsupported version {}", state.version)));
        }
        Ok(state)
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> Result<(), StubError> {
        let state = StubState {
            version: STATE_VERSION,
            ..self.clone()
        };
        // Serialising plain data with string keys cannot fail.
        let bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
        write_atomic(path, &bytes)
    }

    /// Whether `sha256`, offered by the manifest with payload hash
    /// `manifest`, already failed probation under that same manifest.
    pub fn is_bad(&self, sha256: &Sha256, manifest: Option<&Sha256>) -> bool {
        self.bad
            .iter()
            .any(|b| &b.sha256 == sha256 && b.manifest_sha256.as_ref() == manifest)
    }

    /// Records a failed build (bounded, oldest forgotten first).
    pub fn mark_bad(&mut self, sha256: Sha256, manifest_sha256: Option<Sha256>, reason: String) {
        self.bad.retain(|b| b.sha256 != sha256);
        self.bad.push(BadBuild {
            sha256,
            manifest_sha256,
            reason,
        });
        if self.bad.len() > MAX_BAD {
            self.bad.remove(0);
        }
    }

    /// Queues an event for the next healthy generation to report (bounded).
    pub fn push_event(&mut self, event: String) {
        self.events.push(event);
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
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

    fn build(n: u8) -> BuildRef {
        BuildRef {
            sha256: outrider_signing::sha256(&[n]),
            version: format!("0.{n}"),
        }
    }

    #[test]
    fn round_trips_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(StubState::load(&path).unwrap().current.is_none());
        let mut state = StubState::load(&path).unwrap();
        state.current = Some(build(1));
        state.pending = Some(Pending {
            build: build(2),
            manifest_sha256: None,
        });
        state.floor = Some(SequenceFloor {
            sequence: 4,
            payload_sha256: build(9).sha256,
        });
        state.save(&path).unwrap();
        let back = StubState::load(&path).unwrap();
        assert_eq!(back.current, Some(build(1)));
        assert_eq!(back.pending.unwrap().build, build(2));
        assert_eq!(back.floor.unwrap().sequence, 4);
        std::fs::write(&path, "{\"version\":1,").unwrap();
        assert!(matches!(
            StubState::load(&path),
            Err(StubError::State { .. })
        ));
        std::fs::write(&path, "{\"version\":7}").unwrap();
        assert!(matches!(
            StubState::load(&path),
            Err(StubError::State { .. })
        ));
    }

    #[test]
    fn bad_builds_are_tied_to_the_manifest_that_offered_them() {
        let mut state = StubState::default();
        let m1 = outrider_signing::sha256(b"manifest 1");
        let m2 = outrider_signing::sha256(b"manifest 2");
        state.mark_bad(build(2).sha256, Some(m1), "panicked".into());
        assert!(state.is_bad(&build(2).sha256, Some(&m1)));
        assert!(
            !state.is_bad(&build(2).sha256, Some(&m2)),
            "a new manifest may retry it"
        );
        for n in 0..40 {
            state.mark_bad(build(n).sha256, None, "x".into());
        }
        assert_eq!(state.bad.len(), MAX_BAD);
    }
}
