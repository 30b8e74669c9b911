//! The web dashboard: server-rendered pages on a port of their own
//! (`--dashboard-listen`, 127.0.0.1:8471 by default, the port after the
//! API's), for a browser logged in with the admin or the viewer token.
//!
//! - [`session`]: login, roles, CSRF verdicts, the session table;
//! - [`pages`]: the fleet and agent pages and Run now;
//! - [`charts`]: perfdata series for the agent page's uPlot graphs;
//! - [`matrix`]: the checks × agents matrix;
//! - [`releases`]: channels, rollouts, agents per build, failing updates;
//! - [`hosts`]: Add a host (an enrollment token and the install command);
//! - [`live`]: one server-sent-event stream per tab, with ids, resume and
//!   coalesced row updates;
//! - [`interest`]: what each tab's page shows, so its stream carries only
//!   that and the hub renders only rows some tab shows;
//! - [`alerts`]: open problems, silences (added and expired by the admin),
//!   recent notifications;
//! - [`assets`]: htmx, uPlot, `live.js` and the stylesheet, compiled in.
//!
//! Invariants:
//! - No inline script anywhere: every response carries
//!   `Content-Security-Policy: script-src 'self'` (and more, see
//!   [`SECURITY_HEADERS`]), and htmx runs with `allowEval` off.
//! - Every action is a plain link or form first; htmx only enhances.
//! - Every page costs a bounded number of statements whatever the fleet
//!   size, on the store's read-only connections (`server/src/store.rs`),
//!   so no page load waits for ingest.
//! - Pages and fragments are never cached (`Cache-Control: no-store`);
//!   assets are, forever, under content-hashed names.

pub mod alerts;
pub mod assets;
pub mod charts;
pub mod hosts;
pub mod interest;
pub mod live;
pub mod matrix;
pub mod pages;
pub mod releases;
pub mod session;

use std::sync::Arc;

use anyhow::Context;
use askama::Template;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use session::{Action, CsrfInput, Role, Session, Sessions};

/// Headers of every dashboard response.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    // Not `no-referrer`: with it Chromium sends `Origin: null` on the
    // dashboard's own form posts, which the CSRF check must refuse.
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
];

/// Response header with the SQL statements the request cost, so that the
/// bound of every page (see `pages.rs`) is checked by tests and visible in
/// a browser's network tab.
pub const STATEMENTS_HEADER: &str = "x-outrider-statements";

/// What the dashboard's handlers share.
#[derive(Debug)]
pub struct Dashboard {
    pub app: Arc<AppState>,
    pub sessions: Sessions,
    pub live: live::Live,
    /// The API's URL as agents reach it (`--public-url`, else the scheme
    /// and address it listens on), for install commands.
    pub api_base: String,
}

/// Starts the dashboard of `app`: its live hub (a task of `app.tasks`,
/// ending at shutdown) and its routes.
pub async fn start(app: Arc<AppState>, api_base: String) -> anyhow::Result<Router> {
    let sessions = Sessions::stored(
        app.config.dashboard_idle_secs,
        app.config.dashboard_session_secs,
        app.config.tls().is_some(),
        app.store.clone(),
        session::TokenHashes::of(app.admin_token.expose(), app.viewer_token.expose()),
        crate::store::now_ms(),
    )
    .await
    .context("reading the dashboard's logins")?;
    let live = live::Live::new()?;
    let dash = Arc::new(Dashboard {
        app: app.clone(),
        sessions,
        live,
        api_base,
    });
    app.tasks
        .spawn(live::run(dash.clone(), app.shutdown.clone()));
    Ok(router(dash))
}

/// The dashboard's routes.
pub fn router(dash: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/", get(pages::fleet))
        .route("/agents/{fp}", get(pages::agent))
        .route("/agents/{fp}/run", post(pages::run_now))
        .route("/agents/{fp}/series", get(charts::series))
        .route("/checks", get(matrix::page))
        .route("/alerts", get(alerts::page))
        .route("/silences", post(alerts::add))
        .route("/silences/{id}/expire", post(alerts::expire))
        .route("/releases", get(releases::page))
        .route("/hosts/new", get(hosts::form).post(hosts::create))
        .route("/live", get(live::stream))
        .route("/assets/{name}", get(assets::serve))
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(dash)
}

