//! The supervisor's decisions, as a pure state machine (DESIGN.md §4):
//! [`step`] takes the current [`Phase`], the persisted `StubState`, the
//! time ([`Now`], read by the shell's clock) and one [`Event`], changes both
//! as plain data (including the update events it queues in the state) and
//! returns the [`Action`]s the shell (`supervisor.rs`) must execute. No I/O,
//! no clock reads, so every rollback and probation rule is tested below by
//! table, without a library, a process or a sleep.
//!
//! Rules:
//! - a build on probation **passes** when it reports health `OK`;
//! - it **fails** (marked bad for the manifest that offered it, rolled back)
//!   when it cannot start, exits or panics (`run()` returns), reports health
//!   `FAILED`, reports no health at all within `probation`, or crashed the
//!   process (found through `pending` at the next boot);
//! - health `DEGRADED` (it runs and schedules, the server is unreachable) is
//!   inconclusive: probation keeps waiting, up to `degraded_limit`, after
//!   which the build is accepted — an outage never marks a build bad;
//! - a first install with nothing to roll back to is kept when it only
//!   stays silent (no agent at all would be worse);
//! - rollback goes to the build that ran before (`current`, else
//!   `previous`), then to `last_good`; builds started by a rollback are not
//!   on probation, so the stub never loops between bad builds;
//! - a bad build is offered again only under a new manifest;
//! - when an old copy stayed mapped after a swap, the stub re-execs once
//!   the new build passed probation.

use outrider_signing::Sha256;

use outrider_abi::update_events as kind;

use crate::state::{BuildRef, NewEvent, Pending, StubState};

/// How long a build that only reports `DEGRADED` keeps waiting before it is
/// accepted: it ran that long without crashing, and an outage is not its fault.
pub const DEFAULT_DEGRADED_LIMIT_MS: u64 = 24 * 3600 * 1000;

/// The limits the decisions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time a build on probation has to report any health (`probation_secs`).
    pub probation_ms: u64,
    /// Time a build that reports `DEGRADED` may stay on probation.
    pub degraded_limit_ms: u64,
}

/// A point in time, as read by the shell's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (durations are measured on this).
    pub mono_ms: u64,
    /// Wall clock, for the events' `at_unix_ms`.
    pub unix_ms: u64,
}

/// The latest health a generation reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Nothing reported yet.
    Silent,
    Ok,
    Degraded,
    Failed,
}

impl Health {
    /// From the ABI value (`outrider_abi::health`); unknown values from a
    /// newer library count as degraded (running, not proven either way).
    pub fn from_abi(value: Option<u32>) -> Health {
        match value {
            None => Health::Silent,
            Some(outrider_abi::health::OK) => Health::Ok,
            Some(outrider_abi::health::FAILED) => Health::Failed,
            Some(_) => Health::Degraded,
        }
    }
}

/// What the supervisor is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No generation runs (first run, or nothing could start).
    Idle,
    /// A generation runs a build that is not on probation.
    Steady { build: BuildRef },
    /// A generation runs a build on probation.
    Probation(Probation),
}

/// A build on probation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probation {
    pub pending: Pending,
    /// When its generation started (monotonic ms).
    pub started_ms: u64,
    /// An old copy stayed mapped during the swap: re-exec once it passes.
    pub reexec_when_healthy: bool,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The process starts. `resume` is a re-exec handover: the build to
    /// start and whether it is on probation (`pending` in the state).
    Boot { resume: Option<(BuildRef, bool)> },
    /// The shell started `build` (on probation if `probation`).
    Started {
        build: BuildRef,
        probation: Option<Pending>,
    },
    /// A build asked for on probation could not be loaded or started
    /// (the first install, or a swap: the shell restarted the old one).
    StartFailed { pending: Pending, reason: String },
    /// No candidate of an [`Action::Start`] without probation could start.
    NothingStarted,
    /// A look at the running generation.
    Observed { health: Health, finished: bool },
    /// An update check offered `build` (not during probation).
    Offered {
        build: BuildRef,
        manifest_sha256: Option<Sha256>,
    },
    /// After a swap, the old library stayed mapped.
    OldStayedMapped,
    /// A stop was requested; `health` is the running generation's.
    Stopping { health: Health },
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Persist `state.json`.
    Save,
    /// Start the first of `candidates` that starts (with the latest state
    /// blob); then report [`Event::Started`], or [`Event::StartFailed`]
    /// (with `probation`) / [`Event::NothingStarted`] (without).
    Start {
        candidates: Vec<BuildRef>,
        probation: Option<Pending>,
    },
    /// Hot swap to `to` (the module docs of `supervisor.rs`, steps 2–7).
    Swap { to: Pending },
    /// Stop and unload the running generation, keeping its state blob.
    StopGeneration,
    /// The running generation ended on its own: stop it and start the same
    /// build again after a backoff.
    Restart { build: BuildRef },
    /// Re-exec the process into `build` (stop the running generation first).
    Reexec { build: BuildRef, reason: String },
    /// Run an update check now.
    CheckNow,
}

