//! The stub's update outcomes per agent, and the per-channel update health
//! that `outrider release status` and the dashboard's releases page show.
//!
//! Tables (server/src/store/update_events.sql for SQLite,
//! server/src/backend/postgres/migrations/0008_update_events.sql for
//! PostgreSQL): `update_events`, every event of an agent once per
//! `(agent, id)`, and `update_latest`, the newest event of each agent
//! about each build (`''` when the event names none), which the health's
//! failure groups read. The health also reads the `agents` table of the
//! agents area (`backend/agents.rs`): the channel and build each agent
//! runs.
//!
//! Rules (checked on both backends by `backend/update_event_tests.rs`):
//! 1. An event is stored once per `(agent, id)`; a resend changes nothing.
//!    Its text is stored without NUL (U+FFFD instead, as results' text:
//!    [`stored_event`]), its reason cut to [`MAX_REASON_BYTES`] on a
//!    character boundary ([`stored_reason`]); an id beyond `i64` is stored as `i64::MAX`
//!    ([`stored_id`]).
//! 2. `update_latest` keeps, per agent and build, the event of the highest
//!    id, whatever order events arrive in.
//! 3. Retention: the newest [`KEEP_PER_AGENT`] events and the newest
//!    [`KEEP_BUILDS_PER_AGENT`] per-build rows of each agent (by id),
//!    whatever the number of writers: on PostgreSQL the writes of one
//!    agent's events take turns (`backend/postgres/update_events.rs`).
//! 4. Health, per channel (agents reporting none under `""`): agents per
//!    build they run, most first; agents whose newest event about a build
//!    they do not run is a failure ([`FAILURE_KINDS`]), grouped by build,
//!    kind and exact reason, most first; `rolled_back` events of the last
//!    [`ROLLBACK_WINDOW_MS`]. The grouping and ordering is [`health`], the
//!    same for both backends.
//!
//! Events arrive on results and are stored inside the results ingest's
//! transaction on both backends (server/src/backend/sqlite/results.rs and
//! server/src/backend/postgres/results.rs call their backend's
//! `update_events::insert` on it), so a result and its event are stored
//! together or not at all. [`UpdateEventStore::record_update_event`] is
//! the same write in its own transaction.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;

use outrider_protocol::api::{BuildCount, ChannelHealth, FailureGroup, UpdateHealth, host_version};
use outrider_protocol::{Fingerprint, UpdateEvent};

use super::results::stored_text;
use super::{Backend, StoreError, dispatch};

/// Events kept per agent.
pub const KEEP_PER_AGENT: i64 = 100;
/// Builds per agent whose newest event is kept.
pub const KEEP_BUILDS_PER_AGENT: i64 = 20;
/// How far back rollbacks are counted.
pub const ROLLBACK_WINDOW_MS: i64 = 24 * 3_600 * 1_000;
/// Event kinds that mean the agent did not take (or gave up) a build, as
/// an SQL list (the same as `UpdateEvent::is_failure`; a test checks).
pub const FAILURE_KINDS: &str = "('refused', 'probation_failed', 'rolled_back', 'stub_refused')";
/// Longest stored reason; the stub's errors are one sentence.
pub const MAX_REASON_BYTES: usize = 1024;

/// Rule 1: `reason` as stored: without NUL ([`stored_text`]), then cut to
/// [`MAX_REASON_BYTES`] on a character boundary.
pub fn stored_reason(reason: &str) -> Cow<'_, str> {
    fn cut(reason: &str) -> &str {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        &reason[..end]
    }
    match stored_text(reason) {
        Cow::Borrowed(r) => Cow::Borrowed(cut(r)),
        Cow::Owned(r) => Cow::Owned(cut(&r).to_owned()),
    }
}

/// Rule 1: `event` as stored: every text without NUL ([`stored_text`]:
/// the stub's reason quotes errors, and PostgreSQL's TEXT refuses a NUL,
/// which would fail the whole results ingest the event arrives in), the
/// reason cut ([`stored_reason`]). The id is [`stored_id`]'s business.
pub fn stored_event(event: &UpdateEvent) -> UpdateEvent {
    let text = |s: &str| stored_text(s).into_owned();
    UpdateEvent {
        id: event.id,
        kind: text(&event.kind),
        at_unix_ms: event.at_unix_ms,
        build_sha256: event.build_sha256.as_deref().map(text),
        version: event.version.as_deref().map(text),
        to_sha256: event.to_sha256.as_deref().map(text),
        to_version: event.to_version.as_deref().map(text),
        reason: stored_reason(&event.reason).into_owned(),
    }
}

