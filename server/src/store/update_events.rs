//! The stub's update outcomes per agent (`update_events.sql`), and the
//! per-channel update health that `outrider release status` shows.
//!
//! Events arrive on `outrider.update` results and are stored in the same
//! transaction as the result (`results.rs`), once per `(agent, id)`.
//! Retention is bounded: the newest [`KEEP_PER_AGENT`] events and the
//! newest [`KEEP_BUILDS_PER_AGENT`] per-build summaries of each agent.

use std::collections::BTreeMap;

use outrider_protocol::UpdateEvent;
use outrider_protocol::api::{BuildCount, ChannelHealth, FailureGroup, UpdateHealth, host_version};
use rusqlite::{Transaction, params};

use super::{Store, now_ms};

/// Events kept per agent.
pub const KEEP_PER_AGENT: i64 = 100;
/// Builds per agent whose newest event is kept.
pub const KEEP_BUILDS_PER_AGENT: i64 = 20;
/// How far back rollbacks are counted.
const ROLLBACK_WINDOW_MS: i64 = 24 * 3_600 * 1_000;
/// Event kinds that mean the agent did not take (or gave up) a build.
const FAILURE_KINDS: &str = "('refused', 'probation_failed', 'rolled_back', 'stub_refused')";

/// Longest stored reason; the stub's errors are one sentence.
const MAX_REASON_BYTES: usize = 1024;

/// Stores `event` of agent `fp` (ignored if already stored) and prunes the
/// agent's old events.
pub(super) fn insert(
    tx: &Transaction<'_>,
    fp: &str,
    event: &UpdateEvent,
    now: i64,
) -> anyhow::Result<()> {
    let id = i64::try_from(event.id).unwrap_or(i64::MAX);
    let mut reason = event.reason.as_str();
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO update_events (fingerprint, id, kind, at_ms, build_sha256, version,
                                              to_sha256, to_version, reason, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            fp,
            id,
            event.kind,
            event.at_unix_ms,
            event.build_sha256,
            event.version,
            event.to_sha256,
            event.to_version,
            reason,
            now
        ],
    )?;
    if inserted == 0 {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO update_latest (fingerprint, build_sha256, id, kind, version, reason, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (fingerprint, build_sha256) DO UPDATE SET
             id = excluded.id, kind = excluded.kind, version = excluded.version,
             reason = excluded.reason, at_ms = excluded.at_ms
         WHERE excluded.id > update_latest.id",
        params![
            fp,
            event.build_sha256.as_deref().unwrap_or(""),
            id,
            event.kind,
            event.version,
            reason,
            event.at_unix_ms
        ],
    )?;
    tx.execute(
        "DELETE FROM update_events WHERE fingerprint = ?1 AND id < (
             SELECT id FROM update_events WHERE fingerprint = ?1
             ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![fp, KEEP_PER_AGENT - 1],
    )?;
    tx.execute(
        "DELETE FROM update_latest WHERE fingerprint = ?1 AND id < (
             SELECT id FROM update_latest WHERE fingerprint = ?1
             ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![fp, KEEP_BUILDS_PER_AGENT - 1],
    )?;
    Ok(())
}

