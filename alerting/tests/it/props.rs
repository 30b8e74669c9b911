//! Property tests of the invariants, over random sequences of presence
//! changes, results, update outcomes, silences and time:
//!
//! - a deregistered agent's problems are never notified;
//! - never a resolve (or flapping-stopped) without a prior notification;
//! - never two firing notifications for one incident without a resolve in
//!   between; a repeat only after `repeat_interval`;
//! - flapping is notified once on entering, then nothing until it stops;
//! - silences and inhibition never hide a resolve: once everything recovers
//!   under a silence matching everything, receivers have been told so;
//! - the same sequence always yields the same actions, and the state
//!   round-trips through JSON.

use std::collections::BTreeMap;

use proptest::prelude::*;

use outrider_alerting::model::UpdateOutcome;
use outrider_alerting::silence::{Field, Matcher, Op as MatchOp, Pattern, SilenceSpec};
use outrider_alerting::{
    Action, Config, Engine, Event, Notification, NotificationKind as K, State, Status, Subject,
};

use crate::{MIN, SEC, T0};

const AGENTS: u8 = 4;
const CHECKS: [&str; 2] = ["disk", "outrider.dns"];

#[derive(Clone, Debug)]
enum Op {
    Advance {
        secs: u64,
    },
    Results {
        agent: u8,
        check: usize,
        status: Status,
        count: u8,
    },
    Open {
        agent: u8,
    },
    Lose {
        agent: u8,
    },
    Goodbye {
        agent: u8,
    },
    Update {
        agent: u8,
        ok: bool,
    },
    Silence {
        agent: u8,
        mins: u64,
        expire_on_resolve: bool,
    },
    Expire {
        id: u64,
    },
    /// 3 failures, 3 OKs, 10 s apart, `cycles` times: trips the gate each
    /// time, so flap detection sees it.
    Flap {
        agent: u8,
        cycles: u8,
    },
    /// Every agent loses its session at once: a site outage.
    LoseAll,
    /// Hours pass (repeats), ticking every 10 s.
    LongWait {
        mins: u64,
    },
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        3 => Just(Status::Ok),
        1 => Just(Status::Warning),
        2 => Just(Status::Critical),
        1 => Just(Status::Unknown),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS;
    prop_oneof![
        6 => (1u64..400).prop_map(|secs| Op::Advance { secs }),
        8 => (agent.clone(), 0..CHECKS.len(), status(), 1u8..8)
            .prop_map(|(agent, check, status, count)| Op::Results { agent, check, status, count }),
        3 => agent.clone().prop_map(|agent| Op::Open { agent }),
        3 => agent.clone().prop_map(|agent| Op::Lose { agent }),
        1 => agent.clone().prop_map(|agent| Op::Goodbye { agent }),
        1 => (agent.clone(), any::<bool>()).prop_map(|(agent, ok)| Op::Update { agent, ok }),
        1 => (agent, 1u64..30, any::<bool>())
            .prop_map(|(agent, mins, expire_on_resolve)| Op::Silence { agent, mins, expire_on_resolve }),
        1 => (1u64..4).prop_map(|id| Op::Expire { id }),
        1 => (0..AGENTS, 1u8..12).prop_map(|(agent, cycles)| Op::Flap { agent, cycles }),
        1 => Just(Op::LoseAll),
        1 => (200u64..300).prop_map(|mins| Op::LongWait { mins }),
    ]
}

fn name(agent: u8) -> String {
    format!("a{agent}")
}

/// What receivers know, rebuilt from the notifications alone, checked
/// against the invariants as each one arrives.
#[derive(Default)]
struct Receiver {
    told: BTreeMap<Subject, (K, u64)>,
    deregistered: BTreeMap<String, bool>,
    repeat_interval: u64,
}

impl Receiver {
    fn event(&mut self, event: &Event) {
        match event {
            Event::Deregistered { agent } => {
                self.deregistered.insert(agent.clone(), true);
            }
            Event::SessionOpened { agent, .. } => {
                self.deregistered.insert(agent.clone(), false);
            }
            _ => {}
        }
    }

    fn notification(&mut self, n: &Notification, now: u64) -> Result<(), String> {
        let open = self.told.get(&n.subject).copied();
        let is_open = open.is_some();
        let flapping = matches!(open, Some((K::FlappingStarted, _)));
        let dereg = n
            .subject
            .agent()
            .is_some_and(|a| self.deregistered.get(a).copied().unwrap_or(false));
        if dereg && !n.is_resolve() {
            return Err(format!("notified a deregistered agent's problem: {n:?}"));
        }
        let ok = match n.kind {
            K::Firing => !is_open,
            K::Repeat => {
                matches!(open, Some((k, at)) if k != K::FlappingStarted && now >= at + self.repeat_interval)
            }
            K::Resolved => is_open,
            K::FlappingStarted => !flapping,
            K::FlappingStopped => flapping,
            _ => false,
        };
        if !ok {
            return Err(format!("{:?} while told {open:?}: {n:?}", n.kind));
        }
        if n.is_resolve() {
            self.told.remove(&n.subject);
        } else {
            self.told.insert(n.subject.clone(), (n.kind, now));
        }
        Ok(())
    }
}

/// The engine with a clock, a log and the receiver's view.
struct Runner {
    engine: Engine,
    now: u64,
    log: Vec<(u64, Action)>,
    receiver: Receiver,
}