/// Rule 1: an event id as stored (ids beyond `i64` as `i64::MAX`).
pub fn stored_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// One row of the builds query: agents of one channel running one build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildRow {
    pub channel: Option<String>,
    pub build_version: Option<String>,
    pub agent_version: String,
    pub build_sha256: Option<String>,
    pub agents: u64,
}

/// Rule 4: the health from the three grouped queries' rows: `builds`,
/// `failing` (channel, group) and `rollbacks` (channel, count). Channels
/// by name; builds by agents (most first) then version, merging rows whose
/// [`host_version`] is the same; failure groups by agents then reason.
pub fn health(
    builds: Vec<BuildRow>,
    failing: Vec<(Option<String>, FailureGroup)>,
    rollbacks: Vec<(Option<String>, u64)>,
) -> UpdateHealth {
    let mut counts: BTreeMap<(String, String, Option<String>), u64> = BTreeMap::new();
    for row in builds {
        let version = host_version(row.build_version.as_deref(), &row.agent_version);
        *counts
            .entry((
                row.channel.unwrap_or_default(),
                version.to_owned(),
                row.build_sha256,
            ))
            .or_default() += row.agents;
    }
    let mut by_channel: BTreeMap<String, ChannelHealth> = BTreeMap::new();
    for ((name, version, build_sha256), agents) in counts {
        channel(&mut by_channel, &name).builds.push(BuildCount {
            version,
            build_sha256,
            agents,
        });
    }
    for (name, group) in failing {
        channel(&mut by_channel, &name.unwrap_or_default())
            .failing
            .push(group);
    }
    for (name, n) in rollbacks {
        channel(&mut by_channel, &name.unwrap_or_default()).rollbacks_24h += n;
    }
    let mut out: Vec<ChannelHealth> = by_channel.into_values().collect();
    for c in &mut out {
        c.builds
            .sort_by(|a, b| b.agents.cmp(&a.agents).then(a.version.cmp(&b.version)));
        c.failing
            .sort_by(|a, b| b.agents.cmp(&a.agents).then(a.reason.cmp(&b.reason)));
    }
    UpdateHealth { channels: out }
}

/// The entry of channel `name`, created empty when new.
fn channel<'a>(map: &'a mut BTreeMap<String, ChannelHealth>, name: &str) -> &'a mut ChannelHealth {
    map.entry(name.to_owned()).or_insert_with(|| ChannelHealth {
        channel: name.to_owned(),
        ..ChannelHealth::default()
    })
}

