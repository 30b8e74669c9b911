//! The dashboard's pages, rendered on the server from `server/templates/`.
//!
//! | route                   | role   | what | statements |
//! |-------------------------|--------|------|------------|
//! | `GET /`                 | viewer | fleet: presence, version, tags, worst check; filter by text and tag; 50 a page | 2 |
//! | `GET /agents/{fp}`      | viewer | one agent: its checks' state, since when, output, perfdata | 3 |
//! | `POST /agents/{fp}/run` | admin  | Run now: output, exit state and duration, inline | 1 + the RPC |
//!
//! Every action is a plain link or form first; htmx only swaps the part of
//! the page that changed (the fleet table, a run's result), selected with
//! `hx-select` from the same full page or, for Run now, from a fragment
//! answered to `HX-Request`.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use outrider_protocol::api::{AgentInfo, ResultInfo, RunRequest};
use outrider_protocol::{CheckResult, CheckState, Fingerprint, PerfData, is_valid_name};
use serde::Deserialize;

use super::interest::Filter;
use super::session::{Action, Session};
use super::{Authed, Chrome, Dashboard, PageError};
use crate::store::{FleetQuery, FleetRow};

/// Agents on one fleet page.
pub const FLEET_PAGE: u32 = 50;

/// Longest text filter accepted, in bytes.
const MAX_FILTER_BYTES: usize = 128;

/// One fleet row, ready to render (`fleet_row.html`).
#[derive(Debug)]
pub struct RowView {
    pub fingerprint: String,
    pub hostname: String,
    pub presence: &'static str,
    pub since: String,
    pub version: String,
    /// Each tag with the link that filters by it.
    pub tags: Vec<(String, String)>,
    pub worst: &'static str,
    pub problems: u32,
    pub checks: u32,
}

impl From<FleetRow> for RowView {
    fn from(row: FleetRow) -> RowView {
        RowView {
            fingerprint: row.fingerprint.to_string(),
            hostname: row.hostname,
            presence: row.presence.as_str(),
            since: utc(row.presence_since_ms),
            version: row.version,
            tags: tag_links(&row.tags),
            worst: row.worst.map(CheckState::as_str).unwrap_or(""),
            problems: row.problems,
            checks: row.checks,
        }
    }
}

/// An agent's presence on its own page (`presence.html`): what a live
/// update carries to an open agent page.
#[derive(Debug, Template)]
#[template(path = "presence.html")]
pub struct PresenceTemplate<'a> {
    pub row: &'a RowView,
}

/// The fleet row alone: what a live update carries.
#[derive(Template, Debug)]
#[template(path = "fleet_row.html")]
pub struct FleetRowTemplate {
    pub row: RowView,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetTemplate {
    chrome: Chrome,
    /// The live stream of this list (`data-live-scope`): its rows, and
    /// where it starts. On the list, so a refetch brings the new one.
    live_scope: String,
    q: String,
    tag: String,
    rows: Vec<RowView>,
    total: u64,
    page_no: u64,
    pages: u64,
    prev_href: Option<String>,
    next_href: Option<String>,
}

/// The fleet page's query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
    /// From 1.
    #[serde(default)]
    page: Option<u32>,
}

