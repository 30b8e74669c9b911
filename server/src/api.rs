//! HTTP routes: the admin REST API, the agent websocket, the update routes.
//!
//! | route                                   | auth   | what                                   |
//! |-----------------------------------------|--------|----------------------------------------|
//! | `GET  /healthz`                         | none   | liveness                               |
//! | `GET  /install.sh`                      | none   | the agent installer ([`crate::install`]) |
//! | `GET  /v1/agent/ws`                     | agent  | agent sessions ([`crate::agent_ws`])   |
//! | `GET  /v1/updates/...`                  | none   | manifests, root, blobs (cacheable)     |
//! | `GET  /api/v1/agents`                   | admin  | agents and presence                    |
//! | `GET  /api/v1/agents/{fp}`              | admin  | one agent                              |
//! | `DELETE /api/v1/agents/{fp}`            | admin  | remove an agent: unpin its key, end its session |
//! | `GET  /api/v1/agents/{fp}/config`       | admin  | the agent's computed config document   |
//! | `PUT  /api/v1/agents/{fp}/tags`         | admin  | server-assigned tags                   |
//! | `PUT  /api/v1/agents/{fp}/allow-adhoc`  | admin  | allow or forbid ad-hoc scripts         |
//! | `POST /api/v1/agents/{fp}/run`          | admin  | run a check or a script now ([`crate::rpc`]) |
//! | `GET  /api/v1/checks`                   | admin  | check definitions                      |
//! | `PUT  /api/v1/checks/{name}`            | admin  | create or replace a check              |
//! | `DELETE /api/v1/checks/{name}`          | admin  | delete a check                         |
//! | `GET  /api/v1/collectors`               | admin  | collector definitions                  |
//! | `PUT  /api/v1/collectors/{name}`        | admin  | create or replace a collector          |
//! | `DELETE /api/v1/collectors/{name}`      | admin  | delete a collector                     |
//! | `GET  /api/v1/plugins`                  | admin  | plugins                                |
//! | `PUT  /api/v1/plugins/{name}`           | admin  | upload a plugin (raw body)             |
//! | `DELETE /api/v1/plugins/{name}`         | admin  | delete an unused plugin                |
//! | `GET  /api/v1/tokens`                   | admin  | enrollment tokens                      |
//! | `POST /api/v1/tokens`                   | admin  | create an enrollment token             |
//! | `DELETE /api/v1/tokens/{id}`            | admin  | revoke an enrollment token             |
//! | `GET  /api/v1/results/latest`           | admin  | newest result per agent and check      |
//! | `GET  /api/v1/update-health`            | admin  | per channel: builds, failing updates, rollbacks |
//! | `GET  /api/v1/events`                   | admin  | live events (Server-Sent Events)       |
//! | `GET  /api/v1/alerts…`, `/api/v1/silences…` | admin | alerting ([`crate::alerts::api`])   |
//! | `PUT  /api/v1/releases/...`             | admin  | release uploads ([`outrider_update_server`]) |
//! | `/api/v1/receivers`, `/api/v1/routes`, `/api/v1/dead-letters` | admin | alert receivers, routes, dead letters ([`crate::notify::api`]) |
//!
//! Every error is JSON `{"error": "..."}` ([`crate::error`]), including
//! unknown routes, wrong methods and bodies that do not parse.

use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::routing::{get, post, put};
use axum::{Json, Router, middleware};
use outrider_protocol::api::{
    AgentInfo, AgentTags, AllowAdhoc, CheckDefinition, CheckInfo, CollectorDefinition,
    CollectorInfo, CreatedEnrollmentToken, EnrollmentTokenInfo, MAX_TOKEN_EXPIRES_IN_SECS,
    NewEnrollmentToken, PluginInfo, Presence, ResultInfo, UpdateHealth,
};
use outrider_protocol::{AGENT_WS_PATH, AgentConfig, CheckSpec, Fingerprint, is_valid_name};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::PluginFileStore;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::store::{DeletePlugin, PutCheck, normalize_tags};
use crate::{AppState, agent_ws, auth, configs, events, rpc};

