//! The fleet pages on SQLite: the statements the server has always run
//! (moved here from server/src/store/fleet.rs), on the read-only
//! connections, where every statement is counted for the dashboard's
//! budget (`crate::store::StatementCount`). SQLite compares text byte by
//! byte and its `LIKE` folds ASCII letters only: the order and matching
//! the PostgreSQL side copies (`backend/fleet.rs`, rules 2 and 3).

use outrider_protocol::{CheckState, Fingerprint};
use rusqlite::{OptionalExtension, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::fleet::{
    FleetPage, FleetQuery, FleetRow, FleetStore, MAX_MATRIX_AGENTS, RawFleetRow, STATE_RANK,
    like_pattern, page_bounds, parsed,
};
use crate::store::json_tags;

/// Columns of [`raw_row`]; `a` is the agents table.
fn fleet_columns() -> String {
    format!(
        "SELECT a.fingerprint, a.hostname, a.presence, a.presence_since_ms,
                a.agent_version, a.build_version, a.hello_tags, a.server_tags,
                (SELECT MAX({STATE_RANK})
                   FROM latest_results l WHERE l.fingerprint = a.fingerprint),
                (SELECT COUNT(*) FROM latest_results l
                   WHERE l.fingerprint = a.fingerprint AND l.state <> 'OK'),
                (SELECT COUNT(*) FROM latest_results l WHERE l.fingerprint = a.fingerprint)
         FROM agents a"
    )
}

/// The filter of both page statements: `?1` a LIKE pattern or NULL, `?2` a
/// tag or NULL.
const FLEET_FILTER: &str = "WHERE (?1 IS NULL OR a.hostname LIKE ?1 ESCAPE '\\'
                                OR a.fingerprint LIKE ?1 ESCAPE '\\')
       AND (?2 IS NULL
            OR EXISTS (SELECT 1 FROM json_each(a.hello_tags) WHERE value = ?2)
            OR EXISTS (SELECT 1 FROM json_each(a.server_tags) WHERE value = ?2))";

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawFleetRow> {
    Ok(RawFleetRow {
        fingerprint: r.get(0)?,
        hostname: r.get(1)?,
        presence: r.get(2)?,
        presence_since_ms: r.get(3)?,
        agent_version: r.get(4)?,
        build_version: r.get(5)?,
        hello_tags: json_tags(r.get(6)?),
        server_tags: json_tags(r.get(7)?),
        worst_rank: r.get(8)?,
        problems: r.get(9)?,
        checks: r.get(10)?,
    })
}

impl FleetStore for SqliteBackend {
    async fn fleet_page(&self, q: FleetQuery) -> Result<FleetPage, StoreError> {
        self.read(move |c| {
            let pattern = q.text.as_deref().map(like_pattern);
            let (per_page, offset) = page_bounds(&q);
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            // The page's agents first, on cheap columns (the index on host
            // name orders them), then the per-agent subqueries for those
            // only: not for every agent skipped by OFFSET.
            let mut stmt = c.prepare_cached(&format!(
                "WITH page AS (SELECT a.fingerprint FROM agents a {FLEET_FILTER}
                               ORDER BY a.hostname, a.fingerprint LIMIT ?3 OFFSET ?4)
                 {} JOIN page p ON p.fingerprint = a.fingerprint
                 ORDER BY a.hostname, a.fingerprint",
                fleet_columns()
            ))?;
            let rows = stmt
                .query_map(params![pattern, q.tag, per_page, offset], raw_row)?
                .map(|r| r?.parse())
                .collect::<Result<Vec<_>, StoreError>>()?;
            let total: i64 = c
                .prepare_cached(&format!("SELECT COUNT(*) FROM agents a {FLEET_FILTER}"))?
                .query_row(params![pattern, q.tag], |r| r.get(0))?;
            Ok(FleetPage {
                rows,
                total: total.unsigned_abs(),
            })
        })
        .await
    }

    async fn check_states(
        &self,
        mut agents: Vec<Fingerprint>,
    ) -> Result<Vec<(Fingerprint, String, CheckState)>, StoreError> {
        agents.truncate(MAX_MATRIX_AGENTS);
        let list = serde_json::to_string(&agents).expect("fingerprints serialise");
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT fingerprint, check_name, state FROM latest_results
                 WHERE fingerprint IN (SELECT value FROM json_each(?1)) AND state IS NOT NULL
                 ORDER BY fingerprint, check_name",
            )?;
            let rows = stmt.query_map([list], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (fp, check, state) = row?;
                out.push((
                    parsed("agent fingerprint", &fp)?,
                    check,
                    parsed("check state", &state)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn fleet_row(&self, fingerprint: &Fingerprint) -> Result<Option<FleetRow>, StoreError> {
        let fp = fingerprint.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("{} WHERE a.fingerprint = ?1", fleet_columns()))?
                .query_row([fp], raw_row)
                .optional()?
                .map(RawFleetRow::parse)
                .transpose()
        })
        .await
    }
}
