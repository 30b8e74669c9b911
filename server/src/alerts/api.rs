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
//! unknown silence id is a 404. Across nodes, a node not evaluating alerts
//! asks the one that does ([`remote`]); while none does, a 503.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use outrider_alerting::Action;
use outrider_alerting::api::{HistoryEntry, OpenAlert, SilenceInfo};
use outrider_alerting::silence::SilenceSpec;
use serde::Deserialize;

use super::remote::{self, Call};
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

async fn open(State(state): State<Arc<AppState>>) -> Result<Json<Vec<OpenAlert>>, ApiError> {
    Ok(Json(remote::open(&state).await?))
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

async fn list_silences(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<SilenceInfo>>, ApiError> {
    Ok(Json(remote::silences(&state).await?))
}

async fn add_silence(
    State(state): State<Arc<AppState>>,
    ApiJson(spec): ApiJson<SilenceSpec>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let actions = remote::change(&state, Call::AddSilence(spec)).await?;
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
    remote::change(&state, Call::ExpireSilence(id)).await?;
    Ok(Json(serde_json::json!({ "id": id, "expired": true })))
}
