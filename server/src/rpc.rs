//! `POST /api/v1/agents/{fp}/run`: run a configured check or an ad-hoc
//! script on a connected agent now, and answer with its result.
//!
//! The request goes to the agent's session as `RunCheck`/`RunScript` with a
//! fresh correlation id; the handler waits for the matching `RpcResult`
//! for the run's own timeout plus [`RPC_MARGIN`]. Outcomes, each one
//! sentence in the API's error body:
//!
//! | outcome                                 | status |
//! |-----------------------------------------|--------|
//! | result                                  | 200    |
//! | bad body, unknown check, script too big | 400    |
//! | unknown agent                           | 404    |
//! | ad-hoc scripts not allowed on the agent | 403    |
//! | agent not connected / left mid-call     | 409    |
//! | agent answered that it could not run it | 422    |
//! | too many calls waiting for the agent    | 429    |
//! | no answer in time                       | 504    |

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use outrider_protocol::AgentConfig;
use outrider_protocol::api::{
    AgentInfo, DEFAULT_SCRIPT_TIMEOUT_SECS, MAX_RUN_TIMEOUT_SECS, RunRequest, RunResponse,
};
use outrider_protocol::{CheckResult, Fingerprint, MAX_SCRIPT_BYTES, ServerMessage};
use tokio::sync::oneshot;

use crate::AppState;
use crate::api::{no_agent, parse_fp};
use crate::backend::presence::PresenceStore;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::sessions::{RpcAnswer, SendRpcError};

/// Extra time over the run's own timeout for the round trip.
pub const RPC_MARGIN: Duration = Duration::from_secs(10);

/// Builds the message of one call from its correlation id.
type MakeRpc = Box<dyn FnOnce(String) -> ServerMessage + Send>;

/// The handler; see the module documentation for its outcomes.
pub async fn run(
    State(state): State<Arc<AppState>>,
    ApiPath(fp): ApiPath<String>,
    ApiJson(req): ApiJson<RunRequest>,
) -> Result<Json<RunResponse>, ApiError> {
    let fp = parse_fp(&fp)?;
    Ok(Json(run_now(&state, &fp, req).await?))
}

/// Runs `req` on agent `fp` now and waits for its answer (the API's
/// handler and the dashboard's Run now button). Fails with the outcomes
/// of the module documentation.
///
/// With several nodes, an agent whose session is on another node is asked
/// through that node (`crate::relay`), after the same checks here.
pub async fn run_now(
    state: &AppState,
    fp: &Fingerprint,
    req: RunRequest,
) -> Result<RunResponse, ApiError> {
    if state.store.is_shared() && !state.sessions.is_connected(fp) {
        let session = state
            .store
            .backend()
            .session(fp)
            .await
            .map_err(anyhow::Error::from)?;
        if let Some(owner) = session
            .filter(|s| s.is_up() && s.node != state.node)
            .map(|s| s.node)
        {
            // The owner checks the request against its own copy of the
            // agent's document: this node's may not have caught up yet
            // with a check defined a moment ago on another node.
            let wait = Duration::from_secs(u64::from(relayed_run_secs(
                &req,
                state.configs.get(fp).as_deref(),
            ))) + RPC_MARGIN;
            return crate::relay::run_now_on(state, &owner, fp, req, wait).await;
        }
    }
    run_here(state, fp, req).await
}

