//! The stub's update outcomes, on their way to the server.
//!
//! The stub keeps what happened to each update (installed, refused with
//! the exact error, probation passed or failed, rolled back, stub updated or
//! refused) and hands it over as JSON through `take_update_events` (ABI 1.1,
//! `outrider_abi::update_events`); it forgets what it handed over. The
//! library polls at start and every [`POLL_INTERVAL`], and queues each new
//! event as a result of the synthetic check `outrider.update` in the
//! outbox, so it is spooled and survives disconnects and swaps like any
//! result. Each result carries the structured event
//! (`CheckResult::update_event`) for servers that store it, and a readable
//! summary for those that do not.
//!
//! Invariants:
//! - de-duplicated by id: the highest id queued travels in the state blob
//!   (`StateBlob::update_events_seen`), so an event handed over twice (by a
//!   stub that crashed before forgetting it) is queued once;
//! - unknown kinds pass through unchanged (reported as WARNING);
//! - a malformed buffer is logged once as a warning and dropped: a bad
//!   stub cannot crash or stall the agent;
//! - bounded: at most [`MAX_EVENTS_PER_POLL`] events are taken per poll.

use std::sync::Arc;
use std::time::Duration;

use outrider_protocol::{CheckState, UpdateEvent};
use tokio_util::sync::CancellationToken;

use crate::host::HostHooks;
use crate::outbox::SharedOutbox;
use crate::runner::RunOutcome;

/// How often the host is asked for new events.
pub use crate::config::UPDATE_EVENTS_POLL_INTERVAL as POLL_INTERVAL;

/// Most events queued from one buffer; the rest are dropped with a warning
/// (a stub never keeps that many).
pub const MAX_EVENTS_PER_POLL: usize = 256;

/// Longest `reason` kept in a summary.
const MAX_REASON_CHARS: usize = 512;

