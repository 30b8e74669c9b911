//! Agents: registration with key pinning, removal, and presence.
//!
//! An agent is admitted either by its pinned key or, the first time, by an
//! enrollment token ([`Admission`]). Only a token admission inserts a row
//! (pinning the key); a pinned admission updates the existing row, and finds
//! none when the agent was removed meanwhile: removal cannot be undone by a
//! session that authenticated just before it. The token's tag allow-list is
//! stored with the agent, and every Hello's tags are split against it
//! ([`split_tags`]): tags outside it do not select checks.

use anyhow::Context;
use outrider_protocol::Fingerprint;
use outrider_protocol::api::{AgentInfo, Presence, host_version};
use rusqlite::{OptionalExtension, params};

use super::checks::{effective_tags, json_tags};
use super::tokens::TokenGrant;
use super::{Store, now_ms};

/// What a verified `Hello` tells the store.
#[derive(Clone, Debug)]
pub struct Registration {
    pub fingerprint: Fingerprint,
    pub public_key: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub build_sha256: Option<String>,
    pub build_version: Option<String>,
    /// Tags the agent announced (already validated and normalised).
    pub tags: Vec<String>,
    /// How the agent proved it may register.
    pub admission: Admission,
    /// Version of the agent's stub, when reported.
    pub stub_version: Option<String>,
    /// Update channel of the agent, when reported.
    pub channel: Option<String>,
    /// The protocol version negotiated for this session.
    pub protocol_version: u32,
}

/// How an agent was let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its key is pinned already: it keeps the allow-list it enrolled with.
    Pinned,
    /// First registration with an enrollment token.
    Enrolled(TokenGrant),
}

/// What [`Store::register`] reports about a registered agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// Highest result sequence already stored for it.
    pub acked_seq: u64,
    /// Declared tags outside its allow-list, ignored.
    pub refused_tags: Vec<String>,
}

/// Splits declared `tags` into those `allowed` (`None` = any) and those
/// refused, both in the order given.
pub fn split_tags(tags: &[String], allowed: Option<&[String]>) -> (Vec<String>, Vec<String>) {
    match allowed {
        None => (tags.to_vec(), Vec::new()),
        Some(allowed) => tags.iter().cloned().partition(|t| allowed.contains(t)),
    }
}

