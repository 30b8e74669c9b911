//! Integration tests of the alerting engine through its public API:
//! scenarios (one per rule) and property tests of the invariants.

mod props;
mod scenarios;

use outrider_alerting::model::UpdateOutcome;
use outrider_alerting::{Action, Config, Engine, Event, Notification, NotificationKind, Status};

/// A server start far from zero so back-dated times stay positive.
pub const T0: u64 = 1_700_000_000_000;
pub const SEC: u64 = 1000;
pub const MIN: u64 = 60 * SEC;

/// Drives an engine the way the server will: events as they come, a tick
/// every second, every action kept with its time.
#[derive(Debug)]
pub struct Sim {
    pub engine: Engine,
    pub now: u64,
    pub actions: Vec<(u64, Action)>,
    /// Tick only at `Engine::next_wake_ms` instead of every second.
    pub lazy: bool,
}

impl Sim {
    /// A server that started at [`T0`] with `config`, and has been up long
    /// enough that the restart grace is over.
    pub fn new(config: Config) -> Sim {
        let started = T0 - 10 * MIN;
        Sim {
            engine: Engine::new(config, started).unwrap(),
            now: T0,
            actions: Vec::new(),
            lazy: false,
        }
    }

    /// A server that has just started at [`T0`].
    pub fn fresh(config: Config) -> Sim {
        Sim {
            engine: Engine::new(config, T0).unwrap(),
            now: T0,
            actions: Vec::new(),
            lazy: false,
        }
    }

    pub fn event(&mut self, event: Event) {
        let acts = self.engine.handle(event, self.now).unwrap();
        self.actions.extend(acts.into_iter().map(|a| (self.now, a)));
    }

    /// Lets `ms` pass, ticking every second.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            let next = if self.lazy {
                self.engine.next_wake_ms().unwrap_or(end).max(self.now)
            } else {
                self.now + SEC
            };
            if self.lazy && next > end {
                self.now = end;
                break;
            }
            self.now = next.min(end);
            let acts = self.engine.tick(self.now);
            self.actions.extend(acts.into_iter().map(|a| (self.now, a)));
        }
    }

    pub fn connect(&mut self, agent: &str, tags: &[&str]) {
        self.event(Event::SessionOpened {
            agent: agent.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        });
    }

    pub fn lose(&mut self, agent: &str) {
        self.event(Event::SessionLost {
            agent: agent.into(),
        });
    }

    pub fn goodbye(&mut self, agent: &str) {
        self.event(Event::Deregistered {
            agent: agent.into(),
        });
    }

    pub fn result(&mut self, agent: &str, check: &str, status: Status) {
        self.event(Event::CheckResult {
            agent: agent.into(),
            check: check.into(),
            status,
            summary: format!("{check} is {status}"),
            at_ms: self.now,
        });
    }

    pub fn update(&mut self, agent: &str, outcome: UpdateOutcome) {
        self.event(Event::Update {
            agent: agent.into(),
            outcome,
            detail: format!("{outcome:?}"),
        });
    }

    /// Results of one check every `every` ms: `pattern` in turn, `count` times.
    pub fn results(
        &mut self,
        agent: &str,
        check: &str,
        pattern: &[Status],
        count: usize,
        every: u64,
    ) {
        for i in 0..count {
            self.result(agent, check, pattern[i % pattern.len()]);
            self.advance(every);
        }
    }

    /// Every notification sent so far, with its time.
    pub fn notifications(&self) -> Vec<(u64, Notification)> {
        self.actions
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Notify { notifications, .. } => {
                    Some(notifications.iter().map(|n| (*t, n.clone())))
                }
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The kinds of every notification, in order.
    pub fn kinds(&self) -> Vec<NotificationKind> {
        self.notifications()
            .into_iter()
            .map(|(_, n)| n.kind)
            .collect()
    }
}