/// Adds [`SECURITY_HEADERS`], [`STATEMENTS_HEADER`], and `no-store` to
/// everything but assets.
/// Over HTTP/2 the host comes as the URI's authority, not a `Host`
/// header: it is copied into one, so the CSRF check compares `Origin`
/// with the same thing whatever the protocol.
async fn security_headers(mut req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::HOST)
        && let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let statements = crate::store::StatementCount::default();
    let mut response = statements.scope(next.run(req)).await;
    let headers = response.headers_mut();
    headers.insert(STATEMENTS_HEADER, HeaderValue::from(statements.get()));
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// What the page frame (`base.html`) shows.
#[derive(Debug)]
pub struct Chrome {
    pub css: String,
    pub htmx: String,
    pub live_js: String,
    /// `admin`, `viewer`, or empty when logged out.
    pub role: &'static str,
    pub csrf: String,
    /// The live stream the page subscribes to; empty for none.
    pub live: String,
    /// Whether the page draws graphs (loads uPlot and `chart.js`).
    pub charts: bool,
    pub uplot: String,
    pub chart_js: String,
}

impl Chrome {
    fn logged_out() -> Chrome {
        Chrome {
            css: assets::url("app.css"),
            htmx: assets::url("htmx.js"),
            live_js: assets::url("live.js"),
            role: "",
            csrf: String::new(),
            live: String::new(),
            charts: false,
            uplot: assets::url("uplot.js"),
            chart_js: assets::url("chart.js"),
        }
    }
}

impl Dashboard {
    /// The frame of a page for `session`.
    pub fn chrome(&self, session: &Session) -> Chrome {
        Chrome {
            role: session.role.as_str(),
            csrf: session.csrf.clone(),
            live: "/live".to_owned(),
            ..Chrome::logged_out()
        }
    }
    /// A state-changing form post, checked the way every one must be: the
    /// form parsed (a malformed one is named by `what`), its origin and CSRF
    /// token checked ([`Dashboard::check_csrf`]), and the session allowed to
    /// do `action` ([`require`]).
    pub fn accept_post<T: PostedForm>(
        &self,
        headers: &HeaderMap,
        session: &Session,
        form: Result<Form<T>, axum::extract::rejection::FormRejection>,
        what: &str,
        action: Action,
    ) -> Result<T, PageError> {
        let Form(form) = form.map_err(|e| {
            PageError::bad_request(format!("the {what} form did not parse: {}", e.body_text()))
        })?;
        self.check_csrf(headers, &Method::POST, Some(session), form.csrf())?;
        require(session, action)?;
        Ok(form)
    }

    /// Refuses a state-changing request that [`session::csrf_verdict`]
    /// refuses, with a 403 naming why.
    pub fn check_csrf(
        &self,
        headers: &HeaderMap,
        method: &Method,
        session: Option<&Session>,
        form_token: Option<&str>,
    ) -> Result<(), PageError> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let scheme = if self.sessions.secure {
            "https"
        } else {
            "http"
        };
        let own_origin = format!("{scheme}://{}", text("host").unwrap_or(""));
        session::csrf_verdict(&CsrfInput {
            method,
            fetch_site: text("sec-fetch-site"),
            origin: text("origin"),
            own_origin: &own_origin,
            form_token,
            session_token: session.map(|s| s.csrf.as_str()),
        })
        .map_err(|refusal| PageError::new(StatusCode::FORBIDDEN, refusal.to_string()))
    }
}

/// A logged-in request's session; without a valid one, a page request is
/// sent to the login form (an htmx request is told to go there).
#[derive(Debug)]
pub struct Authed(pub Session);

impl FromRequestParts<Arc<Dashboard>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        dash: &Arc<Dashboard>,
    ) -> Result<Self, Self::Rejection> {
        let now = crate::store::now_ms();
        if let Some(id) = dash.sessions.cookie_id(&parts.headers)
            && let Some(session) = dash.sessions.find(id, now).await
        {
            return Ok(Authed(session));
        }
        let next = match parts.method {
            Method::GET => parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            _ => "/",
        };
        let login = format!("/login?next={}", pages_escape(next));
        if parts.headers.contains_key("hx-request") {
            return Err((StatusCode::UNAUTHORIZED, [("hx-redirect", login)]).into_response());
        }
        Err(Redirect::to(&login).into_response())
    }
}

