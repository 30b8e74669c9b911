//! The dashboard's fleet list: one page of agents with their worst check
//! state, filtered by text and tag, in a bounded number of statements
//! whatever the fleet size (one for the page, one for the count), on the
//! read-only connections.
//!
//! The area's interface, rules and types are `crate::backend::fleet`
//! ([`FleetStore`]); its SQLite statements live in
//! server/src/backend/sqlite/fleet.rs, its PostgreSQL ones in
//! server/src/backend/postgres/fleet.rs. The `Store` methods below are
//! kept, each a call of the trait on [`SqliteBackend`] over this same
//! store (its reads counted for the dashboard's statement budget as
//! before), so the dashboard is unchanged.

use outrider_protocol::{CheckState, Fingerprint};

use super::Store;
use crate::backend::Backend;
use crate::backend::fleet::FleetStore;
pub use crate::backend::fleet::{FleetPage, FleetQuery, FleetRow, MAX_FLEET_PAGE};

impl Store {
    /// The fleet area of this store behind its trait.
    fn fleet_area(&self) -> Backend {
        self.backend()
    }

    /// One page of the fleet: agents matching `q`, ordered by host name
    /// then fingerprint, and the number matching in all. Two statements.
    pub async fn fleet_page(&self, q: FleetQuery) -> anyhow::Result<FleetPage> {
        Ok(self.fleet_area().fleet_page(q).await?)
    }

    /// The latest state of every check of `agents`, as
    /// `(agent, check, state)` ordered by agent and check: the cells of
    /// the checks × agents matrix for one page of agents. One statement.
    pub async fn check_states(
        &self,
        agents: Vec<Fingerprint>,
    ) -> anyhow::Result<Vec<(Fingerprint, String, CheckState)>> {
        Ok(self.fleet_area().check_states(agents).await?)
    }

    /// One agent's fleet row (for a live update), if it is known.
    pub async fn fleet_row(&self, fingerprint: &Fingerprint) -> anyhow::Result<Option<FleetRow>> {
        Ok(self.fleet_area().fleet_row(fingerprint).await?)
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
