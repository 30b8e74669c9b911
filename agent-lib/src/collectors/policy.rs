//! The supervisor's decisions, as a pure state machine over (event, now).
//!
//! [`CollectorHealth::step`] takes what happened to one collector (started,
//! exited, stopped on purpose, data seen, config accepted or rejected) at a
//! given instant and answers with what to do ([`Action`]); [`CollectorHealth::verdict`]
//! says how the collector is doing at an instant. No clock, no process, no
//! randomness inside: time and the jitter's random number come in as
//! arguments, so the rules below are tested by table.
//!
//! Rules (defaults in [`RestartPolicy::default`]):
//! - An unplanned exit restarts after a delay whose ceiling starts at
//!   `base` (1 s) and doubles per consecutive exit up to `cap` (5 min). The
//!   delay is drawn in `[ceiling/2, ceiling]` ("equal jitter"): spread
//!   across a fleet, yet never near zero, so a crashing collector cannot
//!   spin. A run that lasted `healthy_after` (60 s) before exiting starts
//!   the doubling over.
//! - Never give up; but `crash_loop_restarts` (5) unplanned exits within
//!   `crash_loop_window` (10 min) make the verdict CRITICAL "crash-looping",
//!   until the window no longer holds that many.
//! - A collector running with a known interval that sent no data for
//!   `silent_intervals` (3) intervals, counted from its start or its last
//!   data, whichever is later, is WARNING.
//! - A rejected config is CRITICAL until a later one is accepted; a planned
//!   stop (config change, removal) is not an exit and restarts at once.
//!
//! Verdict precedence: crash-looping, config rejected, down (exited, waiting
//! for its restart), silent, starting, running.

use std::collections::VecDeque;
use std::time::Duration;

use outrider_protocol::CheckState;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::runner::RunOutcome;

/// First restart delay ceiling.
pub const RESTART_BASE: Duration = Duration::from_secs(1);
/// Largest restart delay ceiling.
pub const RESTART_CAP: Duration = Duration::from_secs(5 * 60);
/// A run this long resets the backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Unplanned exits within [`CRASH_LOOP_WINDOW`] that mean crash-looping.
pub const CRASH_LOOP_RESTARTS: usize = 5;
/// The window [`CRASH_LOOP_RESTARTS`] are counted in.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Intervals without data after which a running collector is WARNING.
pub const SILENT_INTERVALS: u32 = 3;

/// The numbers behind the rules; tests shrink the time scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub healthy_after: Duration,
    pub crash_loop_restarts: usize,
    pub crash_loop_window: Duration,
    pub silent_intervals: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: RESTART_BASE,
            cap: RESTART_CAP,
            healthy_after: HEALTHY_AFTER,
            crash_loop_restarts: CRASH_LOOP_RESTARTS,
            crash_loop_window: CRASH_LOOP_WINDOW,
            silent_intervals: SILENT_INTERVALS,
        }
    }
}

/// Something that happened to a collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Its process started.
    Started,
    /// Its process exited (or could not be started) without being asked;
    /// `how` says how ("exited with code 1"), `random` feeds the jitter.
    Exited { how: String, random: u64 },
    /// Its process was stopped on purpose (new config, removal).
    Stopped,
    /// A data point from it reached the agent's listener.
    DataSeen,
    /// A new config passed validation and is in place.
    ConfigAccepted,
    /// A new config failed validation or the host's policy; `output` says
    /// why (the validator's output);
    /// `kept_previous` says whether an earlier config stays in use.
    ConfigRejected { output: String, kept_previous: bool },
}

/// What the process side has to do after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Start the process again after this delay.
    RestartAfter(Duration),
}

/// How a collector is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not started yet.
    Starting,
    Running,
    /// Running, but no data for `limit` (a number of intervals).
    Silent {
        limit: Duration,
        interval: Duration,
    },
    /// Exited; waiting for its restart.
    Down {
        last_exit: String,
    },
    /// At least `restarts` unplanned exits within `window`.
    CrashLooping {
        restarts: usize,
        window: Duration,
        last_exit: String,
    },
    /// The newest config was refused (validation or local policy).
    ConfigRejected {
        output: String,
        kept_previous: bool,
    },
}

