//! Types of the server's admin REST API (`/api/v1/...`), shared by the
//! server and the `outrider` CLI so both sides agree on every field.

use serde::{Deserialize, Serialize};

use crate::{CheckState, Fingerprint, PerfData};

/// Presence of an agent as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// A session is open and keepalives arrive.
    Connected,
    /// The connection was lost or keepalives stopped: something is wrong.
    Down,
    /// The agent said goodbye on a clean shutdown: nothing is wrong.
    Deregistered,
}

impl Presence {
    /// The lowercase name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Connected => "connected",
            Presence::Down => "down",
            Presence::Deregistered => "deregistered",
        }
    }
}

impl std::str::FromStr for Presence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connected" => Ok(Presence::Connected),
            "down" => Ok(Presence::Down),
            "deregistered" => Ok(Presence::Deregistered),
            other => Err(format!("unknown presence {other:?}")),
        }
    }
}

/// `GET /api/v1/agents`: one row per agent ever registered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub fingerprint: Fingerprint,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    /// SHA-256 of the build the agent runs, as its stub reported it.
    #[serde(default)]
    pub build_sha256: Option<String>,
    /// Release version of that build.
    #[serde(default)]
    pub build_version: Option<String>,
    pub presence: Presence,
    /// When `presence` last changed, Unix ms.
    pub presence_since_ms: i64,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
}

/// `PUT /api/v1/checks/{name}` body; `GET /api/v1/checks` returns
/// [`crate::CheckSpec`] rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDefinition {
    /// Program and arguments, executed on the agent without a shell.
    pub command: Vec<String>,
    /// Seconds between runs.
    pub interval_secs: u32,
    /// Seconds before the run is killed and reported UNKNOWN.
    pub timeout_secs: u32,
}

/// `GET /api/v1/results/latest`: the newest result of each check of each agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultInfo {
    pub agent: Fingerprint,
    pub hostname: String,
    pub check: String,
    pub seq: u64,
    pub state: CheckState,
    pub summary: String,
    #[serde(default)]
    pub long_output: String,
    #[serde(default)]
    pub perfdata: Vec<PerfData>,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub received_at_ms: i64,
}

/// One message of the live event stream `GET /api/v1/events` (Server-Sent
/// Events: the SSE event name is the `type` tag, the data is this JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// An agent's presence changed.
    Presence {
        agent: Fingerprint,
        presence: Presence,
        /// When it changed, Unix ms.
        at_ms: i64,
    },
    /// A check result was stored (scheduled runs; not RPC runs).
    Result {
        agent: Fingerprint,
        result: crate::CheckResult,
    },
    /// The agent's configuration document moved to `version`.
    Config { agent: Fingerprint, version: u64 },
    /// This subscriber fell behind and `missed` events were dropped for it;
    /// re-read the state it needs (`GET /api/v1/agents`, results).
    Lagged { missed: u64 },
}
