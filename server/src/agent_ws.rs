//! The agent websocket endpoint: one task per connected agent.
//!
//! A session walks the protocol of [`outrider_protocol`]: challenge → hello
//! (key-possession proof, enrollment or pinned-key check) → welcome + config
//! → results/acks and config pushes → goodbye. How a session ends decides
//! the agent's presence:
//!
//! | end                                   | presence        |
//! |---------------------------------------|-----------------|
//! | agent sent `Goodbye`                  | deregistered    |
//! | socket lost, bad frame, silent agent  | down            |
//! | replaced by a newer session           | unchanged       |
//! | server shutting down                  | unchanged       |
//!
//! At most one session per fingerprint: a new one cancels the old, and only
//! the session still registered in [`Sessions`] may write presence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use outrider_protocol::api::Presence;
use outrider_protocol::{
    AgentMessage, Fingerprint, Hello, MAX_BATCH_RESULTS, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
    ServerMessage, Welcome,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::AppState;
use crate::store::Registration;

/// How long an agent has to answer the challenge.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Read buffer per connection; tungstenite's default (128 KiB) dominates the
/// memory of an idle connection.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Write buffer per connection before a flush.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// Upper bound of queued outgoing bytes before sends fail.
const MAX_WRITE_BUFFER_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

/// The live sessions, one per fingerprint.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<HashMap<Fingerprint, (u64, CancellationToken)>>,
}

impl Sessions {
    /// Registers a new session for `fp`, cancelling any older one.
    fn insert(&self, fp: &Fingerprint) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let old = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fp.clone(), (id, token.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        (id, token)
    }

    /// Removes session `id` of `fp`; false when a newer session replaced it.
    fn remove(&self, fp: &Fingerprint, id: u64) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(fp) {
            Some((current, _)) if *current == id => {
                live.remove(fp);
                true
            }
            _ => false,
        }
    }
}

/// `GET /v1/agent/ws`: upgrades and runs a tracked session.
pub async fn handler(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let tasks = state.tasks.clone();
            tasks.track_future(session(state, socket))
        })
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Goodbye(String),
    Lost(String),
    Silent,
    Protocol(String),
    Replaced,
    ServerShutdown,
    StoreFailed(String),
}

async fn session(state: Arc<AppState>, mut socket: WebSocket) {
    let nonce = match random_nonce() {
        Ok(n) => n,
        Err(e) => {
            warn!("cannot create a challenge nonce: {e}");
            return;
        }
    };
    if send(
        &mut socket,
        &ServerMessage::Challenge {
            nonce: nonce.clone(),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_message(&mut socket)).await {
        Ok(Ok(AgentMessage::Hello(hello))) => hello,
        Ok(Ok(other)) => {
            return reject(socket, &format!("expected hello, got {}", kind(&other))).await;
        }
        Ok(Err(reason)) => return reject(socket, &reason).await,
        Err(_) => return reject(socket, "no hello within 10 s").await,
    };
    let registration = match authenticate(&state, &hello, &nonce).await {
        Ok(r) => r,
        Err(reason) => {
            warn!(fingerprint = %hello.fingerprint, hostname = %hello.hostname, %reason, "agent refused");
            return reject(socket, &reason).await;
        }
    };
    let fp = registration.fingerprint.clone();
    // Join `Sessions` before marking the agent connected: an older session
    // ending in between must see that it was replaced, or its "down" would
    // land after our "connected".
    let (id, replaced) = state.sessions.insert(&fp);
    let acked_seq = match state.store.register(registration).await {
        Ok(seq) => seq,
        Err(e) => {
            warn!(fingerprint = %fp, "registration failed: {e:#}");
            state.sessions.remove(&fp, id);
            return close(socket, close_code::ERROR, "server error").await;
        }
    };
    info!(fingerprint = %fp, hostname = %hello.hostname, version = %hello.agent_version, "agent connected");

    let end = converse(&state, &mut socket, &fp, acked_seq, &replaced).await;
    let ours = state.sessions.remove(&fp, id);
    let presence = match &end {
        End::Goodbye(_) => Some(Presence::Deregistered),
        End::Replaced | End::ServerShutdown => None,
        End::Lost(_) | End::Silent | End::Protocol(_) | End::StoreFailed(_) => Some(Presence::Down),
    };
    if let (true, Some(presence)) = (ours, presence)
        && let Err(e) = state.store.set_presence(&fp, presence).await
    {
        warn!(fingerprint = %fp, "cannot record presence {}: {e:#}", presence.as_str());
    }
    match &end {
        End::Goodbye(reason) => info!(fingerprint = %fp, %reason, "agent deregistered"),
        End::Lost(why) => info!(fingerprint = %fp, %why, "agent connection lost"),
        End::Silent => info!(fingerprint = %fp, "agent missed its keepalives"),
        End::Protocol(why) => {
            warn!(fingerprint = %fp, %why, "agent violated the protocol; connection closed")
        }
        End::StoreFailed(why) => warn!(fingerprint = %fp, %why, "store failed during the session"),
        End::Replaced => info!(fingerprint = %fp, "session replaced by a newer one"),
        End::ServerShutdown => debug!(fingerprint = %fp, "session closed for shutdown"),
    }
    let (code, reason) = match end {
        End::Protocol(_) => (close_code::POLICY, "protocol violation"),
        End::ServerShutdown => (close_code::AWAY, "server shutting down"),
        End::Replaced => (close_code::POLICY, "replaced by a newer session"),
        End::StoreFailed(_) => (close_code::ERROR, "server error"),
        _ => (close_code::NORMAL, "bye"),
    };
    close(socket, code, reason).await;
}

/// Checks the hello: protocol version, proof of key possession, and either
/// the pinned key (known agent) or the enrollment token (new agent).
async fn authenticate(
    state: &AppState,
    hello: &Hello,
    nonce: &str,
) -> Result<Registration, String> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (server speaks {PROTOCOL_VERSION})",
            hello.protocol_version
        ));
    }
    outrider_protocol::verify_proof(
        &hello.fingerprint,
        &hello.public_key,
        nonce,
        &hello.signature,
    )
    .map_err(|e| e.to_string())?;
    let pinned = state
        .store
        .pinned_key(&hello.fingerprint)
        .await
        .map_err(|e| format!("server error: {e:#}"))?;
    match pinned {
        Some(key) if key == hello.public_key => {}
        Some(_) => {
            return Err(format!(
                "fingerprint {} is pinned to another key",
                hello.fingerprint
            ));
        }
        None => match &hello.enrollment_token {
            Some(t) if state.enrollment_token.matches(t) => {}
            Some(_) => return Err("the enrollment token is not valid".into()),
            None => return Err("unknown agent and no enrollment token".into()),
        },
    }
    Ok(Registration {
        fingerprint: hello.fingerprint.clone(),
        public_key: hello.public_key.clone(),
        hostname: truncate(&hello.hostname, 255),
        os: truncate(&hello.os, 32),
        arch: truncate(&hello.arch, 32),
        agent_version: truncate(&hello.agent_version, 64),
        build_sha256: hello.build_sha256.as_deref().map(|s| truncate(s, 64)),
        build_version: hello.build_version.as_deref().map(|s| truncate(s, 64)),
    })
}

