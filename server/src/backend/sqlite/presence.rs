//! The presence area on SQLite: each method reads the rows it decides on,
//! applies the rules of `backend/presence.rs` and writes, in one
//! immediate transaction (SQLite's single writer makes that atomic).

use outrider_protocol::Fingerprint;
use rusqlite::{OptionalExtension, Transaction, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::presence::{
    Heartbeat, Lease, NodeId, PresenceStore, Session, Swept, fences, foreign_lease, lost_leases,
    next_generation, stored_agent, stored_generation, stored_node, swept,
};

const SESSION_COLUMNS: &str =
    "SELECT node_id, generation, connected_at_ms, last_seen_ms, ended_at_ms FROM sessions";

fn session_from_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, i64, i64, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn session_of(tx: &Transaction<'_>, agent: &str) -> Result<Option<Session>, StoreError> {
    let row = tx
        .query_row(
            &format!("{SESSION_COLUMNS} WHERE agent_fp = ?1"),
            [agent],
            session_from_row,
        )
        .optional()?;
    row.map(
        |(node, generation, connected_at_ms, last_seen_ms, ended_at_ms)| {
            Ok(Session {
                node: stored_node(node)?,
                generation: stored_generation(generation)?,
                connected_at_ms,
                last_seen_ms,
                ended_at_ms,
            })
        },
    )
    .transpose()
}

fn node_seen(tx: &Transaction<'_>, node: &NodeId, now_ms: i64) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO nodes (node_id, last_seen_ms) VALUES (?1, ?2)
         ON CONFLICT (node_id) DO UPDATE SET last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
        params![node.as_str(), now_ms],
    )
}

impl PresenceStore for SqliteBackend {
    async fn connect(
        &self,
        agent: &Fingerprint,
        node: &NodeId,
        now_ms: i64,
    ) -> Result<Lease, StoreError> {
        let (agent, node) = (agent.clone(), node.clone());
        self.write(move |tx| {
            let current = session_of(tx, agent.as_str())?.map(|s| s.generation);
            let generation = next_generation(current);
            tx.execute(
                "INSERT INTO sessions (agent_fp, node_id, generation, connected_at_ms, last_seen_ms, ended_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4, NULL)
                 ON CONFLICT (agent_fp) DO UPDATE SET
                     node_id = excluded.node_id, generation = excluded.generation,
                     connected_at_ms = excluded.connected_at_ms,
                     last_seen_ms = excluded.last_seen_ms, ended_at_ms = NULL",
                params![agent.as_str(), node.as_str(), generation as i64, now_ms],
            )?;
            Ok(Lease {
                agent,
                node,
                generation,
            })
        })
        .await
    }

    async fn disconnect(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.write(move |tx| {
            if !fences(session_of(tx, lease.agent.as_str())?.as_ref(), &lease) {
                return Ok(false);
            }
            tx.execute(
                "UPDATE sessions SET ended_at_ms = ?2, last_seen_ms = MAX(last_seen_ms, ?2)
                 WHERE agent_fp = ?1",
                params![lease.agent.as_str(), now_ms],
            )?;
            Ok(true)
        })
        .await
    }

    async fn heartbeat(
        &self,
        node: &NodeId,
        live: &[Lease],
        now_ms: i64,
    ) -> Result<Heartbeat, StoreError> {
        if let Some(e) = foreign_lease(node, live) {
            return Err(e);
        }
        let (node, live) = (node.clone(), live.to_vec());
        self.write(move |tx| {
            node_seen(tx, &node, now_ms)?;
            let mut refreshed = Vec::with_capacity(live.len());
            for lease in &live {
                if fences(session_of(tx, lease.agent.as_str())?.as_ref(), lease) {
                    tx.execute(
                        "UPDATE sessions SET last_seen_ms = MAX(last_seen_ms, ?2) WHERE agent_fp = ?1",
                        params![lease.agent.as_str(), now_ms],
                    )?;
                    refreshed.push(lease.clone());
                }
            }
            Ok(Heartbeat {
                refreshed: refreshed.len(),
                lost: lost_leases(&live, &refreshed),
            })
        })
        .await
    }

    async fn sweep(&self, now_ms: i64, silence_ms: i64) -> Result<Vec<Swept>, StoreError> {
        let cutoff = now_ms - silence_ms;
        self.write(move |tx| {
            let mut stmt = tx.prepare(
                "SELECT agent_fp, node_id, generation, connected_at_ms, last_seen_ms
                 FROM sessions WHERE ended_at_ms IS NULL",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut ended = Vec::new();
            for (agent, node, generation, connected_at_ms, last_seen_ms) in rows {
                let session = Session {
                    node: stored_node(node)?,
                    generation: stored_generation(generation)?,
                    connected_at_ms,
                    last_seen_ms,
                    ended_at_ms: None,
                };
                if swept(&session, cutoff) {
                    tx.execute(
                        "UPDATE sessions SET ended_at_ms = ?2 WHERE agent_fp = ?1",
                        params![agent, now_ms],
                    )?;
                    ended.push(Swept {
                        agent: stored_agent(agent)?,
                        node: session.node,
                        generation: session.generation,
                    });
                }
            }
            Ok(ended)
        })
        .await
    }

    /// Through the writer, not the store's read-only connections: one row,
    /// read rarely (no page shows it yet); the areas with heavy reads will
    /// bring a typed read path.
    async fn session(&self, agent: &Fingerprint) -> Result<Option<Session>, StoreError> {
        let agent = agent.clone();
        self.write(move |tx| session_of(tx, agent.as_str())).await
    }
}