/// Most tags on a check selector or assigned to an agent.
const MAX_TAGS: usize = 32;

/// Largest command line of one check (program and arguments, in bytes), so
/// that a config document of many checks stays far below the message limit.
const MAX_COMMAND_BYTES: usize = 4096;

/// Builds the whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{fp}", get(show_agent).delete(remove_agent))
        .route("/api/v1/agents/{fp}/config", get(agent_config))
        .route("/api/v1/agents/{fp}/tags", put(put_agent_tags))
        .route("/api/v1/agents/{fp}/allow-adhoc", put(put_allow_adhoc))
        .route("/api/v1/agents/{fp}/run", post(rpc::run))
        .route("/api/v1/checks", get(list_checks))
        .route("/api/v1/checks/{name}", put(put_check).delete(delete_check))
        .route("/api/v1/collectors", get(list_collectors))
        .route(
            "/api/v1/collectors/{name}",
            put(put_collector).delete(delete_collector),
        )
        .route("/api/v1/plugins", get(list_plugins))
        .route(
            "/api/v1/plugins/{name}",
            put(put_plugin)
                .delete(delete_plugin)
                // The upload is size-capped while streaming instead.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/results/latest", get(latest_results))
        .route("/api/v1/update-health", get(update_health))
        .route("/api/v1/events", get(events::handler))
        .with_state(state.clone())
        .merge(crate::metrics::admin_routes(state.clone()))
        .merge(crate::alerts::api::admin_routes(state.clone()))
        .merge(crate::notify::api::routes(state.clone()))
        .merge(outrider_update_server::admin_router(state.releases.clone()))
        // `route_layer`: only matched admin routes require the token; an
        // unknown path must stay a 404, not turn into a 401.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/install.sh",
            get({
                let origin = crate::install::Origin {
                    public_url: state.config.public_url.clone(),
                    scheme: if state.config.tls().is_some() {
                        "https"
                    } else {
                        "http"
                    },
                    trusted_proxies: state.config.trusted_proxies.clone(),
                };
                move |ConnectInfo(addrs): ConnectInfo<crate::listener::ConnAddrs>,
                      headers: axum::http::HeaderMap| {
                    let response = crate::install::script(&origin, addrs.remote.ip(), &headers);
                    async move { response }
                }
            }),
        )
        .route(AGENT_WS_PATH, get(agent_ws::handler))
        .with_state(state.clone())
        .merge(crate::metrics::public_routes(state.clone()))
        .merge(crate::openapi::routes())
        .merge(outrider_update_server::public_router(
            state.releases.clone(),
        ))
        .merge(admin)
        .fallback(crate::error::not_found)
        .method_not_allowed_fallback(crate::error::method_not_allowed)
}

/// Parses a fingerprint path segment.
pub fn parse_fp(text: &str) -> Result<Fingerprint, ApiError> {
    text.parse()
        .map_err(|e| ApiError::BadRequest(format!("agent {text:?}: {e}")))
}

/// Checks and normalises a tag list.
pub(crate) fn valid_tags(tags: &[String], what: &str) -> Result<Vec<String>, ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::BadRequest(format!(
            "{what}: {} tags exceed the limit of {MAX_TAGS}",
            tags.len()
        )));
    }
    if let Some(bad) = tags.iter().find(|t| !is_valid_name(t)) {
        return Err(ApiError::BadRequest(format!(
            "{what}: tag {bad:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'"
        )));
    }
    Ok(normalize_tags(tags))
}

async fn list_agents(State(state): State<Arc<AppState>>) -> Result<Json<Vec<AgentInfo>>, ApiError> {
    Ok(Json(state.store.agents().await?))
}