/// The update events area of the store. Times are Unix milliseconds given
/// by the caller.
pub trait UpdateEventStore {
    /// Stores `event` of `agent`, received at `now_ms`, and prunes the
    /// agent's old events (rules 1 to 3). False when it was stored already.
    /// On SQLite the server stores events inside the results ingest
    /// instead (module comment); this is the same write on its own.
    fn record_update_event(
        &self,
        agent: &Fingerprint,
        event: &UpdateEvent,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The stored events of `agent`, newest (highest id) first.
    fn update_events(
        &self,
        agent: &Fingerprint,
    ) -> impl Future<Output = Result<Vec<UpdateEvent>, StoreError>> + Send;

    /// The update health per channel at `now_ms` (rule 4): three grouped
    /// queries, whatever the fleet size.
    fn update_health(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<UpdateHealth, StoreError>> + Send;
}

impl UpdateEventStore for Backend {
    async fn record_update_event(
        &self,
        agent: &Fingerprint,
        event: &UpdateEvent,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.record_update_event(agent, event, now_ms))
    }

    async fn update_events(&self, agent: &Fingerprint) -> Result<Vec<UpdateEvent>, StoreError> {
        dispatch!(self, b => b.update_events(agent))
    }

    async fn update_health(&self, now_ms: i64) -> Result<UpdateHealth, StoreError> {
        dispatch!(self, b => b.update_health(now_ms))
    }
}

/// A stored count (`COUNT(*)`), checked.
pub(crate) fn stored_count(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Malformed {
        what: "count",
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        let long = "x".repeat(MAX_REASON_BYTES + 10);
        // 'é' is two bytes: one starting at the last byte kept is dropped.
        let straddling = format!("{}é", "x".repeat(MAX_REASON_BYTES - 1));
        // (reason, stored)
        let cases: [(&str, &str); 5] = [
            ("", ""),
            ("no route to host", "no route to host"),
            (&long, &long[..MAX_REASON_BYTES]),
            (&straddling, &straddling[..MAX_REASON_BYTES - 1]),
            ("bad\0byte", "bad\u{FFFD}byte"),
        ];
        for (reason, stored) in cases {
            assert_eq!(stored_reason(reason), stored, "{}", reason.len());
        }
    }

    #[test]
    fn nul_in_a_reason_is_replaced_before_the_cut() {
        // Three bytes each once replaced: the cut counts the stored text.
        let reason = "\0".repeat(MAX_REASON_BYTES);
        let stored = stored_reason(&reason);
        assert_eq!(stored.len(), MAX_REASON_BYTES - MAX_REASON_BYTES % 3);
        assert!(stored.chars().all(|c| c == '\u{FFFD}'));
    }

    #[test]
    fn every_text_of_an_event_is_stored_without_nul() {
        let event = UpdateEvent {
            id: 3,
            kind: "re\0fused".into(),
            at_unix_ms: 5,
            build_sha256: Some("ab\0".into()),
            version: Some("\0".into()),
            to_sha256: None,
            to_version: Some("1.0\0".into()),
            reason: "x\0y".into(),
        };
        assert_eq!(
            stored_event(&event),
            UpdateEvent {
                id: 3,
                kind: "re\u{FFFD}fused".into(),
                at_unix_ms: 5,
                build_sha256: Some("ab\u{FFFD}".into()),
                version: Some("\u{FFFD}".into()),
                to_sha256: None,
                to_version: Some("1.0\u{FFFD}".into()),
                reason: "x\u{FFFD}y".into(),
            }
        );
    }

    #[test]
    fn ids_beyond_i64_are_stored_as_its_maximum() {
        let cases = [
            (0, 0),
            (7, 7),
            (i64::MAX as u64, i64::MAX),
            (u64::MAX, i64::MAX),
        ];
        for (id, stored) in cases {
            assert_eq!(stored_id(id), stored, "{id}");
        }
    }

    #[test]
    fn the_failure_kinds_are_those_of_the_protocol() {
        let kinds = [
            "installed",
            "refused",
            "probation_passed",
            "probation_failed",
            "rolled_back",
            "stub_updated",
            "stub_refused",
            "from_a_newer_stub",
        ];
        for kind in kinds {
            let event = UpdateEvent {
                id: 1,
                kind: kind.into(),
                at_unix_ms: 0,
                build_sha256: None,
                version: None,
                to_sha256: None,
                to_version: None,
                reason: String::new(),
            };
            assert_eq!(
                FAILURE_KINDS.contains(&format!("'{kind}'")),
                event.is_failure(),
                "{kind}"
            );
        }
    }

    #[test]
    fn health_groups_by_channel_and_orders_by_agents() {
        let row = |channel: Option<&str>, bv: Option<&str>, av: &str, sha: &str, n: u64| BuildRow {
            channel: channel.map(Into::into),
            build_version: bv.map(Into::into),
            agent_version: av.into(),
            build_sha256: Some(sha.into()),
            agents: n,
        };
        let group = |version: &str, reason: &str, n: u64| FailureGroup {
            version: Some(version.into()),
            build_sha256: None,
            kind: "refused".into(),
            reason: reason.into(),
            agents: n,
        };
        let got = health(
            vec![
                row(Some("dev"), Some("1.0"), "0.9", "a", 1),
                row(Some("dev"), Some("1.1"), "0.9", "b", 3),
                // Same host version and build as the first: merged.
                row(Some("dev"), None, "1.0", "a", 1),
                row(None, Some("2.0"), "0.9", "c", 2),
            ],
            vec![
                (Some("dev".into()), group("1.2", "b-reason", 1)),
                (Some("dev".into()), group("1.2", "a-reason", 1)),
                (Some("dev".into()), group("1.3", "z-reason", 4)),
                (Some("beta".into()), group("3.0", "r", 1)),
            ],
            vec![(Some("dev".into()), 2), (Some("stable".into()), 1)],
        );
        let build = |version: &str, sha: &str, agents: u64| BuildCount {
            version: version.into(),
            build_sha256: Some(sha.into()),
            agents,
        };
        let expected = UpdateHealth {
            channels: vec![
                ChannelHealth {
                    channel: String::new(),
                    builds: vec![build("2.0", "c", 2)],
                    ..ChannelHealth::default()
                },
                ChannelHealth {
                    channel: "beta".into(),
                    failing: vec![group("3.0", "r", 1)],
                    ..ChannelHealth::default()
                },
                ChannelHealth {
                    channel: "dev".into(),
                    builds: vec![build("1.1", "b", 3), build("1.0", "a", 2)],
                    failing: vec![
                        group("1.3", "z-reason", 4),
                        group("1.2", "a-reason", 1),
                        group("1.2", "b-reason", 1),
                    ],
                    rollbacks_24h: 2,
                },
                ChannelHealth {
                    channel: "stable".into(),
                    rollbacks_24h: 1,
                    ..ChannelHealth::default()
                },
            ],
        };
        assert_eq!(got, expected);
    }
}