fn pages_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where to go after login: a path of this dashboard, never another site
/// (`//host` and `/\host` are other sites to a browser).
fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(char::is_control);
    if local { next } else { "/" }
}

/// An error page: a status and one sentence.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: String) -> PageError {
        PageError { status, message }
    }

    pub fn bad_request(message: String) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> PageError {
        tracing::warn!("dashboard: {e:#}");
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server failed to answer this page; its log says why".to_owned(),
        )
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        match e {
            ApiError::Internal(e) => e.into(),
            other => PageError::new(other.status(), other.to_string()),
        }
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> PageError {
        anyhow::Error::from(e).context("rendering a page").into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate {
    chrome: Chrome,
    title: String,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = ErrorTemplate {
            chrome: Chrome::logged_out(),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            message: self.message,
        };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(_) => (self.status, page.message).into_response(),
        }
    }
}

async fn not_found() -> PageError {
    PageError::new(
        StatusCode::NOT_FOUND,
        "there is no such page on this dashboard".to_owned(),
    )
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTemplate {
    chrome: Chrome,
    error: String,
    next: String,
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// `GET /login`.
async fn login_form(
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let next = query.map(|Query(q)| q.next).unwrap_or_default();
    let page = LoginTemplate {
        chrome: Chrome::logged_out(),
        error: String::new(),
        next: safe_next(&next).to_owned(),
    };
    Ok(Html(page.render()?).into_response())
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: the token for a session cookie.
async fn login(
    State(dash): State<Arc<Dashboard>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(|e| {
        PageError::bad_request(format!("the login form did not parse: {}", e.body_text()))
    })?;
    dash.check_csrf(&headers, &Method::POST, None, None)?;
    let token = form.token.trim();
    let role = if token.is_empty() {
        None
    } else if dash.app.admin_token.matches(token) {
        Some(Role::Admin)
    } else if dash.app.viewer_token.matches(token) {
        Some(Role::Viewer)
    } else {
        None
    };
    let Some(role) = role else {
        let error = if token.is_empty() {
            "Paste a token: admin.token or viewer.token from the server's data directory."
        } else {
            "That token is neither this server's admin token nor its viewer token."
        };
        let page = LoginTemplate {
            chrome: Chrome::logged_out(),
            error: error.to_owned(),
            next: safe_next(&form.next).to_owned(),
        };
        return Ok((StatusCode::UNAUTHORIZED, Html(page.render()?)).into_response());
    };
    let id = dash.sessions.open(role, crate::store::now_ms()).await?;
    tracing::info!(role = role.as_str(), "dashboard login");
    Ok((
        [(header::SET_COOKIE, dash.sessions.set_cookie(&id))],
        Redirect::to(safe_next(&form.next)),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /logout`: ends the session and clears the cookie.
async fn logout(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    // A body that does not parse carries no token: the verdict says so.
    let token = form.ok().and_then(|Form(f)| f.csrf);
    dash.check_csrf(&headers, &Method::POST, Some(&session), token.as_deref())?;
    if let Some(id) = dash.sessions.cookie_id(&headers) {
        dash.sessions.close(id).await;
    }
    Ok((
        [(header::SET_COOKIE, dash.sessions.clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response())
}

/// A form the dashboard posts: every one carries its session's CSRF token
/// in a hidden field.
pub trait PostedForm {
    /// The hidden field's value, if the form had one.
    fn csrf(&self) -> Option<&str>;
}

/// Refuses a session whose role may not do `action`, saying how to get
/// the right.
pub fn require(session: &Session, action: Action) -> Result<(), PageError> {
    if session::may(session.role, action) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the viewer login sees but does not act; log in with the admin token {}",
                action.purpose()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        for (next, followed) in [
            ("/agents/x?y=1", "/agents/x?y=1"),
            ("/", "/"),
            ("", "/"),
            ("//evil.example/", "/"),
            ("/\\evil.example", "/"),
            ("https://evil.example/", "/"),
            ("/a\nb", "/"),
        ] {
            assert_eq!(safe_next(next), followed, "{next:?}");
        }
    }
}
