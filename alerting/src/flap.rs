//! Flap detection, computed exactly as Nagios Core does
//! (`base/flapping.c`, `check_for_service_flapping`):
//!
//! 1. keep the last 21 recorded states (`MAX_STATE_HISTORY_ENTRIES`), so 20
//!    transitions; the history starts filled with OK (Nagios fills it with
//!    the initial state);
//! 2. walk from the oldest to the newest; the transition into entry `x`
//!    (x = 1..=20) that changes state adds the weight
//!    `(x - 1) * (1.25 - 0.75) / (21 - 2) + 0.75` — 0.75 for the oldest
//!    transition, 1.25 for the newest, so recent changes count more;
//! 3. percent state change = weighted changes × 100 / (21 - 1);
//! 4. at or above the high threshold the subject starts flapping, at or below
//!    the low threshold it stops, in between it keeps its flapping state.
//!
//! States are compared as they are (WARNING → CRITICAL is a change too), and
//! only hard states and soft recoveries are recorded (`gate.rs` decides).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::FlapConfig;
use crate::subject::Status;

/// Nagios `MAX_STATE_HISTORY_ENTRIES`.
pub const HISTORY: usize = 21;
const LOW_CURVE: f64 = 0.75;
const HIGH_CURVE: f64 = 1.25;

/// Persisted flap state of one subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Flap {
    /// The last [`HISTORY`] recorded states, oldest first.
    history: VecDeque<Status>,
    /// Whether the subject is flapping now.
    pub flapping: bool,
    /// The latest percent state change (derived from the history).
    pub percent: f64,
}

/// What is stored of a [`Flap`]: the history as one letter per state
/// ("OOWCC…", to keep the state small) and the flapping flag; the
/// percentage is recomputed when loaded.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(with = "letters")]
    history: VecDeque<Status>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    flapping: bool,
}

impl From<Stored> for Flap {
    fn from(s: Stored) -> Flap {
        if s.history.len() != HISTORY {
            // Hand-edited or foreign: the percentages assume 21 entries.
            return Flap::default();
        }
        let percent = percent_state_change(&Vec::from(s.history.clone()));
        Flap {
            history: s.history,
            flapping: s.flapping,
            percent,
        }
    }
}

impl From<Flap> for Stored {
    fn from(f: Flap) -> Stored {
        Stored {
            history: f.history,
            flapping: f.flapping,
        }
    }
}

impl Default for Flap {
    fn default() -> Self {
        Flap {
            history: std::iter::repeat_n(Status::Ok, HISTORY).collect(),
            flapping: false,
            percent: 0.0,
        }
    }
}

impl Flap {
    /// Records one state and re-decides flapping; returns the flapping state.
    pub fn record(&mut self, config: &FlapConfig, status: Status) -> bool {
        self.history.pop_front();
        self.history.push_back(status);
        self.percent = percent_state_change(self.history.make_contiguous());
        if !config.enabled {
            self.flapping = false;
        } else if self.percent >= config.high_percent {
            self.flapping = true;
        } else if self.percent <= config.low_percent {
            self.flapping = false;
        }
        self.flapping
    }
}

/// Step 2–3 above, for a history of exactly [`HISTORY`] states, oldest first.
pub fn percent_state_change(history: &[Status]) -> f64 {
    let transitions = (HISTORY - 1) as f64;
    let changes: f64 = history
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[0] != pair[1])
        .map(|(i, _)| i as f64 * (HIGH_CURVE - LOW_CURVE) / (transitions - 1.0) + LOW_CURVE)
        .fold(0.0, |sum, w| sum + w);
    changes * 100.0 / transitions
}

/// The history as one letter per state: O, W, C, U.
mod letters {
    use std::collections::VecDeque;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use crate::subject::Status;

