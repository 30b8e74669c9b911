//! The engine: the state of every subject, fed events and time, returning
//! actions. It assembles the leaf modules (gate, flap, inhibit, silence,
//! group) and owns the persisted [`State`].
//!
//! Work per call is bounded by what the call touches: an event about an
//! agent re-evaluates that agent's group (and the sites when presence
//! changes); a [`Engine::tick`] re-evaluates everything, so it should run
//! about once a second, not per event.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::{Config, DNS_CHECK};
use crate::error::Error;
use crate::flap::Flap;
use crate::gate::Gate;
use crate::group::{self, GroupTimer, Level, Told};
use crate::inhibit::{self, Presence, SiteOutage};
use crate::model::{
    Action, Event, MuteReason, Notification, NotificationKind, Status, Subject, UpdateOutcome,
    bounded,
};
use crate::silence::{MAX_SILENCES, Silence, SilenceSpec};

/// Version of [`State`] this build writes and reads.
pub const STATE_VERSION: u32 = 1;
/// Most subjects (checks, collectors, …) tracked per agent.
pub const MAX_SUBJECTS_PER_AGENT: usize = 1024;
/// Most tags kept per agent.
pub const MAX_TAGS: usize = 64;

/// Everything the engine knows, for the server to store (as JSON, say) and
/// hand back to [`Engine::restore`] after a restart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// [`STATE_VERSION`] when written.
    pub version: u32,
    /// Latest time seen: time never runs backwards inside the engine.
    pub now_ms: u64,
    agents: BTreeMap<String, AgentEntry>,
    sites: BTreeMap<String, SiteEntry>,
    silences: BTreeMap<u64, Silence>,
    next_silence_id: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AgentEntry {
    tags: Vec<String>,
    presence: Presence,
    /// Latest `outrider.dns` result: names an agent-down "DNS broken".
    dns: Option<(Status, String)>,
    #[serde(with = "as_pairs")]
    subjects: BTreeMap<Subject, Tracker>,
    group: GroupTimer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SiteEntry {
    tracker: Tracker,
    group: GroupTimer,
}

/// One subject's state. Defaults are not written: most subjects are
/// healthy and never notified, and the state is stored often.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Tracker {
    gate: Gate,
    flap: Flap,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    problem: bool,
    /// `problem` at the previous evaluation: a fall is a recovery
    /// (expire-on-resolve silences).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    was_problem: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "String::is_empty")]
    summary: String,
    #[serde(skip_serializing_if = "is_nothing")]
    told: Told,
    #[serde(skip_serializing_if = "is_zero")]
    incident_started_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    seq: u32,
    #[serde(skip_serializing_if = "is_zero")]
    last_sent_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    muted: Option<MuteReason>,
}

fn is_nothing(told: &Told) -> bool {
    *told == Told::Nothing
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// The alerting engine. See the crate docs for how the server drives it.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    started_ms: u64,
    state: State,
    /// Derived from presence; recomputed, never stored.
    outages: BTreeMap<String, SiteOutage>,
    /// The latest [`Engine::tick`]: deadlines after it are still due.
    last_tick_ms: u64,
}

impl Engine {
    /// A fresh engine for a server that started at `started_ms`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `config` does not validate.
    pub fn new(config: Config, started_ms: u64) -> Result<Engine, Error> {
        Engine::restore(
            config,
            State {
                version: STATE_VERSION,
                now_ms: started_ms,
                ..State::default()
            },
            started_ms,
        )
    }

    /// Resumes from stored state after a server start at `started_ms`.
    /// Every session died with the previous process, so agents that were
    /// connected count as lost since `started_ms`; the restart grace keeps
    /// them from being called down while they reconnect.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], or [`Error::StateVersion`] when the state
    /// was written by a newer engine.
    pub fn restore(config: Config, mut state: State, started_ms: u64) -> Result<Engine, Error> {
        config.validate()?;
        if state.version > STATE_VERSION {
            return Err(Error::StateVersion {
                found: state.version,
                supported: STATE_VERSION,
            });
        }
        state.version = STATE_VERSION;
        state.now_ms = state.now_ms.max(started_ms);
        for entry in state.agents.values_mut() {
            if entry.presence == Presence::Connected {
                entry.presence = Presence::Lost {
                    since_ms: started_ms,
                };
            }
        }
        let mut engine = Engine {
            config,
            started_ms,
            state,
            outages: BTreeMap::new(),
            last_tick_ms: started_ms,
        };
        engine.recompute_outages();
        Ok(engine)
    }

