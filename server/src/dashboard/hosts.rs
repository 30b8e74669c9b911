//! Add a host (admin): `GET /hosts/new` shows a form, `POST /hosts/new`
//! creates an enrollment token with the API's own rules
//! (`server/src/api.rs`, `checked_token_request`) and shows the one-line
//! install command with the token and the pin of the served root. The
//! secret is shown once, on that answer (pages are `no-store`).

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use outrider_protocol::api::{MAX_TOKEN_EXPIRES_IN_SECS, NewEnrollmentToken};
use outrider_update_server::ArtefactStore;
use serde::Deserialize;

use super::session::{Action, Session};
use super::{Authed, Chrome, Dashboard, PageError};

/// What the form asked for, echoed back when it is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    note: String,
    /// Days until the token expires.
    #[serde(default)]
    expires_in_days: String,
    /// Registrations it allows; empty: unlimited.
    #[serde(default)]
    uses: String,
    /// Comma-separated tags hosts may declare; empty: any.
    #[serde(default)]
    tags: String,
}

impl super::PostedForm for HostForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

#[derive(Template)]
#[template(path = "hosts_new.html")]
struct HostTemplate {
    chrome: Chrome,
    form: HostForm,
    error: String,
    /// The created token and its install command, after a post.
    token: String,
    token_id: String,
    expires: String,
    command: String,
}

fn admin_only(session: &Session) -> Result<(), PageError> {
    super::require(session, Action::CreateEnrollmentToken)
}

/// `GET /hosts/new`.
pub async fn form(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
) -> Result<Response, PageError> {
    admin_only(&session)?;
    let page = HostTemplate {
        chrome: dash.chrome(&session),
        form: HostForm {
            expires_in_days: "1".to_owned(),
            ..HostForm::default()
        },
        error: String::new(),
        token: String::new(),
        token_id: String::new(),
        expires: String::new(),
        command: String::new(),
    };
    Ok(Html(page.render()?).into_response())
}

/// The token request `form` asks for, or the sentence saying what is wrong.
fn request(form: &HostForm) -> Result<NewEnrollmentToken, String> {
    let max_days = MAX_TOKEN_EXPIRES_IN_SECS / 86_400;
    let days: u64 = form
        .expires_in_days
        .trim()
        .parse()
        .ok()
        .filter(|d| (1..=max_days).contains(d))
        .ok_or_else(|| {
            format!(
                "Expires in: {:?} is not a whole number of days from 1 to {max_days}",
                form.expires_in_days
            )
        })?;
    let uses = match form.uses.trim() {
        "" => None,
        text => Some(text.parse::<u32>().ok().filter(|u| *u > 0).ok_or_else(|| {
            format!(
                "Uses: {text:?} is not a number of registrations of at least 1 (or leave it empty)"
            )
        })?),
    };
    let tags: Vec<String> = form
        .tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let request = NewEnrollmentToken {
        note: form.note.trim().to_owned(),
        expires_in_secs: Some(days * 86_400),
        uses,
        allowed_tags: (!tags.is_empty()).then_some(tags),
    };
    crate::api::checked_token_request(request).map_err(|e| e.to_string())
}

/// `POST /hosts/new`.
pub async fn create(
    State(dash): State<Arc<Dashboard>>,
    Authed(session): Authed,
    headers: HeaderMap,
    form: Result<Form<HostForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let form = dash.accept_post(
        &headers,
        &session,
        form,
        "Add a host",
        Action::CreateEnrollmentToken,
    )?;
    let mut page = HostTemplate {
        chrome: dash.chrome(&session),
        form: HostForm::default(),
        error: String::new(),
        token: String::new(),
        token_id: String::new(),
        expires: String::new(),
        command: String::new(),
    };
    let request = match request(&form) {
        Ok(request) => request,
        Err(error) => {
            page.error = error;
            page.form = form;
            return Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response());
        }
    };
    let created = dash.app.store.create_enrollment_token(request).await?;
    tracing::info!(token = %created.info.id, "enrollment token created on the dashboard");
    let root = dash
        .app
        .releases
        .root()
        .await
        .map_err(anyhow::Error::from)?;
    page.command =
        crate::install::install_command_with_token(&dash.api_base, &created.token, root.as_deref())
            .unwrap_or_default();
    page.expires = created
        .info
        .expires_at_ms
        .map(super::pages::utc)
        .unwrap_or_default();
    page.token_id = created.info.id;
    page.token = created.token;
    page.form = HostForm {
        expires_in_days: "1".to_owned(),
        ..HostForm::default()
    };
    Ok(Html(page.render()?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_by_table() {
        let form = |days: &str, uses: &str, tags: &str| HostForm {
            expires_in_days: days.into(),
            uses: uses.into(),
            tags: tags.into(),
            ..HostForm::default()
        };
        let ok = request(&form("7", "", " web, eu ")).unwrap();
        assert_eq!(ok.expires_in_secs, Some(7 * 86_400));
        assert_eq!(ok.uses, None);
        assert_eq!(
            ok.allowed_tags,
            Some(vec!["eu".to_owned(), "web".to_owned()])
        );
        assert_eq!(request(&form("1", "3", "")).unwrap().uses, Some(3));
        for (days, uses, tags, needle) in [
            ("0", "", "", "Expires in"),
            ("x", "", "", "Expires in"),
            ("366", "", "", "Expires in"),
            ("1", "0", "", "Uses"),
            ("1", "-1", "", "Uses"),
            ("1", "", "Bad Tag", "tag \"Bad Tag\""),
        ] {
            let err = request(&form(days, uses, tags)).unwrap_err();
            assert!(err.contains(needle), "{days} {uses} {tags}: {err}");
        }
    }
}