    pub fn serialize<S: Serializer>(h: &VecDeque<Status>, s: S) -> Result<S::Ok, S::Error> {
        let text: String = h
            .iter()
            .map(|st| match st {
                Status::Ok => 'O',
                Status::Warning => 'W',
                Status::Critical => 'C',
                Status::Unknown => 'U',
            })
            .collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<Status>, D::Error> {
        String::deserialize(d)?
            .chars()
            .map(|c| match c {
                'O' => Ok(Status::Ok),
                'W' => Ok(Status::Warning),
                'C' => Ok(Status::Critical),
                'U' => Ok(Status::Unknown),
                other => Err(D::Error::custom(format!(
                    "flap history letter {other:?} is not one of O, W, C, U"
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::{Critical as C, Ok as O, Warning as W};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Hand-computed values: w(x) = 0.75 + (x-1)·0.5/19 for the transition
    /// into entry x; percent = Σw · 100 / 20 = Σw · 5.
    #[test]
    fn percent_matches_hand_computed_values() {
        let mut h = [O; HISTORY];
        assert!(close(percent_state_change(&h), 0.0));
        // Only the newest transition changes: 1.25 · 5.
        h[20] = C;
        assert!(close(percent_state_change(&h), 6.25));
        // Only the oldest transition changes: 0.75 · 5.
        let mut h = [O; HISTORY];
        h[0] = C;
        assert!(close(percent_state_change(&h), 3.75));
        // Every transition changes: Σw = 20 · 1.0 → 100 %.
        let alt: Vec<Status> = (0..HISTORY)
            .map(|i| if i % 2 == 0 { O } else { C })
            .collect();
        assert!(close(percent_state_change(&alt), 100.0));
        // Transitions into x = 19 and 20: (0.75 + 18·0.5/19) + 1.25
        // = 2.473684…; · 5 = 12.368421….
        let mut h = [O; HISTORY];
        h[19] = C;
        assert!(close(percent_state_change(&h), 12.368421052631579));
        // WARNING → CRITICAL is a change (states compared as they are).
        let mut h = [W; HISTORY];
        h[20] = C;
        assert!(close(percent_state_change(&h), 6.25));
    }

    #[test]
    fn thresholds_have_hysteresis() {
        let config = FlapConfig::default(); // 25 / 30
        let mut f = Flap::default();
        // Alternate: the newest k transitions change, so percent = 5 · the
        // sum of the newest k weights (1.25, 1.2237, 1.1974, 1.1711, 1.1447,
        // 1.1184): 6.25, 12.37, 18.36, 24.21, 29.93 (just under 30), 35.53.
        let mut seen = Vec::new();
        for i in 0..6 {
            let s = if i % 2 == 0 { C } else { O };
            seen.push((f.record(&config, s), f.percent));
        }
        let want = [6.25, 12.368421, 18.355263, 24.210526, 29.934211, 35.526316];
        for (i, (flapping, pct)) in seen.iter().enumerate() {
            assert!((pct - want[i]).abs() < 1e-5, "step {i}: {pct}");
            assert_eq!(*flapping, i == 5, "step {i}");
        }
        // Steady OK from here: the percentage falls; flapping holds while
        // above 25 and stops at or below it.
        let mut stopped_at = None;
        for i in 0..30 {
            if !f.record(&config, O) {
                stopped_at = Some(i);
                break;
            }
            assert!(f.percent > 25.0);
        }
        let stopped_at = stopped_at.expect("flapping stops");
        assert!(f.percent <= 25.0);
        // 35.53 falls below 25 after a couple of steady records, not at once.
        assert!(
            stopped_at >= 1,
            "hysteresis: not at the first steady record"
        );
    }

    /// The records of a check failing 3 and passing 3 results in turn
    /// (`gate.rs`: C at the third failure, nothing for the first OK, O for
    /// the second and third): C, O, O, C, O, O, C, O. Hand-computed with
    /// w(x) = 0.75 + (x-1)·0.5/19: e.g. after the 8th record the changes
    /// are into x = 13, 14, 16, 17, 19, 20, Σw = 6.947368, · 5 = 34.74.
    #[test]
    fn a_three_on_three_off_check_starts_flapping_at_its_eighth_record() {
        let config = FlapConfig::default();
        let mut f = Flap::default();
        let want = [
            6.25, 12.368421, 12.105263, 18.092105, 23.947368, 23.421053, 29.144737, 34.736842,
        ];
        for (i, s) in [C, O, O, C, O, O, C, O].into_iter().enumerate() {
            let flapping = f.record(&config, s);
            assert!(
                (f.percent - want[i]).abs() < 1e-5,
                "record {i}: {}",
                f.percent
            );
            assert_eq!(flapping, i == 7, "record {i}");
        }
    }

    #[test]
    fn history_is_stored_as_letters() {
        let mut f = Flap::default();
        f.record(&FlapConfig::default(), C);
        f.record(&FlapConfig::default(), W);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, r#"{"history":"OOOOOOOOOOOOOOOOOOOCW"}"#);
        let back: Flap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f, "the percentage is recomputed");
        assert!(serde_json::from_str::<Flap>(r#"{"history":"OX"}"#).is_err());
    }

    #[test]
    fn disabled_never_flaps() {
        let config = FlapConfig {
            enabled: false,
            ..FlapConfig::default()
        };
        let mut f = Flap::default();
        for i in 0..40 {
            assert!(!f.record(&config, if i % 2 == 0 { C } else { O }));
        }
        assert!(f.percent > 90.0, "the percentage is still computed");
    }
}