    /// The state to persist (after every call that returned actions, at least).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the settings (an operator changed a check's rules). The
    /// state stays: each gate goes on from its current counts under the
    /// new rules, so a lowered count trips at the next result.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]; the settings in force stay then.
    pub fn reconfigure(&mut self, config: Config) -> Result<(), Error> {
        config.validate()?;
        self.config = config;
        self.recompute_outages();
        Ok(())
    }

    /// Applies one event at `now_ms` and returns what to do.
    ///
    /// # Errors
    /// Only operator input fails: [`Error::InvalidSilence`],
    /// [`Error::TooManySilences`], [`Error::UnknownSilence`]. An event about
    /// a subject beyond [`MAX_SUBJECTS_PER_AGENT`] is dropped, not an error:
    /// the caller cannot do anything better with it.
    pub fn handle(&mut self, event: Event, now_ms: u64) -> Result<Vec<Action>, Error> {
        let now = self.advance(now_ms);
        let mut out = Vec::new();
        match event {
            Event::SessionOpened { agent, mut tags } => {
                tags.sort();
                tags.dedup();
                tags.truncate(MAX_TAGS);
                let entry = self.entry(&agent);
                entry.presence = Presence::Connected;
                entry.tags = tags;
                self.presence_changed(&agent, now, &mut out);
            }
            Event::SessionLost { agent } => {
                let entry = self.entry(&agent);
                if entry.presence == Presence::Connected {
                    entry.presence = Presence::Lost { since_ms: now };
                }
                self.presence_changed(&agent, now, &mut out);
            }
            Event::Deregistered { agent } => {
                self.entry(&agent).presence = Presence::Deregistered;
                self.presence_changed(&agent, now, &mut out);
            }
            Event::CheckResult {
                agent,
                check,
                status,
                summary,
                at_ms,
            } => {
                let rules = self.config.rules_for(&check);
                let entry = self.entry(&agent);
                // A Goodbye ends the agent's alerting until it connects again;
                // a late result in flight must not open anything.
                if entry.presence == Presence::Deregistered {
                    return Ok(out);
                }
                if check == DNS_CHECK {
                    entry.dns = Some((status, bounded(summary.clone())));
                }
                let subject = Subject::Check {
                    agent: agent.clone(),
                    name: check,
                };
                if let Some(t) = tracker(entry, subject) {
                    t.observe(&rules, status, summary, at_ms);
                }
                self.evaluate_agent(&agent, now, &mut out);
            }
            Event::CollectorStatus {
                agent,
                name,
                status,
                detail,
            } => {
                let rules = self.config.check_defaults;
                let entry = self.entry(&agent);
                if entry.presence == Presence::Deregistered {
                    return Ok(out);
                }
                let subject = Subject::Collector {
                    agent: agent.clone(),
                    name,
                };
                if let Some(t) = tracker(entry, subject) {
                    t.observe(&rules, status, detail, now);
                }
                self.evaluate_agent(&agent, now, &mut out);
            }
            Event::Update {
                agent,
                outcome,
                detail,
            } => {
                let entry = self.entry(&agent);
                if entry.presence == Presence::Deregistered {
                    return Ok(out);
                }
                let subject = Subject::Update {
                    agent: agent.clone(),
                };
                if let Some(t) = tracker(entry, subject) {
                    // Each update event is a definitive outcome: no gate.
                    t.problem = outcome != UpdateOutcome::Applied;
                    t.status = Some(if t.problem {
                        Status::Critical
                    } else {
                        Status::Ok
                    });
                    t.summary = bounded(detail);
                }
                self.evaluate_agent(&agent, now, &mut out);
            }
            Event::AddSilence(spec) => {
                let id = self.add_silence(spec)?;
                out.push(Action::SilenceAdded { id });
                self.evaluate_all(now, &mut out);
            }
            Event::ExpireSilence { id } => {
                let silence = self
                    .state
                    .silences
                    .get_mut(&id)
                    .ok_or(Error::UnknownSilence { id })?;
                silence.spec.ends_ms = silence.spec.ends_ms.min(now);
                self.evaluate_all(now, &mut out);
            }
        }
        Ok(out)
    }