/// The registered part of a session, until it ends.
async fn converse(
    state: &AppState,
    socket: &mut WebSocket,
    fp: &Fingerprint,
    acked_seq: u64,
    replaced: &CancellationToken,
) -> End {
    let welcome = ServerMessage::Welcome(Welcome {
        fingerprint: fp.clone(),
        acked_seq,
        resume_token: String::new(),
        resumed: false,
        server_addrs: Vec::new(),
    });
    if let Err(e) = send(socket, &welcome).await {
        return End::Lost(e);
    }
    let mut config_rx = state.config_version.subscribe();
    config_rx.mark_changed();
    let mut ping =
        tokio::time::interval(Duration::from_secs(state.config.ping_interval_secs.max(1)));
    let down_after = Duration::from_secs(state.config.down_after_secs.max(2));
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return End::ServerShutdown,
            _ = replaced.cancelled() => return End::Replaced,
            _ = ping.tick() => {
                if last_heard.elapsed() > down_after {
                    return End::Silent;
                }
                if let Err(e) = socket.send(Message::Ping(Default::default())).await {
                    return End::Lost(e.to_string());
                }
            }
            changed = config_rx.changed() => {
                if changed.is_err() {
                    return End::ServerShutdown;
                }
                let config = match state.store.agent_config().await {
                    Ok(c) => c,
                    Err(e) => return End::StoreFailed(format!("{e:#}")),
                };
                debug!(fingerprint = %fp, version = config.version, "pushing config");
                if let Err(e) = send(socket, &ServerMessage::Config(config)).await {
                    return End::Lost(e);
                }
            }
            frame = socket.recv() => {
                last_heard = Instant::now();
                let text = match frame {
                    None => return End::Lost("connection closed without goodbye".into()),
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) => return End::Lost("closed without goodbye".into()),
                    Some(Ok(Message::Binary(_))) => return End::Protocol("binary frame".into()),
                };
                match AgentMessage::decode(&text) {
                    Ok(AgentMessage::Results { results }) => {
                        if results.len() > MAX_BATCH_RESULTS {
                            return End::Protocol(format!("batch of {} results exceeds {MAX_BATCH_RESULTS}", results.len()));
                        }
                        let up_to = match crate::metrics::ingest(state, fp, results).await {
                            Ok(up_to) => up_to,
                            Err(e) => return End::StoreFailed(format!("{e:#}")),
                        };
                        if let Err(e) = send(socket, &ServerMessage::Ack { up_to }).await {
                            return End::Lost(e);
                        }
                    }
                    Ok(AgentMessage::Goodbye { reason }) => return End::Goodbye(reason),
                    Ok(AgentMessage::Hello(_)) => return End::Protocol("second hello".into()),
                    Ok(other @ (AgentMessage::RpcResult { .. } | AgentMessage::GetPlugin { .. })) => {
                        return End::Protocol(format!("{} is not supported yet", kind(&other)));
                    }
                    Err(e) => return End::Protocol(e.to_string()),
                }
            }
        }
    }
}

/// Reads frames until a text frame arrives and decodes it.
async fn next_message(socket: &mut WebSocket) -> Result<AgentMessage, String> {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => {
                return AgentMessage::decode(&text).map_err(|e| e.to_string());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => return Err("unexpected frame before hello".into()),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection closed before hello".into()),
        }
    }
}

async fn send(socket: &mut WebSocket, msg: &ServerMessage) -> Result<(), String> {
    socket
        .send(Message::Text(msg.encode().into()))
        .await
        .map_err(|e| e.to_string())
}

async fn reject(mut socket: WebSocket, reason: &str) {
    let _ = send(
        &mut socket,
        &ServerMessage::Rejected {
            reason: reason.to_owned(),
        },
    )
    .await;
    close(socket, close_code::POLICY, "rejected").await;
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

fn random_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn kind(msg: &AgentMessage) -> &'static str {
    match msg {
        AgentMessage::Hello(_) => "hello",
        AgentMessage::Results { .. } => "results",
        AgentMessage::Goodbye { .. } => "goodbye",
        AgentMessage::RpcResult { .. } => "rpc_result",
        AgentMessage::GetPlugin { .. } => "get_plugin",
    }
}

/// Cuts a label to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