/// One decision: applies `event`, which happened at `now`, to `phase` and
/// `state`, and returns the actions.
pub fn step(
    phase: &mut Phase,
    state: &mut StubState,
    limits: &Limits,
    now: Now,
    event: Event,
) -> Vec<Action> {
    match event {
        Event::Boot { resume } => boot(state, now, resume),
        Event::Started { build, probation } => {
            *phase = match probation {
                Some(pending) => Phase::Probation(Probation {
                    pending,
                    started_ms: now.mono_ms,
                    reexec_when_healthy: false,
                }),
                None => Phase::Steady { build },
            };
            Vec::new()
        }
        Event::StartFailed { pending, reason } => {
            // A failed swap left the old generation running (the shell
            // restarted it and reports that as `Started`); a failed first
            // start leaves nothing, and nothing to roll back to.
            fail(state, now, &pending, &format!("could not start: {reason}"));
            let mut actions = vec![Action::Save];
            if matches!(phase, Phase::Idle | Phase::Probation(_)) {
                *phase = Phase::Idle;
                let candidates = rollback_candidates(state, &pending.build);
                if candidates.is_empty() {
                    actions.push(Action::CheckNow);
                } else {
                    actions.push(Action::Start {
                        candidates,
                        probation: None,
                    });
                }
            }
            actions
        }
        Event::NothingStarted => {
            *phase = Phase::Idle;
            vec![Action::CheckNow]
        }
        Event::Observed { health, finished } => {
            observe(phase, state, limits, now, health, finished)
        }
        Event::Offered {
            build,
            manifest_sha256,
        } => offered(phase, state, build, manifest_sha256),
        Event::OldStayedMapped => {
            if let Phase::Probation(p) = phase {
                p.reexec_when_healthy = true;
            }
            Vec::new()
        }
        Event::Stopping { health } => {
            // A clean stop is not a crash: settle a probation in progress
            // so the next start does not blame the build.
            let Phase::Probation(p) = phase else {
                return Vec::new();
            };
            let pending = p.pending.clone();
            if health == Health::Ok {
                pass(state, now, &pending, String::new());
                *phase = Phase::Steady {
                    build: pending.build,
                };
            } else {
                state.pending = None;
            }
            vec![Action::Save]
        }
    }
}

fn boot(state: &mut StubState, now: Now, resume: Option<(BuildRef, bool)>) -> Vec<Action> {
    if let Some((build, probation)) = resume {
        let pending = probation.then(|| state.pending.clone()).flatten();
        let mut candidates = vec![build];
        if pending.is_none() {
            candidates.extend(start_candidates(state));
            dedup(&mut candidates);
        }
        return vec![Action::Start {
            candidates,
            probation: pending,
        }];
    }
    let mut actions = Vec::new();
    if let Some(pending) = state.pending.clone() {
        fail(state, now, &pending, "the process crashed during probation");
        actions.push(Action::Save);
    }
    let candidates = start_candidates(state);
    if candidates.is_empty() {
        // First run (or nothing usable recorded): the first check installs one.
        actions.push(Action::CheckNow);
    } else {
        actions.push(Action::Start {
            candidates,
            probation: None,
        });
    }
    actions
}

