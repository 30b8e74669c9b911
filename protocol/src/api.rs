//! Types of the server's admin REST API (`/api/v1/...`), shared by the
//! server and the `outrider` CLI so both sides agree on every field.

use serde::{Deserialize, Serialize};

use crate::{CheckState, Fingerprint, PerfData, UnknownPerfData};

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

/// A presence name that is none of [`Presence::as_str`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown presence {0:?} (expected connected, down or deregistered)")]
pub struct UnknownPresence(pub String);

impl std::str::FromStr for Presence {
    type Err = UnknownPresence;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "connected" => Ok(Presence::Connected),
            "down" => Ok(Presence::Down),
            "deregistered" => Ok(Presence::Deregistered),
            other => Err(UnknownPresence(other.to_owned())),
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
    /// Effective tags: the agent's own (from its `Hello`) ∪ `server_tags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tags assigned on the server (`PUT /api/v1/agents/{fp}/tags`).
    #[serde(default)]
    pub server_tags: Vec<String>,
    /// Whether the agent accepts ad-hoc scripts.
    #[serde(default)]
    pub allow_adhoc: bool,
    /// Version of the agent's current configuration document (0: none yet).
    #[serde(default)]
    pub config_version: u64,
    /// The version of this host, as every view shows it: [`host_version`]
    /// of `build_version` and `agent_version` (absent from older servers;
    /// use [`AgentInfo::host_version`], which works with both).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Version of the stub running the agent library, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stub_version: Option<String>,
    /// Update channel the agent follows, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Protocol version of the agent's last session, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// Id of the enrollment token the agent registered with (absent for
    /// agents registered before servers recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<String>,
    /// Tags the agent may declare, from its enrollment token; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tags: Option<Vec<String>>,
    /// Tags the agent declared outside `allowed_tags`: ignored for check
    /// selection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_tags: Vec<String>,
}

/// `GET /api/v1/update-health`: per channel, what the fleet runs and which
/// updates it fails to take, from the stub's update events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateHealth {
    /// One entry per channel agents report (agents that report none are
    /// under `""`), by name.
    pub channels: Vec<ChannelHealth>,
}

/// The update health of one channel's agents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHealth {
    pub channel: String,
    /// Agents per build they run, most agents first.
    pub builds: Vec<BuildCount>,
    /// Agents whose newest event about a build they do not run is a
    /// failure, grouped by build, kind and exact reason; most agents first.
    pub failing: Vec<FailureGroup>,
    /// `rolled_back` events of the last 24 hours.
    pub rollbacks_24h: u64,
}

/// How many agents run one build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildCount {
    /// [`host_version`] of the agents.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_sha256: Option<String>,
    pub agents: u64,
}

/// Agents that failed to take one build for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureGroup {
    /// Version of the build (or stub) they failed to take, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_sha256: Option<String>,
    /// `refused`, `probation_failed`, `rolled_back`, `stub_refused`.
    pub kind: String,
    /// The exact error the stub reported.
    pub reason: String,
    pub agents: u64,
}

impl FailureGroup {
    /// One line for an operator: `3 agents refuse 1.4.0: hash mismatch…`.
    pub fn describe(&self) -> String {
        let build = self
            .version
            .clone()
            .or_else(|| {
                self.build_sha256
                    .as_deref()
                    .map(|s| s.chars().take(12).collect())
            })
            .unwrap_or_else(|| "a build".into());
        let agents = if self.agents == 1 {
            "1 agent".to_owned()
        } else {
            format!("{} agents", self.agents)
        };
        let verb = match (self.kind.as_str(), self.agents == 1) {
            ("refused", true) => "refuses",
            ("refused", false) => "refuse",
            ("probation_failed", _) => "failed probation of",
            ("rolled_back", _) => "rolled back from",
            ("stub_refused", true) => "refuses stub",
            ("stub_refused", false) => "refuse stub",
            _ => "failed to take",
        };
        if self.reason.is_empty() {
            format!("{agents} {verb} {build}")
        } else {
            format!("{agents} {verb} {build}: {}", self.reason)
        }
    }
}

