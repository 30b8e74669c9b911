//! The dashboard's fleet list: one page of agents with their worst check
//! state, filtered by text and tag, in a bounded number of statements
//! whatever the fleet size (one for the page, one for the count), on the
//! read-only connections.

use outrider_protocol::api::{Presence, host_version};
use outrider_protocol::{CheckState, Fingerprint};
use rusqlite::{OptionalExtension, params};

use super::Store;
use super::checks::{effective_tags, json_tags};

/// Agents on one page at most.
pub const MAX_FLEET_PAGE: u32 = 200;

/// What the fleet page asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetQuery {
    /// Part of the host name or fingerprint (case-insensitive for ASCII).
    pub text: Option<String>,
    /// One effective tag the agent must carry.
    pub tag: Option<String>,
    /// Page number, from 0.
    pub page: u32,
    /// Rows per page (at most [`MAX_FLEET_PAGE`]).
    pub per_page: u32,
}

/// One agent as the fleet list shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetRow {
    pub fingerprint: Fingerprint,
    pub hostname: String,
    pub presence: Presence,
    pub presence_since_ms: i64,
    /// The build it runs (its library's version, else its agent version).
    pub version: String,
    pub tags: Vec<String>,
    /// The worst latest state of its checks; `None` before any result.
    pub worst: Option<CheckState>,
    /// Checks whose latest state is not OK.
    pub problems: u32,
    /// Checks with a latest result.
    pub checks: u32,
}

/// One page of [`FleetRow`]s and how many agents match in all.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPage {
    pub rows: Vec<FleetRow>,
    pub total: u64,
}

/// Columns of [`fleet_row`]; `a` is the agents table.
const FLEET_COLUMNS: &str = "SELECT a.fingerprint, a.hostname, a.presence, a.presence_since_ms,
        a.agent_version, a.build_version, a.hello_tags, a.server_tags,
        (SELECT MAX(CASE l.state WHEN 'CRITICAL' THEN 3 WHEN 'UNKNOWN' THEN 2
                                 WHEN 'WARNING' THEN 1 WHEN 'OK' THEN 0 END)
           FROM latest_results l WHERE l.fingerprint = a.fingerprint),
        (SELECT COUNT(*) FROM latest_results l
           WHERE l.fingerprint = a.fingerprint AND l.state <> 'OK'),
        (SELECT COUNT(*) FROM latest_results l WHERE l.fingerprint = a.fingerprint)
     FROM agents a";

/// The filter of both statements: `?1` a LIKE pattern or NULL, `?2` a tag
/// or NULL.
const FLEET_FILTER: &str = "WHERE (?1 IS NULL OR a.hostname LIKE ?1 ESCAPE '\\'
                                OR a.fingerprint LIKE ?1 ESCAPE '\\')
       AND (?2 IS NULL
            OR EXISTS (SELECT 1 FROM json_each(a.hello_tags) WHERE value = ?2)
            OR EXISTS (SELECT 1 FROM json_each(a.server_tags) WHERE value = ?2))";

/// `%text%` for LIKE, with LIKE's own characters escaped.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn fleet_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FleetRow> {
    let agent_version: String = r.get(4)?;
    let build_version: Option<String> = r.get(5)?;
    let worst = match r.get::<_, Option<i64>>(8)? {
        Some(3) => Some(CheckState::Critical),
        Some(2) => Some(CheckState::Unknown),
        Some(1) => Some(CheckState::Warning),
        Some(_) => Some(CheckState::Ok),
        None => None,
    };
    Ok(FleetRow {
        fingerprint: super::parsed_column(r, 0)?,
        hostname: r.get(1)?,
        presence: super::parsed_column(r, 2)?,
        presence_since_ms: r.get(3)?,
        version: host_version(build_version.as_deref(), &agent_version).to_owned(),
        tags: effective_tags(&json_tags(r.get(6)?), &json_tags(r.get(7)?)),
        worst,
        problems: r.get(9)?,
        checks: r.get(10)?,
    })
}

impl Store {
    /// One page of the fleet: agents matching `q`, ordered by host name
    /// then fingerprint, and the number matching in all. Two statements.
    pub async fn fleet_page(&self, q: FleetQuery) -> anyhow::Result<FleetPage> {
        self.read(move |c| {
            let pattern = q.text.as_deref().map(like_pattern);
            let per_page = q.per_page.clamp(1, MAX_FLEET_PAGE);
            let offset = u64::from(q.page) * u64::from(per_page);
            // The page's agents first, on cheap columns (the index on host
            // name orders them), then the per-agent subqueries for those
            // only: not for every agent skipped by OFFSET.
            let mut stmt = c.prepare_cached(&format!(
                "WITH page AS (SELECT a.fingerprint FROM agents a {FLEET_FILTER}
                               ORDER BY a.hostname, a.fingerprint LIMIT ?3 OFFSET ?4)
                 {FLEET_COLUMNS} JOIN page p ON p.fingerprint = a.fingerprint
                 ORDER BY a.hostname, a.fingerprint"
            ))?;
            let rows = stmt
                .query_map(params![pattern, q.tag, per_page, offset], fleet_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let total: u64 = c
                .prepare_cached(&format!("SELECT COUNT(*) FROM agents a {FLEET_FILTER}"))?
                .query_row(params![pattern, q.tag], |r| r.get(0))?;
            Ok(FleetPage { rows, total })
        })
        .await
    }

