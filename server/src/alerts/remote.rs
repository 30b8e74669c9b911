//! Reads of the engine and operators' silences, wherever the engine is.
//!
//! One node holds it always. Across nodes only the node leading alert
//! evaluation holds it (server/src/alerts.rs, "Across nodes"); another node
//! asks that one over the bus (request kind [`ALERTS`], a JSON [`Call`],
//! a JSON [`Answer`]), found in the `leases` table. The leader's refusals
//! come back with their status and sentence, as run-now's do
//! (server/src/relay.rs). No leader reachable (a handover, the leader just
//! died) is a 503 saying so: retry.

use std::time::Duration;

use outrider_alerting::api::{OpenAlert, SilenceInfo};
use outrider_alerting::silence::{Silence, SilenceSpec};
use outrider_alerting::{Action, Event};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::backend::Backend;
use crate::backend::bus::{Kind, MAX_PAYLOAD_BYTES};
use crate::backend::leader::Job;
use crate::error::ApiError;

/// The bus request kind of a [`Call`].
pub const ALERTS: &str = "alerts";

/// How long a node waits for the leader's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What is asked of the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// Open problems, muted ones and why.
    Open,
    /// Every silence, active or not.
    Silences,
    /// Add a silence.
    AddSilence(SilenceSpec),
    /// End silence `id` now.
    ExpireSilence(u64),
}

/// The engine's answer, or the API error the leader would answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Open(Vec<OpenAlert>),
    Silences(Vec<SilenceInfo>),
    Actions(Vec<Action>),
    Refused { status: u16, message: String },
}

/// The sentence of a 503 while no node holds the engine.
pub fn changing_nodes(why: &str) -> ApiError {
    ApiError::Unavailable(format!(
        "alert evaluation is changing nodes ({why}); retry in a few seconds"
    ))
}

/// Open problems, wherever the engine is.
pub async fn open(state: &AppState) -> Result<Vec<OpenAlert>, ApiError> {
    match call(state, Call::Open).await? {
        Answer::Open(open) => Ok(open),
        other => Err(unexpected(&other)),
    }
}

/// Every silence, wherever the engine is.
pub async fn silences(state: &AppState) -> Result<Vec<SilenceInfo>, ApiError> {
    match call(state, Call::Silences).await? {
        Answer::Silences(list) => Ok(list),
        other => Err(unexpected(&other)),
    }
}

/// Adds or expires a silence, wherever the engine is; the engine's
/// actions.
pub async fn change(state: &AppState, change: Call) -> Result<Vec<Action>, ApiError> {
    match call(state, change).await? {
        Answer::Actions(actions) => Ok(actions),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(answer: &Answer) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "the alert engine answered something else: {answer:?}"
    ))
}

/// `call` on this node's engine if it holds one, else on the leader's
/// through the bus. A refusal is the error.
async fn call(state: &AppState, call: Call) -> Result<Answer, ApiError> {
    let answer = match state.alerts.engine() {
        Some(engine) => on_engine(&engine, call).await,
        None => relay(state, call).await?,
    };
    match answer {
        Answer::Refused { status, message } => Err(ApiError::from_status(status, message)),
        answer => Ok(answer),
    }
}

async fn relay(state: &AppState, call: Call) -> Result<Answer, ApiError> {
    let (Some(bus), Backend::Postgres(pg)) = (&state.bus, state.store.backend()) else {
        return Err(changing_nodes("this node holds no engine and has no bus"));
    };
    let leader = match pg.last_leader(Job::AlertEvaluation).await {
        Ok(Some(node)) if node != state.node => node,
        Ok(_) => return Err(changing_nodes("no node leads it now")),
        Err(e) => {
            return Err(changing_nodes(&format!(
                "the leader cannot be looked up: {e}"
            )));
        }
    };
    let payload = serde_json::to_vec(&call).map_err(anyhow::Error::from)?;
    let kind: Kind = ALERTS.parse().expect("a valid kind");
    let bytes = bus
        .request(&leader, &kind, &payload, CALL_TIMEOUT)
        .await
        .map_err(|e| changing_nodes(&format!("node {leader} did not answer: {e}")))?;
    Ok(serde_json::from_slice(&bytes).map_err(anyhow::Error::from)?)
}

