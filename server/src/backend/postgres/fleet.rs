//! The fleet pages on PostgreSQL: `agents` (migrations/0005_agents.sql)
//! and the results area's `latest_results` (migration 12).
//!
//! The statements are SQLite's (server/src/backend/sqlite/fleet.rs), made
//! to order and match as SQLite does whatever the database's collation
//! (`backend/fleet.rs`, rules 2 and 3): `COLLATE "C"` on every sort key
//! (the index `agents_by_hostname` of migration 5 is on exactly those),
//! and the text filter compares `lower(… COLLATE "C")`, which folds ASCII
//! letters only, like SQLite's `LIKE`. Tags are `TEXT[]`, matched with
//! `= ANY`. A page's two statements are sent together on one connection
//! (tokio-postgres pipelines them): the same two statements as SQLite, in
//! one round trip once prepared. They read without locks, each its own
//! snapshot, as SQLite's two reads do.

use outrider_protocol::{CheckState, Fingerprint};

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::fleet::{
    FleetPage, FleetQuery, FleetRow, FleetStore, MAX_MATRIX_AGENTS, RawFleetRow, STATE_RANK,
    like_pattern, page_bounds, parsed,
};

/// Columns of [`raw_row`]; `a` is the agents table.
fn fleet_columns() -> String {
    format!(
        "SELECT a.fingerprint, a.hostname, a.presence, a.presence_since_ms,
                a.agent_version, a.build_version, a.hello_tags, a.server_tags,
                (SELECT MAX({STATE_RANK})::bigint
                   FROM latest_results l WHERE l.fingerprint = a.fingerprint),
                (SELECT COUNT(*) FROM latest_results l
                   WHERE l.fingerprint = a.fingerprint AND l.state <> 'OK'),
                (SELECT COUNT(*) FROM latest_results l WHERE l.fingerprint = a.fingerprint)
         FROM agents a"
    )
}

/// The filter of both page statements: `$1` a LIKE pattern or NULL, `$2` a
/// tag or NULL.
const FLEET_FILTER: &str = "WHERE ($1::text IS NULL
              OR lower(a.hostname COLLATE \"C\") LIKE lower($1::text COLLATE \"C\") ESCAPE '\\'
              OR lower(a.fingerprint COLLATE \"C\") LIKE lower($1::text COLLATE \"C\") ESCAPE '\\')
         AND ($2::text IS NULL OR $2::text = ANY (a.hello_tags) OR $2::text = ANY (a.server_tags))";

/// The byte order of rule 2.
const ORDER: &str = "a.hostname COLLATE \"C\", a.fingerprint COLLATE \"C\"";

fn raw_row(r: &tokio_postgres::Row) -> RawFleetRow {
    RawFleetRow {
        fingerprint: r.get(0),
        hostname: r.get(1),
        presence: r.get(2),
        presence_since_ms: r.get(3),
        agent_version: r.get(4),
        build_version: r.get(5),
        hello_tags: r.get(6),
        server_tags: r.get(7),
        worst_rank: r.get(8),
        problems: r.get(9),
        checks: r.get(10),
    }
}

impl FleetStore for PgBackend {
    async fn fleet_page(&self, q: FleetQuery) -> Result<FleetPage, StoreError> {
        let pattern = q.text.as_deref().map(like_pattern);
        let (per_page, offset) = page_bounds(&q);
        let (limit, offset) = (
            i64::from(per_page),
            i64::try_from(offset).unwrap_or(i64::MAX),
        );
        let client = self.client().await?;
        // The page's agents first, on cheap columns (the index on host name
        // orders them), then the per-agent subqueries for those only.
        let page_sql = format!(
            "WITH page AS (SELECT a.fingerprint FROM agents a {FLEET_FILTER}
                           ORDER BY {ORDER} LIMIT $3 OFFSET $4)
             {} JOIN page p ON p.fingerprint = a.fingerprint
             ORDER BY {ORDER}",
            fleet_columns()
        );
        let count_sql = format!("SELECT COUNT(*) FROM agents a {FLEET_FILTER}");
        let (page_stmt, count_stmt) = tokio::try_join!(
            client.prepare_cached(&page_sql),
            client.prepare_cached(&count_sql)
        )?;
        let page_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&pattern, &q.tag, &limit, &offset];
        let count_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&pattern, &q.tag];
        let (rows, total) = tokio::try_join!(
            client.query(&page_stmt, &page_params),
            client.query_one(&count_stmt, &count_params)
        )?;
        Ok(FleetPage {
            rows: rows
                .iter()
                .map(|r| raw_row(r).parse())
                .collect::<Result<_, _>>()?,
            total: total.get::<_, i64>(0).unsigned_abs(),
        })
    }

    async fn check_states(
        &self,
        agents: Vec<Fingerprint>,
    ) -> Result<Vec<(Fingerprint, String, CheckState)>, StoreError> {
        let agents: Vec<String> = agents
            .iter()
            .take(MAX_MATRIX_AGENTS)
            .map(ToString::to_string)
            .collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT fingerprint, check_name, state FROM latest_results
                 WHERE fingerprint = ANY ($1::text[]) AND state IS NOT NULL
                 ORDER BY fingerprint COLLATE \"C\", check_name COLLATE \"C\"",
            )
            .await?;
        client
            .query(&stmt, &[&agents])
            .await?
            .iter()
            .map(|r| {
                Ok((
                    parsed("agent fingerprint", r.get(0))?,
                    r.get(1),
                    parsed("check state", r.get(2))?,
                ))
            })
            .collect()
    }

    async fn fleet_row(&self, fingerprint: &Fingerprint) -> Result<Option<FleetRow>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{} WHERE a.fingerprint = $1", fleet_columns()))
            .await?;
        client
            .query_opt(&stmt, &[&fingerprint.as_str()])
            .await?
            .map(|r| raw_row(&r).parse())
            .transpose()
    }
}