/// The 404 of a route naming an agent the server does not know.
pub fn no_agent(fp: &Fingerprint) -> ApiError {
    ApiError::NotFound(format!("no agent with fingerprint {fp}"))
}

async fn known_agent(state: &AppState, text: &str) -> Result<AgentInfo, ApiError> {
    let fp = parse_fp(text)?;
    state.store.agent(&fp).await?.ok_or_else(|| no_agent(&fp))
}

/// The answer of a route that changed agent `fp` (`found`: whether the
/// store knew it): its config is recomputed (and pushed), then it is shown.
async fn changed_agent(
    state: &AppState,
    fp: &Fingerprint,
    found: bool,
) -> Result<Json<AgentInfo>, ApiError> {
    if !found {
        return Err(no_agent(fp));
    }
    configs::changed(state, Some(fp)).await?;
    Ok(Json(known_agent(state, fp.as_str()).await?))
}

async fn show_agent(
    State(state): State<Arc<AppState>>,
    ApiPath(fp): ApiPath<String>,
) -> Result<Json<AgentInfo>, ApiError> {
    Ok(Json(known_agent(&state, &fp).await?))
}

/// Removes an agent: its key is unpinned (coming back needs an enrollment
/// token), its live session is told `Rejected` and closed, and it is
/// deregistered in alerting, so nothing alerts about it.
async fn remove_agent(
    State(state): State<Arc<AppState>>,
    ApiPath(fp): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let fp = parse_fp(&fp)?;
    // The row first: a session that authenticated a moment ago then finds
    // no row to register into (store/agents.rs), and one already
    // registered is ended just below.
    if !state.store.remove_agent(&fp).await? {
        return Err(no_agent(&fp));
    }
    let was_connected = state.sessions.remove_agent(&fp);
    state.configs.forget(&fp);
    state.alerts.removed(&fp).await;
    state
        .events
        .presence(&fp, Presence::Deregistered, crate::store::now_ms());
    tracing::info!(fingerprint = %fp, was_connected, "agent removed");
    Ok(Json(
        json!({ "agent": fp.to_string(), "removed": true, "was_connected": was_connected }),
    ))
}

async fn agent_config(
    State(state): State<Arc<AppState>>,
    ApiPath(fp): ApiPath<String>,
) -> Result<Json<AgentConfig>, ApiError> {
    let agent = known_agent(&state, &fp).await?;
    let config = state.configs.get(&agent.fingerprint).ok_or_else(|| {
        ApiError::NotFound(format!("agent {} has no config yet", agent.fingerprint))
    })?;
    Ok(Json((*config).clone()))
}

async fn put_agent_tags(
    State(state): State<Arc<AppState>>,
    ApiPath(fp): ApiPath<String>,
    ApiJson(body): ApiJson<AgentTags>,
) -> Result<Json<AgentInfo>, ApiError> {
    let fp = parse_fp(&fp)?;
    let tags = valid_tags(&body.tags, "tags")?;
    let found = state.store.set_server_tags(&fp, tags).await?;
    changed_agent(&state, &fp, found).await
}

async fn put_allow_adhoc(
    State(state): State<Arc<AppState>>,
    ApiPath(fp): ApiPath<String>,
    ApiJson(body): ApiJson<AllowAdhoc>,
) -> Result<Json<AgentInfo>, ApiError> {
    let fp = parse_fp(&fp)?;
    let found = state.store.set_allow_adhoc(&fp, body.allow_adhoc).await?;
    changed_agent(&state, &fp, found).await
}

async fn list_checks(State(state): State<Arc<AppState>>) -> Result<Json<Vec<CheckInfo>>, ApiError> {
    Ok(Json(state.store.checks().await?))
}