    /// Lets time pass: duration gates, agent-down, site outages, silence
    /// windows, group timers and repeats. Call about once a second.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let now = self.advance(now_ms);
        self.last_tick_ms = now;
        for entry in self.state.agents.values_mut() {
            for (subject, t) in entry.subjects.iter_mut() {
                if let Subject::Check { name, .. } = subject {
                    let rules = self.config.rules_for(name);
                    if let Some(record) = t.gate.poll(&rules, now) {
                        t.problem = true;
                        t.flap.record(&rules.flap, record);
                    }
                }
            }
        }
        // Drop silences over for a day: bounded state, and nothing refers
        // to them any more.
        self.state
            .silences
            .retain(|_, s| s.spec.ends_ms.saturating_add(DAY_MS) > now);
        self.recompute_outages();
        let mut out = Vec::new();
        self.evaluate_all(now, &mut out);
        out
    }

    /// The earliest time at which [`Engine::tick`] can have something to
    /// do without a new event: a group flush, a repeat, an agent becoming
    /// down, a duration gate, a silence starting or ending, the restart
    /// grace ending. The server may sleep until then (or an event) instead
    /// of ticking every second. `None`: nothing is waiting on time.
    ///
    /// It counts from the latest tick, not the latest event: a deadline
    /// that passed while only events came in is returned (in the past), so
    /// the caller ticks at once.
    pub fn next_wake_ms(&self) -> Option<u64> {
        let now = self.last_tick_ms;
        let repeat = self.config.group.repeat_interval_ms;
        let mut wake = BTreeSet::new();
        let grace = inhibit::grace_until(&self.config, self.started_ms);
        wake.insert(grace);
        for entry in self.state.agents.values() {
            wake.extend(entry.group.next_flush_ms);
            if let Some(since) = entry.presence.lost_since() {
                wake.insert(inhibit::down_at(&self.config, self.started_ms, since));
            }
            for (subject, t) in &entry.subjects {
                if let Subject::Check { name, .. } = subject {
                    wake.extend(t.gate.deadline_ms(&self.config.rules_for(name)));
                }
                if t.told == Told::Firing {
                    wake.insert(t.last_sent_ms.saturating_add(repeat));
                }
            }
        }
        for site in self.state.sites.values() {
            wake.extend(site.group.next_flush_ms);
            if site.tracker.told == Told::Firing {
                wake.insert(site.tracker.last_sent_ms.saturating_add(repeat));
            }
        }
        for s in self.state.silences.values() {
            wake.insert(s.spec.starts_ms);
            wake.insert(s.spec.ends_ms);
        }
        wake.range(now.saturating_add(1)..).next().copied()
    }

    /// The silences stored (active, future and recently ended).
    pub fn silences(&self) -> impl Iterator<Item = &Silence> {
        self.state.silences.values()
    }

    /// Open problems and flapping subjects with why each is muted, if it is:
    /// what `outrider alerts` shows.
    pub fn open(&self) -> Vec<(Subject, Option<MuteReason>)> {
        let agents = self.state.agents.values().flat_map(|e| e.subjects.iter());
        let sites = self
            .state
            .sites
            .iter()
            .map(|(tag, s)| (site_subject(tag), &s.tracker));
        let mut open: Vec<_> = agents
            .map(|(s, t)| (s.clone(), t))
            .chain(sites)
            .filter(|(_, t)| t.problem || t.flap.flapping)
            .map(|(s, t)| (s, t.muted.clone()))
            .collect();
        open.sort_by(|a, b| a.0.cmp(&b.0));
        open
    }

    fn advance(&mut self, now_ms: u64) -> u64 {
        // Clocks step backwards (NTP); the engine's time does not.
        self.state.now_ms = self.state.now_ms.max(now_ms);
        self.state.now_ms
    }

    fn entry(&mut self, agent: &str) -> &mut AgentEntry {
        self.state
            .agents
            .entry(agent.to_owned())
            .or_insert_with(|| {
                let mut subjects = BTreeMap::new();
                let subject = Subject::Agent {
                    agent: agent.to_owned(),
                };
                subjects.insert(subject, Tracker::default());
                AgentEntry {
                    tags: Vec::new(),
                    presence: Presence::Connected,
                    dns: None,
                    subjects,
                    group: GroupTimer::default(),
                }
            })
    }

    fn add_silence(&mut self, spec: SilenceSpec) -> Result<u64, Error> {
        spec.validate()?;
        if self.state.silences.len() >= MAX_SILENCES {
            return Err(Error::TooManySilences {
                limit: MAX_SILENCES,
            });
        }
        self.state.next_silence_id += 1;
        let id = self.state.next_silence_id;
        self.state.silences.insert(id, Silence { id, spec });
        Ok(id)
    }

    /// Re-decides the agent, and every agent whose site outage appeared,
    /// changed or ended with it (their mutes depend on it).
    fn presence_changed(&mut self, agent: &str, now: u64, out: &mut Vec<Action>) {
        let before = std::mem::take(&mut self.outages);
        self.recompute_outages();
        let mut affected = BTreeSet::from([agent.to_owned()]);
        for (tag, outage) in before.iter().chain(self.outages.iter()) {
            if before.get(tag) != self.outages.get(tag) {
                affected.extend(outage.members.iter().cloned());
            }
        }
        for agent in affected {
            self.evaluate_agent(&agent, now, out);
        }
        self.evaluate_sites(now, out);
    }

    fn recompute_outages(&mut self) {
        let agents = self
            .state
            .agents
            .iter()
            .map(|(a, e)| (a.as_str(), e.tags.as_slice(), e.presence));
        self.outages = inhibit::site_outages(&self.config.site, agents);
    }

    fn evaluate_all(&mut self, now: u64, out: &mut Vec<Action>) {
        let agents: Vec<String> = self.state.agents.keys().cloned().collect();
        for agent in agents {
            self.evaluate_agent(&agent, now, out);
        }
        self.evaluate_sites(now, out);
    }

    /// Re-decides one agent's group: presence, mutes, expiries, timers, flush.
    fn evaluate_agent(&mut self, agent: &str, now: u64, out: &mut Vec<Action>) {
        let Some(entry) = self.state.agents.get_mut(agent) else {
            return;
        };
        let down = inhibit::is_down(&self.config, self.started_ms, entry.presence, now);
        let site = self
            .outages
            .iter()
            .find(|(_, o)| o.members.contains(agent))
            .map(|(tag, _)| tag.clone());
        let connected = entry.presence == Presence::Connected;
        let dns_broken = entry.dns.as_ref().filter(|(s, _)| !s.is_ok());
        for (subject, t) in entry.subjects.iter_mut() {
            let inhibited = match subject {
                Subject::Agent { .. } => {
                    t.problem = down;
                    t.status = Some(Status::Critical);
                    t.summary = match (dns_broken, entry.presence.lost_since()) {
                        (Some((_, why)), _) => format!("DNS broken: {why}"),
                        (None, Some(since)) => format!("no session since {since} (Unix ms)"),
                        (None, None) => String::new(),
                    };
                    site.clone().map(|tag| MuteReason::SiteOutage { tag })
                }
                _ if !connected => Some(MuteReason::AgentDown {
                    agent: agent.to_owned(),
                }),
                _ => None,
            };
            let silenced = active_silence(&self.state.silences, subject, &entry.tags, now);
            let reason = inhibited.or(silenced.map(|id| MuteReason::Silenced { id }));
            expire_on_resolve(&mut self.state.silences, t, subject, &entry.tags, now, out);
            t.update_mute(subject, reason, out);
        }
        let members = entry.subjects.iter_mut().collect();
        let deregistered = entry.presence == Presence::Deregistered;
        flush_group(
            &self.config,
            &mut entry.group,
            members,
            deregistered,
            now,
            out,
        );
    }

    /// Re-decides every site: raised once its earliest member would be down.
    fn evaluate_sites(&mut self, now: u64, out: &mut Vec<Action>) {
        for (tag, outage) in &self.outages {
            let site = self
                .state
                .sites
                .entry(tag.clone())
                .or_insert_with(|| SiteEntry {
                    tracker: Tracker::default(),
                    group: GroupTimer::default(),
                });
            let down_at = inhibit::down_at(&self.config, self.started_ms, outage.first_lost_ms);
            site.tracker.problem = now >= down_at;
            site.tracker.status = Some(Status::Critical);
            site.tracker.summary = format!(
                "{} of {} agents tagged {tag} lost their sessions within {} s",
                outage.members.len(),
                outage.total,
                self.config.site.window_ms / 1000
            );
        }
        let mut forget = Vec::new();
        for (tag, site) in self.state.sites.iter_mut() {
            let subject = site_subject(tag);
            let t = &mut site.tracker;
            if !self.outages.contains_key(tag) {
                t.problem = false;
            }
            let silenced = active_silence(&self.state.silences, &subject, &[], now);
            expire_on_resolve(&mut self.state.silences, t, &subject, &[], now, out);
            t.update_mute(
                &subject,
                silenced.map(|id| MuteReason::Silenced { id }),
                out,
            );
            flush_group(
                &self.config,
                &mut site.group,
                vec![(&subject, &mut *t)],
                false,
                now,
                out,
            );
            if t.told == Told::Nothing && !t.problem && site.group.next_flush_ms.is_none() {
                forget.push(tag.clone());
            }
        }
        for tag in forget {
            self.state.sites.remove(&tag);
        }
    }
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// A map keyed by [`Subject`] stored as a list of pairs: JSON object keys
/// must be strings.
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