fn observe(
    phase: &mut Phase,
    state: &mut StubState,
    limits: &Limits,
    now: Now,
    health: Health,
    finished: bool,
) -> Vec<Action> {
    let probation = match phase {
        Phase::Idle => return Vec::new(),
        Phase::Steady { build } => {
            if finished {
                let build = build.clone();
                *phase = Phase::Idle;
                return vec![Action::Restart { build }];
            }
            return Vec::new();
        }
        Phase::Probation(p) => p.clone(),
    };
    let age_ms = now.mono_ms.saturating_sub(probation.started_ms);
    let verdict = if health == Health::Ok {
        Verdict::Pass(String::new())
    } else if finished {
        Verdict::Fail("exited during probation".to_owned())
    } else if health == Health::Failed {
        Verdict::Fail("reported health FAILED".to_owned())
    } else if age_ms <= limits.probation_ms {
        Verdict::Wait
    } else if health == Health::Degraded {
        // Inconclusive (the server is unreachable): wait, bounded.
        if age_ms > limits.degraded_limit_ms {
            Verdict::Pass(format!(
                "degraded (server unreachable) for {} s without failing: accepted",
                age_ms / 1000
            ))
        } else {
            Verdict::Wait
        }
    } else if rollback_candidates(state, &probation.pending.build).is_empty() {
        // Nothing to roll back to (a first install): a build that runs but
        // reports nothing is still better than no agent.
        Verdict::Pass(format!(
            "no health report within {} s, but nothing to roll back to, keeping it",
            limits.probation_ms / 1000
        ))
    } else {
        Verdict::Fail(format!(
            "no health report within {} s",
            limits.probation_ms / 1000
        ))
    };
    match verdict {
        Verdict::Wait => Vec::new(),
        Verdict::Pass(note) => {
            pass(state, now, &probation.pending, note);
            *phase = Phase::Steady {
                build: probation.pending.build.clone(),
            };
            let mut actions = vec![Action::Save];
            if probation.reexec_when_healthy {
                actions.push(Action::Reexec {
                    build: probation.pending.build,
                    reason: "an old library stayed mapped".into(),
                });
            }
            actions
        }
        Verdict::Fail(reason) => {
            fail(state, now, &probation.pending, &reason);
            *phase = Phase::Idle;
            let candidates = rollback_candidates(state, &probation.pending.build);
            let mut actions = vec![Action::Save, Action::StopGeneration];
            if candidates.is_empty() {
                actions.push(Action::CheckNow);
            } else {
                actions.push(Action::Start {
                    candidates,
                    probation: None,
                });
            }
            actions
        }
    }
}

fn offered(
    phase: &mut Phase,
    state: &mut StubState,
    build: BuildRef,
    manifest_sha256: Option<Sha256>,
) -> Vec<Action> {
    if state.is_bad(&build.sha256, manifest_sha256.as_ref()) {
        return Vec::new();
    }
    let to = Pending {
        build,
        manifest_sha256,
    };
    match phase {
        Phase::Probation(_) => Vec::new(),
        Phase::Steady { build } if build.sha256 == to.build.sha256 => Vec::new(),
        Phase::Steady { .. } => {
            // Step 2 of the swap: from here on a crash is blamed on `to`.
            state.pending = Some(to.clone());
            vec![Action::Save, Action::Swap { to }]
        }
        Phase::Idle => {
            // The very first build starts on probation too (a crash is then
            // blamed on it), though nothing may be there to roll back to.
            state.pending = Some(to.clone());
            vec![
                Action::Save,
                Action::Start {
                    candidates: vec![to.build.clone()],
                    probation: Some(to),
                },
            ]
        }
    }
}

enum Verdict {
    Wait,
    /// With a note on why, when it was not a health OK.
    Pass(String),
    Fail(String),
}

/// Step 8 of the swap: the build on probation becomes current.
fn pass(state: &mut StubState, now: Now, pending: &Pending, note: String) {
    if state.current.as_ref() != Some(&pending.build) {
        state.previous = state.current.take();
    }
    state.current = Some(pending.build.clone());
    state.last_good = Some(pending.build.clone());
    state.pending = None;
    state.push_event(
        now.unix_ms,
        NewEvent {
            kind: kind::KIND_PROBATION_PASSED,
            build: Some(pending.build.clone()),
            reason: note,
            ..NewEvent::default()
        },
    );
}