impl Verdict {
    pub fn state(&self) -> CheckState {
        match self {
            Verdict::Starting | Verdict::Running => CheckState::Ok,
            Verdict::Silent { .. } | Verdict::Down { .. } => CheckState::Warning,
            Verdict::CrashLooping { .. } | Verdict::ConfigRejected { .. } => CheckState::Critical,
        }
    }

    /// The result reporting this verdict for collector `name`.
    pub fn outcome(&self, name: &str) -> RunOutcome {
        let summary = match self {
            Verdict::Starting => format!("COLLECTOR OK - {name} is starting"),
            Verdict::Running => format!("COLLECTOR OK - {name} is running"),
            Verdict::Silent { limit, interval } => format!(
                "COLLECTOR WARNING - {name} is running but sent no data for {} ({} x its {} \
                 interval)",
                human(*limit),
                limit.as_millis() / interval.as_millis().max(1),
                human(*interval)
            ),
            Verdict::Down { last_exit } => {
                format!("COLLECTOR WARNING - {name} {last_exit}; restarting with backoff")
            }
            Verdict::CrashLooping {
                restarts,
                window,
                last_exit,
            } => format!(
                "COLLECTOR CRITICAL - {name} is crash-looping: {restarts} restarts within {}; \
                 last: {last_exit}; still restarting with backoff",
                human(*window)
            ),
            Verdict::ConfigRejected { kept_previous, .. } => format!(
                "COLLECTOR CRITICAL - {name}: its new configuration was refused; {}",
                if *kept_previous {
                    "the previous configuration stays in use"
                } else {
                    "the collector is not running"
                }
            ),
        };
        let mut outcome = RunOutcome::note(self.state(), summary);
        if let Verdict::ConfigRejected { output, .. } = self {
            outcome.long_output = output.clone();
        }
        outcome
    }
}

/// `90s` → "1m30s"-style text for summaries.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// The policy's memory of one collector.
#[derive(Clone, Debug)]
pub struct CollectorHealth {
    policy: RestartPolicy,
    interval: Option<Duration>,
    backoff: Backoff,
    /// Times of the newest unplanned exits, at most `crash_loop_restarts`.
    exits: VecDeque<Instant>,
    running_since: Option<Instant>,
    last_exit: Option<String>,
    last_data: Option<Instant>,
    rejected: Option<(String, bool)>,
}

impl CollectorHealth {
    /// A collector not started yet, expected to send data every `interval`.
    pub fn new(policy: RestartPolicy, interval: Option<Duration>) -> CollectorHealth {
        CollectorHealth {
            policy,
            interval,
            backoff: Backoff::new(policy.base, policy.cap),
            exits: VecDeque::with_capacity(policy.crash_loop_restarts),
            running_since: None,
            last_exit: None,
            last_data: None,
            rejected: None,
        }
    }

    /// Changes the expected data interval (a new definition).
    pub fn set_interval(&mut self, interval: Option<Duration>) {
        self.interval = interval;
    }

    /// Applies `event`, which happened at `now`.
    pub fn step(&mut self, now: Instant, event: Event) -> Action {
        match event {
            Event::Started => {
                self.running_since = Some(now);
                self.last_exit = None;
                Action::Nothing
            }
            Event::Exited { how, random } => {
                let ran = self.running_since.take().map(|since| now - since);
                if ran.is_some_and(|ran| ran >= self.policy.healthy_after) {
                    self.backoff.reset();
                }
                if self.exits.len() >= self.policy.crash_loop_restarts {
                    self.exits.pop_front();
                }
                if self.policy.crash_loop_restarts > 0 {
                    self.exits.push_back(now);
                }
                self.last_exit = Some(how);
                Action::RestartAfter(equal_jitter(self.backoff.next_ceiling(), random))
            }
            Event::Stopped => {
                self.running_since = None;
                Action::Nothing
            }
            Event::DataSeen => {
                self.last_data = Some(now);
                Action::Nothing
            }
            Event::ConfigAccepted => {
                self.rejected = None;
                Action::Nothing
            }
            Event::ConfigRejected {
                output,
                kept_previous,
            } => {
                self.rejected = Some((output, kept_previous));
                Action::Nothing
            }
        }
    }

