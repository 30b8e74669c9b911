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
//! | `update_events` | outcomes not yet handed to a library (see [`UpdateEvent`]) |
//! | `next_event_id` | id of the next event: ids only ever grow, over the life of the install |
//! | `events` | read only: the rollback texts of stubs before update events, turned into `rolled_back` events on load |
//! | `stub_trial` | a new stub binary on trial (see `stub_update.rs`) |
//! | `stub_bad` | stub binaries refused, with the manifest that offered them |
//! | `floors` | per channel, the newest manifest accepted (rollback/replay defence) |
//! | `floor`, `floor_channel` | the current channel's floor, as stubs before `floors` wrote (and still read) it |
//! | `root_version` | the highest root version ever trusted: never lowered |
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
/// Most unreported events kept; the oldest are dropped first (the server
/// then sees a gap in the ids).
pub(crate) const MAX_EVENTS: usize = 64;

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
    pub(crate) version: u32,
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
    /// Events not yet handed over, oldest first.
    #[serde(default)]
    pub update_events: Vec<UpdateEvent>,
    /// Id of the next event (persisted so ids never repeat).
    #[serde(default = "first_event_id")]
    pub next_event_id: u64,
    /// Written by stubs before [`UpdateEvent`]s existed; converted on load.
    #[serde(default, skip_serializing)]
    pub(crate) events: Vec<String>,
    /// A new stub binary on trial.
    #[serde(default)]
    pub stub_trial: Option<crate::stub_update::StubTrial>,
    /// Stub binaries refused (self-test or trial failed), per manifest.
    #[serde(default)]
    pub stub_bad: Vec<BadBuild>,
    /// Per channel, the newest manifest accepted: switching channels and
    /// back keeps each channel's replay protection.
    #[serde(default)]
    pub floors: std::collections::BTreeMap<String, SequenceFloor>,
    /// The highest root version ever trusted; a `root.json` below it was
    /// rolled back on disk and is refused for updates.
    #[serde(default)]
    pub root_version: Option<u64>,
    /// Mirror of `floors[floor_channel]`, kept for stubs that predate
    /// `floors` (a reverted stub self-update runs one).
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

fn first_event_id() -> u64 {
    1
}

/// One outcome of the stub's update work, as handed to the library through
/// `take_update_events` (the JSON of `outrider_abi::update_events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateEvent {
    pub id: u64,
    /// One of `outrider_abi::update_events::KIND_*`.
    pub kind: String,
    pub at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_sha256: Option<Sha256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_sha256: Option<Sha256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// The exact error or cause; empty when there is none.
    #[serde(default)]
    pub reason: String,
}

/// What an event is about, before the queue gives it an id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub build: Option<BuildRef>,
    pub to: Option<BuildRef>,
    pub reason: String,
}

impl UpdateEvent {
    /// The one-line text libraries before ABI 1.1 report (they get events
    /// as strings in the host JSON's `events` list).
    pub fn legacy_text(&self) -> String {
        use outrider_abi::update_events as k;
        let version = self.version.as_deref().unwrap_or("unknown");
        match self.kind.as_str() {
            // Converted from an older stub's state: the text is all there is.
            k::KIND_ROLLED_BACK if self.version.is_none() => self.reason.clone(),
            k::KIND_ROLLED_BACK => format!(
                "rolled back from {version} to {}: {}",
                self.to_version.as_deref().unwrap_or("nothing"),
                self.reason
            ),
            k::KIND_REFUSED => format!("refused update {version}: {}", self.reason),
            k::KIND_STUB_REFUSED => format!("refused stub update {version}: {}", self.reason),
            other => format!("{other} {version}: {}", self.reason),
        }
    }

