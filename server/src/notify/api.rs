//! The REST API of the notifier (admin token required):
//!
//! | route                                   | what                                   |
//! |-----------------------------------------|----------------------------------------|
//! | `GET    /api/v1/receivers`              | receivers, without secrets             |
//! | `POST   /api/v1/receivers`              | add a receiver                         |
//! | `DELETE /api/v1/receivers/{name}`       | delete one (its pending deliveries become dead letters) |
//! | `POST   /api/v1/receivers/{name}/test`  | send a test message now                |
//! | `GET    /api/v1/routes`                 | routes                                 |
//! | `POST   /api/v1/routes`                 | add a route                            |
//! | `DELETE /api/v1/routes/{id}`            | delete a route                         |
//! | `GET    /api/v1/dead-letters`           | deliveries given up, newest first      |

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use outrider_protocol::api::{
    DeadLetter, NewReceiver, NewRoute, ReceiverInfo, ReceiverTestResult, RouteInfo,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::policy::Outcome;
use super::receiver;
use crate::AppState;
// Most dead letters one request lists: what the store reads at most.
use crate::backend::notify::MAX_DEAD_LETTERS_PAGE as MAX_DEAD_LETTERS;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::notify::{AddReceiver, AddRoute, MAX_RECEIVERS, MAX_ROUTES, StoredReceiver};
use crate::store::now_ms;

/// Severities a route may name: the outbox's `severity` values.
const SEVERITIES: [&str; 4] = ["critical", "warning", "unknown", "ok"];

/// The notifier's admin routes (the caller adds the admin-token layer).
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/receivers", get(list_receivers).post(add_receiver))
        .route("/api/v1/receivers/{name}", delete(delete_receiver))
        .route("/api/v1/receivers/{name}/test", post(test_receiver))
        .route("/api/v1/routes", get(list_routes).post(add_route))
        .route("/api/v1/routes/{id}", delete(delete_route))
        .route("/api/v1/dead-letters", get(dead_letters))
        .with_state(state)
}

async fn list_receivers(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ReceiverInfo>>, ApiError> {
    Ok(Json(state.store.receivers(receiver::target).await?))
}

async fn add_receiver(
    State(state): State<Arc<AppState>>,
    ApiJson(new): ApiJson<NewReceiver>,
) -> Result<Json<ReceiverInfo>, ApiError> {
    let rate_per_sec = receiver::validate(&new.name, &new.config, new.rate_per_sec)
        .map_err(|e| ApiError::BadRequest(format!("receiver {:?}: {e}", new.name)))?;
    let stored = StoredReceiver {
        name: new.name.clone(),
        config: new.config,
        rate_per_sec,
    };
    match state.store.add_receiver(stored, now_ms()).await? {
        AddReceiver::Added => {}
        AddReceiver::Exists => {
            return Err(ApiError::Conflict(format!(
                "a receiver named {:?} exists; delete it first to replace it",
                new.name
            )));
        }
        AddReceiver::Full => {
            return Err(ApiError::Conflict(format!(
                "there are {MAX_RECEIVERS} receivers, the most allowed; delete one first"
            )));
        }
    }
    state.notifier.wake();
    let info = state
        .store
        .receivers(receiver::target)
        .await?
        .into_iter()
        .find(|r| r.name == new.name)
        .ok_or_else(|| {
            ApiError::NotFound(format!("receiver {:?} was deleted meanwhile", new.name))
        })?;
    Ok(Json(info))
}

async fn delete_receiver(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.store.delete_receiver(name.clone(), now_ms()).await? {
        return Err(no_receiver(&name));
    }
    state.notifier.wake();
    Ok(Json(json!({ "receiver": name, "deleted": true })))
}

fn no_receiver(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no receiver named {name:?}; see outrider receivers list"
    ))
}

async fn test_receiver(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ReceiverTestResult>, ApiError> {
    let stored = state
        .store
        .stored_receivers()
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| no_receiver(&name))?;
    let error = match state.notifier.test(&stored).await {
        Outcome::Accepted => None,
        Outcome::Retry { error, .. } => {
            Some(format!("{error} (a queued message would be retried)"))
        }
        Outcome::Permanent(error) => Some(error),
    };
    Ok(Json(ReceiverTestResult {
        receiver: name,
        delivered: error.is_none(),
        error,
    }))
}

async fn list_routes(State(state): State<Arc<AppState>>) -> Result<Json<Vec<RouteInfo>>, ApiError> {
    Ok(Json(state.store.routes().await?))
}

async fn add_route(
    State(state): State<Arc<AppState>>,
    ApiJson(mut route): ApiJson<NewRoute>,
) -> Result<Json<RouteInfo>, ApiError> {
    route.tags = crate::api::valid_tags(&route.tags, "route")?;
    if let Some(bad) = route
        .severities
        .iter()
        .find(|s| !SEVERITIES.contains(&s.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "route: severity {bad:?} must be one of {}",
            SEVERITIES.join(", ")
        )));
    }
    route.severities.sort();
    route.severities.dedup();
    let receiver = route.receiver.clone();
    match state.store.add_route(route, now_ms()).await? {
        AddRoute::Added(info) => Ok(Json(info)),
        AddRoute::NoReceiver => Err(no_receiver(&receiver)),
        AddRoute::Full => Err(ApiError::Conflict(format!(
            "there are {MAX_ROUTES} routes, the most allowed; delete one first"
        ))),
    }
}

async fn delete_route(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    if !state.store.delete_route(id).await? {
        return Err(ApiError::NotFound(format!("no route with id {id}")));
    }
    Ok(Json(json!({ "route": id, "deleted": true })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterQuery {
    limit: Option<u32>,
}

async fn dead_letters(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_DEAD_LETTERS);
    Ok(Json(state.store.dead_letters(limit).await?))
}
