//! HTTP routes: the admin REST API, the agent websocket, the update routes.
//!
//! | route                              | auth   | what                                   |
//! |------------------------------------|--------|----------------------------------------|
//! | `GET  /healthz`                    | none   | liveness                               |
//! | `GET  /v1/agent/ws`                | agent  | agent sessions ([`crate::agent_ws`])   |
//! | `GET  /v1/updates/...`             | none   | manifests, root, blobs (cacheable)     |
//! | `GET  /api/v1/agents`              | admin  | agents and presence                    |
//! | `GET  /api/v1/checks`              | admin  | check definitions                      |
//! | `PUT  /api/v1/checks/{name}`       | admin  | create or replace a check              |
//! | `DELETE /api/v1/checks/{name}`     | admin  | delete a check                         |
//! | `GET  /api/v1/results/latest`      | admin  | newest result per agent and check      |
//! | `GET  /api/v1/events`              | admin  | live events (Server-Sent Events)       |
//! | `PUT  /api/v1/releases/...`        | admin  | release uploads ([`outrider_update_server`]) |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Json, Router, middleware};
use outrider_protocol::api::{AgentInfo, CheckDefinition, ResultInfo};
use outrider_protocol::{AGENT_WS_PATH, CheckSpec, Fingerprint};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::{agent_ws, auth, events};

/// Builds the whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/checks", get(list_checks))
        .route("/api/v1/checks/{name}", put(put_check).delete(delete_check))
        .route("/api/v1/results/latest", get(latest_results))
        .route("/api/v1/events", get(events::handler))
        .with_state(state.clone())
        .merge(outrider_update_server::admin_router(state.releases.clone()))
        .merge(crate::metrics::admin_routes(state.clone()))
        // `route_layer`: only matched admin routes require the token; an
        // unknown path must stay a 404, not turn into a 401.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(AGENT_WS_PATH, get(agent_ws::handler))
        .with_state(state.clone())
        .merge(outrider_update_server::public_router(
            state.releases.clone(),
        ))
        .merge(crate::metrics::public_routes(state.clone()))
        .merge(admin)
}

async fn list_agents(State(state): State<Arc<AppState>>) -> Result<Json<Vec<AgentInfo>>, ApiError> {
    Ok(Json(state.store.agents().await?))
}

async fn list_checks(State(state): State<Arc<AppState>>) -> Result<Json<Vec<CheckSpec>>, ApiError> {
    Ok(Json(state.store.checks().await?))
}

async fn put_check(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<CheckDefinition>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(def) =
        body.map_err(|e| ApiError::BadRequest(format!("check definition: {}", e.body_text())))?;
    let spec = CheckSpec {
        name,
        command: def.command,
        interval_secs: def.interval_secs,
        timeout_secs: def.timeout_secs,
    };
    spec.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let name = spec.name.clone();
    let version = state.store.put_check(spec).await?;
    state
        .config_version
        .send_if_modified(|v| std::mem::replace(v, version) != version);
    Ok(Json(json!({ "check": name, "config_version": version })))
}

async fn delete_check(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.delete_check(name.clone()).await? {
        Some(version) => {
            state.config_version.send_replace(version);
            Ok(Json(json!({ "check": name, "config_version": version })))
        }
        None => Err(ApiError::NotFound(format!("no check named {name:?}"))),
    }
}

#[derive(Debug, Deserialize)]
struct LatestQuery {
    agent: Option<String>,
}

async fn latest_results(
    State(state): State<Arc<AppState>>,
    Query(q): Query<LatestQuery>,
) -> Result<Json<Vec<ResultInfo>>, ApiError> {
    let agent = q
        .agent
        .map(|a| a.parse::<Fingerprint>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("agent: {e}")))?;
    Ok(Json(state.store.latest_results(agent).await?))
}