impl Store {
    /// Per channel: agents per build, agents failing to take a build they
    /// do not run grouped by build, kind and reason, and rollbacks of the
    /// last 24 hours. Three grouped queries, whatever the fleet size.
    pub async fn update_health(&self) -> anyhow::Result<UpdateHealth> {
        self.read(|c| {
            let mut builds: BTreeMap<(String, String, Option<String>), u64> = BTreeMap::new();
            {
                let mut stmt = c.prepare(
                    "SELECT channel, build_version, agent_version, build_sha256, COUNT(*)
                     FROM agents GROUP BY channel, build_version, agent_version, build_sha256",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?;
                for row in rows {
                    let (channel, build_version, agent_version, sha, n) = row?;
                    let version = host_version(build_version.as_deref(), &agent_version);
                    *builds
                        .entry((channel.unwrap_or_default(), version.to_owned(), sha))
                        .or_default() += n as u64;
                }
            }
            let mut failing = Vec::new();
            {
                let mut stmt = c.prepare(&format!(
                    "SELECT a.channel, l.version, NULLIF(l.build_sha256, ''), l.kind, l.reason,
                            COUNT(*)
                     FROM update_latest l JOIN agents a ON a.fingerprint = l.fingerprint
                     WHERE l.kind IN {FAILURE_KINDS}
                       AND (a.build_sha256 IS NULL OR a.build_sha256 != l.build_sha256)
                     GROUP BY a.channel, l.version, l.build_sha256, l.kind, l.reason"
                ))?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                        FailureGroup {
                            version: r.get(1)?,
                            build_sha256: r.get(2)?,
                            kind: r.get(3)?,
                            reason: r.get(4)?,
                            agents: r.get::<_, i64>(5)? as u64,
                        },
                    ))
                })?;
                for row in rows {
                    failing.push(row?);
                }
            }
            let mut rollbacks = Vec::new();
            {
                let mut stmt = c.prepare(
                    "SELECT a.channel, COUNT(*)
                     FROM update_events e JOIN agents a ON a.fingerprint = e.fingerprint
                     WHERE e.kind = 'rolled_back' AND e.at_ms >= ?1
                     GROUP BY a.channel",
                )?;
                let rows = stmt.query_map([now_ms() - ROLLBACK_WINDOW_MS], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                        r.get::<_, i64>(1)? as u64,
                    ))
                })?;
                for row in rows {
                    rollbacks.push(row?);
                }
            }
            let mut by_channel: BTreeMap<String, ChannelHealth> = BTreeMap::new();
            for ((name, version, build_sha256), agents) in builds {
                channel(&mut by_channel, &name).builds.push(BuildCount {
                    version,
                    build_sha256,
                    agents,
                });
            }
            for (name, group) in failing {
                channel(&mut by_channel, &name).failing.push(group);
            }
            for (name, n) in rollbacks {
                channel(&mut by_channel, &name).rollbacks_24h = n;
            }
            let mut out: Vec<ChannelHealth> = by_channel.into_values().collect();
            for c in &mut out {
                c.builds
                    .sort_by(|a, b| b.agents.cmp(&a.agents).then(a.version.cmp(&b.version)));
                c.failing
                    .sort_by(|a, b| b.agents.cmp(&a.agents).then(a.reason.cmp(&b.reason)));
            }
            Ok(UpdateHealth { channels: out })
        })
        .await
    }
}

/// The entry of channel `name`, created empty when new.
fn channel<'a>(map: &'a mut BTreeMap<String, ChannelHealth>, name: &str) -> &'a mut ChannelHealth {
    map.entry(name.to_owned()).or_insert_with(|| ChannelHealth {
        channel: name.to_owned(),
        ..ChannelHealth::default()
    })
}

#[cfg(test)]
mod tests {
    use outrider_protocol::{CheckResult, CheckState};

    use super::*;
    use crate::store::test_support::store_with_agent;

    #[tokio::test]
    async fn retention_keeps_the_newest_events_of_each_agent() {
        let (_dir, store, fp) = store_with_agent("web-1").await;
        let results: Vec<CheckResult> = (1..=150u64)
            .map(|i| CheckResult {
                seq: i,
                check: "outrider.update".into(),
                state: CheckState::Warning,
                summary: format!("event {i}"),
                long_output: String::new(),
                perfdata: Vec::new(),
                unknown_perfdata: Vec::new(),
                started_at_ms: 1,
                duration_ms: 0,
                update_event: Some(Box::new(UpdateEvent {
                    id: i,
                    kind: "refused".into(),
                    at_unix_ms: 1,
                    build_sha256: Some(format!("{:064x}", i % 30)),
                    version: Some(format!("1.{i}")),
                    to_sha256: None,
                    to_version: None,
                    reason: "x".repeat(MAX_REASON_BYTES + 10),
                })),
            })
            .collect();
        store.ingest(&fp, results).await.unwrap();
        let (events, oldest, builds, longest): (i64, i64, i64, i64) = store
            .call(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT COUNT(*) FROM update_events), (SELECT MIN(id) FROM update_events),
                            (SELECT COUNT(*) FROM update_latest),
                            (SELECT MAX(LENGTH(reason)) FROM update_events)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!((events, oldest), (KEEP_PER_AGENT, 150 - KEEP_PER_AGENT + 1));
        assert_eq!(builds, KEEP_BUILDS_PER_AGENT);
        assert_eq!(longest, MAX_REASON_BYTES as i64);
    }
}
