//! Agent ↔ server wire messages.
//!
//! One websocket per agent, JSON text frames, one message per frame. Every
//! message is an object with a `"type"` tag; unknown fields are ignored so
//! either side may add optional fields without a version bump.
//!
//! Versions (the rules are in `docs/protocol.md`): the agent offers a range
//! `[protocol_min, protocol_max]` and its capabilities in `Hello`; the server
//! picks the highest version both speak ([`ProtocolRange::negotiate`]) and
//! answers with it and its own capabilities in `Welcome`. From version 3 on
//! both sides skip a message of a type they do not know ([`Decoded::Unknown`])
//! instead of failing, and a new message is sent only to a peer that
//! announced its capability ([`capability`]), so adding one never raises
//! the floor [`PROTOCOL_MIN`].
//!
//! Session, in order:
//! 1. server → [`ServerMessage::Challenge`] with a fresh random nonce;
//! 2. agent → [`AgentMessage::Hello`]: fingerprint, public key, labels, the
//!    enrollment token (first registration only) and an ed25519 signature over
//!    [`auth_message`]`(nonce, fingerprint)` proving possession of the key;
//! 3. server → [`ServerMessage::Welcome`] (the fingerprint is now pinned to
//!    that key) followed by [`ServerMessage::Config`], or
//!    [`ServerMessage::Rejected`] and a close;
//! 4. agent → [`AgentMessage::Results`] batches, each answered by
//!    [`ServerMessage::Ack`] once stored; the server may push a new
//!    [`ServerMessage::Config`] at any time;
//! 5. agent → [`AgentMessage::Goodbye`] on a clean stop: the server marks the
//!    agent *deregistered* rather than *down*.
//!
//! At any time after `Welcome`:
//! - server → [`ServerMessage::RunCheck`] / [`ServerMessage::RunScript`]
//!   (remote procedure calls), answered by one [`AgentMessage::RpcResult`]
//!   with the same correlation `id`; these runs are not spooled and do not
//!   move the check's schedule;
//! - agent → [`AgentMessage::GetPlugin`] for a plugin the config references
//!   by content hash, answered by [`ServerMessage::PluginChunk`]s (at most
//!   [`PLUGIN_CHUNK_BYTES`] each, requested one at a time so neither side
//!   buffers more than one chunk) or [`ServerMessage::PluginMissing`].
//!
//! Keepalive is websocket ping/pong, answered by both libraries.
//!
//! Reconnects: `Welcome` carries a `resume_token`; the agent presents it in
//! its next `Hello` (still signed — the token is never proof of identity) so
//! the server can resume the session state it kept (the config version the
//! agent runs, RPCs queued while it was away) instead of starting over.

pub mod api;
mod collector;
mod identity;
mod result;
mod samples;

use serde::{Deserialize, Serialize};

pub use collector::{
    COLLECTOR_CHECK_PREFIX, COLLECTOR_INTERVAL_SECS, CollectorEntry, CollectorSpecError,
    CollectorSpecWire, KindWire, MAX_COLLECTOR_ARG_BYTES, MAX_COLLECTOR_ARGV,
    MAX_COLLECTOR_NAME_LEN, MAX_RAW_CONFIG_BYTES, PluginWire, is_valid_collector_name,
};
pub use identity::{Fingerprint, FingerprintError, auth_message, fingerprint_of, verify_proof};
pub use result::{CheckResult, CheckState, PerfData, UnknownPerfData, UpdateEvent};
pub use samples::{MAX_BATCH_SAMPLES, MetricSample, MetricTag, SampleBatch};

/// Wall-clock now in Unix milliseconds, the unit of every timestamp on the
/// wire and in the API (0 if the clock is before 1970, saturating far in
/// the future). The one definition agent, server, CLI and tools share.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Oldest protocol version this code speaks: the floor. Servers before
/// negotiation accept exactly this value in `Hello.protocol_version`.
pub const PROTOCOL_MIN: u32 = 2;

/// Newest protocol version this code speaks. Version 3 is version 2 plus:
/// unknown message types and fields are skipped, capabilities are honoured.
pub const PROTOCOL_MAX: u32 = 3;

/// What an agent sends in `Hello.protocol_version`: the floor, which is what
/// servers before negotiation check for equality.
pub const PROTOCOL_VERSION: u32 = PROTOCOL_MIN;