/// Marks the build on probation bad and records the rollback.
fn fail(state: &mut StubState, now: Now, pending: &Pending, reason: &str) {
    state.mark_bad(
        pending.build.sha256,
        pending.manifest_sha256,
        reason.to_owned(),
    );
    state.pending = None;
    let event = |kind, to| NewEvent {
        kind,
        build: Some(pending.build.clone()),
        to,
        reason: reason.to_owned(),
    };
    state.push_event(now.unix_ms, event(kind::KIND_PROBATION_FAILED, None));
    if let Some(to) = rollback_candidates(state, &pending.build).first() {
        state.push_event(now.unix_ms, event(kind::KIND_ROLLED_BACK, Some(to.clone())));
    }
}

/// What to start at boot: the current build, else the newest good one.
fn start_candidates(state: &StubState) -> Vec<BuildRef> {
    let mut candidates: Vec<BuildRef> = [state.current.clone(), state.last_good.clone()]
        .into_iter()
        .flatten()
        .collect();
    dedup(&mut candidates);
    candidates
}

/// Where to go from the failed build: the build that ran before the swap
/// (`current` is only replaced when probation passes, else `previous`),
/// then the newest build that ever passed probation. Never the failed one.
fn rollback_candidates(state: &StubState, failed: &BuildRef) -> Vec<BuildRef> {
    let before = [&state.current, &state.previous]
        .into_iter()
        .flatten()
        .find(|b| b.sha256 != failed.sha256)
        .cloned();
    let mut candidates: Vec<BuildRef> = [before, state.last_good.clone()]
        .into_iter()
        .flatten()
        .filter(|b| b.sha256 != failed.sha256)
        .collect();
    dedup(&mut candidates);
    candidates
}