impl Store {
    /// The pinned public key (hex) of `fingerprint`, if the agent is known.
    pub async fn pinned_key(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<String>> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT public_key FROM agents WHERE fingerprint = ?1",
                [fp],
                |r| r.get(0),
            )
            .optional()
            .context("looking up the agent")
        })
        .await
    }

    /// Records a successful registration and marks the agent connected:
    /// an [`Admission::Enrolled`] agent is inserted (pinning its key, or
    /// refreshing a row a concurrent enrollment made), an
    /// [`Admission::Pinned`] one is updated. `None`: the pinned agent's row
    /// is gone or holds another key (removed since it authenticated).
    pub async fn register(&self, reg: Registration) -> anyhow::Result<Option<Registered>> {
        self.call(move |c| {
            let now = now_ms();
            let fp = reg.fingerprint.as_str();
            let tx = c.transaction()?;
            let allowed: Option<Vec<String>> = match &reg.admission {
                Admission::Enrolled(grant) => grant.allowed_tags.clone(),
                Admission::Pinned => {
                    let row: Option<Option<String>> = tx
                        .query_row(
                            "SELECT allowed_tags FROM agents WHERE fingerprint = ?1 AND public_key = ?2",
                            params![fp, reg.public_key],
                            |r| r.get(0),
                        )
                        .optional()?;
                    match row {
                        Some(allowed) => allowed.map(json_tags),
                        None => return Ok(None),
                    }
                }
            };
            let (kept, refused) = split_tags(&reg.tags, allowed.as_deref());
            if let Admission::Enrolled(grant) = &reg.admission {
                tx.execute(
                    "INSERT INTO agents (fingerprint, public_key, hostname, os, arch, agent_version,
                                         presence, presence_since_ms, registered_at_ms, last_seen_ms,
                                         enrollment_token_id, allowed_tags, acked_seq)
                     VALUES (?1, ?2, '', '', '', '', 'connected', ?3, ?3, ?3, ?4, ?5,
                             -- A removed agent enrolling again continues
                             -- above the results still stored for it.
                             COALESCE((SELECT MAX(seq) FROM results WHERE fingerprint = ?1), 0))
                     ON CONFLICT (fingerprint) DO UPDATE SET
                         public_key = excluded.public_key,
                         enrollment_token_id = excluded.enrollment_token_id,
                         allowed_tags = excluded.allowed_tags",
                    params![
                        fp,
                        reg.public_key,
                        now,
                        grant.id,
                        allowed.as_ref().map(serde_json::to_string).transpose()?
                    ],
                )
                .context("registering the agent")?;
            }
            tx.execute(
                "UPDATE agents SET
                     hostname = ?2, os = ?3, arch = ?4, agent_version = ?5, last_seen_ms = ?6,
                     build_sha256 = ?7, build_version = ?8, hello_tags = ?9, refused_tags = ?10,
                     stub_version = ?11, channel = ?12, protocol_version = ?13,
                     presence_since_ms = CASE WHEN presence = 'connected' THEN presence_since_ms
                                              ELSE ?6 END,
                     presence = 'connected'
                 WHERE fingerprint = ?1",
                params![
                    fp,
                    reg.hostname,
                    reg.os,
                    reg.arch,
                    reg.agent_version,
                    now,
                    reg.build_sha256,
                    reg.build_version,
                    serde_json::to_string(&kept)?,
                    serde_json::to_string(&refused)?,
                    reg.stub_version,
                    reg.channel,
                    reg.protocol_version
                ],
            )
            .context("registering the agent")?;
            let acked: i64 = tx.query_row(
                "SELECT acked_seq FROM agents WHERE fingerprint = ?1",
                [fp],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(Some(Registered {
                acked_seq: acked as u64,
                refused_tags: refused,
            }))
        })
        .await
    }

    /// Removes agent `fingerprint`: unpins its key (coming back needs an
    /// enrollment token) and drops its latest results, so it no longer
    /// shows among the checks; older results and metrics age out with
    /// retention. False when no such agent exists.
    pub async fn remove_agent(&self, fingerprint: &Fingerprint) -> anyhow::Result<bool> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM agents WHERE fingerprint = ?1", [&fp])?;
            tx.execute("DELETE FROM latest_results WHERE fingerprint = ?1", [&fp])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    /// Sets the presence of an agent. Returns the time of the change, or
    /// `None` when it already was in that state.
    pub async fn set_presence(
        &self,
        fingerprint: &Fingerprint,
        presence: Presence,
    ) -> anyhow::Result<Option<i64>> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let now = now_ms();
            let changed = c
                .execute(
                    "UPDATE agents SET presence = ?2, presence_since_ms = ?3
                     WHERE fingerprint = ?1 AND presence != ?2",
                    params![fp, presence.as_str(), now],
                )
                .context("updating presence")?;
            Ok((changed > 0).then_some(now))
        })
        .await
    }

    /// Replaces the server-assigned tags of an agent; false when unknown.
    pub async fn set_server_tags(
        &self,
        fingerprint: &Fingerprint,
        tags: Vec<String>,
    ) -> anyhow::Result<bool> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE agents SET server_tags = ?2 WHERE fingerprint = ?1",
                params![fp, serde_json::to_string(&tags)?],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Allows or forbids ad-hoc scripts on an agent; false when unknown.
    pub async fn set_allow_adhoc(
        &self,
        fingerprint: &Fingerprint,
        allow: bool,
    ) -> anyhow::Result<bool> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE agents SET allow_adhoc = ?2 WHERE fingerprint = ?1",
                params![fp, allow],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// One agent, if known.
    pub async fn agent(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<AgentInfo>> {
        let fp = fingerprint.to_string();
        self.read(move |c| {
            Ok(c.query_row(
                &format!("{AGENT_COLUMNS} WHERE fingerprint = ?1"),
                [fp],
                agent_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// At startup: agents that were connected to the previous server process
    /// are not connected to this one until they come back.
    pub async fn mark_connected_down(&self) -> anyhow::Result<usize> {
        self.call(|c| {
            Ok(c.execute(
                "UPDATE agents SET presence = 'down', presence_since_ms = ?1 WHERE presence = 'connected'",
                [now_ms()],
            )?)
        })
        .await
    }

    /// Every agent, ordered by hostname then fingerprint.
    pub async fn agents(&self) -> anyhow::Result<Vec<AgentInfo>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!("{AGENT_COLUMNS} ORDER BY hostname, fingerprint"))?;
            let rows = stmt.query_map([], agent_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

/// The query behind [`agent_from_row`].
const AGENT_COLUMNS: &str = "SELECT fingerprint, hostname, os, arch, agent_version, build_sha256,
        build_version, presence, presence_since_ms, registered_at_ms, last_seen_ms,
        hello_tags, server_tags, allow_adhoc, config_version, stub_version, channel,
        protocol_version, enrollment_token_id, allowed_tags, refused_tags
     FROM agents";

/// Maps a row of [`AGENT_COLUMNS`]; a malformed stored value is a
/// conversion error naming the column, not a panic.
fn agent_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentInfo> {
    let server_tags = json_tags(r.get(12)?);
    let agent_version: String = r.get(4)?;
    let build_version: Option<String> = r.get(6)?;
    Ok(AgentInfo {
        version: host_version(build_version.as_deref(), &agent_version).to_owned(),
        fingerprint: super::parsed_column(r, 0)?,
        hostname: r.get(1)?,
        os: r.get(2)?,
        arch: r.get(3)?,
        agent_version,
        build_sha256: r.get(5)?,
        build_version,
        presence: super::parsed_column(r, 7)?,
        presence_since_ms: r.get(8)?,
        registered_at_ms: r.get(9)?,
        last_seen_ms: r.get(10)?,
        tags: effective_tags(&json_tags(r.get(11)?), &server_tags),
        server_tags,
        allow_adhoc: r.get(13)?,
        config_version: r.get::<_, i64>(14)? as u64,
        stub_version: r.get(15)?,
        channel: r.get(16)?,
        protocol_version: r.get::<_, Option<i64>>(17)?.map(|v| v as u32),
        enrollment_token: r.get(18)?,
        allowed_tags: r.get::<_, Option<String>>(19)?.map(json_tags),
        refused_tags: json_tags(r.get(20)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_pinned_admission_cannot_bring_back_a_removed_agent() {
        use crate::store::test_support::{registration, store_with_agent};
        let (_dir, store, fp) = store_with_agent("web-1").await;
        let pinned = Registration {
            admission: Admission::Pinned,
            ..registration(&fp, "web-1", &["db"])
        };
        // Known agent: updated; its token allowed any tag.
        let registered = store.register(pinned.clone()).await.unwrap().unwrap();
        assert_eq!(registered.refused_tags, Vec::<String>::new());
        // Another key under the same fingerprint: not this agent.
        let forged = Registration {
            public_key: "11".repeat(32),
            ..pinned.clone()
        };
        assert_eq!(store.register(forged).await.unwrap(), None);
        // Removed (say, while this session authenticated): no row again.
        assert!(store.remove_agent(&fp).await.unwrap());
        assert_eq!(store.register(pinned).await.unwrap(), None);
        assert_eq!(store.pinned_key(&fp).await.unwrap(), None);
        assert!(!store.remove_agent(&fp).await.unwrap());
    }

    #[test]
    fn declared_tags_are_split_by_the_allow_list() {
        // (declared, allowed, kept, refused)
        type Case<'a> = (
            &'a [&'a str],
            Option<&'a [&'a str]>,
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (&["web", "db"], None, &["web", "db"], &[]),
            (&["web", "db"], Some(&["web"]), &["web"], &["db"]),
            (&["db"], Some(&[]), &[], &["db"]),
            (&[], Some(&["web"]), &[], &[]),
            (&["web"], Some(&["web", "db"]), &["web"], &[]),
        ];
        for (declared, allowed, kept, refused) in cases {
            let allowed = allowed.map(tags);
            assert_eq!(
                split_tags(&tags(declared), allowed.as_deref()),
                (tags(kept), tags(refused)),
                "{declared:?} within {allowed:?}"
            );
        }
    }
}