/// Capabilities: optional features announced in `Hello` and `Welcome`. A
/// side sends a message or field tied to a capability only when the peer
/// announced it (and the negotiated version is at least 3).
pub mod capability {
    /// The agent acts on [`crate::ServerMessage::CheckUpdate`].
    pub const UPDATE_NUDGE: &str = "update_nudge";
    /// The agent reports the stub's update outcomes as
    /// [`crate::CheckResult::update_event`]; the server stores them.
    pub const UPDATE_EVENTS: &str = "update_events";
    /// The agent runs the collectors of
    /// [`crate::AgentConfig::collectors`]; the server fills that field only
    /// for agents announcing it (an older agent would ignore it, and the
    /// operator would believe its collectors run).
    pub const COLLECTORS: &str = "collectors";
    /// The agent sends its spooled metric samples as
    /// [`crate::AgentMessage::Samples`]; the server stores them and answers
    /// [`crate::ServerMessage::SamplesAck`]. Without it the agent keeps
    /// them spooled (bounded).
    pub const METRIC_SAMPLES: &str = "metric_samples";

    /// Every capability this code implements.
    pub const ALL: &[&str] = &[UPDATE_NUDGE, UPDATE_EVENTS, COLLECTORS, METRIC_SAMPLES];
}

/// Most capabilities either side may announce; more is a protocol error.
pub const MAX_CAPABILITIES: usize = 64;

/// A range of protocol versions one side speaks, `min <= max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolRange {
    min: u32,
    max: u32,
}

/// Why a [`ProtocolRange`] cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol range [{min}, {max}] is empty: the minimum must not exceed the maximum")]
pub struct EmptyRangeError {
    pub min: u32,
    pub max: u32,
}

impl ProtocolRange {
    /// Everything this code speaks: [`PROTOCOL_MIN`]..=[`PROTOCOL_MAX`].
    pub const SUPPORTED: ProtocolRange = ProtocolRange {
        min: PROTOCOL_MIN,
        max: PROTOCOL_MAX,
    };

    /// `[min, max]`; fails when `min > max`.
    pub fn new(min: u32, max: u32) -> Result<ProtocolRange, EmptyRangeError> {
        if min > max {
            return Err(EmptyRangeError { min, max });
        }
        Ok(ProtocolRange { min, max })
    }

    pub fn min(self) -> u32 {
        self.min
    }

    pub fn max(self) -> u32 {
        self.max
    }

    /// The highest version both ranges contain, or `None` when they do not
    /// overlap.
    pub fn negotiate(self, other: ProtocolRange) -> Option<u32> {
        let high = self.max.min(other.max);
        (high >= self.min.max(other.min)).then_some(high)
    }
}

impl std::fmt::Display for ProtocolRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}]", self.min, self.max)
    }
}

/// The capabilities in force for a session at protocol `version`: those
/// both sides announced, and none below version 3 (which has none).
pub fn agreed_capabilities(version: u32, ours: &[String], theirs: &[String]) -> Vec<String> {
    if version < 3 {
        return Vec::new();
    }
    ours.iter()
        .filter(|c| theirs.contains(c))
        .cloned()
        .collect()
}

/// Path of the agent websocket endpoint on the server.
pub const AGENT_WS_PATH: &str = "/v1/agent/ws";

/// Largest frame either side accepts; bigger frames close the connection.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Largest number of results in one [`AgentMessage::Results`] batch.
pub const MAX_BATCH_RESULTS: usize = 500;

/// Largest decoded payload of one [`ServerMessage::PluginChunk`]; base64 of
/// it stays well under [`MAX_MESSAGE_BYTES`].
pub const PLUGIN_CHUNK_BYTES: usize = 256 * 1024;

/// Largest plugin file the server stores and the agent accepts.
pub const MAX_PLUGIN_BYTES: u64 = 32 * 1024 * 1024;

/// Largest ad-hoc script in a [`ServerMessage::RunScript`].
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// Prefix of `command[0]` that names a plugin of [`AgentConfig::plugins`].
pub const PLUGIN_PREFIX: &str = "plugin:";

/// Prefix of `command[0]` that names a check built into the agent
/// (`builtin:cpu`, `builtin:disk`, …).
pub const BUILTIN_PREFIX: &str = "builtin:";

