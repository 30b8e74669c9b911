//! `GET /alerts`: open problems (and why a muted one is not notified),
//! silences, and the newest decided notifications; for the admin, a form
//! to add a silence (`POST /silences`) and an Expire button on each
//! (`POST /silences/{id}/expire`). The same engine calls as the API's
//! (`server/src/alerts/api.rs`): one read of the engine, one of the store.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use outrider_alerting::silence::{Field, Matcher, Op, Pattern, SilenceSpec};
use outrider_alerting::{Action as EngineAction, MuteReason};
use serde::Deserialize;

use super::pages::utc;
use super::session::{Action, Session, may};
use super::{Authed, Chrome, Dashboard, PageError};
use crate::alerts::remote::Call;

/// Decided notifications shown.
const HISTORY_ROWS: u32 = 20;

/// Longest silence the form takes, in hours (90 days).
const MAX_SILENCE_HOURS: u64 = 90 * 24;

#[derive(Debug)]
pub struct OpenView {
    pub key: String,
    /// Why it is not notified; empty when it is.
    pub muted: String,
}

#[derive(Debug)]
pub struct SilenceView {
    pub id: u64,
    pub active: bool,
    pub matchers: String,
    pub until: String,
    pub author: String,
    pub comment: String,
}

#[derive(Debug)]
pub struct HistoryView {
    pub at: String,
    pub severity: String,
    pub group: String,
    pub titles: String,
}

/// The silence form, echoed back when refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    check: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    hours: String,
    #[serde(default)]
    comment: String,
}

impl super::PostedForm for SilenceForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsTemplate {
    chrome: Chrome,
    open: Vec<OpenView>,
    silences: Vec<SilenceView>,
    history: Vec<HistoryView>,
    can_act: bool,
    form: SilenceForm,
    error: String,
}

fn mute_text(reason: &MuteReason) -> String {
    match reason {
        MuteReason::AgentDown { agent } => format!("its agent {agent} is down"),
        MuteReason::SiteOutage { tag } => format!("part of the outage of site {tag}"),
        MuteReason::Silenced { id } => format!("silence {id}"),
        MuteReason::Flapping => "flapping".to_owned(),
        other => format!("{other:?}"),
    }
}