    /// How the collector is doing at `now` (precedence in the module docs).
    pub fn verdict(&self, now: Instant) -> Verdict {
        let last_exit = || self.last_exit.clone().unwrap_or_default();
        let crash_looping = self.policy.crash_loop_restarts > 0
            && self.exits.len() >= self.policy.crash_loop_restarts
            && self.exits.front().is_some_and(|first| {
                now.saturating_duration_since(*first) <= self.policy.crash_loop_window
            });
        if crash_looping {
            return Verdict::CrashLooping {
                restarts: self.exits.len(),
                window: self.policy.crash_loop_window,
                last_exit: last_exit(),
            };
        }
        if let Some((output, kept_previous)) = &self.rejected {
            return Verdict::ConfigRejected {
                output: output.clone(),
                kept_previous: *kept_previous,
            };
        }
        let Some(since) = self.running_since else {
            return match &self.last_exit {
                Some(how) => Verdict::Down {
                    last_exit: how.clone(),
                },
                None => Verdict::Starting,
            };
        };
        if let Some(interval) = self.interval {
            let limit = interval.saturating_mul(self.policy.silent_intervals);
            let reference = self.last_data.map_or(since, |seen| seen.max(since));
            if now.saturating_duration_since(reference) >= limit {
                return Verdict::Silent { limit, interval };
            }
        }
        Verdict::Running
    }
}