fn site_subject(tag: &str) -> Subject {
    Subject::Site {
        tag: tag.to_owned(),
    }
}

/// Schedules a group's next flush and, when it is due, sends each member's
/// decision (`group.rs`) as one [`Action::Notify`] named after the group.
fn flush_group(
    config: &Config,
    timer: &mut GroupTimer,
    mut members: Vec<(&Subject, &mut Tracker)>,
    deregistered: bool,
    now: u64,
    out: &mut Vec<Action>,
) {
    let level = |t: &Tracker| Level {
        problem: t.problem,
        flapping: t.flap.flapping,
        // Flapping is not a mute for the decision: it has its own rule.
        muted: t.muted.as_ref().is_some_and(|r| *r != MuteReason::Flapping),
        deregistered,
        repeat_due: now
            >= t.last_sent_ms
                .saturating_add(config.group.repeat_interval_ms),
    };
    let pending = members
        .iter()
        .any(|(_, t)| group::decide(t.told, level(t)).is_some());
    if !timer.schedule(&config.group, pending, now) {
        return;
    }
    let mut notifications = Vec::new();
    for (subject, t) in members.iter_mut() {
        if let Some(d) = group::decide(t.told, level(t)) {
            notifications.push(t.notify(subject, d, now));
        }
    }
    let idle = members
        .iter()
        .all(|(_, t)| t.told == Told::Nothing && !t.problem && !t.flap.flapping);
    timer.flushed(now, idle);
    if let Some(first) = notifications.first() {
        let group = match first.subject.agent() {
            Some(agent) => format!("agent/{agent}"),
            None => first.subject.to_string(),
        };
        out.push(Action::Notify {
            group,
            notifications,
        });
    }
}