fn matchers_text(matchers: &[Matcher]) -> String {
    matchers
        .iter()
        .map(|m| {
            let field = match m.field {
                Field::Agent => "agent",
                Field::Check => "check",
                Field::Tag => "tag",
                _ => "other",
            };
            match &m.op {
                Op::Equal(v) => format!("{field}={v}"),
                Op::Regex(p) => format!("{field}=~{}", String::from(p.clone())),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The silence `form` asks for, starting at `now_ms`, or the sentence
/// saying what is wrong (the engine checks the rest when it is added).
fn spec(form: &SilenceForm, author: &str, now_ms: u64) -> Result<SilenceSpec, String> {
    let mut matchers = Vec::new();
    for (field, value) in [
        (Field::Agent, &form.agent),
        (Field::Check, &form.check),
        (Field::Tag, &form.tag),
    ] {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let op = match value.strip_prefix('~') {
            Some(pattern) => Op::Regex(Pattern::new(pattern).map_err(|e| e.to_string())?),
            None => Op::Equal(value.to_owned()),
        };
        matchers.push(Matcher { field, op });
    }
    if matchers.is_empty() {
        return Err(
            "give an agent, a check or a tag: a silence without matchers would silence everything"
                .to_owned(),
        );
    }
    let hours: u64 = form
        .hours
        .trim()
        .parse()
        .ok()
        .filter(|h| (1..=MAX_SILENCE_HOURS).contains(h))
        .ok_or_else(|| {
            format!(
                "For (hours): {:?} is not a whole number of hours from 1 to {MAX_SILENCE_HOURS}",
                form.hours
            )
        })?;
    if form.comment.trim().is_empty() {
        return Err("say why in the comment (a ticket, \"db maintenance\")".to_owned());
    }
    Ok(SilenceSpec {
        matchers,
        starts_ms: now_ms,
        ends_ms: now_ms + hours * 3_600_000,
        author: author.to_owned(),
        comment: form.comment.trim().to_owned(),
        expire_on_resolve: false,
    })
}

async fn render(
    dash: &Dashboard,
    session: &Session,
    form: SilenceForm,
    error: String,
) -> Result<String, PageError> {
    // Across nodes the engine may be on another node (`alerts/remote.rs`).
    let open: Vec<OpenView> = crate::alerts::remote::open(&dash.app)
        .await?
        .into_iter()
        .map(|o| OpenView {
            key: o.key,
            muted: o.muted.as_ref().map(mute_text).unwrap_or_default(),
        })
        .collect();
    let silences: Vec<SilenceView> = crate::alerts::remote::silences(&dash.app)
        .await?
        .into_iter()
        .map(|s| SilenceView {
            id: s.id,
            active: s.active,
            matchers: matchers_text(&s.spec.matchers),
            until: utc(i64::try_from(s.spec.ends_ms).unwrap_or(i64::MAX)),
            author: s.spec.author.clone(),
            comment: s.spec.comment.clone(),
        })
        .collect();
    let history = dash
        .app
        .store
        .alert_outbox(HISTORY_ROWS)
        .await?
        .into_iter()
        .map(|h| HistoryView {
            at: utc(h.created_at_ms),
            severity: h.severity,
            group: h.group_key,
            titles: h
                .notifications
                .iter()
                .map(|n| n.title.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        })
        .collect();
    let page = AlertsTemplate {
        chrome: dash.chrome(session),
        open,
        silences,
        history,
        can_act: may(session.role, Action::ChangeSilences),
        form,
        error,
    };
    Ok(page.render()?)
}

/// `GET /alerts`.
pub async fn page(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
) -> Result<Response, PageError> {
    let form = SilenceForm {
        hours: "2".to_owned(),
        ..SilenceForm::default()
    };
    Ok(Html(render(&dash, &session, form, String::new()).await?).into_response())
}

fn admin_only(session: &Session) -> Result<(), PageError> {
    super::require(session, Action::ChangeSilences)
}

/// `POST /silences`.
pub async fn add(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    headers: HeaderMap,
    form: Result<Form<SilenceForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let form = dash.accept_post(&headers, &session, form, "silence", Action::ChangeSilences)?;
    let now = u64::try_from(crate::store::now_ms()).unwrap_or(0);
    let added = match spec(&form, "dashboard (admin)", now) {
        Ok(spec) => crate::alerts::remote::change(&dash.app, Call::AddSilence(spec))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match added {
        Ok(actions) => {
            if let Some(id) = actions.iter().find_map(|a| match a {
                EngineAction::SilenceAdded { id } => Some(*id),
                _ => None,
            }) {
                tracing::info!(id, "silence added on the dashboard");
            }
            Ok(Redirect::to("/alerts").into_response())
        }
        Err(error) => {
            let html = render(&dash, &session, form, error).await?;
            Ok((StatusCode::BAD_REQUEST, Html(html)).into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ExpireForm {
    csrf: Option<String>,
}

/// `POST /silences/{id}/expire`.
pub async fn expire(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<ExpireForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let token = form.ok().and_then(|Form(f)| f.csrf);
    dash.check_csrf(&headers, &Method::POST, Some(&session), token.as_deref())?;
    admin_only(&session)?;
    let id: u64 = id
        .parse()
        .map_err(|_| PageError::bad_request(format!("{id:?} is not a silence id")))?;
    match crate::alerts::remote::change(&dash.app, Call::ExpireSilence(id)).await {
        Ok(_) => Ok(Redirect::to("/alerts").into_response()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_form_by_table() {
        let form = |agent: &str, check: &str, hours: &str, comment: &str| SilenceForm {
            agent: agent.into(),
            check: check.into(),
            hours: hours.into(),
            comment: comment.into(),
            ..SilenceForm::default()
        };
        let ok = spec(&form("", "~disk.*", "3", "resize"), "me", 1000).unwrap();
        assert_eq!((ok.starts_ms, ok.ends_ms), (1000, 1000 + 3 * 3_600_000));
        assert_eq!(matchers_text(&ok.matchers), "check=~disk.*");
        for (f, needle) in [
            (form("", "", "1", "x"), "without matchers"),
            (form("a", "", "0", "x"), "For (hours)"),
            (form("a", "", "9999", "x"), "For (hours)"),
            (form("a", "", "1", " "), "comment"),
            (form("", "~(", "1", "x"), "regex"),
        ] {
            let err = spec(&f, "me", 0).unwrap_err();
            assert!(
                err.to_lowercase().contains(&needle.to_lowercase()),
                "{f:?}: {err}"
            );
        }
    }
}