/// Messages sent by the agent.
// One Hello per session; boxing it would change every match on the wire
// type. `allow`, not `expect`: whether the lint fires depends on the sizes
// of the other variants' fields.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Registration and proof of key possession; the first agent message.
    Hello(Hello),
    /// A batch of check results with consecutive-or-increasing sequence numbers.
    Results { results: Vec<CheckResult> },
    /// The answer to a [`ServerMessage::RunCheck`] or [`ServerMessage::RunScript`]:
    /// exactly one of `result` (with `seq` 0: RPC runs are not spooled) and
    /// `error` (the run could not start: unknown check, ad-hoc not allowed…).
    RpcResult {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<CheckResult>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Asks for the bytes of plugin `sha256` starting at `offset`.
    GetPlugin { sha256: String, offset: u64 },
    /// Clean shutdown: the agent is going away on purpose.
    Goodbye { reason: String },
    /// One batch of metric samples; answered by
    /// [`ServerMessage::SamplesAck`] once stored. Sent only in sessions
    /// that agreed [`capability::METRIC_SAMPLES`].
    Samples(SampleBatch),
}

impl AgentMessage {
    /// Every `type` tag of this enum, for telling an unknown message from a
    /// malformed known one.
    pub const TYPES: &[&str] = &[
        "hello",
        "results",
        "rpc_result",
        "get_plugin",
        "goodbye",
        "samples",
    ];

    /// The `type` tag of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentMessage::Hello(_) => "hello",
            AgentMessage::Results { .. } => "results",
            AgentMessage::RpcResult { .. } => "rpc_result",
            AgentMessage::GetPlugin { .. } => "get_plugin",
            AgentMessage::Goodbye { .. } => "goodbye",
            AgentMessage::Samples(_) => "samples",
        }
    }
}

/// The agent's introduction, answering a [`ServerMessage::Challenge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The floor of the agent's range ([`PROTOCOL_VERSION`]): servers before
    /// negotiation accept only an exact match.
    pub protocol_version: u32,
    /// Lowest version the agent speaks; absent (an agent before
    /// negotiation): `protocol_version`. See [`Hello::offered`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_min: Option<u32>,
    /// Highest version the agent speaks; absent: `protocol_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_max: Option<u32>,
    /// Optional features the agent implements ([`capability`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Identity: short hash of `public_key`, see [`fingerprint_of`].
    pub fingerprint: Fingerprint,
    /// Hex of the 32-byte ed25519 public key.
    pub public_key: String,
    /// Hex of the ed25519 signature over [`auth_message`]`(nonce, fingerprint)`.
    pub signature: String,
    /// Organisation enrollment token; required only until the key is pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<String>,
    /// Labels, never identity.
    pub hostname: String,
    /// `std::env::consts::OS` of the agent.
    pub os: String,
    /// `std::env::consts::ARCH` of the agent.
    pub arch: String,
    /// Version of the running agent library.
    pub agent_version: String,
    /// SHA-256 of the library build the stub loaded (from the signed
    /// manifest), so operators can count the fleet per release; absent when
    /// the library runs without a stub (tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_sha256: Option<String>,
    /// Release version of that build as the manifest names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_version: Option<String>,
    /// Version of the stub that runs the library (`HostApiV1.stub_version`);
    /// absent without a stub or from agents before it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stub_version: Option<String>,
    /// Update channel of the host (`channel` of its `agent.toml`), so the
    /// server knows whom to nudge after a release of that channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Highest result sequence number the agent has ever assigned, so the
    /// server can tell a restarted spool from a replay.
    #[serde(default)]
    pub last_seq: u64,
    /// Tags from the agent's `agent.toml`; the server adds its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The `resume_token` of the last `Welcome`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// Version of the [`AgentConfig`] the agent runs now (0: none), so a
    /// resumed session need not resend an unchanged config.
    #[serde(default)]
    pub config_version: u64,
}