/// The fleet filter of `params` — text, tag and page (from 0) — or a 400
/// naming what is wrong with it (the fleet page and the matrix).
pub fn checked_filter(
    params: Result<Query<FleetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<(String, String, u32), PageError> {
    let Query(params) = params.map_err(|e| {
        PageError::bad_request(format!(
            "the address's query is not one this page takes (q, tag, page): {}",
            e.body_text()
        ))
    })?;
    let q = params.q.trim().to_owned();
    let tag = params.tag.trim().to_owned();
    if q.len() > MAX_FILTER_BYTES {
        return Err(PageError::bad_request(format!(
            "the text filter is longer than {MAX_FILTER_BYTES} bytes; shorten it"
        )));
    }
    if !tag.is_empty() && !is_valid_name(&tag) {
        return Err(PageError::bad_request(format!(
            "tag {tag:?} cannot exist: tags are 1-64 characters of a-z, 0-9, '_', '.', '-'"
        )));
    }
    let page = match params.page {
        Some(0) => {
            return Err(PageError::bad_request("page numbers start at 1".to_owned()));
        }
        Some(n) => n - 1,
        None => 0,
    };
    Ok((q, tag, page))
}

/// `GET /`: the fleet.
pub async fn fleet(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    params: Result<Query<FleetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let (q, tag, page) = checked_filter(params)?;
    // Taken before the query: the stream starts from what the page shows.
    let after = dash.live.newest_id();
    let found = dash
        .app
        .store
        .fleet_page(FleetQuery {
            text: (!q.is_empty()).then(|| q.clone()),
            tag: (!tag.is_empty()).then(|| tag.clone()),
            page,
            per_page: FLEET_PAGE,
        })
        .await?;
    let live_scope = fleet_live_scope(&dash, &found.rows, &after);
    let pages = found.total.div_ceil(u64::from(FLEET_PAGE)).max(1);
    let page_no = u64::from(page) + 1;
    let href = |n: u64| fleet_href_at("/", &q, &tag, n);
    let page = FleetTemplate {
        chrome: dash.chrome(&session),
        live_scope,
        rows: found.rows.into_iter().map(RowView::from).collect(),
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

/// The live stream address of a fleet page showing `rows`, rendered when
/// frame `after` was the newest; its rows are held shown meanwhile
/// ([`super::live::Live::lease`]).
fn fleet_live_scope(dash: &Dashboard, rows: &[FleetRow], after: &str) -> String {
    let filter = Filter {
        rows: rows.iter().map(|r| r.fingerprint.clone()).collect(),
        agent: None,
        list: true,
    };
    let ids: Vec<String> = rows.iter().map(|r| r.fingerprint.to_string()).collect();
    dash.live.lease(filter);
    if ids.is_empty() {
        format!("/live?list=fleet&after={after}")
    } else {
        format!("/live?list=fleet&rows={}&after={after}", ids.join(","))
    }
}

/// One check of the agent page (`check_state.html`, and the Run now slot).
#[derive(Debug)]
pub struct CheckView {
    pub fingerprint: String,
    pub name: String,
    pub state: &'static str,
    pub since: String,
    pub started: String,
    pub duration_ms: u64,
    pub summary: String,
    pub long_output: String,
    pub perfdata: Vec<PerfView>,
    /// `(metric, series URL)` of the graphs under the check, at most
    /// [`MAX_CHARTS`].
    pub charts: Vec<(String, String)>,
    /// A Run now result shown in the slot (a form posted without htmx).
    pub run: Option<RunView>,
}

/// One perfdata item, formatted.
#[derive(Debug)]
pub struct PerfView {
    pub label: String,
    pub value: String,
    pub uom: String,
    pub warn: String,
    pub crit: String,
}

fn perf_views(perfdata: &[PerfData]) -> Vec<PerfView> {
    perfdata
        .iter()
        .map(|p| PerfView {
            label: p.label.clone(),
            value: p.value.to_string(),
            uom: p.uom.clone(),
            warn: p.warn.clone().unwrap_or_default(),
            crit: p.crit.clone().unwrap_or_default(),
        })
        .collect()
}

/// Graphs under one check at most: each costs the page a request.
pub const MAX_CHARTS: usize = 8;

impl From<ResultInfo> for CheckView {
    fn from(r: ResultInfo) -> CheckView {
        let charts = r
            .perfdata
            .iter()
            .take(MAX_CHARTS)
            .map(|p| {
                let href = format!(
                    "/agents/{}/series?check={}&metric={}",
                    r.agent,
                    query_escape(&r.check),
                    query_escape(&p.label)
                );
                (p.label.clone(), href)
            })
            .collect();
        CheckView {
            charts,
            fingerprint: r.agent.to_string(),
            state: r.state.as_str(),
            since: r
                .state_since_ms
                .map(utc)
                .unwrap_or_else(|| "unknown".into()),
            started: utc(r.started_at_ms),
            duration_ms: r.duration_ms,
            perfdata: perf_views(&r.perfdata),
            name: r.check,
            summary: r.summary,
            long_output: r.long_output,
            run: None,
        }
    }
}

/// One check's state alone: what a live update carries.
#[derive(Template, Debug)]
#[template(path = "check_state.html")]
pub struct CheckStateTemplate {
    pub row: CheckView,
}

/// A configured check without a result yet, and a Run now outcome for it.
#[derive(Debug)]
pub struct PendingView {
    pub name: String,
    pub run: Option<RunView>,
}

/// The outcome of a Run now (`run_result.html`): a result, or `error`.
#[derive(Debug, Default)]
pub struct RunView {
    pub error: String,
    pub state: &'static str,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub output: String,
    pub perfdata: Vec<PerfView>,
}

impl From<&CheckResult> for RunView {
    fn from(r: &CheckResult) -> RunView {
        let output = if r.long_output.is_empty() {
            r.summary.clone()
        } else {
            format!("{}\n{}", r.summary, r.long_output)
        };
        RunView {
            error: String::new(),
            state: r.state.as_str(),
            exit_code: r.state.exit_code(),
            duration_ms: r.duration_ms,
            output,
            perfdata: perf_views(&r.perfdata),
        }
    }
}

#[derive(Template)]
#[template(path = "run_result.html")]
struct RunTemplate {
    run: RunView,
}

#[derive(Template)]
#[template(path = "agent.html")]
struct AgentTemplate {
    chrome: Chrome,
    agent: AgentInfo,
    presence: &'static str,
    presence_since: String,
    version: String,
    tags: Vec<(String, String)>,
    checks: Vec<CheckView>,
    /// Checks configured for the agent that have no result yet (from the
    /// config cache, no statement), each with its Run now slot.
    pending: Vec<PendingView>,
    can_run: bool,
}

fn parse_fp(text: &str) -> Result<Fingerprint, PageError> {
    text.parse().map_err(|e| {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!("{text:?} is not an agent fingerprint: {e}"),
        )
    })
}

/// Renders agent `fp`'s page, with `run` in the slot of check `ran`.
async fn agent_page(
    dash: &Dashboard,
    session: &Session,
    fp: &Fingerprint,
    ran: Option<(&str, RunView)>,
) -> Result<String, PageError> {
    let store = &dash.app.store;
    // Shown from before the queries, so the stream starts from what the
    // page shows ([`super::live::Live::lease`]).
    dash.live.lease(Filter {
        agent: Some(fp.clone()),
        ..Filter::default()
    });
    let after = dash.live.newest_id();
    let agent = store.agent(fp).await?.ok_or_else(|| {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!("no agent with fingerprint {fp}; it may have been removed"),
        )
    })?;
    let mut checks: Vec<CheckView> = store
        .latest_results(Some(fp.clone()))
        .await?
        .into_iter()
        .map(CheckView::from)
        .collect();
    let mut pending: Vec<PendingView> = dash
        .app
        .configs
        .get(fp)
        .map(|config| {
            config
                .checks
                .iter()
                .filter(|spec| !checks.iter().any(|c| c.name == spec.name))
                .map(|spec| PendingView {
                    name: spec.name.clone(),
                    run: None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some((name, run)) = ran {
        if let Some(check) = checks.iter_mut().find(|c| c.name == name) {
            check.run = Some(run);
        } else if let Some(check) = pending.iter_mut().find(|c| c.name == name) {
            check.run = Some(run);
        }
    }
    let mut chrome = dash.chrome(session);
    chrome.live = format!("/live?agent={fp}&after={after}");
    chrome.charts = true;
    let page = AgentTemplate {
        chrome,
        presence: agent.presence.as_str(),
        presence_since: utc(agent.presence_since_ms),
        version: agent.host_version().to_owned(),
        tags: tag_links(&agent.tags),
        checks,
        pending,
        can_run: super::session::may(session.role, Action::RunCheck),
        agent,
    };
    Ok(page.render()?)
}

/// `GET /agents/{fp}`.
pub async fn agent(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    Path(fp): Path<String>,
) -> Result<Response, PageError> {
    let fp = parse_fp(&fp)?;
    Ok(Html(agent_page(&dash, &session, &fp, None).await?).into_response())
}

/// The Run now form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunForm {
    csrf: Option<String>,
    check: String,
}

impl super::PostedForm for RunForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// `POST /agents/{fp}/run`: runs the check now through the API's run-now
/// path ([`crate::rpc::run_now`]) and shows the outcome: the fragment to
/// htmx, the agent page with the outcome in place to a plain form post.
pub async fn run_now(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    Path(fp): Path<String>,
    headers: HeaderMap,
    form: Result<Form<RunForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let form = dash.accept_post(&headers, &session, form, "Run now", Action::RunCheck)?;
    let fp = parse_fp(&fp)?;
    let request = RunRequest {
        check: Some(form.check.clone()),
        script: None,
        interpreter: None,
        timeout_secs: None,
    };
    let (status, run) = match crate::rpc::run_now(&dash.app, &fp, request).await {
        Ok(answer) => (StatusCode::OK, RunView::from(&answer.result)),
        Err(e) => {
            let status = e.status();
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::warn!("dashboard run now on {fp}: {e:#}");
            }
            let error = match e {
                crate::error::ApiError::Internal(_) => {
                    "the server failed to run it; its log says why".to_owned()
                }
                other => other.to_string(),
            };
            (
                status,
                RunView {
                    error,
                    ..RunView::default()
                },
            )
        }
    };
    if headers.contains_key("hx-request") {
        // htmx swaps only 2xx answers: the outcome, good or bad, is the
        // content of the slot.
        let html = RunTemplate { run }.render()?;
        return Ok(([("vary", "HX-Request")], Html(html)).into_response());
    }
    let html = agent_page(&dash, &session, &fp, Some((&form.check, run))).await?;
    Ok((status, [("vary", "HX-Request")], Html(html)).into_response())
}

/// `(tag, link filtering the fleet by it)` for each tag.
fn tag_links(tags: &[String]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| (t.clone(), format!("/?tag={}", query_escape(t))))
        .collect()
}

/// The address of the page at `path` (the fleet, the matrix) for `q`,
/// `tag` and page `n` (from 1).
pub fn fleet_href_at(path: &str, q: &str, tag: &str, n: u64) -> String {
    let mut href = format!("{path}?page={n}");
    if !q.is_empty() {
        href.push_str(&format!("&q={}", query_escape(q)));
    }
    if !tag.is_empty() {
        href.push_str(&format!("&tag={}", query_escape(tag)));
    }
    href
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SSZ` of Unix milliseconds `ms` (UTC).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_by_table() {
        for (ms, text) in [
            (0, "1970-01-01 00:00:00Z"),
            (951_782_400_000, "2000-02-29 00:00:00Z"),
            (1_796_402_006_999, "2026-12-04 16:33:26Z"),
            (-1000, "1969-12-31 23:59:59Z"),
        ] {
            assert_eq!(utc(ms), text, "{ms}");
        }
    }

    #[test]
    fn filter_links_escape_their_values() {
        assert_eq!(fleet_href_at("/", "a b&c", "", 2), "/?page=2&q=a%20b%26c");
        assert_eq!(
            fleet_href_at("/checks", "", "web-1", 1),
            "/checks?page=1&tag=web-1"
        );
        assert_eq!(tag_links(&["x.y".into()])[0].1, "/?tag=x.y");
    }
}
