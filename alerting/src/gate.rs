//! The problem gate of a check or collector: soft and hard states.
//!
//! A single non-OK result is *soft*: nothing is notified. The subject becomes
//! a *hard* problem after N consecutive non-OK results, or after being non-OK
//! without interruption for a duration (whichever [`GateRule`] the check
//! sets), and recovers only after M consecutive OK results — hysteresis, so a
//! problem that blinks OK once does not resolve and re-fire.
//!
//! The gate also says which results flap detection records. Nagios records
//! "only hard states and soft recoveries" (Nagios Core docs, *Detection and
//! Handling of State Flapping*; `base/checks.c` calls
//! `check_for_service_flapping` for those): here that is an OK result while
//! the gate is hard-OK (a hard OK, or a soft recovery after soft failures),
//! a non-OK result while it is a hard problem, and the result that flips it.
//! A non-OK result that has not tripped the gate yet, and an OK result inside
//! a hard problem before M OKs, are soft and not recorded.

use serde::{Deserialize, Serialize};

use crate::config::{CheckRules, GateRule};
use crate::subject::Status;

/// Persisted gate state of one subject.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gate {
    /// Hard state: a problem.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub problem: bool,
    /// Consecutive non-OK results so far.
    #[serde(skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// Consecutive OK results so far (capped: only `recover_after` matters).
    #[serde(skip_serializing_if = "is_zero")]
    pub oks: u32,
    /// When the current uninterrupted non-OK run started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<u64>,
    /// The latest result's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Status>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Gate {
    /// Feeds one result; returns the state to record in the flap history,
    /// if this result is a hard state or a soft recovery.
    pub fn observe(&mut self, rules: &CheckRules, status: Status, at_ms: u64) -> Option<Status> {
        self.last = Some(status);
        if status.is_ok() {
            self.failures = 0;
            self.failing_since_ms = None;
            self.oks = self.oks.saturating_add(1).min(rules.recover_after);
            if self.problem && self.oks >= rules.recover_after {
                self.problem = false;
            }
            // Hard OK or soft recovery; an OK inside a hard problem is soft.
            return (!self.problem).then_some(status);
        }
        self.oks = 0;
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since_ms.get_or_insert(at_ms);
        if !self.problem {
            self.problem = match rules.gate {
                GateRule::Consecutive { count } => self.failures >= count,
                GateRule::Duration { for_ms } => at_ms.saturating_sub(since) >= for_ms,
            };
        }
        self.problem.then_some(status)
    }

    /// Trips a duration gate between results: non-OK since long enough, no
    /// newer result. Returns the state to record if it just became a problem.
    pub fn poll(&mut self, rules: &CheckRules, now_ms: u64) -> Option<Status> {
        let GateRule::Duration { for_ms } = rules.gate else {
            return None;
        };
        let since = self.failing_since_ms?;
        if self.problem || now_ms.saturating_sub(since) < for_ms {
            return None;
        }
        self.problem = true;
        self.last
    }

    /// When [`Gate::poll`] would trip, if it can.
    pub fn deadline_ms(&self, rules: &CheckRules) -> Option<u64> {
        match rules.gate {
            GateRule::Duration { for_ms } if !self.problem => {
                self.failing_since_ms.map(|s| s.saturating_add(for_ms))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::{Critical as C, Ok as O, Warning as W};

    fn rules(gate: GateRule) -> CheckRules {
        CheckRules {
            gate,
            ..CheckRules::default()
        }
    }

    /// (results, expected hard state after each, expected flap record after each)
    #[test]
    fn consecutive_gate_table() {
        let three = rules(GateRule::Consecutive { count: 3 });
        type Row = (&'static str, Vec<Status>, Vec<bool>, Vec<Option<Status>>);
        let table: Vec<Row> = vec![
            (
                "three failures trip it",
                vec![C, C, C],
                vec![false, false, true],
                vec![None, None, Some(C)],
            ),
            (
                "an OK in between restarts the count (soft recovery recorded)",
                vec![C, C, O, C, C],
                vec![false, false, false, false, false],
                vec![None, None, Some(O), None, None],
            ),
            (
                "warning and critical both count",
                vec![W, C, W],
                vec![false, false, true],
                vec![None, None, Some(W)],
            ),
            (
                "one OK does not recover, two do",
                vec![C, C, C, O, O],
                vec![false, false, true, true, false],
                vec![None, None, Some(C), None, Some(O)],
            ),
            (
                "a failure inside recovery restarts the OK count",
                vec![C, C, C, O, C, O, O],
                vec![false, false, true, true, true, true, false],
                vec![None, None, Some(C), None, Some(C), None, Some(O)],
            ),
            (
                "hard OK results are recorded",
                vec![O, O],
                vec![false, false],
                vec![Some(O), Some(O)],
            ),
        ];
        for (name, results, hard, records) in table {
            let mut g = Gate::default();
            for (i, status) in results.iter().enumerate() {
                let rec = g.observe(&three, *status, i as u64 * 10_000);
                assert_eq!(g.problem, hard[i], "{name}: hard state after result {i}");
                assert_eq!(rec, records[i], "{name}: record after result {i}");
            }
        }
    }

    #[test]
    fn duration_gate_trips_on_results_and_on_ticks() {
        let two_min = rules(GateRule::Duration { for_ms: 120_000 });
        // Results: failing from t=0, still failing at t=119 s, then 120 s.
        let mut g = Gate::default();
        assert_eq!(g.observe(&two_min, C, 0), None);
        assert_eq!(g.observe(&two_min, C, 119_999), None);
        assert_eq!(g.observe(&two_min, C, 120_000), Some(C));
        assert!(g.problem);

        // One result only (the resolver check reports changes): a tick trips it.
        let mut g = Gate::default();
        g.observe(&two_min, C, 1_000);
        assert_eq!(g.deadline_ms(&two_min), Some(121_000));
        assert_eq!(g.poll(&two_min, 120_999), None);
        assert_eq!(g.poll(&two_min, 121_000), Some(C));
        assert_eq!(g.poll(&two_min, 130_000), None, "trips once");
        assert_eq!(g.deadline_ms(&two_min), None);

        // Recovered before the deadline: nothing to trip.
        let mut g = Gate::default();
        g.observe(&two_min, C, 0);
        g.observe(&two_min, O, 60_000);
        assert_eq!(g.poll(&two_min, 200_000), None);
        assert!(!g.problem);
    }

    #[test]
    fn a_consecutive_gate_never_trips_on_a_tick() {
        let three = rules(GateRule::Consecutive { count: 3 });
        let mut g = Gate::default();
        g.observe(&three, C, 0);
        assert_eq!(g.poll(&three, u64::MAX), None);
        assert_eq!(g.deadline_ms(&three), None);
    }
}