/// Messages sent by the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First frame of every session: the nonce to sign (hex, 32 bytes).
    Challenge { nonce: String },
    /// Registration accepted.
    Welcome(Welcome),
    /// Registration refused; the server closes the socket after this.
    Rejected { reason: String },
    /// The complete configuration the agent should run now.
    Config(AgentConfig),
    /// Every result with `seq <= up_to` is stored durably.
    Ack { up_to: u64 },
    /// Every sample batch with `seq <= up_to` is stored durably (or was
    /// refused for good): the agent deletes them from its samples spool.
    SamplesAck { up_to: u64 },
    /// Run configured check `check` now and answer with
    /// [`AgentMessage::RpcResult`] `id`; the schedule is not disturbed.
    RunCheck { id: String, check: String },
    /// Run `script` (at most [`MAX_SCRIPT_BYTES`]) once, if the agent's
    /// config has `allow_adhoc`; `interpreter` is a file extension (`sh`,
    /// `py`, `ps1`…) choosing how it runs, default `sh`.
    RunScript {
        id: String,
        script: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interpreter: Option<String>,
        timeout_secs: u32,
    },
    /// Bytes `offset..offset+len` of plugin `sha256` (base64 in `data`),
    /// `total` being the whole file's size.
    PluginChunk {
        sha256: String,
        offset: u64,
        total: u64,
        data: String,
    },
    /// The server has no plugin `sha256` (or it is unreadable).
    PluginMissing { sha256: String, reason: String },
    /// Check for updates now: a release of the agent's channel changed.
    /// Sent only to agents announcing [`capability::UPDATE_NUDGE`].
    CheckUpdate {
        /// What changed, for the agent's log (`release promote on stable`).
        #[serde(default)]
        reason: String,
    },
}

impl ServerMessage {
    /// Every `type` tag of this enum, for telling an unknown message from a
    /// malformed known one.
    pub const TYPES: &[&str] = &[
        "challenge",
        "welcome",
        "rejected",
        "config",
        "ack",
        "run_check",
        "run_script",
        "plugin_chunk",
        "plugin_missing",
        "check_update",
        "samples_ack",
    ];

    /// The `type` tag of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Challenge { .. } => "challenge",
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Rejected { .. } => "rejected",
            ServerMessage::Config(_) => "config",
            ServerMessage::Ack { .. } => "ack",
            ServerMessage::RunCheck { .. } => "run_check",
            ServerMessage::RunScript { .. } => "run_script",
            ServerMessage::PluginChunk { .. } => "plugin_chunk",
            ServerMessage::PluginMissing { .. } => "plugin_missing",
            ServerMessage::CheckUpdate { .. } => "check_update",
            ServerMessage::SamplesAck { .. } => "samples_ack",
        }
    }
}

impl Hello {
    /// The first label of the hello holding a NUL character, by field
    /// name. No real host has one (labels come from `uname` and
    /// agent.toml); PostgreSQL's text cannot store one, so the server
    /// refuses such a hello with this name instead of failing to store it
    /// at every reconnect.
    pub fn label_with_nul(&self) -> Option<&'static str> {
        let labels = [
            ("hostname", Some(self.hostname.as_str())),
            ("os", Some(self.os.as_str())),
            ("arch", Some(self.arch.as_str())),
            ("agent_version", Some(self.agent_version.as_str())),
            ("build_sha256", self.build_sha256.as_deref()),
            ("build_version", self.build_version.as_deref()),
            ("stub_version", self.stub_version.as_deref()),
            ("channel", self.channel.as_deref()),
            ("enrollment_token", self.enrollment_token.as_deref()),
            ("resume_token", self.resume_token.as_deref()),
        ];
        labels
            .into_iter()
            .find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
            .map(|(name, _)| name)
            .or_else(|| self.tags.iter().any(|t| t.contains('\0')).then_some("tags"))
    }

    /// The versions the agent offers: `[protocol_min, protocol_max]`, each
    /// `protocol_version` when absent (an agent before negotiation). Fails
    /// when the agent sent an empty range.
    pub fn offered(&self) -> Result<ProtocolRange, EmptyRangeError> {
        ProtocolRange::new(
            self.protocol_min.unwrap_or(self.protocol_version),
            self.protocol_max.unwrap_or(self.protocol_version),
        )
    }
}

/// Body of [`ServerMessage::Welcome`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The agent's fingerprint as the server pinned it.
    pub fingerprint: Fingerprint,
    /// Highest sequence number the server has stored for this agent;
    /// the agent drops anything at or below it from its outbox.
    pub acked_seq: u64,
    /// Opaque token to present in the next `Hello`.
    #[serde(default)]
    pub resume_token: String,
    /// Whether the session state of the presented resume token was kept.
    #[serde(default)]
    pub resumed: bool,
    /// IP addresses (no port) the agent may dial when its resolver fails:
    /// the last step of its DNS fallback chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_addrs: Vec<String>,
    /// The version the server chose from the agent's range; absent (a
    /// server before negotiation): [`PROTOCOL_MIN`].
    #[serde(default = "floor")]
    pub protocol_version: u32,
    /// Optional features the server implements ([`capability`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