async fn put_check(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(def): ApiJson<CheckDefinition>,
) -> Result<Json<Value>, ApiError> {
    let spec = CheckSpec {
        name,
        command: def.command,
        interval_secs: def.interval_secs,
        timeout_secs: def.timeout_secs,
    };
    spec.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let command_bytes: usize = spec.command.iter().map(|a| a.len() + 1).sum();
    if command_bytes > MAX_COMMAND_BYTES {
        return Err(ApiError::BadRequest(format!(
            "check {:?}: the command line of {command_bytes} bytes exceeds {MAX_COMMAND_BYTES}",
            spec.name
        )));
    }
    if let Some(plugin) = spec.plugin_name()
        && !is_valid_name(plugin)
    {
        return Err(ApiError::BadRequest(format!(
            "check {:?}: plugin name {plugin:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'",
            spec.name
        )));
    }
    let tags = valid_tags(&def.tags, &format!("check {:?}", spec.name))?;
    let name = spec.name.clone();
    let check = CheckInfo {
        name: spec.name,
        command: spec.command,
        interval_secs: spec.interval_secs,
        timeout_secs: spec.timeout_secs,
        tags,
        alert: def.alert,
    };
    // Refused before anything is stored: a rule the engine cannot take.
    state
        .alerts
        .config_with(std::slice::from_ref(&check))
        .map_err(|e| ApiError::BadRequest(format!("check {name:?}: {e}")))?;
    let changed = match state.store.put_check(check).await? {
        PutCheck::Changed => {
            configs::changed(&state, None).await?;
            let checks = state.store.checks().await?;
            if let Err(e) = state.alerts.set_checks(&checks).await {
                // Each definition was checked when stored; only a bug gets here.
                tracing::warn!("the alert rules of the checks were not applied: {e}");
            }
            true
        }
        PutCheck::Unchanged => false,
        PutCheck::UnknownPlugin(plugin) => {
            return Err(ApiError::BadRequest(format!(
                "check {name:?} uses plugin {plugin:?}, which the server does not have; upload it first (outrider plugins add)"
            )));
        }
    };
    Ok(Json(json!({ "check": name, "changed": changed })))
}

async fn delete_check(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.store.delete_check(name.clone()).await? {
        return Err(ApiError::NotFound(format!("no check named {name:?}")));
    }
    configs::changed(&state, None).await?;
    let checks = state.store.checks().await?;
    if let Err(e) = state.alerts.set_checks(&checks).await {
        tracing::warn!("the alert rules of the checks were not applied: {e}");
    }
    Ok(Json(json!({ "check": name, "deleted": true })))
}