/// Answers a [`Call`] relayed from another node: on this node's engine,
/// or a 503 when it no longer holds one. The reply is the JSON of the
/// [`Answer`]; one over the bus's payload limit is a 503 naming this node.
pub async fn answer(state: &AppState, payload: &[u8]) -> Result<Vec<u8>, String> {
    let call: Call =
        serde_json::from_slice(payload).map_err(|e| format!("unreadable alerts request: {e}"))?;
    let answer = match state.alerts.engine() {
        Some(engine) => on_engine(&engine, call).await,
        None => refusal(changing_nodes(&format!(
            "node {} no longer leads it",
            state.node
        ))),
    };
    let bytes = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        let too_big = refusal(ApiError::Unavailable(format!(
            "the answer is too large to relay ({} bytes); ask node {}, which evaluates alerts",
            bytes.len(),
            state.node
        )));
        return serde_json::to_vec(&too_big).map_err(|e| e.to_string());
    }
    Ok(bytes)
}

fn refusal(e: ApiError) -> Answer {
    Answer::Refused {
        status: e.status().as_u16(),
        message: e.to_string(),
    }
}

/// `call` on `engine`, which holds the engine.
async fn on_engine(engine: &crate::alerts::Alerts, call: Call) -> Answer {
    let now = crate::store::now_ms().max(0) as u64;
    let read = match call {
        Call::Open => {
            engine
                .read(|e| {
                    Answer::Open(
                        e.open()
                            .into_iter()
                            .map(|(subject, muted)| OpenAlert {
                                key: subject.to_string(),
                                subject,
                                muted,
                            })
                            .collect(),
                    )
                })
                .await
        }
        Call::Silences => {
            engine
                .read(|e| Answer::Silences(e.silences().map(|s| info(s, now)).collect()))
                .await
        }
        Call::AddSilence(spec) => return operator(engine, Event::AddSilence(spec)).await,
        Call::ExpireSilence(id) => return operator(engine, Event::ExpireSilence { id }).await,
    };
    read.unwrap_or_else(|| refusal(changing_nodes("this node's engine just stopped")))
}

async fn operator(engine: &crate::alerts::Alerts, event: Event) -> Answer {
    match engine.operator(event).await {
        Ok(actions) => Answer::Actions(actions),
        Err(e) => refusal(refused(e)),
    }
}

fn info(s: &Silence, now: u64) -> SilenceInfo {
    SilenceInfo {
        id: s.id,
        active: s.is_active(now),
        spec: s.spec.clone(),
    }
}

/// The API's answer for a request the engine refused.
pub fn refused(e: outrider_alerting::Error) -> ApiError {
    match e {
        outrider_alerting::Error::UnknownSilence { .. } => ApiError::NotFound(e.to_string()),
        outrider_alerting::Error::TooManySilences { .. } => ApiError::Conflict(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (d) the pure parts by table: every answer, refusals with their
    /// status and sentence, survives the bus's JSON.
    #[test]
    fn answers_and_refusals_cross_the_bus_unchanged() {
        let cases = [
            (
                refused(outrider_alerting::Error::UnknownSilence { id: 7 }),
                404,
            ),
            (changing_nodes("no node leads it now"), 503),
            (ApiError::BadRequest("bad matcher".into()), 400),
            (ApiError::Conflict("too many".into()), 409),
        ];
        for (error, status) in cases {
            let sentence = error.to_string();
            let bytes = serde_json::to_vec(&refusal(error)).unwrap();
            let Answer::Refused { status: s, message } = serde_json::from_slice(&bytes).unwrap()
            else {
                panic!("not a refusal")
            };
            let back = ApiError::from_status(s, message);
            assert_eq!(back.status().as_u16(), status, "{sentence}");
            assert_eq!(back.to_string(), sentence);
        }
        assert!(
            changing_nodes("x")
                .to_string()
                .contains("alert evaluation is changing nodes")
        );
        for call in [Call::Open, Call::Silences, Call::ExpireSilence(3)] {
            let bytes = serde_json::to_vec(&call).unwrap();
            assert_eq!(serde_json::from_slice::<Call>(&bytes).unwrap(), call);
        }
    }
}
