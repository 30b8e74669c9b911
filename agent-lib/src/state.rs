//! The state blob handed from one agent generation to the next.
//!
//! Format (state_format 1): one JSON object
//! `{"version":1,"next_seq":N,"seq_synced":bool,"unacked":[CheckResult…],"config":{…}|null,
//! "next_runs":{…},"connection":{…}|null}`.
//! Unknown keys are ignored so a later format can add sections that an older
//! library skips, and every section but `version`/`next_seq` is optional.
//! `unacked` is every result not yet acked by the server, so a hot swap loses
//! nothing; `config` is the last configuration received, so the new
//! generation keeps checking while it reconnects; `connection` carries the
//! resume token and the DNS fallback addresses (see `dns.rs`), so the new
//! generation resumes the server-side session and still finds the server
//! when DNS is down. `collectors` lists the collector processes left
//! running for this generation to adopt (`collectors/supervisor.rs`); it is
//! written only when the stub said a library of ABI ≥ 1.2 runs next
//! (`HostApiV1::stop_intent`), so a library that ignores the key is never
//! handed processes. The format stays 1: every addition is an optional key
//! that older readers skip, and a higher format would make an older library
//! (a rollback) refuse the whole blob.

use outrider_protocol::{AgentConfig, CheckResult};
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// Format version this library writes (`AgentApiV1::state_format`).
pub const STATE_FORMAT: u32 = 1;
/// Oldest format this library reads (`AgentApiV1::min_state_format`).
pub const MIN_STATE_FORMAT: u32 = 1;

/// Everything one generation passes to the next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateBlob {
    /// [`STATE_FORMAT`] of the writer.
    pub version: u32,
    /// Next result sequence number to assign (≥ 1).
    pub next_seq: u64,
    /// True once the sequence counter is known to continue the server's
    /// numbering (after a Welcome); false on a cold start.
    #[serde(default)]
    pub seq_synced: bool,
    /// Results not yet acked, in sequence order.
    #[serde(default)]
    pub unacked: Vec<CheckResult>,
    /// The configuration last received from the server.
    #[serde(default)]
    pub config: Option<AgentConfig>,
    /// When each check is next due, so a hot swap keeps every check's
    /// rhythm instead of starting it again after a random jitter.
    #[serde(default)]
    pub next_runs: std::collections::BTreeMap<String, crate::scheduler::NextRun>,
    /// The connection's memory: resume token, DNS fallbacks, enrollment.
    #[serde(default)]
    pub connection: Option<ConnectionState>,
    /// Highest id of the stub's update events already queued (see
    /// `update_events.rs`), so none is reported twice across swaps.
    #[serde(default)]
    pub update_events_seen: u64,
    /// What the last `outrider.listeners` result said (true: OK), so a
    /// generation reports only a change (`listeners.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners_ok: Option<bool>,
    /// Collectors left running for the next generation to adopt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collectors: Vec<crate::collectors::HandedCollector>,
}

/// What the connection remembers across sessions and generations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    /// `Welcome.resume_token` of the last session, presented in the next Hello.
    #[serde(default)]
    pub resume_token: Option<String>,
    /// DNS fallback addresses and enrollment, as also saved on disk.
    #[serde(default)]
    pub saved: crate::connection::saved::SavedConnection,
    /// Whether the last report for `outrider.dns` said the resolver is broken.
    #[serde(default)]
    pub dns_broken: bool,
    /// SHA-256 of the enrollment token this process enrolled with: never
    /// presented again, though the stub still hands it over in the
    /// `agent.toml` text it read at start (`connection/enrollment.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_token_sha256: Option<String>,
}

impl Default for StateBlob {
    fn default() -> Self {
        StateBlob {
            version: STATE_FORMAT,
            next_seq: 1,
            seq_synced: false,
            unacked: Vec::new(),
            config: None,
            next_runs: std::collections::BTreeMap::new(),
            connection: None,
            update_events_seen: 0,
            listeners_ok: None,
            collectors: Vec::new(),
        }
    }
}

impl StateBlob {
    /// Serialises the blob for `put_state`.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data (no maps with non-string keys, finite floats only, since
        // the perfdata parser rejects non-finite values): cannot fail.
        serde_json::to_vec(self).expect("state blob serialises")
    }

    /// Reads a blob from `state_in`; `Ok(None)` for an empty input (cold
    /// start). Fails, naming why, for garbage or a format we cannot read.
    pub fn decode(bytes: &[u8]) -> Result<Option<StateBlob>, AgentError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let blob: StateBlob = serde_json::from_slice(bytes).map_err(|e| AgentError::StateBlob {
            reason: format!("is not readable: {e}"),
        })?;
        if !(MIN_STATE_FORMAT..=STATE_FORMAT).contains(&blob.version) {
            return Err(AgentError::StateBlob {
                reason: format!(
                    "has format {}, this agent reads {MIN_STATE_FORMAT}..={STATE_FORMAT}",
                    blob.version
                ),
            });
        }
        Ok(Some(StateBlob {
            next_seq: blob.next_seq.max(1),
            ..blob
        }))
    }
}

#[cfg(test)]
mod tests {
    use outrider_protocol::CheckState;

    use super::*;

    #[test]
    fn round_trips_and_skips_unknown_sections() {
        let blob = StateBlob {
            next_seq: 8,
            seq_synced: true,
            connection: Some(ConnectionState {
                resume_token: Some("r1".into()),
                saved: crate::connection::saved::SavedConnection {
                    host: "mon.example".into(),
                    last_url: Some("https://mon.example".into()),
                    last_good_ip: Some("192.0.2.1".parse().unwrap()),
                    server_addrs: vec!["192.0.2.2".parse().unwrap()],
                    enrolled_as: Some("0123456789abcdef0123".parse().unwrap()),
                },
                dns_broken: true,
                spent_token_sha256: Some("ab".repeat(32)),
            }),
            unacked: vec![CheckResult {
                seq: 7,
                check: "c".into(),
                state: CheckState::Ok,
                summary: "s".into(),
                long_output: String::new(),
                perfdata: vec![],
                unknown_perfdata: Vec::new(),
                started_at_ms: 1,
                duration_ms: 2,
                update_event: None,
            }],
            ..StateBlob::default()
        };
        assert_eq!(StateBlob::decode(&blob.encode()).unwrap(), Some(blob));
        let newer = br#"{"version":1,"next_seq":3,"future_section":[1,2]}"#;
        let read = StateBlob::decode(newer).unwrap().unwrap();
        assert_eq!(read.next_seq, 3);
        // A blob from a library without the connection section.
        assert_eq!(read.connection, None);
    }

    #[test]
    fn empty_is_cold_start_and_garbage_is_refused() {
        assert_eq!(StateBlob::decode(b"").unwrap(), None);
        let garbage = StateBlob::decode(b"not json").unwrap_err();
        assert!(matches!(garbage, AgentError::StateBlob { .. }), "{garbage}");
        let newer = StateBlob::decode(br#"{"version":2,"next_seq":1}"#).unwrap_err();
        assert!(newer.to_string().contains("format 2"), "{newer}");
    }
}
