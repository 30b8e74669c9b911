//! The plain data that goes in and out of the engine: events and actions.
//! It depends only on the leaves `subject` and `silence` (whose
//! specification an event carries).
//!
//! Every type here is serde so the server can store it and log it as is.
//! Enums that will grow are `#[non_exhaustive]`.

use serde::{Deserialize, Serialize};

use crate::silence::SilenceSpec;
pub use crate::subject::{Status, Subject};

/// Longest summary kept per subject; longer plugin output is cut (at a
/// character boundary) so state and notifications stay bounded.
pub const MAX_SUMMARY_BYTES: usize = 1024;

/// How an agent's update went (from the fleet-update events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UpdateOutcome {
    /// A build was applied and is healthy: clears an update problem.
    Applied,
    /// The stub refused a build (bad signature, hash, too large…).
    Refused,
    /// A new build was unhealthy and the stub went back to the previous one.
    RolledBack,
}

/// Something that happened. Times are Unix milliseconds passed in by the
/// caller; the engine has no clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// An agent established a session (also: came back after a Goodbye).
    SessionOpened {
        /// Agent fingerprint.
        agent: String,
        /// Its tags as announced in its hello (site detection, silences).
        tags: Vec<String>,
    },
    /// An agent's session ended without a Goodbye (keepalives missed,
    /// connection reset). Down follows after `down_for` unless it reconnects.
    SessionLost {
        /// Agent fingerprint.
        agent: String,
    },
    /// The agent said Goodbye on a clean shutdown: never an outage.
    Deregistered {
        /// Agent fingerprint.
        agent: String,
    },
    /// A committed check result.
    CheckResult {
        /// Agent fingerprint.
        agent: String,
        /// Check name.
        check: String,
        /// The result's state.
        status: Status,
        /// First line of the output.
        summary: String,
        /// When the check ran (spooled results arrive late and back-dated).
        at_ms: u64,
    },
    /// An update-health event.
    Update {
        /// Agent fingerprint.
        agent: String,
        /// What happened.
        outcome: UpdateOutcome,
        /// Human-readable detail (version, reason).
        detail: String,
    },
    /// A collector's health (running, or failing to stay up). Gated and
    /// flap-detected like a check, with `Config::check_defaults`.
    CollectorStatus {
        /// Agent fingerprint.
        agent: String,
        /// Collector name.
        name: String,
        /// `Ok` while it runs, non-OK while it is failing.
        status: Status,
        /// Human-readable detail.
        detail: String,
    },
    /// An operator adds a silence.
    AddSilence(SilenceSpec),
    /// An operator ends a silence now.
    ExpireSilence {
        /// The silence's id.
        id: u64,
    },
}

/// What a notification says about its subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NotificationKind {
    /// A problem started.
    Firing,
    /// A problem still firing, re-sent after `repeat_interval`.
    Repeat,
    /// A notified problem is over.
    Resolved,
    /// The subject started flapping; further changes are muted.
    FlappingStarted,
    /// Flapping stopped; `status` says where it settled.
    FlappingStopped,
}

/// Why a notified problem's resolve was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResolveCause {
    /// The subject recovered.
    Recovered,
    /// The agent deregistered (clean shutdown): not an outage any more.
    Deregistered,
}

/// One message for receivers about one subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// What it is about.
    pub subject: Subject,
    /// What changed.
    pub kind: NotificationKind,
    /// The subject's state now (`Ok` on a resolve).
    pub status: Status,
    /// One line for a person: "DNS broken on web-1", "agent db-2 down".
    pub title: String,
    /// The latest output or detail.
    pub summary: String,
    /// Set on resolves.
    pub resolve_cause: Option<ResolveCause>,
    /// When the incident's first notification was sent: with the subject it
    /// names the incident (`incident_key`).
    pub incident_started_ms: u64,
    /// 1 for the first notification of the incident, then +1 each: with the
    /// incident and a receiver it is the delivery's unique key.
    pub seq: u32,
}

impl Notification {
    /// Stable incident identity: subject plus when it was first notified.
    pub fn incident_key(&self) -> String {
        format!("{}@{}", self.subject, self.incident_started_ms)
    }

    /// Whether receivers are told a problem is over (resolve or settled OK).
    pub fn is_resolve(&self) -> bool {
        self.kind == NotificationKind::Resolved
            || (self.kind == NotificationKind::FlappingStopped && self.status.is_ok())
    }
}

/// Why a problem is not notified right now (shown to operators).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MuteReason {
    /// Its agent has no session: its checks cannot be judged.
    AgentDown {
        /// Agent fingerprint.
        agent: String,
    },
    /// Its agent is part of a site outage, notified as one incident.
    SiteOutage {
        /// The shared tag.
        tag: String,
    },
    /// An operator's silence matches it.
    Silenced {
        /// The silence's id.
        id: u64,
    },
    /// It is flapping; one notification was (or will be) sent for that.
    Flapping,
}

/// What the server should do. The engine never performs anything itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// Send these notifications as one message per receiver (one group).
    Notify {
        /// The group: `agent/<fingerprint>` or `site/<tag>`.
        group: String,
        /// At least one notification, in subject order.
        notifications: Vec<Notification>,
    },
    /// A problem became muted (or its reason changed).
    Muted {
        /// The problem.
        subject: Subject,
        /// Why.
        reason: MuteReason,
    },
    /// A muted problem is no longer muted (or no longer a problem).
    Unmuted {
        /// The subject.
        subject: Subject,
    },
    /// A silence with expire-on-resolve ended because what it matched recovered.
    SilenceExpired {
        /// The silence's id.
        id: u64,
    },
    /// A silence was stored; the id is how operators refer to it.
    SilenceAdded {
        /// The new id.
        id: u64,
    },
}

/// Cuts `s` to at most [`MAX_SUMMARY_BYTES`] at a character boundary.
pub(crate) fn bounded(mut s: String) -> String {
    if s.len() > MAX_SUMMARY_BYTES {
        let mut end = MAX_SUMMARY_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
