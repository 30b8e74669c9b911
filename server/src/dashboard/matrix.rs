//! `GET /checks`: the checks × agents matrix, one page of agents (the
//! fleet page's filter and paging) against every check they report or
//! that is configured. Four statements whatever the fleet size: the page
//! of agents and its count, the check definitions, the page's states.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};

use super::pages::{FLEET_PAGE, FleetParams, checked_filter, fleet_href_at};
use super::{Authed, Chrome, Dashboard, PageError};
use crate::store::FleetQuery;

/// One agent's row: its cells in column order (`""` when it has no result).
#[derive(Debug)]
pub struct MatrixRow {
    pub fingerprint: String,
    pub hostname: String,
    pub presence: &'static str,
    pub cells: Vec<&'static str>,
}

#[derive(Template)]
#[template(path = "matrix.html")]
struct MatrixTemplate {
    chrome: Chrome,
    q: String,
    tag: String,
    columns: Vec<String>,
    rows: Vec<MatrixRow>,
    total: u64,
    page_no: u64,
    pages: u64,
    prev_href: Option<String>,
    next_href: Option<String>,
}

/// `GET /checks`.
pub async fn page(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    params: Result<Query<FleetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let (q, tag, page) = checked_filter(params)?;
    let store = &dash.app.store;
    let found = store
        .fleet_page(FleetQuery {
            text: (!q.is_empty()).then(|| q.clone()),
            tag: (!tag.is_empty()).then(|| tag.clone()),
            page,
            per_page: FLEET_PAGE,
        })
        .await?;
    let states = store
        .check_states(found.rows.iter().map(|r| r.fingerprint.clone()).collect())
        .await?;
    let mut columns: BTreeSet<String> = store.checks().await?.into_iter().map(|c| c.name).collect();
    columns.extend(states.iter().map(|(_, check, _)| check.clone()));
    let columns: Vec<String> = columns.into_iter().collect();
    let index: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut by_agent: HashMap<String, Vec<&'static str>> = HashMap::new();
    for (fp, check, state) in &states {
        let cells = by_agent
            .entry(fp.to_string())
            .or_insert_with(|| vec![""; columns.len()]);
        if let Some(&i) = index.get(check.as_str()) {
            cells[i] = state.as_str();
        }
    }
    let rows = found
        .rows
        .into_iter()
        .map(|r| {
            let fingerprint = r.fingerprint.to_string();
            MatrixRow {
                cells: by_agent
                    .remove(&fingerprint)
                    .unwrap_or_else(|| vec![""; columns.len()]),
                fingerprint,
                hostname: r.hostname,
                presence: r.presence.as_str(),
            }
        })
        .collect();
    let pages = found.total.div_ceil(u64::from(FLEET_PAGE)).max(1);
    let page_no = u64::from(page) + 1;
    let href = |n: u64| fleet_href_at("/checks", &q, &tag, n);
    let page = MatrixTemplate {
        chrome: dash.chrome(&session),
        columns,
        rows,
        total: found.total,
        page_no,
        pages,
        prev_href: (page_no > 1).then(|| href(page_no - 1)),
        next_href: (page_no < pages).then(|| href(page_no + 1)),
        q,
        tag,
    };
    Ok(Html(page.render()?).into_response())
}