fn floor() -> u32 {
    PROTOCOL_MIN
}

/// The configuration document the server computes for one agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Monotonic version of this document; unchanged version = unchanged config.
    pub version: u64,
    /// Every check this agent runs.
    pub checks: Vec<CheckSpec>,
    /// Plugins referenced by `checks` (`command[0] = "plugin:<name>"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginRef>,
    /// The agent's tags: its own from `agent.toml` plus those the server
    /// assigned (informational; the server already used them to pick checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Whether this agent accepts [`ServerMessage::RunScript`].
    #[serde(default)]
    pub allow_adhoc: bool,
    /// The collectors this agent runs (`collector.rs`); sent only to agents
    /// announcing [`capability::COLLECTORS`]. In a session where both sides
    /// announced it, absent means "none"; otherwise (an older server) the
    /// agent keeps running the set it last received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collectors: Vec<CollectorEntry>,
}

/// A plugin file, content-addressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    /// The name checks use after [`PLUGIN_PREFIX`] (same rules as a check name).
    pub name: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes (at most [`MAX_PLUGIN_BYTES`]).
    pub size: u64,
}

/// One scheduled check: a Nagios plugin command line. `command[0]` is a
/// program path, `plugin:<name>` (a plugin of [`AgentConfig::plugins`]) or
/// `builtin:<name>` (a check built into the agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// Unique name within the agent's configuration (`[a-z0-9_.-]`, ≤ 64).
    pub name: String,
    /// Program and arguments, executed without a shell.
    pub command: Vec<String>,
    /// Seconds between the starts of two runs.
    pub interval_secs: u32,
    /// Seconds before the run is killed and reported UNKNOWN.
    pub timeout_secs: u32,
}

/// Why a [`CheckSpec`] is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckSpecError {
    #[error("check name {0:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'")]
    BadName(String),
    #[error("check {0:?} has an empty command")]
    EmptyCommand(String),
    #[error("check {name:?}: interval_secs must be between 1 and 86400, got {got}")]
    BadInterval { name: String, got: u32 },
    #[error("check {name:?}: timeout_secs must be between 1 and 3600, got {got}")]
    BadTimeout { name: String, got: u32 },
    #[error("check {check:?} uses plugin {plugin:?}, which the config does not list")]
    UnknownPlugin { check: String, plugin: String },
    #[error("plugin {name:?}: {reason}")]
    BadPlugin { name: String, reason: String },
    #[error("check name {0:?} appears twice")]
    DuplicateCheck(String),
}

/// Whether `name` is 1–64 characters of `a-z`, `0-9`, `_`, `.`, `-`: the
/// rule for check and plugin names.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Whether `hex` is a lowercase hex SHA-256 (64 characters).
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl PluginRef {
    /// Checks the invariants documented on each field.
    pub fn validate(&self) -> Result<(), CheckSpecError> {
        let bad = |reason: &str| CheckSpecError::BadPlugin {
            name: self.name.clone(),
            reason: reason.to_owned(),
        };
        if !is_valid_name(&self.name) {
            return Err(bad(
                "the name must be 1-64 characters of a-z, 0-9, '_', '.', '-'",
            ));
        }
        if !is_sha256_hex(&self.sha256) {
            return Err(bad("sha256 must be 64 lowercase hex characters"));
        }
        if self.size > MAX_PLUGIN_BYTES {
            return Err(bad("larger than the plugin size limit"));
        }
        Ok(())
    }
}

