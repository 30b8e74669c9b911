//! What an alert is about ([`Subject`]) and a result's state ([`Status`]).
//! A leaf module: the silence matchers and the engine both look at these.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A check result's state, as in the Nagios plugin contract (exit 0..=3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Exit 0.
    Ok,
    /// Exit 1.
    Warning,
    /// Exit 2.
    Critical,
    /// Exit 3, or anything else a plugin did.
    Unknown,
}

impl Status {
    /// Whether this result counts toward a problem.
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        })
    }
}

/// What an alert is about. Also the PagerDuty `dedup_key` (via `Display`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Subject {
    /// An agent's presence (down: no session for `down_for`).
    Agent {
        /// Agent fingerprint.
        agent: String,
    },
    /// A check on an agent.
    Check {
        /// Agent fingerprint.
        agent: String,
        /// Check name.
        name: String,
    },
    /// The agent's update health (a build refused or rolled back).
    Update {
        /// Agent fingerprint.
        agent: String,
    },
    /// A collector child process the agent supervises.
    Collector {
        /// Agent fingerprint.
        agent: String,
        /// Collector name.
        name: String,
    },
    /// Synthetic: many agents sharing a tag lost together.
    Site {
        /// The shared tag.
        tag: String,
    },
}

impl Subject {
    /// The agent this subject belongs to, if any (a site belongs to none).
    pub fn agent(&self) -> Option<&str> {
        match self {
            Subject::Agent { agent }
            | Subject::Check { agent, .. }
            | Subject::Update { agent }
            | Subject::Collector { agent, .. } => Some(agent),
            Subject::Site { .. } => None,
        }
    }

    /// The check name, for silence matchers.
    pub fn check(&self) -> Option<&str> {
        match self {
            Subject::Check { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Agent { agent } => write!(f, "agent/{agent}"),
            Subject::Check { agent, name } => write!(f, "check/{agent}/{name}"),
            Subject::Update { agent } => write!(f, "update/{agent}"),
            Subject::Collector { agent, name } => write!(f, "collector/{agent}/{name}"),
            Subject::Site { tag } => write!(f, "site/{tag}"),
        }
    }
}