/// A delay in `[ceiling/2, ceiling]` picked by `random`.
fn equal_jitter(ceiling: Duration, random: u64) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    let half = ms / 2;
    let spread = ms - half;
    Duration::from_millis(half + random % spread.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn exit(random: u64) -> Event {
        Event::Exited {
            how: "exited with code 1".into(),
            random,
        }
    }

    #[test]
    fn restart_delays_double_to_the_cap_with_bounded_jitter_and_reset_after_healthy_runs() {
        let t0 = Instant::now();
        let mut h = CollectorHealth::new(RestartPolicy::default(), None);
        // (seconds the run lasted, random, expected delay in ms)
        let table: &[(u64, u64, u64)] = &[
            (0, 0, 500),           // ceiling 1 s: lowest jitter is half
            (0, 1000, 2000),       // 2 s: highest
            (5, 0, 2000),          // 4 s
            (1, 4000, 8000),       // 8 s: highest
            (0, 0, 8000),          // 16 s
            (0, 0, 16_000),        // 32 s
            (0, 0, 32_000),        // 64 s
            (0, 0, 64_000),        // 128 s
            (0, 0, 128_000),       // 256 s
            (0, 0, 150_000),       // capped at 300 s
            (0, 150_000, 300_000), // capped, highest
            (60, 0, 500),          // a healthy minute: back to 1 s
            (59, 0, 1000),         // 59 s is not healthy: doubling goes on
        ];
        let mut now = t0;
        for (i, &(ran, random, want)) in table.iter().enumerate() {
            h.step(now, Event::Started);
            now += Duration::from_secs(ran);
            let action = h.step(now, exit(random));
            assert_eq!(
                action,
                Action::RestartAfter(Duration::from_millis(want)),
                "row {i}"
            );
        }
    }

    #[test]
    fn five_exits_within_ten_minutes_are_crash_looping_until_the_window_passes() {
        let t0 = Instant::now();
        let mut h = CollectorHealth::new(RestartPolicy::default(), None);
        // (seconds since t0 of an exit, verdict right after it is crash-looping)
        let table: &[(u64, bool)] = &[
            (0, false),
            (100, false),
            (200, false),
            (300, false),
            (599, true),   // five within 599 s
            (700, true),   // the newest five: 100..=700
            (1400, false), // 200..=1400: spans more than 10 min
        ];
        for &(at, looping) in table {
            let now = t0 + Duration::from_secs(at);
            h.step(now, Event::Started);
            h.step(now, exit(0));
            let v = h.verdict(now);
            assert_eq!(
                matches!(v, Verdict::CrashLooping { restarts: 5, .. }),
                looping,
                "at {at}s: {v:?}"
            );
        }
        // Running again, the verdict stays CRITICAL while the window holds five…
        let now = t0 + Duration::from_secs(1400);
        let mut h2 = CollectorHealth::new(RestartPolicy::default(), None);
        for i in 0..5 {
            h2.step(now + S * i, exit(0));
        }
        h2.step(now + S * 5, Event::Started);
        let v = h2.verdict(now + S * 6);
        assert_eq!(v.state(), CheckState::Critical);
        assert!(v.outcome("c").summary.contains("crash-looping"), "{v:?}");
        // …and clears once it does not.
        assert_eq!(h2.verdict(now + S * 601), Verdict::Running);
    }

    #[test]
    fn verdicts_by_table() {
        let t0 = Instant::now();
        let iv = Some(Duration::from_secs(10));
        let rejected = Event::ConfigRejected {
            output: "bad".into(),
            kept_previous: true,
        };
        // (events as (seconds, event), verdict asked at seconds, expected)
        type Row = (Vec<(u64, Event)>, u64, Verdict);
        let table: Vec<Row> = vec![
            (vec![], 0, Verdict::Starting),
            (vec![(0, Event::Started)], 29, Verdict::Running),
            (
                vec![(0, Event::Started)],
                30,
                Verdict::Silent {
                    limit: S * 30,
                    interval: S * 10,
                },
            ),
            (
                vec![(0, Event::Started), (25, Event::DataSeen)],
                54,
                Verdict::Running,
            ),
            (
                vec![(0, Event::Started), (25, Event::DataSeen)],
                55,
                Verdict::Silent {
                    limit: S * 30,
                    interval: S * 10,
                },
            ),
            // Data from before a restart does not count against the new run.
            (
                vec![(0, Event::DataSeen), (100, Event::Started)],
                120,
                Verdict::Running,
            ),
            (
                vec![(0, Event::Started), (5, exit(0))],
                6,
                Verdict::Down {
                    last_exit: "exited with code 1".into(),
                },
            ),
            (
                vec![(0, Event::Started), (1, rejected.clone())],
                2,
                Verdict::ConfigRejected {
                    output: "bad".into(),
                    kept_previous: true,
                },
            ),
            // A rejection outranks silence; acceptance clears it.
            (
                vec![(0, Event::Started), (1, rejected.clone())],
                100,
                Verdict::ConfigRejected {
                    output: "bad".into(),
                    kept_previous: true,
                },
            ),
            (
                vec![
                    (0, rejected),
                    (1, Event::ConfigAccepted),
                    (2, Event::Started),
                ],
                3,
                Verdict::Running,
            ),
            // A planned stop is not an exit.
            (
                vec![(0, Event::Started), (1, Event::Stopped)],
                2,
                Verdict::Starting,
            ),
        ];
        for (i, (events, at, want)) in table.into_iter().enumerate() {
            let mut h = CollectorHealth::new(RestartPolicy::default(), iv);
            for (s, e) in events {
                h.step(t0 + S * u32::try_from(s).unwrap(), e);
            }
            assert_eq!(h.verdict(t0 + Duration::from_secs(at)), want, "row {i}");
        }
        // Without an interval silence is never judged.
        let mut h = CollectorHealth::new(RestartPolicy::default(), None);
        h.step(t0, Event::Started);
        assert_eq!(h.verdict(t0 + S * 100_000), Verdict::Running);
    }

    #[test]
    fn outcomes_carry_state_summary_and_validator_output() {
        let v = Verdict::ConfigRejected {
            output: "Could not find plugin \"x\"".into(),
            kept_previous: true,
        };
        let o = v.outcome("system");
        assert_eq!(o.state, CheckState::Critical);
        assert!(
            o.summary.contains("previous configuration stays in use"),
            "{}",
            o.summary
        );
        assert_eq!(o.long_output, "Could not find plugin \"x\"");
        let o = Verdict::Silent {
            limit: S * 30,
            interval: S * 10,
        }
        .outcome("system");
        assert_eq!(
            o.summary,
            "COLLECTOR WARNING - system is running but sent no data for 30s (3 x its 10s interval)"
        );
        assert_eq!(human(S * 90), "1m30s");
        assert_eq!(human(S * 600), "10m");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