fn dedup(builds: &mut Vec<BuildRef>) {
    let mut seen = Vec::new();
    builds.retain(|b| {
        let fresh = !seen.contains(&b.sha256);
        seen.push(b.sha256);
        fresh
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        probation_ms: 60_000,
        degraded_limit_ms: DEFAULT_DEGRADED_LIMIT_MS,
    };

    fn build(n: u8) -> BuildRef {
        BuildRef {
            sha256: outrider_signing::sha256(&[n]),
            version: format!("v{n}"),
        }
    }

    fn manifest(n: u8) -> Option<Sha256> {
        Some(outrider_signing::sha256(&[b'm', n]))
    }

    fn pending(n: u8) -> Pending {
        Pending {
            build: build(n),
            manifest_sha256: manifest(1),
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            unix_ms: 1_700_000_000_000 + ms,
        }
    }

    /// A stub that runs `v1` (current) and has `v2` on probation since t=0.
    fn on_probation() -> (Phase, StubState) {
        let state = StubState {
            current: Some(build(1)),
            last_good: Some(build(1)),
            pending: Some(pending(2)),
            ..StubState::default()
        };
        let phase = Phase::Probation(Probation {
            pending: pending(2),
            started_ms: 0,
            reexec_when_healthy: false,
        });
        (phase, state)
    }

    /// Applies `event` at `ms`.
    fn run(phase: &mut Phase, state: &mut StubState, ms: u64, event: Event) -> Vec<Action> {
        step(phase, state, &LIMITS, at(ms), event)
    }

    fn observed(health: Health, finished: bool) -> Event {
        Event::Observed { health, finished }
    }

    fn kinds(state: &StubState) -> Vec<&str> {
        state
            .update_events
            .iter()
            .map(|e| e.kind.as_str())
            .collect()
    }

    fn rollback_to(builds: &[u8]) -> Vec<Action> {
        vec![
            Action::Save,
            Action::StopGeneration,
            Action::Start {
                candidates: builds.iter().map(|&n| build(n)).collect(),
                probation: None,
            },
        ]
    }

    #[test]
    fn probation_verdicts() {
        let pass = vec![Action::Save];
        let day = DEFAULT_DEGRADED_LIMIT_MS;
        // (what the generation showed, at ms, expected actions, marked bad)
        let table: Vec<(&str, u64, Event, Vec<Action>, bool)> = vec![
            (
                "health OK",
                10,
                observed(Health::Ok, false),
                pass.clone(),
                false,
            ),
            (
                "OK at the last moment",
                60_000,
                observed(Health::Ok, false),
                pass.clone(),
                false,
            ),
            (
                "silent, in time",
                59_999,
                observed(Health::Silent, false),
                vec![],
                false,
            ),
            (
                "silent past the window",
                60_001,
                observed(Health::Silent, false),
                rollback_to(&[1]),
                true,
            ),
            (
                "exit or panic (run returned)",
                5,
                observed(Health::Silent, true),
                rollback_to(&[1]),
                true,
            ),
            (
                "exit after degraded",
                5,
                observed(Health::Degraded, true),
                rollback_to(&[1]),
                true,
            ),
            (
                "health FAILED",
                5,
                observed(Health::Failed, false),
                rollback_to(&[1]),
                true,
            ),
            (
                "degraded past the window: waits",
                60_001,
                observed(Health::Degraded, false),
                vec![],
                false,
            ),
            (
                "degraded through a 23 h outage",
                23 * 3600 * 1000,
                observed(Health::Degraded, false),
                vec![],
                false,
            ),
            (
                "degraded past the limit: accepted",
                day + 1,
                observed(Health::Degraded, false),
                pass.clone(),
                false,
            ),
        ];
        for (name, ms, event, expected, bad) in table {
            let (mut phase, mut state) = on_probation();
            let actions = run(&mut phase, &mut state, ms, event);
            assert_eq!(actions, expected, "{name}");
            assert_eq!(
                state.is_bad(&build(2).sha256, manifest(1).as_ref()),
                bad,
                "{name}"
            );
            if bad {
                assert_eq!(phase, Phase::Idle, "{name}");
                assert_eq!(state.pending, None, "{name}: settled");
                assert_eq!(state.current, Some(build(1)), "{name}");
                assert_eq!(kinds(&state), ["probation_failed", "rolled_back"], "{name}");
            } else if actions == pass {
                assert_eq!(phase, Phase::Steady { build: build(2) }, "{name}");
                assert_eq!(state.current, Some(build(2)), "{name}");
                assert_eq!(state.previous, Some(build(1)), "{name}");
                assert_eq!(state.last_good, Some(build(2)), "{name}");
                assert_eq!(state.pending, None, "{name}");
                assert_eq!(kinds(&state), ["probation_passed"], "{name}");
            } else {
                assert!(matches!(phase, Phase::Probation(_)), "{name}");
                assert_eq!(
                    state.pending,
                    Some(pending(2)),
                    "{name}: a crash is still blamed on it"
                );
                assert!(state.update_events.is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn the_events_name_both_builds_and_the_exact_reason() {
        let (mut phase, mut state) = on_probation();
        run(&mut phase, &mut state, 5, observed(Health::Failed, false));
        let [failed, rolled] = &state.update_events[..] else {
            panic!("{:?}", state.update_events)
        };
        assert_eq!(failed.version.as_deref(), Some("v2"));
        assert_eq!(failed.reason, "reported health FAILED");
        assert_eq!(failed.at_unix_ms, at(5).unix_ms);
        assert_eq!(rolled.version.as_deref(), Some("v2"));
        assert_eq!(rolled.to_version.as_deref(), Some("v1"));
        assert_eq!(rolled.to_sha256, Some(build(1).sha256));
        assert_eq!(rolled.id, failed.id + 1);
        assert_eq!(
            rolled.legacy_text(),
            "rolled back from v2 to v1: reported health FAILED"
        );
        let (mut phase, mut state) = on_probation();
        run(
            &mut phase,
            &mut state,
            60_001,
            observed(Health::Silent, false),
        );
        assert_eq!(
            state.update_events[0].reason,
            "no health report within 60 s"
        );
        let (mut phase, mut state) = on_probation();
        run(
            &mut phase,
            &mut state,
            DEFAULT_DEGRADED_LIMIT_MS + 1,
            observed(Health::Degraded, false),
        );
        assert!(state.update_events[0].reason.contains("accepted"));
    }

    #[test]
    fn rollback_targets_skip_what_is_bad_and_never_loop() {
        // (current, previous, last_good, failed) → candidates
        type Row = (Option<u8>, Option<u8>, Option<u8>, u8, Vec<u8>);
        let table: Vec<Row> = vec![
            (Some(1), None, Some(1), 2, vec![1]),
            // current already replaced? previous is the way back
            (None, Some(1), Some(1), 2, vec![1]),
            // the build before is gone too → last_good
            (Some(3), None, Some(1), 2, vec![3, 1]),
            // the failed build is never its own rollback target
            (Some(2), Some(1), Some(2), 2, vec![1]),
            // first install: nothing
            (None, None, None, 2, vec![]),
        ];
        for (current, previous, last_good, failed, expected) in table {
            let state = StubState {
                current: current.map(build),
                previous: previous.map(build),
                last_good: last_good.map(build),
                ..StubState::default()
            };
            let got = rollback_candidates(&state, &build(failed));
            let expected: Vec<BuildRef> = expected.into_iter().map(build).collect();
            assert_eq!(got, expected, "{current:?} {previous:?} {last_good:?}");
        }
    }

    #[test]
    fn builds_started_by_a_rollback_are_not_on_probation_so_nothing_loops() {
        let (mut phase, mut state) = on_probation();
        let actions = run(&mut phase, &mut state, 1, observed(Health::Silent, true));
        assert!(actions.contains(&Action::Start {
            candidates: vec![build(1)],
            probation: None
        }));
        let started = Event::Started {
            build: build(1),
            probation: None,
        };
        run(&mut phase, &mut state, 2, started);
        // v1 then exits on its own: restarted, never swapped to something else.
        let actions = run(&mut phase, &mut state, 3, observed(Health::Silent, true));
        assert_eq!(actions, vec![Action::Restart { build: build(1) }]);
        // When no target can start at all, the stub waits for a new release.
        assert_eq!(
            run(&mut phase, &mut state, 4, Event::NothingStarted),
            vec![Action::CheckNow]
        );
        assert_eq!(phase, Phase::Idle);
        // A rollback target that fails probation-free starts is not judged:
        // health FAILED of a steady build changes nothing.
        let mut steady = Phase::Steady { build: build(1) };
        assert_eq!(
            run(&mut steady, &mut state, 5, observed(Health::Failed, false)),
            vec![]
        );
    }

    #[test]
    fn a_crash_found_through_pending_at_boot_rolls_back() {
        let (_, mut state) = on_probation();
        let mut phase = Phase::Idle;
        let actions = run(&mut phase, &mut state, 0, Event::Boot { resume: None });
        assert_eq!(
            actions,
            vec![
                Action::Save,
                Action::Start {
                    candidates: vec![build(1)],
                    probation: None
                }
            ]
        );
        assert!(state.is_bad(&build(2).sha256, manifest(1).as_ref()));
        assert_eq!(state.pending, None);
        assert_eq!(kinds(&state), ["probation_failed", "rolled_back"]);
        assert_eq!(
            state.update_events[1].legacy_text(),
            "rolled back from v2 to v1: the process crashed during probation"
        );
    }

    #[test]
    fn boot_starts_current_then_last_good_or_checks_on_first_run() {
        let mut state = StubState {
            current: Some(build(3)),
            last_good: Some(build(1)),
            ..StubState::default()
        };
        let mut phase = Phase::Idle;
        assert_eq!(
            run(&mut phase, &mut state, 0, Event::Boot { resume: None }),
            vec![Action::Start {
                candidates: vec![build(3), build(1)],
                probation: None
            }]
        );
        let mut empty = StubState::default();
        assert_eq!(
            run(&mut phase, &mut empty, 0, Event::Boot { resume: None }),
            vec![Action::CheckNow]
        );
    }

    #[test]
    fn a_reexec_during_a_swap_resumes_probation_without_blaming_a_crash() {
        let (_, mut state) = on_probation();
        let mut phase = Phase::Idle;
        let resume = Event::Boot {
            resume: Some((build(2), true)),
        };
        assert_eq!(
            run(&mut phase, &mut state, 0, resume),
            vec![Action::Start {
                candidates: vec![build(2)],
                probation: Some(pending(2))
            }]
        );
        assert!(!state.is_bad(&build(2).sha256, manifest(1).as_ref()));
    }

    #[test]
    fn a_bad_build_is_retried_only_under_a_new_manifest() {
        let mut state = StubState {
            current: Some(build(1)),
            ..StubState::default()
        };
        state.mark_bad(build(2).sha256, manifest(1), "panicked".into());
        let mut phase = Phase::Steady { build: build(1) };
        let offer = |m| Event::Offered {
            build: build(2),
            manifest_sha256: manifest(m),
        };
        assert_eq!(run(&mut phase, &mut state, 0, offer(1)), vec![]);
        let to = Pending {
            build: build(2),
            manifest_sha256: manifest(2),
        };
        assert_eq!(
            run(&mut phase, &mut state, 0, offer(2)),
            vec![Action::Save, Action::Swap { to: to.clone() }]
        );
        assert_eq!(state.pending, Some(to), "written before the swap starts");
        // What already runs is not swapped to again.
        let running = Event::Offered {
            build: build(1),
            manifest_sha256: manifest(2),
        };
        assert_eq!(run(&mut phase, &mut state, 0, running), vec![]);
    }

    #[test]
    fn a_first_install_that_fails_leaves_nothing_and_one_that_is_silent_is_kept() {
        let mut state = StubState::default();
        let mut phase = Phase::Idle;
        let offer = Event::Offered {
            build: build(1),
            manifest_sha256: manifest(1),
        };
        let first = Pending {
            build: build(1),
            manifest_sha256: manifest(1),
        };
        assert_eq!(
            run(&mut phase, &mut state, 0, offer),
            vec![
                Action::Save,
                Action::Start {
                    candidates: vec![build(1)],
                    probation: Some(first.clone())
                }
            ]
        );
        let failed = Event::StartFailed {
            pending: first.clone(),
            reason: "no entry symbol".into(),
        };
        assert_eq!(
            run(&mut phase, &mut state, 0, failed),
            vec![Action::Save, Action::CheckNow]
        );
        assert!(state.is_bad(&build(1).sha256, manifest(1).as_ref()));
        assert_eq!(
            kinds(&state),
            ["probation_failed"],
            "nothing to roll back to"
        );
        assert_eq!(
            state.update_events[0].reason,
            "could not start: no entry symbol"
        );

        let mut state = StubState::default();
        let mut phase = Phase::Idle;
        let started = Event::Started {
            build: build(1),
            probation: Some(first),
        };
        run(&mut phase, &mut state, 0, started);
        let actions = run(
            &mut phase,
            &mut state,
            60_001,
            observed(Health::Silent, false),
        );
        assert_eq!(actions, vec![Action::Save]);
        assert_eq!(state.current, Some(build(1)));
        assert!(
            state.update_events[0]
                .reason
                .contains("nothing to roll back to, keeping it")
        );
    }

    #[test]
    fn a_swap_that_cannot_start_keeps_the_old_build_running() {
        let (_, mut state) = on_probation();
        let mut phase = Phase::Steady { build: build(1) };
        let failed = Event::StartFailed {
            pending: pending(2),
            reason: "no entry symbol".into(),
        };
        assert_eq!(run(&mut phase, &mut state, 0, failed), vec![Action::Save]);
        assert_eq!(phase, Phase::Steady { build: build(1) });
        assert!(state.is_bad(&build(2).sha256, manifest(1).as_ref()));
    }

    #[test]
    fn an_old_copy_left_mapped_means_a_reexec_once_probation_passed() {
        let (mut phase, mut state) = on_probation();
        run(&mut phase, &mut state, 1, Event::OldStayedMapped);
        assert_eq!(
            run(&mut phase, &mut state, 10, observed(Health::Ok, false)),
            vec![
                Action::Save,
                Action::Reexec {
                    build: build(2),
                    reason: "an old library stayed mapped".into()
                }
            ]
        );
    }

    #[test]
    fn a_clean_stop_during_probation_is_not_a_crash() {
        let (mut phase, mut state) = on_probation();
        let stop = |health| Event::Stopping { health };
        assert_eq!(
            run(&mut phase, &mut state, 1, stop(Health::Silent)),
            vec![Action::Save]
        );
        assert_eq!(state.pending, None);
        assert!(!state.is_bad(&build(2).sha256, manifest(1).as_ref()));
        assert_eq!(state.current, Some(build(1)), "not promoted either");

        let (mut phase, mut state) = on_probation();
        run(&mut phase, &mut state, 1, stop(Health::Ok));
        assert_eq!(state.current, Some(build(2)), "healthy at stop: passed");
    }
}