/// [`run_now`] on this node's session of `fp`: what another node's relayed
/// call runs.
pub async fn run_here(
    state: &AppState,
    fp: &Fingerprint,
    req: RunRequest,
) -> Result<RunResponse, ApiError> {
    let agent = state.store.agent(fp).await?.ok_or_else(|| no_agent(fp))?;
    let mut config = state.configs.get(fp);
    // Several nodes: this node's copy may lag a moment behind the store —
    // an agent that just moved here, a check just defined through another
    // node — so it is computed afresh before a check is called unknown.
    if state.store.is_shared() && lacks_check(&req, config.as_deref()) {
        config = crate::configs::refresh(state, Some(fp)).await?.or(config);
    }
    let config = config.unwrap_or_default();
    let (message, run_secs) = request(req, fp, &agent, &config)?;
    let (guard, answer) = state.sessions.send_rpc(fp, message).map_err(|e| match e {
        SendRpcError::NotConnected(_) => ApiError::Conflict(format!(
            "agent {fp} ({}) is not connected (presence: {}); it cannot run anything now",
            agent.hostname,
            agent.presence.as_str()
        )),
        e @ SendRpcError::TooMany(_) => ApiError::TooManyRequests(e.to_string()),
    })?;
    let wait = Duration::from_secs(u64::from(run_secs)) + RPC_MARGIN;
    let outcome = wait_for(fp, answer, wait).await;
    let id = guard.id().to_owned();
    drop(guard);
    Ok(RunResponse {
        id,
        result: outcome?,
    })
}

/// Whether `req` names a check that `config` (this node's copy of the
/// agent's document, if any) does not have.
fn lacks_check(req: &RunRequest, config: Option<&AgentConfig>) -> bool {
    req.check
        .as_ref()
        .is_some_and(|name| config.is_none_or(|c| !c.checks.iter().any(|k| &k.name == name)))
}

/// How long a run relayed to another node may take, for the wait: the
/// script's timeout, or the check's in `config` (this node's copy), or the
/// longest a run may be when this node does not know the check yet.
fn relayed_run_secs(req: &RunRequest, config: Option<&AgentConfig>) -> u32 {
    match (&req.check, &req.script) {
        (None, Some(_)) => req
            .timeout_secs
            .unwrap_or(DEFAULT_SCRIPT_TIMEOUT_SECS)
            .min(MAX_RUN_TIMEOUT_SECS),
        (Some(check), _) => config
            .and_then(|c| c.checks.iter().find(|k| &k.name == check))
            .map_or(MAX_RUN_TIMEOUT_SECS, |k| k.timeout_secs),
        (None, None) => 0,
    }
}

/// Builds the RPC a request asks for (given its correlation id) and the
/// run's own timeout in seconds; refuses what the agent must not get.
fn request(
    req: RunRequest,
    fp: &Fingerprint,
    agent: &AgentInfo,
    config: &AgentConfig,
) -> Result<(MakeRpc, u32), ApiError> {
    Ok(match (req.check, req.script) {
        (Some(check), None) => {
            if req.interpreter.is_some() || req.timeout_secs.is_some() {
                return Err(ApiError::BadRequest(
                    "interpreter and timeout_secs apply to scripts, not checks".into(),
                ));
            }
            let spec = config
                .checks
                .iter()
                .find(|c| c.name == check)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "agent {fp} has no check named {check:?} in its configuration"
                    ))
                })?;
            let secs = spec.timeout_secs;
            (
                Box::new(move |id| ServerMessage::RunCheck { id, check }),
                secs,
            )
        }
        (None, Some(script)) => {
            if script.len() > MAX_SCRIPT_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "script of {} bytes exceeds the limit of {MAX_SCRIPT_BYTES} bytes",
                    script.len()
                )));
            }
            if script.trim().is_empty() {
                return Err(ApiError::BadRequest("script is empty".into()));
            }
            let timeout_secs = req.timeout_secs.unwrap_or(DEFAULT_SCRIPT_TIMEOUT_SECS);
            if !(1..=MAX_RUN_TIMEOUT_SECS).contains(&timeout_secs) {
                return Err(ApiError::BadRequest(format!(
                    "timeout_secs must be between 1 and {MAX_RUN_TIMEOUT_SECS}, got {timeout_secs}"
                )));
            }
            if let Some(ext) = &req.interpreter
                && (ext.is_empty()
                    || ext.len() > 16
                    || !ext.bytes().all(|b| b.is_ascii_alphanumeric()))
            {
                return Err(ApiError::BadRequest(format!(
                    "interpreter {ext:?} must be a file extension such as sh or py"
                )));
            }
            if !agent.allow_adhoc {
                return Err(ApiError::Forbidden(format!(
                    "agent {fp} does not accept ad-hoc scripts; allow them with `outrider agents allow-adhoc {fp} on` \
                     (the host must allow them too: `[policy] allow_adhoc = true` in its agent.toml)"
                )));
            }
            let interpreter = req.interpreter;
            (
                Box::new(move |id| ServerMessage::RunScript {
                    id,
                    script,
                    interpreter,
                    timeout_secs,
                }),
                timeout_secs,
            )
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of check and script".into(),
            ));
        }
    })
}

