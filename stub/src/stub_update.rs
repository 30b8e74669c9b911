//! Stub self-update that cannot brick a fleet (docs/updates.md, "Stub
//! self-update"). The known-good binary stays at the service's path until
//! the new one has proved itself:
//!
//! 1. the offered stub is downloaded and verified beside the running one as
//!    `outrider-agent.new`, made executable and fsynced;
//! 2. `outrider-agent.new --self-test` must exit 0 within
//!    [`SELF_TEST_TIMEOUT`] and print `outrider-agent <version> abi
//!    <major>.<minor>` with our ABI major ([`self_test`]);
//! 3. trial: `stub_trial` (hash, manifest, `starts` = 1) is written to
//!    `state.json`, then the process execs `outrider-agent.new` directly
//!    (same PID, generation state handed over);
//! 4. if the trial process dies, the service manager starts the canonical
//!    (old) binary again, which finds the unfinished trial ([`at_start`]):
//!    it counts one more start and execs the trial again, and after
//!    [`MAX_TRIAL_STARTS`] it marks that stub bad for the manifest (never
//!    retried under it) and queues `stub_refused`;
//! 5. a trial stub whose generation reports health OK hard-links the
//!    canonical binary to `outrider-agent.prev`, renames itself over the
//!    canonical path (atomic), and queues `stub_updated` ([`promote`]).
#![allow(unsafe_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outrider_signing::Sha256;
use serde::{Deserialize, Serialize};

use crate::StubError;
use crate::state::{BuildRef, NewEvent, StubState};

/// Time the new binary gets to answer `--self-test`.
pub const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts a trial stub gets to reach a healthy generation.
pub const MAX_TRIAL_STARTS: u32 = 3;
/// Most of `--self-test`'s output read.
const MAX_SELF_TEST_OUTPUT: u64 = 4096;
/// File names beside the canonical binary.
pub const NEW_FILE: &str = "outrider-agent.new";
pub const PREV_FILE: &str = "outrider-agent.prev";

/// A new stub on trial, in `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StubTrial {
    pub sha256: Sha256,
    /// The manifest that offered it: a refused stub is never retried under it.
    pub manifest_sha256: Option<Sha256>,
    /// The version its self-test printed.
    pub version: String,
    /// Starts of the trial binary so far (each counted before it runs).
    pub starts: u32,
    /// The service's path of the stub (where the known-good binary stays).
    pub canonical: PathBuf,
}

impl StubTrial {
    /// Where the trial binary waits beside the canonical one.
    pub fn new_path(&self) -> PathBuf {
        self.canonical.with_file_name(NEW_FILE)
    }

    fn as_build(&self) -> BuildRef {
        BuildRef {
            sha256: self.sha256,
            version: self.version.clone(),
        }
    }
}

/// What `--self-test` prints.
pub fn self_test_line() -> String {
    format!(
        "outrider-agent {} abi {}.{}",
        env!("CARGO_PKG_VERSION"),
        outrider_abi::ABI_MAJOR,
        outrider_abi::ABI_MINOR
    )
}

/// Runs `binary --self-test` in its own process group, bounded by
/// `timeout`; returns the version it printed, or the exact reason it is
/// refused.
pub fn self_test(binary: &Path, timeout: Duration) -> Result<String, String> {
    let out = tempfile_in(binary).map_err(|e| format!("cannot capture the self-test: {e}"))?;
    let mut child = std::process::Command::new(binary)
        .arg("--self-test")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("self-test could not run: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                kill_group(child.id());
                let _ = child.wait();
                return Err(format!(
                    "self-test did not finish within {} s",
                    timeout.as_secs()
                ));
            }
        }
    };
    // Whatever the binary left running in its group goes too.
    kill_group(child.id());
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return Err(format!("self-test was killed by signal {signal}"));
    }
    if !status.success() {
        return Err(format!(
            "self-test exited with status {}",
            status.code().unwrap_or(-1)
        ));
    }
    let mut text = String::new();
    let mut out = out;
    std::io::Seek::rewind(&mut out).map_err(|e| e.to_string())?;
    (&mut out)
        .take(MAX_SELF_TEST_OUTPUT)
        .read_to_string(&mut text)
        .map_err(|e| format!("self-test output is not text: {e}"))?;
    parse_self_test(&text)
}