impl AgentConfig {
    /// Validates every check and plugin, that check names are unique and
    /// that every `plugin:<name>` command names a listed plugin.
    pub fn validate(&self) -> Result<(), CheckSpecError> {
        for plugin in &self.plugins {
            plugin.validate()?;
        }
        let mut names = std::collections::HashSet::new();
        for check in &self.checks {
            check.validate()?;
            if !names.insert(check.name.as_str()) {
                return Err(CheckSpecError::DuplicateCheck(check.name.clone()));
            }
            if let Some(plugin) = check.plugin_name()
                && !self.plugins.iter().any(|p| p.name == plugin)
            {
                return Err(CheckSpecError::UnknownPlugin {
                    check: check.name.clone(),
                    plugin: plugin.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The plugin called `name`, if listed.
    pub fn plugin(&self, name: &str) -> Option<&PluginRef> {
        self.plugins.iter().find(|p| p.name == name)
    }
}

impl CheckSpec {
    /// The plugin name when `command[0]` is `plugin:<name>`.
    pub fn plugin_name(&self) -> Option<&str> {
        self.command.first()?.strip_prefix(PLUGIN_PREFIX)
    }

    /// The built-in check name when `command[0]` is `builtin:<name>`.
    pub fn builtin_name(&self) -> Option<&str> {
        self.command.first()?.strip_prefix(BUILTIN_PREFIX)
    }

    /// Checks the invariants documented on each field.
    pub fn validate(&self) -> Result<(), CheckSpecError> {
        if !is_valid_name(&self.name) {
            return Err(CheckSpecError::BadName(self.name.clone()));
        }
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(CheckSpecError::EmptyCommand(self.name.clone()));
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(CheckSpecError::BadInterval {
                name: self.name.clone(),
                got: self.interval_secs,
            });
        }
        if !(1..=3_600).contains(&self.timeout_secs) {
            return Err(CheckSpecError::BadTimeout {
                name: self.name.clone(),
                got: self.timeout_secs,
            });
        }
        Ok(())
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Well-formed, but of a type this code does not know (a newer peer);
    /// only [`AgentMessage::decode`] and [`ServerMessage::decode`] return
    /// it — [`AgentMessage::decode_frame`] makes it [`Decoded::Unknown`].
    #[error("unknown message type {kind:?}")]
    UnknownType { kind: String },
}

/// A decoded frame: a message this code knows, or one of a type it does
/// not (sent by a newer peer), which the receiver skips.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded<T> {
    Message(T),
    /// A JSON object whose `type` is not one of this code's message types.
    Unknown {
        kind: String,
    },
}

/// Just the tag of a frame.
#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: String,
}

/// Longest unknown `type` tag kept (for logs and counters); longer ones
/// are cut, so a hostile peer cannot make the receiver store a megabyte.
const MAX_KIND_LEN: usize = 64;

macro_rules! codec {
    ($ty:ty) => {
        impl $ty {
            /// Encodes as one JSON text frame.
            pub fn encode(&self) -> String {
                // Serialising these plain data types cannot fail: no maps
                // with non-string keys, no custom serialisers.
                serde_json::to_string(self).expect("protocol message serialises")
            }

            /// Decodes one text frame, refusing frames over
            /// [`MAX_MESSAGE_BYTES`] and unknown message types.
            pub fn decode(text: &str) -> Result<Self, DecodeError> {
                match Self::decode_frame(text)? {
                    Decoded::Message(m) => Ok(m),
                    Decoded::Unknown { kind } => Err(DecodeError::UnknownType { kind }),
                }
            }

            /// Decodes one text frame: a known message, or
            /// [`Decoded::Unknown`] for a JSON object with a `type` this
            /// code does not know. Fails on frames over
            /// [`MAX_MESSAGE_BYTES`] and on malformed ones (not JSON, no
            /// `type`, a known type with bad fields).
            pub fn decode_frame(text: &str) -> Result<Decoded<Self>, DecodeError> {
                if text.len() > MAX_MESSAGE_BYTES {
                    return Err(DecodeError::TooLarge { len: text.len() });
                }
                match serde_json::from_str(text) {
                    Ok(m) => Ok(Decoded::Message(m)),
                    Err(e) => match serde_json::from_str::<Tag>(text) {
                        Ok(Tag { kind }) if !Self::TYPES.contains(&kind.as_str()) => {
                            let mut end = kind.len().min(MAX_KIND_LEN);
                            while !kind.is_char_boundary(end) {
                                end -= 1;
                            }
                            Ok(Decoded::Unknown {
                                kind: kind[..end].to_owned(),
                            })
                        }
                        _ => Err(DecodeError::Malformed(e)),
                    },
                }
            }
        }
    };
}
codec!(AgentMessage);
codec!(ServerMessage);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_carry_type_tag() {
        let msg = ServerMessage::Ack { up_to: 7 };
        let text = msg.encode();
        assert_eq!(text, r#"{"type":"ack","up_to":7}"#);
        assert_eq!(ServerMessage::decode(&text).unwrap(), msg);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let msg = ServerMessage::decode(r#"{"type":"ack","up_to":3,"future":true}"#).unwrap();
        assert_eq!(msg, ServerMessage::Ack { up_to: 3 });
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(matches!(
            AgentMessage::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            AgentMessage::decode(r#"{"type":"hello"}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            AgentMessage::decode(r#"{"kind":"nope"}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            AgentMessage::decode("not json"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_types_decode_as_unknown_not_malformed() {
        assert_eq!(
            AgentMessage::decode_frame(r#"{"type":"future_thing","x":1}"#).unwrap(),
            Decoded::Unknown {
                kind: "future_thing".into()
            }
        );
        assert_eq!(
            ServerMessage::decode_frame(r#"{"type":"future_thing"}"#).unwrap(),
            Decoded::Unknown {
                kind: "future_thing".into()
            }
        );
        assert!(matches!(
            ServerMessage::decode(r#"{"type":"future_thing"}"#),
            Err(DecodeError::UnknownType { kind }) if kind == "future_thing"
        ));
        // A server type is unknown to the agent decoder and vice versa.
        assert!(matches!(
            AgentMessage::decode_frame(r#"{"type":"ack","up_to":1}"#).unwrap(),
            Decoded::Unknown { .. }
        ));
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
        let Decoded::Unknown { kind } = AgentMessage::decode_frame(&long).unwrap() else {
            panic!("expected unknown");
        };
        assert!(kind.len() <= MAX_KIND_LEN, "{}", kind.len());
    }

    #[test]
    fn type_lists_match_the_enums() {
        let agent = [
            AgentMessage::Goodbye { reason: "x".into() },
            AgentMessage::GetPlugin {
                sha256: "a".into(),
                offset: 0,
            },
            AgentMessage::Results { results: vec![] },
            AgentMessage::Samples(SampleBatch {
                seq: 1,
                samples: vec![],
            }),
            AgentMessage::RpcResult {
                id: "1".into(),
                result: None,
                error: Some("e".into()),
            },
        ];
        for m in agent {
            let tag: Tag = serde_json::from_str(&m.encode()).unwrap();
            assert_eq!(tag.kind, m.kind());
            assert!(AgentMessage::TYPES.contains(&m.kind()));
        }
        let server = [
            ServerMessage::Ack { up_to: 1 },
            ServerMessage::SamplesAck { up_to: 1 },
            ServerMessage::CheckUpdate { reason: "r".into() },
            ServerMessage::Challenge { nonce: "n".into() },
            ServerMessage::Rejected { reason: "r".into() },
            ServerMessage::Config(AgentConfig::default()),
            ServerMessage::RunCheck {
                id: "1".into(),
                check: "c".into(),
            },
            ServerMessage::PluginMissing {
                sha256: "a".into(),
                reason: "r".into(),
            },
        ];
        for m in server {
            let tag: Tag = serde_json::from_str(&m.encode()).unwrap();
            assert_eq!(tag.kind, m.kind());
            assert!(ServerMessage::TYPES.contains(&m.kind()));
        }
        assert_eq!(AgentMessage::TYPES.len(), 6);
        assert_eq!(ServerMessage::TYPES.len(), 11);
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let r = |min, max| ProtocolRange::new(min, max).unwrap();
        let table = [
            (r(2, 2), r(2, 3), Some(2)),
            (r(2, 3), r(2, 2), Some(2)),
            (r(2, 3), r(2, 3), Some(3)),
            (r(2, 5), r(3, 4), Some(4)),
            (r(3, 3), r(2, 2), None),
            (r(2, 2), r(3, 4), None),
        ];
        for (agent, server, want) in table {
            assert_eq!(agent.negotiate(server), want, "{agent} vs {server}");
            assert_eq!(server.negotiate(agent), want, "{server} vs {agent}");
        }
        assert_eq!(
            ProtocolRange::new(3, 2),
            Err(EmptyRangeError { min: 3, max: 2 })
        );
    }

    #[test]
    fn hello_without_a_range_offers_its_version() {
        let hello: Hello = serde_json::from_str(
            r#"{"protocol_version":2,"fingerprint":"790901b82a89fe505b5f","public_key":"",
                "signature":"","hostname":"h","os":"linux","arch":"x86_64","agent_version":"0.1.0"}"#,
        )
        .unwrap();
        assert_eq!(hello.offered(), Ok(ProtocolRange::new(2, 2).unwrap()));
        let ranged = Hello {
            protocol_min: Some(2),
            protocol_max: Some(3),
            ..hello.clone()
        };
        assert_eq!(ranged.offered(), Ok(ProtocolRange::SUPPORTED));
        let empty = Hello {
            protocol_max: Some(1),
            ..hello
        };
        assert!(empty.offered().is_err());
        // A welcome of a server before negotiation means the floor.
        let welcome: Welcome =
            serde_json::from_str(r#"{"fingerprint":"790901b82a89fe505b5f","acked_seq":0}"#)
                .unwrap();
        assert_eq!(welcome.protocol_version, PROTOCOL_MIN);
    }

    #[test]
    fn a_nul_in_any_label_is_named() {
        let hello: Hello = serde_json::from_str(
            r#"{"protocol_version":2,"fingerprint":"790901b82a89fe505b5f","public_key":"",
                "signature":"","hostname":"h","os":"linux","arch":"x86_64","agent_version":"0.1.0"}"#,
        )
        .unwrap();
        assert_eq!(hello.label_with_nul(), None);
        let nul = || "a\0b".to_owned();
        // (hello, field named)
        let cases = [
            (
                Hello {
                    hostname: nul(),
                    ..hello.clone()
                },
                "hostname",
            ),
            (
                Hello {
                    os: nul(),
                    ..hello.clone()
                },
                "os",
            ),
            (
                Hello {
                    arch: nul(),
                    ..hello.clone()
                },
                "arch",
            ),
            (
                Hello {
                    agent_version: nul(),
                    ..hello.clone()
                },
                "agent_version",
            ),
            (
                Hello {
                    build_version: Some(nul()),
                    ..hello.clone()
                },
                "build_version",
            ),
            (
                Hello {
                    stub_version: Some(nul()),
                    ..hello.clone()
                },
                "stub_version",
            ),
            (
                Hello {
                    channel: Some(nul()),
                    ..hello.clone()
                },
                "channel",
            ),
            (
                Hello {
                    enrollment_token: Some(nul()),
                    ..hello.clone()
                },
                "enrollment_token",
            ),
            (
                Hello {
                    tags: vec!["ok".into(), nul()],
                    ..hello.clone()
                },
                "tags",
            ),
        ];
        for (h, field) in cases {
            assert_eq!(h.label_with_nul(), Some(field));
        }
    }

    #[test]
    fn capabilities_need_version_3_and_both_sides() {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        type Row<'a> = (u32, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let table: [Row; 4] = [
            (2, &["update_nudge"], &["update_nudge"], &[]),
            (3, &["update_nudge"], &["update_nudge"], &["update_nudge"]),
            (3, &["update_nudge", "x"], &["x"], &["x"]),
            (3, &[], &["update_nudge"], &[]),
        ];
        for (version, ours, theirs, want) in table {
            assert_eq!(
                agreed_capabilities(version, &s(ours), &s(theirs)),
                s(want),
                "version {version}, {ours:?} and {theirs:?}"
            );
        }
    }

    #[test]
    fn check_spec_validation_names_the_problem() {
        let good = CheckSpec {
            name: "load".into(),
            command: vec!["/bin/true".into()],
            interval_secs: 10,
            timeout_secs: 5,
        };
        assert_eq!(good.validate(), Ok(()));
        let bad_name = CheckSpec {
            name: "Load Avg".into(),
            ..good.clone()
        };
        assert!(matches!(
            bad_name.validate(),
            Err(CheckSpecError::BadName(_))
        ));
        let no_cmd = CheckSpec {
            command: vec![],
            ..good.clone()
        };
        assert!(matches!(
            no_cmd.validate(),
            Err(CheckSpecError::EmptyCommand(_))
        ));
        let zero = CheckSpec {
            interval_secs: 0,
            ..good.clone()
        };
        assert!(matches!(
            zero.validate(),
            Err(CheckSpecError::BadInterval { got: 0, .. })
        ));
        let slow = CheckSpec {
            timeout_secs: 4_000,
            ..good
        };
        assert!(matches!(
            slow.validate(),
            Err(CheckSpecError::BadTimeout { got: 4_000, .. })
        ));
    }
}