/// The tracker of `subject`, created if there is room.
fn tracker(entry: &mut AgentEntry, subject: Subject) -> Option<&mut Tracker> {
    if !entry.subjects.contains_key(&subject) && entry.subjects.len() >= MAX_SUBJECTS_PER_AGENT {
        return None;
    }
    Some(entry.subjects.entry(subject).or_default())
}

/// The lowest-id active silence matching `subject`.
fn active_silence(
    silences: &BTreeMap<u64, Silence>,
    subject: &Subject,
    tags: &[String],
    now: u64,
) -> Option<u64> {
    silences
        .values()
        .find(|s| s.is_active(now) && s.matches(subject, tags))
        .map(|s| s.id)
}

/// Ends expire-on-resolve silences matching `subject` when it just recovered.
fn expire_on_resolve(
    silences: &mut BTreeMap<u64, Silence>,
    t: &mut Tracker,
    subject: &Subject,
    tags: &[String],
    now: u64,
    out: &mut Vec<Action>,
) {
    let recovered = t.was_problem && !t.problem;
    t.was_problem = t.problem;
    if !recovered {
        return;
    }
    let ids: BTreeSet<u64> = silences
        .values()
        .filter(|s| s.spec.expire_on_resolve && s.is_active(now) && s.matches(subject, tags))
        .map(|s| s.id)
        .collect();
    for id in ids {
        if let Some(s) = silences.get_mut(&id) {
            s.spec.ends_ms = now;
            out.push(Action::SilenceExpired { id });
        }
    }
}

