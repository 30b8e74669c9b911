//! Agent ↔ server wire messages.
//!
//! One websocket per agent, JSON text frames, one message per frame. Every
//! message is an object with a `"type"` tag; unknown fields are ignored so
//! either side may add optional fields without a version bump. Adding a
//! message type or changing a field's meaning bumps [`PROTOCOL_VERSION`].
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
//! Keepalive is websocket ping/pong, answered by both libraries.

pub mod api;
mod identity;
mod result;

use serde::{Deserialize, Serialize};

pub use identity::{Fingerprint, FingerprintError, auth_message, fingerprint_of, verify_proof};
pub use result::{CheckResult, CheckState, PerfData};

/// Version of this wire protocol, sent in [`AgentMessage::Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Path of the agent websocket endpoint on the server.
pub const AGENT_WS_PATH: &str = "/v1/agent/ws";

/// Largest frame either side accepts; bigger frames close the connection.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Largest number of results in one [`AgentMessage::Results`] batch.
pub const MAX_BATCH_RESULTS: usize = 500;

/// Messages sent by the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[expect(
    clippy::large_enum_variant,
    reason = "one Hello per session, decoded and dropped at once; boxing it buys nothing"
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Registration and proof of key possession; the first agent message.
    Hello(Hello),
    /// A batch of check results with consecutive-or-increasing sequence numbers.
    Results { results: Vec<CheckResult> },
    /// Clean shutdown: the agent is going away on purpose.
    Goodbye { reason: String },
}

/// The agent's introduction, answering a [`ServerMessage::Challenge`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u32,
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
    /// Highest result sequence number the agent has ever assigned, so the
    /// server can tell a restarted spool from a replay.
    #[serde(default)]
    pub last_seq: u64,
}

/// Messages sent by the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First frame of every session: the nonce to sign (hex, 32 bytes).
    Challenge { nonce: String },
    /// Registration accepted.
    Welcome {
        /// The agent's fingerprint as the server pinned it.
        fingerprint: Fingerprint,
        /// Highest sequence number the server has stored for this agent;
        /// the agent drops anything at or below it from its outbox.
        acked_seq: u64,
    },
    /// Registration refused; the server closes the socket after this.
    Rejected { reason: String },
    /// The complete configuration the agent should run now.
    Config(AgentConfig),
    /// Every result with `seq <= up_to` is stored durably.
    Ack { up_to: u64 },
}

/// The configuration document the server computes for one agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Monotonic version of this document; unchanged version = unchanged config.
    pub version: u64,
    /// Every check this agent runs.
    pub checks: Vec<CheckSpec>,
}

/// One scheduled check: a Nagios plugin command line.
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
}

impl CheckSpec {
    /// Checks the invariants documented on each field.
    pub fn validate(&self) -> Result<(), CheckSpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !name_ok {
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
}

macro_rules! codec {
    ($ty:ty) => {
        impl $ty {
            /// Encodes as one JSON text frame.
            pub fn encode(&self) -> String {
                // Serialising these plain data types cannot fail: no maps
                // with non-string keys, no custom serialisers.
                serde_json::to_string(self).expect("protocol message serialises")
            }

            /// Decodes one text frame, refusing frames over [`MAX_MESSAGE_BYTES`].
            pub fn decode(text: &str) -> Result<Self, DecodeError> {
                if text.len() > MAX_MESSAGE_BYTES {
                    return Err(DecodeError::TooLarge { len: text.len() });
                }
                Ok(serde_json::from_str(text)?)
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
            AgentMessage::decode(r#"{"type":"nope"}"#),
            Err(DecodeError::Malformed(_))
        ));
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
