//! What to tell receivers, and when: the notification decision per subject
//! and Alertmanager's group timers.
//!
//! The decision is level-triggered. It compares what receivers were last
//! told ([`Told`]) with the subject's state now, at the moment the group is
//! flushed — so a problem that starts and ends within `group_wait` is never
//! sent, and a flush sends each subject's latest state, not its history.
//!
//! Rules, in order:
//! 1. a deregistered agent's subjects are never notified as problems; if
//!    receivers were told of one, it is resolved (cause: deregistered);
//! 2. a muted subject (inhibited or silenced) is not notified — except that
//!    a resolve is never suppressed for something receivers were told of;
//! 3. flapping is notified once (`FlappingStarted`) and then holds: no firing
//!    or resolve while flapping. When it stops, receivers hear where it
//!    settled (`FlappingStopped` with the state) — "the current state if it
//!    differs from the last one notified", the last one being "flapping";
//! 4. otherwise firing and resolved follow the problem state, and a problem
//!    still firing is re-sent (`Repeat`) after `repeat_interval`.
//!
//! Group timers (Alertmanager `dispatch/dispatch.go`): a new group waits
//! `group_wait` before its first flush; later changes wait until
//! `group_interval` after the previous flush. A group with nothing told and
//! nothing to tell is forgotten, so its next problem waits `group_wait` again.

use serde::{Deserialize, Serialize};

use crate::config::GroupConfig;
use crate::model::{NotificationKind, ResolveCause};

/// What receivers were last told about a subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Told {
    /// Nothing open (never told, or told it resolved).
    #[default]
    Nothing,
    /// A problem is firing.
    Firing,
    /// The subject is flapping.
    Flapping,
}

/// A subject's state at flush time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// A hard problem.
    pub problem: bool,
    /// Flapping (per `flap.rs`).
    pub flapping: bool,
    /// Inhibited or silenced.
    pub muted: bool,
    /// Its agent deregistered.
    pub deregistered: bool,
    /// Told `Firing` at least `repeat_interval` ago.
    pub repeat_due: bool,
}

/// A decided notification: its kind, what receivers know afterwards, and
/// for resolves why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to send.
    pub kind: NotificationKind,
    /// What receivers will have been told.
    pub told: Told,
    /// Set on `Resolved`.
    pub cause: Option<ResolveCause>,
}

/// The rules above. `None`: send nothing.
pub fn decide(told: Told, level: Level) -> Option<Decision> {
    use NotificationKind as K;
    let d = |kind, told, cause| Some(Decision { kind, told, cause });
    if level.deregistered {
        return match told {
            Told::Nothing => None,
            _ => d(K::Resolved, Told::Nothing, Some(ResolveCause::Deregistered)),
        };
    }
    let settled_ok = !level.problem && !level.flapping;
    if level.muted {
        // Only the resolve of something told gets through.
        return match told {
            Told::Firing if settled_ok => {
                d(K::Resolved, Told::Nothing, Some(ResolveCause::Recovered))
            }
            Told::Flapping if settled_ok => d(K::FlappingStopped, Told::Nothing, None),
            _ => None,
        };
    }
    match (told, level.flapping, level.problem) {
        (Told::Flapping, true, _) => None,
        (_, true, _) => d(K::FlappingStarted, Told::Flapping, None),
        (Told::Flapping, false, problem) => {
            let now = if problem { Told::Firing } else { Told::Nothing };
            d(K::FlappingStopped, now, None)
        }
        (Told::Nothing, false, true) => d(K::Firing, Told::Firing, None),
        (Told::Firing, false, true) if level.repeat_due => d(K::Repeat, Told::Firing, None),
        (Told::Firing, false, false) => {
            d(K::Resolved, Told::Nothing, Some(ResolveCause::Recovered))
        }
        _ => None,
    }
}

/// A group's timers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTimer {
    /// The previous flush, while the group exists.
    pub last_flush_ms: Option<u64>,
    /// When the next flush is due, if something is pending.
    pub next_flush_ms: Option<u64>,
}

impl GroupTimer {
    /// Schedules (or cancels) the next flush given whether anything is
    /// pending now; returns whether a flush is due at `now_ms`.
    pub fn schedule(&mut self, config: &GroupConfig, pending: bool, now_ms: u64) -> bool {
        if !pending {
            self.next_flush_ms = None;
            return false;
        }
        let next = *self.next_flush_ms.get_or_insert(match self.last_flush_ms {
            None => now_ms.saturating_add(config.group_wait_ms),
            Some(last) => last.saturating_add(config.group_interval_ms).max(now_ms),
        });
        next <= now_ms
    }

