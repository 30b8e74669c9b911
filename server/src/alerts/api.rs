//! The operator's side of alerting over REST (behind the admin token):
//!
//! | route                                   | what                                   |
//! |-----------------------------------------|----------------------------------------|
//! | `GET  /api/v1/alerts`                   | open problems, muted ones and why      |
//! | `GET  /api/v1/alerts/history`           | decided notifications (outbox), newest first |
//! | `GET  /api/v1/silences`                 | silences, active or not                |
//! | `POST /api/v1/silences`                 | add a silence                          |
//! | `POST /api/v1/silences/{id}/expire`     | end a silence now                      |
//!
//! A silence the engine refuses is a 400 with the engine's sentence; an
//! unknown silence id is a 404.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use outrider_alerting::api::{HistoryEntry, OpenAlert, SilenceInfo};
use outrider_alerting::silence::{Silence, SilenceSpec};
use outrider_alerting::{Action, Event};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};

/// Rows of `GET /api/v1/alerts/history` without `?limit=`.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// Routes behind the admin token.
pub fn admin_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(open))
        .route("/api/v1/alerts/history", get(history))
        .route("/api/v1/silences", get(list_silences).post(add_silence))
        .route("/api/v1/silences/{id}/expire", post(expire_silence))
        .with_state(state)
}

async fn open(State(state): State<Arc<AppState>>) -> Json<Vec<OpenAlert>> {
    let open = state.alerts.read(|e| e.open()).await;
    Json(
        open.into_iter()
            .map(|(subject, muted)| OpenAlert {
                key: subject.to_string(),
                subject,
                muted,
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<u32>,
}

async fn history(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    let max = crate::store::alerts::MAX_OUTBOX_PAGE;
    if limit == 0 || limit > max {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} must be between 1 and {max}"
        )));
    }
    Ok(Json(state.store.alert_outbox(limit).await?))
}

async fn list_silences(State(state): State<Arc<AppState>>) -> Json<Vec<SilenceInfo>> {
    let now = crate::store::now_ms().max(0) as u64;
    let list = state
        .alerts
        .read(|e| e.silences().map(|s| info(s, now)).collect())
        .await;
    Json(list)
}

fn info(s: &Silence, now: u64) -> SilenceInfo {
    SilenceInfo {
        id: s.id,
        active: s.is_active(now),
        spec: s.spec.clone(),
    }
}

async fn add_silence(
    State(state): State<Arc<AppState>>,
    ApiJson(spec): ApiJson<SilenceSpec>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let actions = state
        .alerts
        .operator(Event::AddSilence(spec))
        .await
        .map_err(refused)?;
    let id = actions
        .iter()
        .find_map(|a| match a {
            Action::SilenceAdded { id } => Some(*id),
            _ => None,
        })
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("the engine did not report the new silence"))
        })?;
    Ok(Json(serde_json::json!({ "id": id })))
}

async fn expire_silence(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .alerts
        .operator(Event::ExpireSilence { id })
        .await
        .map_err(refused)?;
    Ok(Json(serde_json::json!({ "id": id, "expired": true })))
}

fn refused(e: outrider_alerting::Error) -> ApiError {
    match e {
        outrider_alerting::Error::UnknownSilence { .. } => ApiError::NotFound(e.to_string()),
        outrider_alerting::Error::TooManySilences { .. } => ApiError::Conflict(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}