/// Why a buffer of events was dropped.
#[derive(Debug, thiserror::Error)]
#[error("the stub's update events are not a JSON array of events: {0}")]
pub struct MalformedEvents(#[from] serde_json::Error);

/// Parses the host's buffer: a JSON array of event objects (unknown fields
/// ignored, unknown kinds kept).
pub fn parse(json: &[u8]) -> Result<Vec<UpdateEvent>, MalformedEvents> {
    Ok(serde_json::from_slice(json)?)
}

/// The events of `events` with an id above `seen`, in id order, and the new
/// highest id seen.
pub fn new_events(seen: u64, mut events: Vec<UpdateEvent>) -> (Vec<UpdateEvent>, u64) {
    events.retain(|e| e.id > seen);
    events.sort_by_key(|e| e.id);
    events.dedup_by_key(|e| e.id);
    let highest = events.last().map_or(seen, |e| e.id);
    (events, highest)
}

/// The state and readable summary of an event's `outrider.update` result.
pub fn outcome(event: &UpdateEvent) -> (CheckState, String) {
    let build = match (&event.version, &event.build_sha256) {
        (Some(v), Some(sha)) => format!("{v} ({})", short(sha)),
        (Some(v), None) => v.clone(),
        (None, Some(sha)) => short(sha).to_owned(),
        (None, None) => "a build".to_owned(),
    };
    let reason: String = event.reason.chars().take(MAX_REASON_CHARS).collect();
    let because = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    let to = event
        .to_version
        .clone()
        .or_else(|| event.to_sha256.as_deref().map(|s| short(s).to_owned()))
        .unwrap_or_else(|| "the previous build".to_owned());
    let state = if event.is_failure() {
        CheckState::Warning
    } else {
        match event.kind.as_str() {
            "installed" | "probation_passed" | "stub_updated" => CheckState::Ok,
            _ => CheckState::Warning,
        }
    };
    let summary = match event.kind.as_str() {
        "installed" => format!("installed {build}{because}"),
        "refused" => format!("refused {build}{because}"),
        "probation_passed" => format!("{build} passed probation{because}"),
        "probation_failed" => format!("{build} failed probation{because}"),
        "rolled_back" => format!("rolled back from {build} to {to}{because}"),
        "stub_updated" => format!("stub updated to {build}{because}"),
        "stub_refused" => format!("refused stub {build}{because}"),
        other => format!("update event {other:?} about {build}{because}"),
    };
    (state, summary)
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Takes the host's pending events once: parsed, de-duplicated against
/// `seen` and queued in `outbox`. Returns the new highest id seen.
pub fn take_and_queue(hooks: &dyn HostHooks, outbox: &SharedOutbox, seen: u64) -> u64 {
    let Some(json) = hooks.take_update_events() else {
        return seen;
    };
    let mut events = match parse(&json) {
        Ok(events) => events,
        Err(e) => {
            hooks.warn(&format!("{e}; {} bytes dropped", json.len()));
            return seen;
        }
    };
    if events.len() > MAX_EVENTS_PER_POLL {
        hooks.warn(&format!(
            "the stub handed over {} update events; only the first {MAX_EVENTS_PER_POLL} are \
             reported",
            events.len()
        ));
        events.truncate(MAX_EVENTS_PER_POLL);
    }
    let (events, highest) = new_events(seen, events);
    for event in events {
        let (state, summary) = outcome(&event);
        hooks.info(&format!("update event {}: {summary}", event.id));
        let mut note = RunOutcome::note(state, summary);
        note.started_at_ms = event.at_unix_ms;
        note.update_event = Some(Box::new(event));
        outbox.push(crate::agent::UPDATE_EVENT_CHECK, note);
    }
    highest
}

/// Polls the host every `every` ([`POLL_INTERVAL`] in production) until
/// `stop`; returns the highest id seen, for the state blob.
pub async fn poll(
    hooks: Arc<dyn HostHooks>,
    outbox: Arc<SharedOutbox>,
    mut seen: u64,
    every: Duration,
    stop: CancellationToken,
) -> u64 {
    let start = tokio::time::Instant::now() + every;
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => seen = take_and_queue(hooks.as_ref(), &outbox, seen),
        }
    }
    // A last look, so an event of the last seconds is in the handed-over
    // state rather than left to the next generation's first poll.
    take_and_queue(hooks.as_ref(), &outbox, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, kind: &str) -> UpdateEvent {
        UpdateEvent {
            id,
            kind: kind.into(),
            at_unix_ms: 1_764_820_000_000,
            build_sha256: Some("ab12".repeat(16)),
            version: Some("1.4.0".into()),
            to_sha256: None,
            to_version: None,
            reason: String::new(),
        }
    }

    #[test]
    fn parse_keeps_unknown_kinds_and_refuses_garbage() {
        let events = parse(
            br#"[{"id":7,"kind":"refused","at_unix_ms":5,"version":"1.4.0",
                  "reason":"hash mismatch","new_field":true},
                 {"id":8,"kind":"teleported","at_unix_ms":6}]"#,
        )
        .unwrap();
        assert_eq!(events[0].reason, "hash mismatch");
        assert_eq!(events[1].kind, "teleported");
        for bad in [&b"not json"[..], br#"{"id":1}"#, br#"[{"kind":"refused"}]"#] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn new_events_drops_what_was_seen_and_sorts() {
        let ids = |events: &[UpdateEvent]| events.iter().map(|e| e.id).collect::<Vec<_>>();
        let table: [(u64, &[u64], &[u64], u64); 5] = [
            (0, &[1, 2], &[1, 2], 2),
            (2, &[1, 2], &[], 2),
            (2, &[4, 3, 2], &[3, 4], 4),
            (5, &[], &[], 5),
            (0, &[3, 3], &[3], 3),
        ];
        for (seen, given, want, highest) in table {
            let given = given.iter().map(|&id| event(id, "installed")).collect();
            let (got, high) = new_events(seen, given);
            assert_eq!((ids(&got), high), (want.to_vec(), highest), "seen {seen}");
        }
    }

    #[test]
    fn outcomes_name_the_build_and_the_exact_reason() {
        let mut refused = event(1, "refused");
        refused.reason = "hash mismatch: expected ab12…, got 9f3c…".into();
        let mut rolled = event(2, "rolled_back");
        rolled.to_version = Some("1.3.0".into());
        rolled.reason = "health FAILED".into();
        let table = [
            (
                event(3, "installed"),
                CheckState::Ok,
                "installed 1.4.0 (ab12ab12ab12)",
            ),
            (
                refused,
                CheckState::Warning,
                "refused 1.4.0 (ab12ab12ab12): hash mismatch: expected ab12…, got 9f3c…",
            ),
            (
                rolled,
                CheckState::Warning,
                "rolled back from 1.4.0 (ab12ab12ab12) to 1.3.0: health FAILED",
            ),
            (
                event(4, "probation_passed"),
                CheckState::Ok,
                "1.4.0 (ab12ab12ab12) passed probation",
            ),
            (
                event(5, "probation_failed"),
                CheckState::Warning,
                "1.4.0 (ab12ab12ab12) failed probation",
            ),
            (
                event(6, "stub_updated"),
                CheckState::Ok,
                "stub updated to 1.4.0 (ab12ab12ab12)",
            ),
            (
                event(7, "stub_refused"),
                CheckState::Warning,
                "refused stub 1.4.0 (ab12ab12ab12)",
            ),
            (
                event(8, "teleported"),
                CheckState::Warning,
                "update event \"teleported\" about 1.4.0 (ab12ab12ab12)",
            ),
        ];
        for (e, state, summary) in table {
            assert_eq!(outcome(&e), (state, summary.to_owned()), "{}", e.kind);
        }
    }
}