/// The version of a host: the version its build was published as when the
/// stub reported one, else the agent library's own crate version. The one
/// definition the API, `outrider agents` and `outrider release status`
/// share, so the same host shows the same string everywhere.
pub fn host_version<'a>(build_version: Option<&'a str>, agent_version: &'a str) -> &'a str {
    match build_version {
        Some(v) if !v.is_empty() => v,
        _ => agent_version,
    }
}

impl AgentInfo {
    /// [`host_version`] of this agent.
    pub fn host_version(&self) -> &str {
        host_version(self.build_version.as_deref(), &self.agent_version)
    }
}

/// `PUT /api/v1/agents/{fp}/tags` body: the complete server-assigned tag set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTags {
    pub tags: Vec<String>,
}

/// `PUT /api/v1/agents/{fp}/allow-adhoc` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAdhoc {
    pub allow_adhoc: bool,
}

/// `PUT /api/v1/checks/{name}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDefinition {
    /// Program and arguments, executed on the agent without a shell;
    /// `command[0]` may be `plugin:<name>` or `builtin:<name>`.
    pub command: Vec<String>,
    /// Seconds between runs.
    pub interval_secs: u32,
    /// Seconds before the run is killed and reported UNKNOWN.
    pub timeout_secs: u32,
    /// Selector: the check runs on agents carrying all of these tags;
    /// empty = every agent.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When its results alert; absent: the server's alerting defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<CheckAlert>,
}

/// When a check's results become a problem and when it recovers. Every
/// field is optional: what is absent takes the server's alerting defaults
/// (3 consecutive non-OK results; 2 consecutive OK).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckAlert {
    /// A problem after this many consecutive non-OK results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_failures: Option<u32>,
    /// A problem after non-OK results without interruption for this many
    /// seconds (instead of a count; also between results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_secs: Option<u64>,
    /// Recovered after this many consecutive OK results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_after: Option<u32>,
}

/// `GET /api/v1/checks`: one row per check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInfo {
    pub name: String,
    pub command: Vec<String>,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its alert rules, if set (see [`CheckAlert`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<CheckAlert>,
}

/// `GET /api/v1/collectors` rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorInfo {
    /// The definition agents receive (`protocol/src/collector.rs`).
    pub collector: crate::CollectorSpecWire,
    /// Selector: an agent runs the collector when its tags include every
    /// one of these (empty: every agent), as for checks.
    #[serde(default)]
    pub tags: Vec<String>,
    pub updated_at_ms: i64,
}

/// `PUT /api/v1/collectors/{name}` body; `collector.name` must be `{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorDefinition {
    pub collector: crate::CollectorSpecWire,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `GET /api/v1/plugins` rows and the answer of `PUT /api/v1/plugins/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    pub size: u64,
    pub updated_at_ms: i64,
}

/// `POST /api/v1/tokens` body: a new enrollment token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    /// Free text for the operator (where the token is used).
    #[serde(default)]
    pub note: String,
    /// Seconds until the token stops working; absent = the server's
    /// default ([`DEFAULT_TOKEN_EXPIRES_IN_SECS`]). Every token expires.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Registrations the token allows; absent = unlimited.
    #[serde(default)]
    pub uses: Option<u32>,
    /// Tags an agent enrolled with this token may declare (in its
    /// `agent.toml`) to select checks; others it declares are ignored.
    /// Absent = any tag. Sent only when set, so older servers (which
    /// refuse unknown fields) still take requests without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tags: Option<Vec<String>>,
}

/// Lifetime of an enrollment token created without `expires_in_secs`, and
/// of the bootstrap token the server writes on first start unless told
/// otherwise: a day, enough to install a first batch of hosts.
pub const DEFAULT_TOKEN_EXPIRES_IN_SECS: u64 = 86_400;

/// Longest lifetime of an enrollment token (one year): a secret that
/// enrolls hosts must be rotated.
pub const MAX_TOKEN_EXPIRES_IN_SECS: u64 = 365 * 86_400;

/// `GET /api/v1/tokens` rows. The secret itself is shown only once, at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenInfo {
    /// Public handle used to revoke the token.
    pub id: String,
    pub note: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// Registrations left; `None` = unlimited.
    pub uses_left: Option<u32>,
    /// Registrations made with it so far.
    pub used: u64,
    pub revoked_at_ms: Option<i64>,
    /// Tags agents enrolled with it may declare; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tags: Option<Vec<String>>,
    /// Registrations refused with it (expired, revoked, used up).
    #[serde(default)]
    pub refused: u64,
}

/// Answer of `POST /api/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedEnrollmentToken {
    /// The secret to put into `agent.toml`; not retrievable later.
    pub token: String,
    #[serde(flatten)]
    pub info: EnrollmentTokenInfo,
}