    /// Records a flush at `now_ms`; `idle` (nothing told, nothing pending)
    /// forgets the group so that its next problem waits `group_wait`.
    pub fn flushed(&mut self, now_ms: u64, idle: bool) {
        self.next_flush_ms = None;
        self.last_flush_ms = if idle { None } else { Some(now_ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NotificationKind as K;

    fn level(problem: bool, flapping: bool, muted: bool) -> Level {
        Level {
            problem,
            flapping,
            muted,
            deregistered: false,
            repeat_due: false,
        }
    }

    #[test]
    fn decision_table() {
        use Told::{Firing as F, Flapping as Fl, Nothing as N};
        let dereg = Level {
            deregistered: true,
            ..level(true, false, false)
        };
        let repeat = Level {
            repeat_due: true,
            ..level(true, false, false)
        };
        let repeat_muted = Level {
            repeat_due: true,
            ..level(true, false, true)
        };
        // (name, told, level, expected kind, told afterwards)
        type Row = (&'static str, Told, Level, Option<(K, Told)>);
        let table: Vec<Row> = vec![
            ("quiet stays quiet", N, level(false, false, false), None),
            (
                "problem fires",
                N,
                level(true, false, false),
                Some((K::Firing, F)),
            ),
            ("firing holds", F, level(true, false, false), None),
            (
                "recovery resolves",
                F,
                level(false, false, false),
                Some((K::Resolved, N)),
            ),
            ("repeat when due", F, repeat, Some((K::Repeat, F))),
            ("no repeat while muted", F, repeat_muted, None),
            (
                "muted problem is not sent",
                N,
                level(true, false, true),
                None,
            ),
            (
                "muted resolve is still sent",
                F,
                level(false, false, true),
                Some((K::Resolved, N)),
            ),
            (
                "flapping starts once",
                N,
                level(false, true, false),
                Some((K::FlappingStarted, Fl)),
            ),
            (
                "firing then flapping",
                F,
                level(true, true, false),
                Some((K::FlappingStarted, Fl)),
            ),
            ("flapping holds", Fl, level(true, true, false), None),
            (
                "flapping holds while ok",
                Fl,
                level(false, true, false),
                None,
            ),
            (
                "stops settled ok",
                Fl,
                level(false, false, false),
                Some((K::FlappingStopped, N)),
            ),
            (
                "stops settled problem",
                Fl,
                level(true, false, false),
                Some((K::FlappingStopped, F)),
            ),
            ("muted flapping not sent", N, level(false, true, true), None),
            (
                "muted flap stop to ok is sent",
                Fl,
                level(false, false, true),
                Some((K::FlappingStopped, N)),
            ),
            (
                "muted flap stop to problem waits",
                Fl,
                level(true, false, true),
                None,
            ),
            ("deregistered never fires", N, dereg, None),
            (
                "deregistered resolves what was told",
                F,
                dereg,
                Some((K::Resolved, N)),
            ),
            (
                "deregistered resolves flapping",
                Fl,
                dereg,
                Some((K::Resolved, N)),
            ),
        ];
        for (name, told, lvl, want) in table {
            let got = decide(told, lvl).map(|d| (d.kind, d.told));
            assert_eq!(got, want, "{name}");
        }
        let cause = decide(F, dereg).unwrap().cause;
        assert_eq!(cause, Some(ResolveCause::Deregistered));
    }

    #[test]
    fn group_timers_follow_alertmanager() {
        let c = GroupConfig::default(); // 30 s, 5 min, 4 h
        let mut g = GroupTimer::default();
        // New group: first flush after group_wait.
        assert!(!g.schedule(&c, true, 1_000));
        assert_eq!(g.next_flush_ms, Some(31_000));
        assert!(
            !g.schedule(&c, true, 30_999),
            "a later change does not move it"
        );
        assert!(g.schedule(&c, true, 31_000));
        g.flushed(31_000, false);
        // A change right after: waits for group_interval after the flush.
        assert!(!g.schedule(&c, true, 40_000));
        assert_eq!(g.next_flush_ms, Some(331_000));
        // Nothing pending any more (it went back before the flush): cancelled.
        assert!(!g.schedule(&c, false, 50_000));
        assert_eq!(g.next_flush_ms, None);
        // A change long after the interval: due at once.
        assert!(g.schedule(&c, true, 1_000_000));
        g.flushed(1_000_000, true);
        // Idle group forgotten: the next problem waits group_wait again.
        assert!(!g.schedule(&c, true, 2_000_000));
        assert_eq!(g.next_flush_ms, Some(2_030_000));
    }
}
