//! The presence area on PostgreSQL: each rule of `backend/presence.rs` is
//! one statement, so it holds with many nodes writing at once:
//! - connect: `INSERT … ON CONFLICT DO UPDATE SET generation =
//!   sessions.generation + 1`: concurrent connects of one agent queue on
//!   its row and each gets its own generation; the last to commit, which
//!   has the highest, is the owner.
//! - disconnect and heartbeat: `UPDATE … WHERE node_id = $mine AND
//!   generation = $mine AND ended_at_ms IS NULL`, re-checked on the row's
//!   newest version after a wait, so a stale node changes nothing.
//! - sweep: locks the silent sessions with `FOR UPDATE SKIP LOCKED`: a
//!   session another sweep (or a connect) holds is skipped, so concurrent
//!   sweeps end each session once and a sweep never waits behind (nor
//!   deadlocks with) a node's heartbeat.

use outrider_protocol::Fingerprint;

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::presence::{
    HEARTBEAT_BATCH, Heartbeat, Lease, NodeId, PresenceStore, Session, Swept, foreign_lease,
    lost_leases, stored_agent, stored_generation, stored_node,
};

impl PresenceStore for PgBackend {
    async fn connect(
        &self,
        agent: &Fingerprint,
        node: &NodeId,
        now_ms: i64,
    ) -> Result<Lease, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO sessions (agent_fp, node_id, generation, connected_at_ms, last_seen_ms, ended_at_ms)
                 VALUES ($1, $2, 1, $3, $3, NULL)
                 ON CONFLICT (agent_fp) DO UPDATE SET
                     node_id = excluded.node_id, generation = sessions.generation + 1,
                     connected_at_ms = excluded.connected_at_ms,
                     last_seen_ms = excluded.last_seen_ms, ended_at_ms = NULL
                 RETURNING generation",
            )
            .await?;
        let row = client
            .query_one(&stmt, &[&agent.as_str(), &node.as_str(), &now_ms])
            .await?;
        Ok(Lease {
            agent: agent.clone(),
            node: node.clone(),
            generation: stored_generation(row.get(0))?,
        })
    }

    async fn disconnect(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE sessions SET ended_at_ms = $4, last_seen_ms = GREATEST(last_seen_ms, $4)
                 WHERE agent_fp = $1 AND node_id = $2 AND generation = $3 AND ended_at_ms IS NULL",
            )
            .await?;
        let n = client
            .execute(
                &stmt,
                &[
                    &lease.agent.as_str(),
                    &lease.node.as_str(),
                    &(lease.generation as i64),
                    &now_ms,
                ],
            )
            .await?;
        Ok(n == 1)
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
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The refresh joins this node's leases with its sessions. With
        // statistics from a smaller table (a fleet enrolling at once) the
        // planner took a nested loop that re-scans the lease array for
        // every session: seconds for a few thousand agents, holding every
        // refreshed row locked meanwhile, so each connecting agent's lease
        // waited behind it and the whole enrollment stalled
        // (docs/benchmarks.md, "Several nodes on PostgreSQL"). A hash join
        // is right at every size this batch has.
        tx.batch_execute("SET LOCAL enable_nestloop = off").await?;
        let seen = tx
            .prepare_cached(
                "INSERT INTO nodes (node_id, last_seen_ms) VALUES ($1, $2)
                 ON CONFLICT (node_id) DO UPDATE
                     SET last_seen_ms = GREATEST(nodes.last_seen_ms, excluded.last_seen_ms)",
            )
            .await?;
        tx.execute(&seen, &[&node.as_str(), &now_ms]).await?;
        let refresh = tx
            .prepare_cached(
                "UPDATE sessions s SET last_seen_ms = GREATEST(s.last_seen_ms, $2)
                 FROM unnest($3::text[], $4::bigint[]) AS t(agent_fp, generation)
                 WHERE s.agent_fp = t.agent_fp AND s.generation = t.generation
                   AND s.node_id = $1 AND s.ended_at_ms IS NULL
                 RETURNING s.agent_fp, s.generation",
            )
            .await?;
        let mut refreshed = Vec::with_capacity(live.len());
        for batch in live.chunks(HEARTBEAT_BATCH) {
            let agents: Vec<&str> = batch.iter().map(|l| l.agent.as_str()).collect();
            let generations: Vec<i64> = batch.iter().map(|l| l.generation as i64).collect();
            for row in tx
                .query(&refresh, &[&node.as_str(), &now_ms, &agents, &generations])
                .await?
            {
                refreshed.push(Lease {
                    agent: stored_agent(row.get(0))?,
                    node: node.clone(),
                    generation: stored_generation(row.get(1))?,
                });
            }
        }
        tx.commit().await?;
        Ok(Heartbeat {
            refreshed: refreshed.len(),
            lost: lost_leases(live, &refreshed),
        })
    }

    async fn sweep(&self, now_ms: i64, silence_ms: i64) -> Result<Vec<Swept>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "WITH silent AS (
                     SELECT s.agent_fp FROM sessions s
                     WHERE s.ended_at_ms IS NULL AND s.last_seen_ms < $2
                     FOR UPDATE SKIP LOCKED)
                 UPDATE sessions s SET ended_at_ms = $1
                 FROM silent WHERE s.agent_fp = silent.agent_fp
                 RETURNING s.agent_fp, s.node_id, s.generation",
            )
            .await?;
        let rows = client
            .query(&stmt, &[&now_ms, &(now_ms - silence_ms)])
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Swept {
                    agent: stored_agent(r.get(0))?,
                    node: stored_node(r.get(1))?,
                    generation: stored_generation(r.get(2))?,
                })
            })
            .collect()
    }

    async fn session(&self, agent: &Fingerprint) -> Result<Option<Session>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT node_id, generation, connected_at_ms, last_seen_ms, ended_at_ms
                 FROM sessions WHERE agent_fp = $1",
            )
            .await?;
        client
            .query_opt(&stmt, &[&agent.as_str()])
            .await?
            .map(|r| {
                Ok(Session {
                    node: stored_node(r.get(0))?,
                    generation: stored_generation(r.get(1))?,
                    connected_at_ms: r.get(2),
                    last_seen_ms: r.get(3),
                    ended_at_ms: r.get(4),
                })
            })
            .transpose()
    }
}