/// Timeout of an ad-hoc script whose [`RunRequest`] gives none.
pub const DEFAULT_SCRIPT_TIMEOUT_SECS: u32 = 60;

/// Longest run a [`RunRequest`] may ask for (and longest check timeout),
/// so the caller knows how long an answer can take.
pub const MAX_RUN_TIMEOUT_SECS: u32 = 3_600;

/// `POST /api/v1/agents/{fp}/run` body: exactly one of `check` (a check of
/// the agent's config) or `script` (needs `allow_adhoc`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// File extension choosing the interpreter of `script` (`sh`, `py`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
    /// Timeout of `script` in seconds ([`DEFAULT_SCRIPT_TIMEOUT_SECS`] when
    /// absent, at most [`MAX_RUN_TIMEOUT_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

/// Answer of `POST /api/v1/agents/{fp}/run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResponse {
    /// The correlation id of the call.
    pub id: String,
    pub result: crate::CheckResult,
}

/// The body of every error response of the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One sentence naming the problem.
    pub error: String,
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
    /// Perfdata items the plugin printed as `U` (undetermined): label and
    /// unit. Absent when there are none (and from older servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_perfdata: Vec<UnknownPerfData>,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub received_at_ms: i64,
    /// Since when the check has been in `state` (Unix ms): the start of the
    /// first of its consecutive results in this state. Absent from older
    /// servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_since_ms: Option<i64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_fields_stay_compatible_both_ways() {
        // A request without a tag allow-list carries no new field: servers
        // from before it refuse unknown fields.
        let req = serde_json::to_value(NewEnrollmentToken {
            note: "rack".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            req,
            serde_json::json!({"note": "rack", "expires_in_secs": null, "uses": null})
        );
        // Answers of older servers still read.
        let old: EnrollmentTokenInfo = serde_json::from_value(serde_json::json!({
            "id": "ab", "note": "", "created_at_ms": 1, "expires_at_ms": null,
            "uses_left": null, "used": 2, "revoked_at_ms": null
        }))
        .unwrap();
        assert_eq!((old.allowed_tags, old.refused), (None, 0));
    }

    #[test]
    fn failure_groups_read_as_one_line() {
        let group = |kind: &str, agents: u64, reason: &str| FailureGroup {
            version: Some("1.4.0".into()),
            build_sha256: Some("ab".repeat(32)),
            kind: kind.into(),
            reason: reason.into(),
            agents,
        };
        let table = [
            (
                group("refused", 3, "hash mismatch"),
                "3 agents refuse 1.4.0: hash mismatch",
            ),
            (
                group("refused", 1, "expired"),
                "1 agent refuses 1.4.0: expired",
            ),
            (
                group("probation_failed", 2, ""),
                "2 agents failed probation of 1.4.0",
            ),
            (
                group("rolled_back", 1, "crash"),
                "1 agent rolled back from 1.4.0: crash",
            ),
            (
                group("new_kind", 2, "x"),
                "2 agents failed to take 1.4.0: x",
            ),
        ];
        for (g, want) in table {
            assert_eq!(g.describe(), want);
        }
        let unnamed = FailureGroup {
            version: None,
            ..group("stub_refused", 2, "self-test exited 1")
        };
        assert_eq!(
            unnamed.describe(),
            "2 agents refuse stub abababababab: self-test exited 1"
        );
    }

    #[test]
    fn host_version_prefers_the_published_build_version() {
        let table = [
            (Some("1.4.0"), "0.1.0", "1.4.0"),
            (None, "0.1.0", "0.1.0"),
            (Some(""), "0.1.0", "0.1.0"),
            (Some("0.1.1"), "0.1.0", "0.1.1"),
        ];
        for (build, agent, want) in table {
            assert_eq!(host_version(build, agent), want, "{build:?} {agent}");
        }
    }
}