impl Runner {
    fn take(&mut self, acts: Vec<Action>) -> Result<(), String> {
        for a in acts {
            if let Action::Notify { notifications, .. } = &a {
                for n in notifications {
                    self.receiver.notification(n, self.now)?;
                }
            }
            self.log.push((self.now, a));
        }
        Ok(())
    }

    fn send(&mut self, e: Event) -> Result<(), String> {
        self.receiver.event(&e);
        // Operator errors (expiring an unknown id) are fine here.
        let acts = self.engine.handle(e, self.now).unwrap_or_default();
        self.take(acts)
    }

    fn tick_for(&mut self, secs: u64) -> Result<(), String> {
        self.tick_every(secs, 1)
    }

    fn tick_every(&mut self, secs: u64, step: u64) -> Result<(), String> {
        for _ in 0..secs / step {
            self.now += step * SEC;
            let acts = self.engine.tick(self.now);
            self.take(acts)?;
        }
        Ok(())
    }

    fn op(&mut self, op: &Op) -> Result<(), String> {
        let now = self.now;
        let e = match op {
            Op::Advance { secs } => return self.tick_for(*secs),
            Op::LongWait { mins } => return self.tick_every(mins * 60, 10),
            Op::Flap { agent, cycles } => {
                for i in 0..u32::from(*cycles) * 6 {
                    let status = if i % 6 < 3 {
                        Status::Critical
                    } else {
                        Status::Ok
                    };
                    self.op(&Op::Results {
                        agent: *agent,
                        check: 0,
                        status,
                        count: 1,
                    })?;
                }
                return Ok(());
            }
            Op::LoseAll => {
                for agent in 0..AGENTS {
                    self.send(Event::SessionLost { agent: name(agent) })?;
                }
                return Ok(());
            }
            Op::Results {
                agent,
                check,
                status,
                count,
            } => {
                for _ in 0..*count {
                    self.send(Event::CheckResult {
                        agent: name(*agent),
                        check: CHECKS[*check].into(),
                        status: *status,
                        summary: String::new(),
                        at_ms: self.now,
                    })?;
                    self.tick_for(10)?;
                }
                return Ok(());
            }
            Op::Open { agent } => Event::SessionOpened {
                agent: name(*agent),
                tags: vec!["site".into()],
            },
            Op::Lose { agent } => Event::SessionLost {
                agent: name(*agent),
            },
            Op::Goodbye { agent } => Event::Deregistered {
                agent: name(*agent),
            },
            Op::Update { agent, ok } => Event::Update {
                agent: name(*agent),
                outcome: if *ok {
                    UpdateOutcome::Applied
                } else {
                    UpdateOutcome::RolledBack
                },
                detail: String::new(),
            },
            Op::Silence {
                agent,
                mins,
                expire_on_resolve,
            } => Event::AddSilence(SilenceSpec {
                matchers: vec![Matcher {
                    field: Field::Agent,
                    op: MatchOp::Equal(name(*agent)),
                }],
                starts_ms: now,
                ends_ms: now + mins * MIN,
                author: "prop".into(),
                comment: String::new(),
                expire_on_resolve: *expire_on_resolve,
            }),
            Op::Expire { id } => Event::ExpireSilence { id: *id },
        };
        self.send(e)
    }
}

/// Runs `ops`, then a recovery under silences matching everything, and
/// returns every action with its time, checking the invariants on the way.
fn run(ops: &[Op]) -> Result<(Vec<(u64, Action)>, State), String> {
    let config = Config::default();
    let mut r = Runner {
        receiver: Receiver {
            repeat_interval: config.group.repeat_interval_ms,
            ..Receiver::default()
        },
        engine: Engine::new(config, T0 - 10 * MIN).unwrap(),
        now: T0,
        log: Vec::new(),
    };
    for agent in 0..AGENTS {
        r.op(&Op::Open { agent })?;
    }
    for op in ops {
        r.op(op)?;
    }
    for field in [Field::Agent, Field::Tag] {
        r.send(Event::AddSilence(SilenceSpec {
            matchers: vec![Matcher {
                field,
                op: MatchOp::Regex(Pattern::new(".*").unwrap()),
            }],
            starts_ms: r.now,
            ends_ms: r.now + 24 * 60 * MIN,
            author: "prop".into(),
            comment: "everything".into(),
            expire_on_resolve: false,
        }))?;
    }
    // Everything comes back and stays OK long enough to stop any flapping
    // (21 OK records empty the history).
    for agent in 0..AGENTS {
        r.op(&Op::Open { agent })?;
        r.op(&Op::Update { agent, ok: true })?;
        for check in 0..CHECKS.len() {
            r.op(&Op::Results {
                agent,
                check,
                status: Status::Ok,
                count: 25,
            })?;
        }
    }
    r.tick_for(30 * 60)?;
    if !r.receiver.told.is_empty() {
        return Err(format!(
            "still open after recovery, resolve suppressed: {:?}",
            r.receiver.told
        ));
    }
    Ok((r.log, r.engine.state().clone()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_runs_are_deterministic(ops in proptest::collection::vec(op(), 1..40)) {
        let (first, state) = match run(&ops) {
            Ok(r) => r,
            Err(e) => return Err(TestCaseError::fail(e)),
        };
        let (second, _) = run(&ops).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&first, &second, "same events, same actions");
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, state);
    }
}