impl Tracker {
    fn observe(
        &mut self,
        rules: &crate::config::CheckRules,
        status: Status,
        summary: String,
        at: u64,
    ) {
        if let Some(record) = self.gate.observe(rules, status, at) {
            self.flap.record(&rules.flap, record);
        }
        self.problem = self.gate.problem;
        self.status = Some(status);
        self.summary = bounded(summary);
    }

    /// Records the mute reason shown to operators (only while a problem or
    /// flapping) and reports changes.
    fn update_mute(
        &mut self,
        subject: &Subject,
        reason: Option<MuteReason>,
        out: &mut Vec<Action>,
    ) {
        let open = self.problem || self.flap.flapping;
        let reason = match reason {
            Some(r) if open => Some(r),
            None if self.flap.flapping => Some(MuteReason::Flapping),
            _ => None,
        };
        if reason == self.muted {
            return;
        }
        out.push(match &reason {
            Some(r) => Action::Muted {
                subject: subject.clone(),
                reason: r.clone(),
            },
            None => Action::Unmuted {
                subject: subject.clone(),
            },
        });
        self.muted = reason;
    }

    fn notify(&mut self, subject: &Subject, d: group::Decision, now: u64) -> Notification {
        if self.told == Told::Nothing {
            self.incident_started_ms = now;
            self.seq = 0;
        }
        self.seq += 1;
        self.told = d.told;
        self.last_sent_ms = now;
        let status = match d.kind {
            NotificationKind::Resolved => Status::Ok,
            NotificationKind::FlappingStopped if !self.problem => Status::Ok,
            _ => self.status.unwrap_or(Status::Unknown),
        };
        Notification {
            subject: subject.clone(),
            kind: d.kind,
            status,
            title: title(subject, d.kind, status, &self.summary),
            summary: self.summary.clone(),
            resolve_cause: d.cause,
            incident_started_ms: self.incident_started_ms,
            seq: self.seq,
        }
    }
}

/// One line for a person.
fn title(subject: &Subject, kind: NotificationKind, status: Status, summary: &str) -> String {
    let what = match subject {
        Subject::Agent { agent } if summary.starts_with("DNS broken") => {
            format!("DNS broken: agent {agent} cannot reach the server")
        }
        Subject::Agent { agent } => format!("agent {agent} down"),
        Subject::Check { agent, name } if name == DNS_CHECK => format!("DNS broken on {agent}"),
        Subject::Check { agent, name } => format!("{name} {status} on {agent}"),
        Subject::Update { agent } => format!("update failed on {agent}"),
        Subject::Collector { agent, name } => format!("collector {name} failing on {agent}"),
        Subject::Site { tag } => format!("site outage: {tag}"),
    };
    match kind {
        NotificationKind::Firing => what,
        NotificationKind::Repeat => format!("still: {what}"),
        NotificationKind::Resolved => format!("resolved: {what}"),
        NotificationKind::FlappingStarted => format!("flapping: {what}"),
        NotificationKind::FlappingStopped => format!("stopped flapping: {what}"),
    }
}