/// How a receiver is reached, as given to `POST /api/v1/receivers`. The
/// secrets in it (webhook secret, Slack URL, PagerDuty routing key, SMTP
/// password) are stored by the server and never shown again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ReceiverConfig {
    /// JSON `POST` signed with `X-Outrider-Signature: sha256=<hex HMAC>`.
    Webhook {
        /// `http(s)://…`; plain `http` only to a loopback address.
        url: String,
        /// HMAC-SHA256 key of the signature, at least 16 bytes.
        secret: String,
    },
    /// A Slack incoming webhook (its URL is the secret).
    Slack {
        /// `https://hooks.slack.com/services/…` (or a loopback `http` URL).
        url: String,
    },
    /// PagerDuty Events API v2.
    Pagerduty {
        /// The integration's routing key.
        routing_key: String,
        /// The enqueue endpoint; default `https://events.pagerduty.com/v2/enqueue`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// Email over SMTP.
    Email {
        /// SMTP server host name or address.
        host: String,
        /// Port; default 587 for `starttls`, 465 for `tls`, 25 for `none`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// `starttls` (default), `tls` (implicit TLS), or `none` (loopback only).
        #[serde(default)]
        tls: SmtpTls,
        /// SMTP user; with `password`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// Sender address.
        from: String,
        /// Recipient addresses (1 to 32).
        to: Vec<String>,
        /// PEM of a CA certificate trusted besides the public roots (a
        /// relay with a private CA).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
    },
}

/// Transport security of an email receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required, not opportunistic).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: allowed only to a loopback host (local relays, tests).
    None,
}

/// `POST /api/v1/receivers` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewReceiver {
    /// 1-64 characters of a-z, 0-9, '_', '.', '-'.
    pub name: String,
    pub config: ReceiverConfig,
    /// Most messages sent per second; default and ceiling per kind (Slack
    /// 1, PagerDuty 2, webhook 10, email 5 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
}

/// `GET /api/v1/receivers` rows: no secrets, only where messages go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverInfo {
    pub name: String,
    /// `webhook`, `slack`, `pagerduty` or `email`.
    pub kind: String,
    /// Where it sends, without secrets (`https://host/…`, `ops@x via smtp:587`).
    pub target: String,
    pub rate_per_sec: u32,
    pub created_at_ms: i64,
    /// Deliveries waiting (or retrying), delivered, and dead-lettered.
    pub pending: u64,
    pub sent: u64,
    pub dead: u64,
}

/// `POST /api/v1/routes` body: the receiver gets the groups whose tags
/// include every one of `tags` and whose worst status is one of
/// `severities` (empty: any). A receiver without routes gets everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    pub receiver: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Any of `critical`, `warning`, `unknown`, `ok`.
    #[serde(default)]
    pub severities: Vec<String>,
}

/// `GET /api/v1/routes` rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub id: i64,
    pub receiver: String,
    pub tags: Vec<String>,
    pub severities: Vec<String>,
    pub created_at_ms: i64,
}

/// `GET /api/v1/dead-letters` rows: deliveries given up, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    pub receiver: String,
    /// The delivery's idempotency key (`<incident>#<seq>` of each notification).
    pub batch_key: String,
    /// The group (`agent/<fingerprint>`, `site/<tag>`).
    pub group: String,
    /// Titles of its notifications.
    pub titles: Vec<String>,
    pub attempts: u32,
    /// Why it was given up.
    pub error: String,
    pub created_at_ms: i64,
    pub failed_at_ms: i64,
}

/// Answer of `POST /api/v1/receivers/{name}/test`: a test message was sent
/// now, outside the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverTestResult {
    pub receiver: String,
    /// Whether the receiver accepted it.
    pub delivered: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