    /// Whether a library before ABI 1.1 reports it: only what needs an
    /// operator (they show as `outrider.update` warnings), as before.
    pub fn is_legacy_reported(&self) -> bool {
        use outrider_abi::update_events as k;
        [k::KIND_ROLLED_BACK, k::KIND_REFUSED, k::KIND_STUB_REFUSED].contains(&self.kind.as_str())
    }
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
        let mut state: StubState =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!("unsupported version {}", state.version)));
        }
        // Older stubs kept one channel's floor only.
        if let (Some(channel), Some(floor)) = (&state.floor_channel, &state.floor) {
            state
                .floors
                .entry(channel.clone())
                .or_insert_with(|| floor.clone());
        }
        // Older stubs only queued rollback texts: keep them, as events.
        for text in std::mem::take(&mut state.events) {
            state.push_event(
                0,
                NewEvent {
                    kind: outrider_abi::update_events::KIND_ROLLED_BACK,
                    reason: text,
                    ..NewEvent::default()
                },
            );
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

    /// The replay floor of `channel`.
    pub fn floor_of(&self, channel: &str) -> Option<SequenceFloor> {
        self.floors.get(channel).cloned()
    }

    /// Records the newest manifest accepted on `channel`.
    pub fn raise_floor(&mut self, channel: &str, floor: SequenceFloor) {
        self.floor = Some(floor.clone());
        self.floor_channel = Some(channel.to_owned());
        self.floors.insert(channel.to_owned(), floor);
    }

    /// Raises the highest trusted root version (never lowers it).
    pub fn trust_root_version(&mut self, version: u64) {
        self.root_version = Some(self.root_version.map_or(version, |v| v.max(version)));
    }

    /// Whether the stub binary `sha256` was refused under `manifest`.
    pub fn is_stub_bad(&self, sha256: &Sha256, manifest: Option<&Sha256>) -> bool {
        self.stub_bad
            .iter()
            .any(|b| &b.sha256 == sha256 && b.manifest_sha256.as_ref() == manifest)
    }

    /// Records a refused stub binary (bounded, oldest forgotten first).
    pub fn mark_stub_bad(
        &mut self,
        sha256: Sha256,
        manifest_sha256: Option<Sha256>,
        reason: String,
    ) {
        self.stub_bad.retain(|b| b.sha256 != sha256);
        self.stub_bad.push(BadBuild {
            sha256,
            manifest_sha256,
            reason,
        });
        if self.stub_bad.len() > MAX_BAD {
            self.stub_bad.remove(0);
        }
    }

    /// Queues an event for the library to report (bounded: the oldest is
    /// dropped) and returns it.
    pub fn push_event(&mut self, at_unix_ms: u64, new: NewEvent) -> &UpdateEvent {
        let id = self.next_event_id.max(1);
        self.next_event_id = id + 1;
        self.update_events.push(UpdateEvent {
            id,
            kind: new.kind.to_owned(),
            at_unix_ms,
            build_sha256: new.build.as_ref().map(|b| b.sha256),
            version: new.build.map(|b| b.version),
            to_sha256: new.to.as_ref().map(|b| b.sha256),
            to_version: new.to.map(|b| b.version),
            reason: new.reason,
        });
        if self.update_events.len() > MAX_EVENTS {
            self.update_events.remove(0);
        }
        self.update_events.last().expect("just pushed")
    }

    /// Forgets the events up to `id` (they were handed over).
    pub fn drop_events_through(&mut self, id: u64) -> bool {
        let before = self.update_events.len();
        self.update_events.retain(|e| e.id > id);
        self.update_events.len() != before
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
    fn events_get_increasing_ids_that_survive_a_restart_and_the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = StubState::load(&path).unwrap();
        let refused = |reason: &str| NewEvent {
            kind: outrider_abi::update_events::KIND_REFUSED,
            build: Some(build(2)),
            reason: reason.into(),
            ..NewEvent::default()
        };
        assert_eq!(state.push_event(5, refused("hash mismatch")).id, 1);
        assert_eq!(state.push_event(6, refused("expired")).id, 2);
        state.save(&path).unwrap();
        let mut state = StubState::load(&path).unwrap();
        assert_eq!(state.update_events.len(), 2);
        assert!(state.drop_events_through(2));
        assert!(!state.drop_events_through(2));
        assert_eq!(state.push_event(7, refused("x")).id, 3, "never reused");
        for n in 0..100 {
            state.push_event(n, refused("y"));
        }
        assert_eq!(state.update_events.len(), MAX_EVENTS);
        assert_eq!(state.update_events.last().unwrap().id, 103);
        assert_eq!(state.update_events[0].id, 103 - MAX_EVENTS as u64 + 1);
        // The JSON is the ABI's: hex hashes, omitted absent fields.
        let json = serde_json::to_value(&state.update_events[0]).unwrap();
        assert_eq!(json["kind"], "refused");
        assert_eq!(json["build_sha256"], build(2).sha256.to_string());
        assert_eq!(json["version"], "0.2");
        assert!(json.get("to_version").is_none());
    }

    #[test]
    fn a_state_file_of_an_older_stub_loads_and_keeps_its_rollback_texts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let sha = build(1).sha256;
        std::fs::write(
            &path,
            format!(
                r#"{{"version":1,"current":{{"sha256":"{sha}","version":"0.1"}},
                "events":["rolled back from v2 to v1: panicked"],
                "floor_channel":"stable"}}"#
            ),
        )
        .unwrap();
        let state = StubState::load(&path).unwrap();
        assert_eq!(state.current, Some(build(1)));
        assert_eq!(state.update_events.len(), 1);
        let event = &state.update_events[0];
        assert_eq!(event.kind, "rolled_back");
        assert_eq!(event.reason, "rolled back from v2 to v1: panicked");
        state.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("\"events\""),
            "converted, not kept twice: {text}"
        );
        assert_eq!(StubState::load(&path).unwrap().update_events.len(), 1);
    }

    #[test]
    fn each_channel_keeps_its_floor_and_old_single_floors_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let floor = |n: u8| SequenceFloor {
            sequence: u64::from(n),
            payload_sha256: build(n).sha256,
        };
        std::fs::write(
            &path,
            serde_json::json!({"version": 1, "floor": floor(9), "floor_channel": "stable"})
                .to_string(),
        )
        .unwrap();
        let mut state = StubState::load(&path).unwrap();
        assert_eq!(
            state.floor_of("stable"),
            Some(floor(9)),
            "read from the old fields"
        );
        state.raise_floor("beta", floor(3));
        assert_eq!(
            state.floor_of("stable"),
            Some(floor(9)),
            "kept across a switch"
        );
        assert_eq!(state.floor_of("beta"), Some(floor(3)));
        state.save(&path).unwrap();
        let back = StubState::load(&path).unwrap();
        assert_eq!(back.floor_of("stable"), Some(floor(9)));
        // The old fields mirror the current channel for older stubs.
        assert_eq!(back.floor_channel.as_deref(), Some("beta"));
        assert_eq!(back.floor, Some(floor(3)));
    }

    #[test]
    fn the_trusted_root_version_is_never_lowered() {
        let mut state = StubState::default();
        state.trust_root_version(3);
        state.trust_root_version(2);
        assert_eq!(state.root_version, Some(3));
        state.trust_root_version(4);
        assert_eq!(state.root_version, Some(4));
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