/// The version in a `--self-test` line, if its ABI major is ours.
fn parse_self_test(text: &str) -> Result<String, String> {
    let line = text.lines().next().unwrap_or("").trim();
    let refuse = || {
        format!("self-test printed {line:?}, not \"outrider-agent <version> abi <major>.<minor>\"")
    };
    let mut words = line.split_whitespace();
    let (Some("outrider-agent"), Some(version), Some("abi"), Some(abi), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(refuse());
    };
    let major: u32 = abi
        .split_once('.')
        .and_then(|(major, _)| major.parse().ok())
        .ok_or_else(refuse)?;
    if major != outrider_abi::ABI_MAJOR {
        return Err(format!(
            "the new stub speaks ABI {major}, this one {}",
            outrider_abi::ABI_MAJOR
        ));
    }
    Ok(version.to_owned())
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) on the process group we created for the self-test.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}

/// An anonymous file in the directory of `beside` (removed at once).
fn tempfile_in(beside: &Path) -> std::io::Result<std::fs::File> {
    let path = beside.with_file_name(format!(".self-test.{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// What a starting stub does about an unfinished trial.
#[derive(Debug, PartialEq, Eq)]
pub enum AtStart {
    /// No trial, or this is the trial binary: run normally.
    Run,
    /// Exec the trial binary again (its start was counted and saved).
    Relaunch(PathBuf),
}

/// Step 4: decides, at the start of the process whose binary hashes to
/// `running`, what to do about `state.stub_trial`; records what it decided.
pub fn at_start(state: &mut StubState, running: Option<Sha256>, now_unix_ms: u64) -> AtStart {
    let Some(trial) = state.stub_trial.clone() else {
        return AtStart::Run;
    };
    if running == Some(trial.sha256) {
        return AtStart::Run;
    }
    let reason = if trial.starts >= MAX_TRIAL_STARTS {
        format!(
            "the new stub did not reach a healthy agent in {} starts; the previous stub runs",
            trial.starts
        )
    } else if !trial.new_path().exists() {
        format!("{} is gone", trial.new_path().display())
    } else {
        let mut trial = trial;
        trial.starts += 1;
        let path = trial.new_path();
        state.stub_trial = Some(trial);
        return AtStart::Relaunch(path);
    };
    refuse(state, &trial, reason, now_unix_ms);
    let _ = std::fs::remove_file(trial.new_path());
    AtStart::Run
}

/// Ends a trial as refused: bad for its manifest, `stub_refused` queued.
pub fn refuse(state: &mut StubState, trial: &StubTrial, reason: String, now_unix_ms: u64) {
    state.stub_trial = None;
    state.mark_stub_bad(trial.sha256, trial.manifest_sha256, reason.clone());
    state.push_event(
        now_unix_ms,
        NewEvent {
            kind: outrider_abi::update_events::KIND_STUB_REFUSED,
            build: Some(trial.as_build()),
            reason,
            ..NewEvent::default()
        },
    );
}

/// Step 5: the trial binary (running from `outrider-agent.new`) takes the
/// canonical path, keeping the previous binary as `outrider-agent.prev`.
pub fn promote(state: &mut StubState, now_unix_ms: u64) -> Result<PathBuf, StubError> {
    let trial = state
        .stub_trial
        .clone()
        .expect("promote runs only during a trial");
    let canonical = &trial.canonical;
    let prev = canonical.with_file_name(PREV_FILE);
    let _ = std::fs::remove_file(&prev);
    // A hard link: the canonical path never stops naming a working binary.
    if canonical.exists() {
        std::fs::hard_link(canonical, &prev)
            .map_err(StubError::io("keeping the previous stub as", &prev))?;
    }
    std::fs::rename(trial.new_path(), canonical)
        .map_err(StubError::io("renaming the new stub to", canonical))?;
    if let Some(dir) = canonical.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StubError::io("syncing directory", dir))?;
    }
    state.stub_trial = None;
    state.push_event(
        now_unix_ms,
        NewEvent {
            kind: outrider_abi::update_events::KIND_STUB_UPDATED,
            build: Some(trial.as_build()),
            ..NewEvent::default()
        },
    );
    Ok(canonical.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn self_test_accepts_only_a_stub_that_answers_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!("echo '{}'", self_test_line());
        let table: Vec<(&str, String, Result<String, String>)> = vec![
            ("good", ok, Ok(env!("CARGO_PKG_VERSION").to_owned())),
            (
                "exits 1",
                "exit 1".into(),
                Err("self-test exited with status 1".into()),
            ),
            (
                "segfaults",
                "kill -SEGV $$".into(),
                Err("self-test was killed by signal 11".into()),
            ),
            (
                "hangs",
                "sleep 30".into(),
                Err("self-test did not finish within 1 s".into()),
            ),
            (
                "other major",
                "echo 'outrider-agent 9.0.0 abi 2.0'".into(),
                Err(format!(
                    "the new stub speaks ABI 2, this one {}",
                    outrider_abi::ABI_MAJOR
                )),
            ),
            (
                "says nothing",
                "true".into(),
                Err(
                    "self-test printed \"\", not \"outrider-agent <version> abi <major>.<minor>\""
                        .into(),
                ),
            ),
        ];
        for (name, body, expected) in table {
            let path = script(dir.path(), &name.replace(' ', "-"), &body);
            let started = Instant::now();
            assert_eq!(self_test(&path, Duration::from_secs(1)), expected, "{name}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name}: bounded"
            );
        }
    }

    fn trial(dir: &Path, starts: u32) -> StubTrial {
        let canonical = dir.join("outrider-agent");
        std::fs::write(&canonical, "old").unwrap();
        std::fs::write(dir.join(NEW_FILE), "new").unwrap();
        StubTrial {
            sha256: outrider_signing::sha256(b"new"),
            manifest_sha256: Some(outrider_signing::sha256(b"m")),
            version: "0.2.0".into(),
            starts,
            canonical,
        }
    }

    #[test]
    fn an_unfinished_trial_is_relaunched_until_it_has_used_its_starts() {
        let dir = tempfile::tempdir().unwrap();
        let old = Some(outrider_signing::sha256(b"old"));
        let mut state = StubState {
            stub_trial: Some(trial(dir.path(), 1)),
            ..StubState::default()
        };
        // The trial binary itself runs normally.
        let new = Some(outrider_signing::sha256(b"new"));
        assert_eq!(at_start(&mut state, new, 0), AtStart::Run);
        // The canonical binary after a crash of the trial: start 2, then 3.
        for starts in 2..=MAX_TRIAL_STARTS {
            assert_eq!(
                at_start(&mut state, old, 0),
                AtStart::Relaunch(dir.path().join(NEW_FILE))
            );
            assert_eq!(state.stub_trial.as_ref().unwrap().starts, starts);
        }
        // Out of starts: refused, never retried under this manifest.
        assert_eq!(at_start(&mut state, old, 7), AtStart::Run);
        assert_eq!(state.stub_trial, None);
        let event = state.update_events.last().unwrap();
        assert_eq!(event.kind, "stub_refused");
        assert_eq!(event.version.as_deref(), Some("0.2.0"));
        assert!(event.reason.contains("in 3 starts"), "{}", event.reason);
        let m = outrider_signing::sha256(b"m");
        assert!(state.is_stub_bad(&outrider_signing::sha256(b"new"), Some(&m)));
        assert!(!dir.path().join(NEW_FILE).exists(), "cleaned");
        assert_eq!(
            std::fs::read(dir.path().join("outrider-agent")).unwrap(),
            b"old"
        );
    }

    #[test]
    fn promotion_keeps_the_previous_binary_and_takes_the_canonical_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StubState {
            stub_trial: Some(trial(dir.path(), 1)),
            ..StubState::default()
        };
        let canonical = promote(&mut state, 5).unwrap();
        assert_eq!(std::fs::read(&canonical).unwrap(), b"new");
        assert_eq!(std::fs::read(dir.path().join(PREV_FILE)).unwrap(), b"old");
        assert!(!dir.path().join(NEW_FILE).exists());
        assert_eq!(state.stub_trial, None);
        assert_eq!(state.update_events.last().unwrap().kind, "stub_updated");
    }
}