/// Waits up to `wait` for the agent's answer.
async fn wait_for(
    fp: &Fingerprint,
    answer: oneshot::Receiver<RpcAnswer>,
    wait: Duration,
) -> Result<CheckResult, ApiError> {
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(Ok(result))) => Ok(result),
        Ok(Ok(Err(error))) => Err(ApiError::Unprocessable(format!(
            "agent {fp} could not run it: {error}"
        ))),
        Ok(Err(_)) => Err(ApiError::Conflict(format!(
            "agent {fp} disconnected before answering"
        ))),
        Err(_) => Err(ApiError::GatewayTimeout(format!(
            "agent {fp} did not answer within {} s",
            wait.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document with one check, `load`, of a 7 s timeout.
    fn load_check() -> AgentConfig {
        AgentConfig {
            checks: vec![outrider_protocol::CheckSpec {
                name: "load".into(),
                command: vec!["/bin/true".into()],
                interval_secs: 60,
                timeout_secs: 7,
            }],
            ..AgentConfig::default()
        }
    }

    #[test]
    fn a_check_missing_from_this_nodes_copy_is_looked_up_again() {
        let config = load_check();
        let check = |name: &str| RunRequest {
            check: Some(name.into()),
            ..RunRequest::default()
        };
        let script = RunRequest {
            script: Some("true".into()),
            ..RunRequest::default()
        };
        // (request, this node's copy, looked up again)
        let cases = [
            (check("load"), Some(&config), false),
            (check("new"), Some(&config), true),
            (check("load"), None, true),
            (script.clone(), None, false),
            (script, Some(&config), false),
        ];
        for (req, config, again) in cases {
            assert_eq!(lacks_check(&req, config), again, "{req:?}");
        }
    }

    #[test]
    fn a_relayed_run_waits_for_what_this_node_knows_of_it() {
        let config = load_check();
        let check = |name: &str| RunRequest {
            check: Some(name.into()),
            ..RunRequest::default()
        };
        let script = |timeout_secs| RunRequest {
            script: Some("true".into()),
            timeout_secs,
            ..RunRequest::default()
        };
        // (request, this node's document, seconds)
        let cases = [
            (check("load"), Some(&config), 7),
            // Defined a moment ago elsewhere: the longest a run may take.
            (check("new"), Some(&config), MAX_RUN_TIMEOUT_SECS),
            (check("load"), None, MAX_RUN_TIMEOUT_SECS),
            (script(Some(3)), None, 3),
            (script(None), None, DEFAULT_SCRIPT_TIMEOUT_SECS),
            (script(Some(u32::MAX)), None, MAX_RUN_TIMEOUT_SECS),
            (RunRequest::default(), None, 0),
        ];
        for (req, config, secs) in cases {
            assert_eq!(relayed_run_secs(&req, config), secs, "{req:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_is_a_504_after_the_wait_and_not_before() {
        let fp: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let (tx, rx) = oneshot::channel::<RpcAnswer>();
        let start = tokio::time::Instant::now();
        let err = wait_for(&fp, rx, Duration::from_secs(15))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::GatewayTimeout(_)), "{err:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        assert!(err.to_string().contains("within 15 s"), "{err}");
        drop(tx);
        let (tx, rx) = oneshot::channel::<RpcAnswer>();
        drop(tx);
        assert!(matches!(
            wait_for(&fp, rx, Duration::from_secs(15)).await,
            Err(ApiError::Conflict(_))
        ));
    }
}