async fn list_collectors(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<CollectorInfo>>, ApiError> {
    Ok(Json(state.store.collectors().await?))
}

/// Stores a collector after the structural checks of
/// `CollectorSpecWire::validate`; agents judge the rest (plugin options,
/// their own `[policy]`) and report a refusal as
/// `outrider.collector.<name>`.
async fn put_collector(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(def): ApiJson<CollectorDefinition>,
) -> Result<Json<Value>, ApiError> {
    if def.collector.name != name {
        return Err(ApiError::BadRequest(format!(
            "the path names collector {name:?} but the definition {:?}",
            def.collector.name
        )));
    }
    def.collector
        .validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let tags = valid_tags(&def.tags, &format!("collector {name:?}"))?;
    let info = CollectorInfo {
        collector: def.collector,
        tags,
        updated_at_ms: 0,
    };
    let changed = state.store.put_collector(info).await?;
    if changed {
        configs::changed(&state, None).await?;
    }
    Ok(Json(json!({ "collector": name, "changed": changed })))
}

async fn delete_collector(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.store.delete_collector(name.clone()).await? {
        return Err(ApiError::NotFound(format!("no collector named {name:?}")));
    }
    configs::changed(&state, None).await?;
    Ok(Json(json!({ "collector": name, "deleted": true })))
}

async fn list_plugins(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<PluginInfo>>, ApiError> {
    Ok(Json(state.store.plugins().await?))
}

async fn put_plugin(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    body: axum::body::Body,
) -> Result<Json<PluginInfo>, ApiError> {
    if !is_valid_name(&name) {
        return Err(ApiError::BadRequest(format!(
            "plugin name {name:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'"
        )));
    }
    let (sha256, size) = state
        .plugin_files
        .store(body.into_data_stream())
        .await
        .map_err(|e| match e {
            crate::plugins::UploadError::TooLarge => {
                ApiError::PayloadTooLarge(format!("plugin {name:?}: {e}"))
            }
            crate::plugins::UploadError::Write { .. } | crate::plugins::UploadError::Store(_) => {
                ApiError::Internal(e.into())
            }
            other => ApiError::BadRequest(format!("plugin {name:?}: {other}")),
        })?;
    let (info, orphaned) = state.store.put_plugin(name, sha256, size).await?;
    if let Some(old) = orphaned {
        state.plugin_files.remove(&old).await;
    }
    configs::changed(&state, None).await?;
    Ok(Json(info))
}

async fn delete_plugin(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.delete_plugin(name.clone()).await? {
        DeletePlugin::Deleted { orphaned } => {
            if let Some(sha) = orphaned {
                state.plugin_files.remove(&sha).await;
            }
            Ok(Json(json!({ "plugin": name, "deleted": true })))
        }
        DeletePlugin::NotFound => Err(ApiError::NotFound(format!("no plugin named {name:?}"))),
        DeletePlugin::InUse(checks) => Err(ApiError::Conflict(format!(
            "plugin {name:?} is used by check(s) {}; change or remove them first",
            checks.join(", ")
        ))),
    }
}

async fn list_tokens(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<EnrollmentTokenInfo>>, ApiError> {
    Ok(Json(state.store.enrollment_tokens().await?))
}

async fn create_token(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<NewEnrollmentToken>,
) -> Result<Json<CreatedEnrollmentToken>, ApiError> {
    let req = checked_token_request(req)?;
    Ok(Json(state.store.create_enrollment_token(req).await?))
}

/// `req` with its tags normalised, or a 400 naming the field that is out of
/// bounds (the API's route and the dashboard's Add a host).
pub(crate) fn checked_token_request(
    req: NewEnrollmentToken,
) -> Result<NewEnrollmentToken, ApiError> {
    if req.note.len() > 256 {
        return Err(ApiError::BadRequest("note: at most 256 bytes".to_owned()));
    }
    if req.uses == Some(0) {
        return Err(ApiError::BadRequest(
            "uses: a token must allow at least one registration".to_owned(),
        ));
    }
    if req
        .expires_in_secs
        .is_some_and(|s| s == 0 || s > MAX_TOKEN_EXPIRES_IN_SECS)
    {
        return Err(ApiError::BadRequest(format!(
            "expires_in_secs: must be between 1 and {MAX_TOKEN_EXPIRES_IN_SECS} (a year); \
             every enrollment token expires"
        )));
    }
    let allowed_tags = req
        .allowed_tags
        .as_deref()
        .map(|tags| valid_tags(tags, "allowed_tags"))
        .transpose()?;
    Ok(NewEnrollmentToken {
        allowed_tags,
        ..req
    })
}

async fn revoke_token(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if state.store.revoke_enrollment_token(id.clone()).await? {
        Ok(Json(json!({ "token": id, "revoked": true })))
    } else {
        Err(ApiError::NotFound(format!("no enrollment token {id:?}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatestQuery {
    agent: Option<String>,
}

async fn latest_results(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<LatestQuery>,
) -> Result<Json<Vec<ResultInfo>>, ApiError> {
    let agent = q.agent.as_deref().map(parse_fp).transpose()?;
    Ok(Json(state.store.latest_results(agent).await?))
}

/// Per channel: agents on each build, agents failing to take a build
/// grouped by reason, rollbacks of the last 24 h (`store/update_events.rs`).
async fn update_health(State(state): State<Arc<AppState>>) -> Result<Json<UpdateHealth>, ApiError> {
    Ok(Json(state.store.update_health().await?))
}