    /// The latest state of every check of `agents`, as
    /// `(agent, check, state)` ordered by agent and check: the cells of
    /// the checks × agents matrix for one page of agents. One statement.
    pub async fn check_states(
        &self,
        agents: Vec<Fingerprint>,
    ) -> anyhow::Result<Vec<(Fingerprint, String, CheckState)>> {
        let list = serde_json::to_string(&agents)?;
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
                    fp.parse().map_err(anyhow::Error::msg)?,
                    check,
                    state.parse().map_err(anyhow::Error::msg)?,
                ));
            }
            Ok(out)
        })
        .await
    }

    /// One agent's fleet row (for a live update), if it is known.
    pub async fn fleet_row(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<FleetRow>> {
        let fp = fingerprint.to_string();
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("{FLEET_COLUMNS} WHERE a.fingerprint = ?1"))?
                    .query_row([fp], fleet_row)
                    .optional()?,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use outrider_protocol::CheckResult;

    use super::*;
    use crate::store::test_support::registration;

    fn result(seq: u64, check: &str, state: CheckState) -> CheckResult {
        CheckResult {
            seq,
            check: check.into(),
            state,
            summary: format!("{check} is {}", state.as_str()),
            long_output: String::new(),
            perfdata: Vec::new(),
            unknown_perfdata: Vec::new(),
            started_at_ms: 1000 + seq as i64,
            duration_ms: 3,
            update_event: None,
        }
    }

    #[tokio::test]
    async fn pages_filter_by_text_and_tag_and_show_the_worst_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let mut fps = Vec::new();
        for i in 0..5 {
            let fp: Fingerprint = format!("{i:020}").parse().unwrap();
            let tags: &[&str] = if i % 2 == 0 { &["web"] } else { &["db"] };
            store
                .register(registration(&fp, &format!("host-{i}"), tags))
                .await
                .unwrap();
            fps.push(fp);
        }
        store
            .ingest(
                &fps[0],
                vec![
                    result(1, "load", CheckState::Warning),
                    result(2, "disk", CheckState::Critical),
                    result(3, "mem", CheckState::Ok),
                ],
            )
            .await
            .unwrap();
        store
            .ingest(&fps[1], vec![result(1, "load", CheckState::Ok)])
            .await
            .unwrap();

        let all = |page, per_page| FleetQuery {
            page,
            per_page,
            ..FleetQuery::default()
        };
        let first = store.fleet_page(all(0, 2)).await.unwrap();
        assert_eq!(first.total, 5);
        let row = &first.rows[0];
        assert_eq!(
            (row.hostname.as_str(), row.worst, row.problems, row.checks),
            ("host-0", Some(CheckState::Critical), 2, 3)
        );
        assert_eq!(row.tags, ["web"]);
        assert_eq!(first.rows[1].worst, Some(CheckState::Ok));
        let last = store.fleet_page(all(2, 2)).await.unwrap();
        assert_eq!(last.rows.len(), 1);
        assert_eq!(
            (last.rows[0].hostname.as_str(), last.rows[0].worst),
            ("host-4", None)
        );

        let web = FleetQuery {
            tag: Some("web".into()),
            ..all(0, 50)
        };
        let page = store.fleet_page(web).await.unwrap();
        assert_eq!(page.total, 3);
        let text = FleetQuery {
            text: Some("ST-3".into()),
            ..all(0, 50)
        };
        let page = store.fleet_page(text).await.unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(page.rows[0].hostname, "host-3");
        // LIKE's own characters match only themselves.
        let wild = FleetQuery {
            text: Some("%".into()),
            ..all(0, 50)
        };
        assert_eq!(store.fleet_page(wild).await.unwrap().total, 0);

        let one = store.fleet_row(&fps[0]).await.unwrap().unwrap();
        assert_eq!(one, first.rows[0]);
        let unknown: Fingerprint = "ffffffffffffffffffff".parse().unwrap();
        assert_eq!(store.fleet_row(&unknown).await.unwrap(), None);

        let cells = store
            .check_states(vec![fps[0].clone(), fps[1].clone(), unknown])
            .await
            .unwrap();
        let cells: Vec<(&str, &str, CheckState)> = cells
            .iter()
            .map(|(fp, check, state)| (fp.as_str(), check.as_str(), *state))
            .collect();
        assert_eq!(
            cells,
            [
                (fps[0].as_str(), "disk", CheckState::Critical),
                (fps[0].as_str(), "load", CheckState::Warning),
                (fps[0].as_str(), "mem", CheckState::Ok),
                (fps[1].as_str(), "load", CheckState::Ok),
            ]
        );
    }
}
