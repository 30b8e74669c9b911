//! The agent websocket endpoint: one task per connected agent.
//!
//! A session walks the protocol of [`outrider_protocol`]: challenge → hello
//! (key-possession proof, then the pinned key or an enrollment token) →
//! welcome (+ config unless a resumed agent already runs it) → results/acks,
//! config pushes, RPCs and plugin downloads → goodbye. How a session ends
//! decides the agent's presence:
//!
//! | end                                   | presence        |
//! |---------------------------------------|-----------------|
//! | agent sent `Goodbye`                  | deregistered    |
//! | socket lost, bad frame, silent agent  | down            |
//! | replaced by a newer session           | unchanged       |
//! | server shutting down                  | unchanged       |
//! | agent removed by an operator          | (row deleted)   |
//!
//! The same ends are told to the alert engine ([`crate::alerts`]): a
//! Goodbye deregisters the agent (never an outage), a loss starts its
//! `down_for`; a welcome opens it with its effective tags. A removed agent
//! is told `Rejected` (so it stops presenting its key and needs a new
//! enrollment token) and deregistered by the removal itself.
//!
//! Memory per idle session is kept small: bounded tungstenite buffers
//! (below), no per-session copy of the config (documents are shared `Arc`s
//! of [`crate::configs`]), one bounded RPC queue, and the work done per
//! message (store calls, plugin reads) runs in boxed futures so it does not
//! inflate the size of every idle session's future. A malformed, oversized or
//! out-of-protocol frame ends only its own session, with the reason logged;
//! results are acked only after the store committed them. Every send is
//! bounded in time (the agent's `down_after_secs` once registered): an agent
//! that stops reading is lost like one that stops talking, instead of
//! holding its session in a full socket buffer forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use base64::Engine as _;
use outrider_protocol::api::Presence;
use outrider_protocol::{
    AgentConfig, AgentMessage, Decoded, Fingerprint, Hello, MAX_BATCH_RESULTS, MAX_CAPABILITIES,
    MAX_MESSAGE_BYTES, ProtocolRange, ServerMessage, Welcome, agreed_capabilities, capability,
    is_valid_name,
};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

use crate::alerts::SessionEvent;
use crate::backend::PluginFileStore;
use crate::backend::presence::{Lease, PresenceStore};
use crate::limits::ConnHandle;
use crate::listener::ConnAddrs;
use crate::sessions::SessionLink;
use crate::store::{Admission, EnrollmentRefusal, Registration, normalize_tags};
use crate::{AppState, configs};

/// How long an agent has to answer the challenge; also the bound on each
/// send before the session is registered.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait of a hello for its turn (`--max-concurrent-hellos`),
/// inside the agent's own 10 s wait for the welcome with room for the
/// answer: answering a hello whose agent has given up costs as much as any
/// other and helps nobody, and under a storm the queue would otherwise
/// fill with exactly those. Not much shorter: an agent sent away backs
/// off, so a short wait turns a storm the server would have answered
/// within the agents' patience into rounds of retries (with 3 s, 10,000
/// agents reconnecting to one SQLite node took 38 s instead of 10).
pub const HELLO_QUEUE_WAIT: Duration = Duration::from_secs(6);

/// How long the closing frame may take to go out: a peer that stopped
/// reading must not hold its session task (and shutdown) open.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Read buffer per connection; tungstenite's default (128 KiB) dominates the
/// memory of an idle connection.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Write buffer per connection before a flush.
const WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// Upper bound of queued outgoing bytes before sends fail.
const MAX_WRITE_BUFFER_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

/// Bytes a websocket may send before its hello is authenticated: the
/// largest hello (32 tags, a long hostname, a token) is under 4 KiB.
pub const PREAUTH_MAX_BYTES: u64 = 8 * 1024;

/// Most tags an agent may announce.
const MAX_AGENT_TAGS: usize = 32;

/// `GET /v1/agent/ws`: upgrades and runs a tracked session. Until the
/// hello is authenticated the connection may read only
/// [`PREAUTH_MAX_BYTES`] and holds no agent slot (`session`).
pub async fn handler(
    State(state): State<Arc<AppState>>,
    ConnectInfo(addrs): ConnectInfo<ConnAddrs>,
    conn: Option<Extension<Arc<ConnHandle>>>,
    ws: WebSocketUpgrade,
) -> Response {
    let conn = conn.map(|Extension(c)| c);
    if let Some(conn) = &conn {
        conn.limit_reads(PREAUTH_MAX_BYTES);
    }
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let tasks = state.tasks.clone();
            tasks.track_future(session(state, socket, addrs, conn))
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
    Removed,
}

/// What a removed agent is told, during its session or when it comes back.
const REMOVED_REASON: &str =
    "this agent was removed from the server; enroll it again with a new enrollment token";

async fn session(
    state: Arc<AppState>,
    mut socket: WebSocket,
    addrs: ConnAddrs,
    conn: Option<Arc<ConnHandle>>,
) {
    // `turn` is held until the welcome is ready (see `HELLO_QUEUE_WAIT`).
    let Some((hello, registration, agreed, turn)) =
        Box::pin(introduce(&state, &mut socket, &addrs)).await
    else {
        return;
    };
    // Authenticated: the normal limits from here on, and only now an agent
    // slot, so unauthenticated sockets cannot keep real agents out.
    if let Some(conn) = &conn {
        conn.authenticated();
    }
    let Some(_permit) = agent_slot(&state, &registration.fingerprint) else {
        // No `Rejected`: an agent forgets its enrollment token on one.
        // 1013 "try again later" makes it reconnect with its backoff.
        return close(
            &mut socket,
            close_code::AGAIN,
            "agent connection cap reached",
        )
        .await;
    };
    let fp = registration.fingerprint.clone();
    // The resume token is looked at only now, after the signature check:
    // it is never proof of identity.
    let resumed = hello
        .resume_token
        .as_deref()
        .is_some_and(|t| state.sessions.take_resume_token(&fp, t));
    // Join `Sessions` before marking the agent connected: an older session
    // ending in between must see that it was replaced, or its "down" would
    // land after our "connected".
    let mut link = state.sessions.insert(&fp);
    // Several nodes: take the agent's session in the shared table before
    // registering (which writes Connected), so a node the agent left can
    // no longer write Down over it (`AgentStore::set_presence`).
    let mut lease = None;
    if state.store.is_shared() {
        let taken = state
            .store
            .backend()
            .connect(&fp, &state.node, crate::store::now_ms())
            .await;
        match taken {
            Ok(taken) => {
                state.sessions.set_lease(&fp, link.id, taken.clone());
                lease = Some(taken);
            }
            Err(e) => {
                warn!(fingerprint = %fp, "taking the agent's session failed: {e}");
                state.sessions.remove(&fp, link.id);
                return close(&mut socket, close_code::ERROR, "server error").await;
            }
        }
    }
    let version = registration.protocol_version;
    let channel = registration.channel.clone();
    let hello_tags = registration.tags.clone();
    let registered = match Box::pin(state.store.register(registration)).await {
        Ok(Some(registered)) => registered,
        Ok(None) => {
            warn!(fingerprint = %fp, "agent refused: removed while it was connecting");
            state.sessions.remove(&fp, link.id);
            return reject(&mut socket, REMOVED_REASON).await;
        }
        Err(e) => {
            warn!(fingerprint = %fp, "registration failed: {e:#}");
            state.sessions.remove(&fp, link.id);
            return close(&mut socket, close_code::ERROR, "server error").await;
        }
    };
    let acked_seq = registered.acked_seq;
    if !registered.refused_tags.is_empty() {
        warn!(fingerprint = %fp, refused = ?registered.refused_tags,
            "declared tags outside the agent's enrollment token are ignored");
    }
    state
        .events
        .presence(&fp, Presence::Connected, crate::store::now_ms());
    let tags = match Box::pin(state.store.agent(&fp)).await {
        Ok(Some(agent)) => agent.tags,
        Ok(None) => hello_tags,
        Err(e) => {
            warn!(fingerprint = %fp, "reading the agent's tags failed: {e:#}");
            hello_tags
        }
    };
    // Across nodes the session is known to the alert engine by its shared
    // generation, which grows across nodes (a loss reported by the node the
    // agent left is then older than this session: server/src/alerts.rs).
    let alert_session = lease.as_ref().map_or(link.id, |l| l.generation);
    Box::pin(
        state
            .alerts
            .presence(&fp, alert_session, SessionEvent::Opened, tags),
    )
    .await;
    let config = match Box::pin(configs::refresh(&state, Some(&fp))).await {
        Ok(Some(config)) => config,
        Ok(None) => Arc::new(AgentConfig::default()),
        Err(e) => {
            warn!(fingerprint = %fp, "computing the agent's config failed: {e:#}");
            Arc::new(AgentConfig::default())
        }
    };
    info!(fingerprint = %fp, hostname = %hello.hostname, version = %hello.agent_version, protocol = version, resumed, "agent connected");
    if agreed.iter().any(|c| c == capability::UPDATE_NUDGE)
        && let Some(channel) = channel
    {
        state
            .nudges
            .join(&fp, link.id, &channel, link.nudge.clone());
    }

    let welcome = Welcome {
        fingerprint: fp.clone(),
        acked_seq,
        resume_token: state.sessions.issue_resume_token(&fp),
        resumed,
        server_addrs: server_addrs(&state, &addrs),
        protocol_version: version,
        capabilities: state.config.capabilities.clone(),
    };
    let collectors = agreed.iter().any(|c| c == capability::COLLECTORS);
    // A resumed agent that already runs this version is not sent it again,
    // unless it takes collectors and the document has some: a hot swap
    // keeps the session, so the library may be newer than the one that got
    // this version without them (resending an identical set changes nothing).
    let sent_version = (resumed
        && hello.config_version == config.version
        && (!collectors || config.collectors.is_empty()))
    .then_some(config.version);
    drop((hello, config, turn));
    let end = converse(
        &state,
        &mut socket,
        &fp,
        welcome,
        sent_version,
        collectors,
        &mut link,
    )
    .await;
    let removed = matches!(end, End::Removed);
    let (code, reason) = Box::pin(finish(&state, &fp, link.id, lease, end)).await;
    if removed {
        return reject(&mut socket, REMOVED_REASON).await;
    }
    close(&mut socket, code, reason).await;
}

/// An agent slot, or `None` (counted, logged) when all are taken.
fn agent_slot(state: &AppState, fp: &Fingerprint) -> Option<OwnedSemaphorePermit> {
    let permit = state.agent_slots.clone().try_acquire_owned().ok();
    if permit.is_none() {
        state
            .limits
            .refusals
            .agent_slots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(
            fingerprint = %fp,
            limit = state.config.max_agent_connections,
            "agent connection refused: --max-agent-connections reached"
        );
    }
    permit
}

/// Challenge, hello, authentication. On refusal the agent has been told
/// why, the refusal is logged, and `None` is returned. Also returns the
/// capabilities agreed for the session.
async fn introduce(
    state: &AppState,
    socket: &mut WebSocket,
    addrs: &ConnAddrs,
) -> Option<(
    Hello,
    Registration,
    Vec<String>,
    Option<OwnedSemaphorePermit>,
)> {
    let nonce = random_hex::<32>();
    let challenge = ServerMessage::Challenge {
        nonce: nonce.clone(),
    };
    send(socket, &challenge, HELLO_TIMEOUT).await.ok()?;
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_message(socket)).await {
        Ok(Ok(AgentMessage::Hello(hello))) => hello,
        Ok(Ok(other)) => {
            let reason = format!("expected hello, got {}", other.kind());
            warn!(remote = %addrs.remote, %reason, "agent refused");
            reject(socket, &reason).await;
            return None;
        }
        Ok(Err(reason)) => {
            warn!(remote = %addrs.remote, %reason, "agent refused");
            reject(socket, &reason).await;
            return None;
        }
        Err(_) => {
            reject(socket, "no hello within 10 s").await;
            return None;
        }
    };
    let Ok(turn) = hello_turn(state).await else {
        state
            .limits
            .refusals
            .hello_queue
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        debug!(fingerprint = %hello.fingerprint, "agent asked to come back: too many hellos at once");
        close(socket, close_code::AGAIN, "server busy; try again later").await;
        return None;
    };
    match authenticate(state, &hello, &nonce).await {
        Ok((registration, agreed)) => Some((hello, registration, agreed, turn)),
        Err(Refused::Rejected(reason)) => {
            warn!(fingerprint = %hello.fingerprint, hostname = %hello.hostname, remote = %addrs.remote, %reason, "agent refused");
            reject(socket, &reason).await;
            None
        }
        Err(Refused::Unavailable(why)) => {
            warn!(fingerprint = %hello.fingerprint, remote = %addrs.remote, %why, "agent asked to come back: the store failed");
            close(socket, close_code::AGAIN, "server busy; try again later").await;
            None
        }
    }
}

/// The hello's turn: a permit when turns are taken (several nodes), `None`
/// when not; `Err` when it waited [`HELLO_QUEUE_WAIT`] in vain.
async fn hello_turn(state: &AppState) -> Result<Option<OwnedSemaphorePermit>, ()> {
    let Some(hellos) = &state.hellos else {
        return Ok(None);
    };
    match tokio::time::timeout(HELLO_QUEUE_WAIT, hellos.clone().acquire_owned()).await {
        Ok(Ok(turn)) => Ok(Some(turn)),
        _ => Err(()),
    }
}

/// Records how session `id` of `fp` ended (presence, event, log line) and
/// returns the close frame to send.
async fn finish(
    state: &AppState,
    fp: &Fingerprint,
    id: u64,
    lease: Option<Lease>,
    end: End,
) -> (u16, &'static str) {
    let ours = state.sessions.remove(fp, id);
    state.nudges.leave(fp, id);
    if ours && matches!(end, End::Goodbye(_)) {
        state.sessions.forget_resume_token(fp);
    }
    let presence = match &end {
        End::Goodbye(_) => Some(Presence::Deregistered),
        End::Replaced | End::ServerShutdown | End::Removed => None,
        End::Lost(_) | End::Silent | End::Protocol(_) | End::StoreFailed(_) => Some(Presence::Down),
    };
    let session_event = match &end {
        End::Goodbye(_) => Some(SessionEvent::Goodbye),
        End::Replaced | End::ServerShutdown | End::Removed => None,
        End::Lost(_) | End::Silent | End::Protocol(_) | End::StoreFailed(_) => {
            Some(SessionEvent::Lost)
        }
    };
    if let (true, Some(_), Some(lease)) = (ours, presence, &lease) {
        // Ends the shared session only if it is still this one's; the
        // presence below is not written while the agent is up elsewhere.
        if let Err(e) = state
            .store
            .backend()
            .disconnect(lease, crate::store::now_ms())
            .await
        {
            warn!(fingerprint = %fp, "ending the agent's session failed (the sweep ends it): {e}");
        }
    }
    if let (true, Some(what)) = (ours, session_event) {
        // A server shutting down does not tell the engine: the next start
        // counts every session as lost then, with its restart grace.
        // Across nodes, after the shared session ended above: a new leader
        // that finds it still up then reads this loss from the log
        // (server/src/alerts.rs, "Across nodes").
        let id = lease.as_ref().map_or(id, |l| l.generation);
        state.alerts.presence(fp, id, what, Vec::new()).await;
    }
    if let (true, Some(presence)) = (ours, presence) {
        match state.store.set_presence(fp, presence).await {
            Ok(Some(at_ms)) => state.events.presence(fp, presence, at_ms),
            Ok(None) => {}
            Err(e) => {
                warn!(fingerprint = %fp, "cannot record presence {}: {e:#}", presence.as_str())
            }
        }
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
        End::Removed => info!(fingerprint = %fp, "session closed: the agent was removed"),
    }
    match end {
        End::Protocol(_) => (close_code::POLICY, "protocol violation"),
        End::ServerShutdown => (close_code::AWAY, "server shutting down"),
        End::Replaced => (close_code::POLICY, "replaced by a newer session"),
        End::Removed => (close_code::POLICY, "rejected"),
        End::StoreFailed(_) => (close_code::ERROR, "server error"),
        _ => (close_code::NORMAL, "bye"),
    }
}

/// The addresses an agent may dial when DNS fails: the configured list,
/// else the local address the agent reached.
fn server_addrs(state: &AppState, addrs: &ConnAddrs) -> Vec<String> {
    if state.config.advertise_addrs.is_empty() {
        vec![addrs.local.ip().to_string()]
    } else {
        state
            .config
            .advertise_addrs
            .iter()
            .map(|ip| ip.to_string())
            .collect()
    }
}

/// The protocol version and capabilities of a session: the highest
/// version both `ours` and the hello's range contain, and the capabilities
/// both announced (none below version 3). `Err` is the rejection reason.
pub fn negotiate(
    hello: &Hello,
    ours: ProtocolRange,
    our_capabilities: &[String],
) -> Result<(u32, Vec<String>), String> {
    let offered = hello.offered().map_err(|e| e.to_string())?;
    let Some(version) = offered.negotiate(ours) else {
        return Err(format!(
            "protocol versions {offered} are not supported (server speaks {ours})"
        ));
    };
    if hello.capabilities.len() > MAX_CAPABILITIES {
        return Err(format!(
            "{} capabilities exceed the limit of {MAX_CAPABILITIES}",
            hello.capabilities.len()
        ));
    }
    Ok((
        version,
        agreed_capabilities(version, our_capabilities, &hello.capabilities),
    ))
}

/// Why a hello was not let in.
#[derive(Debug)]
enum Refused {
    /// The agent is refused: it is told why (`Rejected`), and an agent
    /// told so stops using its enrollment token.
    Rejected(String),
    /// The server could not decide (its store failed: a database outage):
    /// not the agent's fault, so it is not rejected but asked to come back
    /// (close 1013), keeping its token, with its reconnect backoff.
    Unavailable(String),
}

impl From<String> for Refused {
    fn from(reason: String) -> Refused {
        Refused::Rejected(reason)
    }
}

/// Checks the hello: protocol version, tags, proof of key possession, and
/// either the pinned key (known agent) or an enrollment token (new agent).
/// Returns the registration and the capabilities agreed for the session.
async fn authenticate(
    state: &AppState,
    hello: &Hello,
    nonce: &str,
) -> Result<(Registration, Vec<String>), Refused> {
    let (version, agreed) = negotiate(
        hello,
        state.config.protocol_range(),
        &state.config.capabilities,
    )?;
    if let Some(field) = hello.label_with_nul() {
        return Err(format!(
            "hello field {field} holds a NUL character, which the server does not store"
        )
        .into());
    }
    if hello.tags.len() > MAX_AGENT_TAGS {
        return Err(format!(
            "{} tags exceed the limit of {MAX_AGENT_TAGS}",
            hello.tags.len()
        )
        .into());
    }
    if let Some(bad) = hello.tags.iter().find(|t| !is_valid_name(t)) {
        return Err(
            format!("tag {bad:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'").into(),
        );
    }
    outrider_protocol::verify_proof(
        &hello.fingerprint,
        &hello.public_key,
        nonce,
        &hello.signature,
    )
    .map_err(|e| Refused::Rejected(e.to_string()))?;
    let pinned = state
        .store
        .pinned_key(&hello.fingerprint)
        .await
        .map_err(|e| Refused::Unavailable(format!("server error: {e:#}")))?;
    // Every token, the server's own included, is a row of the store with
    // its expiry, uses and revocation (store/tokens.rs).
    let admission = match pinned {
        Some(key) if key == hello.public_key => Admission::Pinned,
        Some(_) => {
            return Err(
                format!("fingerprint {} is pinned to another key", hello.fingerprint).into(),
            );
        }
        None => match &hello.enrollment_token {
            Some(t) => match state.store.consume_enrollment_token(t).await {
                Ok(Ok(grant)) => {
                    info!(fingerprint = %hello.fingerprint, token = %grant.id, "agent enrolled");
                    Admission::Enrolled(grant)
                }
                Ok(Err(refusal)) => {
                    state
                        .metrics
                        .counters
                        .refused_enrollment(EnrollmentRefusal::from(&refusal));
                    return Err(refusal.to_string().into());
                }
                Err(e) => return Err(Refused::Unavailable(format!("server error: {e:#}"))),
            },
            None => {
                state
                    .metrics
                    .counters
                    .refused_enrollment(EnrollmentRefusal::Missing);
                return Err(Refused::Rejected(
                    "unknown agent and no enrollment token: put a valid token into agent.toml \
                     (`outrider tokens create`) and restart the agent"
                        .into(),
                ));
            }
        },
    };
    let registration = Registration {
        fingerprint: hello.fingerprint.clone(),
        public_key: hello.public_key.clone(),
        hostname: truncate(&hello.hostname, 255),
        os: truncate(&hello.os, 32),
        arch: truncate(&hello.arch, 32),
        agent_version: truncate(&hello.agent_version, 64),
        build_sha256: hello.build_sha256.as_deref().map(|s| truncate(s, 64)),
        build_version: hello.build_version.as_deref().map(|s| truncate(s, 64)),
        tags: normalize_tags(&hello.tags),
        stub_version: hello.stub_version.as_deref().map(|s| truncate(s, 64)),
        channel: hello.channel.as_deref().map(|s| truncate(s, 64)),
        protocol_version: version,
        admission,
    };
    Ok((registration, agreed))
}

/// The registered part of a session, until it ends. `sent_version` is the
/// config version the agent already runs, if the server knows it does.
async fn converse(
    state: &AppState,
    socket: &mut WebSocket,
    fp: &Fingerprint,
    welcome: Welcome,
    mut sent_version: Option<u64>,
    collectors: bool,
    link: &mut SessionLink,
) -> End {
    let down_after = Duration::from_secs(state.config.down_after_secs.max(2));
    if let Err(e) = send(socket, &ServerMessage::Welcome(welcome), down_after).await {
        return End::Lost(e);
    }
    // The first pass of the loop sends the config unless the agent has it.
    link.config_changed.notify_one();
    let mut ping =
        tokio::time::interval(Duration::from_secs(state.config.ping_interval_secs.max(1)));
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return End::ServerShutdown,
            _ = link.replaced.cancelled() => return End::Replaced,
            _ = link.removed.cancelled() => return End::Removed,
            _ = ping.tick() => {
                if last_heard.elapsed() > down_after {
                    return End::Silent;
                }
                if let Err(e) = send_frame(socket, Message::Ping(Default::default()), down_after).await {
                    return End::Lost(e);
                }
            }
            () = link.config_changed.notified() => {
                let Some(config) = state.configs.get(fp) else { continue };
                if sent_version == Some(config.version) {
                    continue;
                }
                debug!(fingerprint = %fp, version = config.version, "pushing config");
                if let Err(e) = send(socket, &config_message(&config, collectors), down_after).await {
                    return End::Lost(e);
                }
                sent_version = Some(config.version);
            }
            () = link.nudge.notified() => {
                let nudge = ServerMessage::CheckUpdate { reason: "a release of the agent's channel changed".into() };
                if let Err(e) = send(socket, &nudge, down_after).await {
                    return End::Lost(e);
                }
            }
            Some(request) = link.rpc_rx.recv() => {
                if let Err(e) = send(socket, &request, down_after).await {
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
                let message = match AgentMessage::decode_frame(&text) {
                    Ok(Decoded::Message(m)) => m,
                    // A newer agent's message: skipped, counted, logged
                    // once per kind (see docs/protocol.md).
                    Ok(Decoded::Unknown { kind }) => {
                        if state.metrics.counters.unknown_message(&kind) {
                            debug!(fingerprint = %fp, %kind, "skipping agent messages of an unknown type");
                        }
                        continue;
                    }
                    Err(e) => return End::Protocol(e.to_string()),
                };
                // Boxed: the idle session future stays small; the
                // one allocation per message is cheap next to its work.
                if let Some(end) = Box::pin(handle(state, socket, fp, message, down_after)).await {
                    return end;
                }
            }
        }
    }
}

/// The `config` frame of a session: the document, without its collectors
/// unless the agent announced `collectors` (an older agent would ignore
/// them, and the operator would believe they run).
pub fn config_message(config: &AgentConfig, collectors: bool) -> ServerMessage {
    let mut config = config.clone();
    if !collectors {
        config.collectors.clear();
    }
    ServerMessage::Config(config)
}

/// Handles one agent message, each reply sent within `limit`; `Some` ends
/// the session.
async fn handle(
    state: &AppState,
    socket: &mut WebSocket,
    fp: &Fingerprint,
    message: AgentMessage,
    limit: Duration,
) -> Option<End> {
    match message {
        AgentMessage::Results { results } => {
            if results.len() > MAX_BATCH_RESULTS {
                return Some(End::Protocol(format!(
                    "batch of {} results exceeds {MAX_BATCH_RESULTS}",
                    results.len()
                )));
            }
            // SQLite stores integers as i64: a larger seq is the agent's
            // error, not the store's, and must not pass as a store failure.
            if let Some(bad) = results.iter().find(|r| i64::try_from(r.seq).is_err()) {
                return Some(End::Protocol(format!(
                    "result {:?} has sequence number {} beyond {}",
                    bad.check,
                    bad.seq,
                    i64::MAX
                )));
            }
            let up_to = match crate::ingest::results(state, fp, results).await {
                Ok(up_to) => up_to,
                Err(e) => return Some(End::StoreFailed(format!("{e:#}"))),
            };
            send(socket, &ServerMessage::Ack { up_to }, limit)
                .await
                .err()
                .map(End::Lost)
        }
        AgentMessage::Samples(batch) => {
            // SQLite stores integers as i64, as for results.
            if i64::try_from(batch.seq).is_err() {
                return Some(End::Protocol(format!(
                    "sample batch sequence number {} beyond {}",
                    batch.seq,
                    i64::MAX
                )));
            }
            let up_to = match crate::ingest::samples(state, fp, batch).await {
                Ok(up_to) => up_to,
                Err(e) => return Some(End::StoreFailed(format!("{e:#}"))),
            };
            send(socket, &ServerMessage::SamplesAck { up_to }, limit)
                .await
                .err()
                .map(End::Lost)
        }
        AgentMessage::RpcResult { id, result, error } => {
            let answer = match (result, error) {
                (Some(result), None) => Ok(result),
                (None, Some(error)) => Err(error),
                _ => {
                    return Some(End::Protocol(format!(
                        "rpc_result {id:?} must carry exactly one of result and error"
                    )));
                }
            };
            if !state.sessions.complete_rpc(fp, &id, answer) {
                debug!(fingerprint = %fp, %id, "answer to an RPC nobody waits for (timed out?)");
            }
            None
        }
        AgentMessage::GetPlugin { sha256, offset } => {
            let reply = plugin_reply(state, fp, sha256, offset).await;
            send(socket, &reply, limit).await.err().map(End::Lost)
        }
        AgentMessage::Goodbye { reason } => Some(End::Goodbye(truncate(&reason, 256))),
        AgentMessage::Hello(_) => Some(End::Protocol("second hello".into())),
    }
}

/// A chunk of plugin `sha256` if the agent's config lists it.
async fn plugin_reply(
    state: &AppState,
    fp: &Fingerprint,
    sha256: String,
    offset: u64,
) -> ServerMessage {
    let listed = state
        .configs
        .get(fp)
        .is_some_and(|c| c.plugins.iter().any(|p| p.sha256 == sha256));
    if !listed {
        return ServerMessage::PluginMissing {
            sha256,
            reason: "no plugin with this hash is in the agent's configuration".into(),
        };
    }
    match state.plugin_files.read_chunk(&sha256, offset).await {
        Ok((data, total)) => ServerMessage::PluginChunk {
            sha256,
            offset,
            total,
            data: base64::engine::general_purpose::STANDARD.encode(data),
        },
        Err(e) => {
            warn!(fingerprint = %fp, %sha256, offset, "cannot serve plugin: {e}");
            ServerMessage::PluginMissing {
                sha256,
                reason: format!("the server cannot read it: {e}"),
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

/// Sends `msg` within `limit`; the error is the reason the session is lost.
async fn send(socket: &mut WebSocket, msg: &ServerMessage, limit: Duration) -> Result<(), String> {
    send_frame(socket, Message::Text(msg.encode().into()), limit).await
}

/// Sends `frame` within `limit`: a peer whose socket buffer stays full that
/// long is not reading any more.
async fn send_frame(socket: &mut WebSocket, frame: Message, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, socket.send(frame)).await {
        Ok(sent) => sent.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the agent did not take a message within {} s",
            limit.as_secs()
        )),
    }
}

async fn reject(socket: &mut WebSocket, reason: &str) {
    let _ = send(
        socket,
        &ServerMessage::Rejected {
            reason: reason.to_owned(),
        },
        HELLO_TIMEOUT,
    )
    .await;
    close(socket, close_code::POLICY, "rejected").await;
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // Best effort: the session is over whether or not the peer gets it.
    let _ = send_frame(socket, Message::Close(Some(frame)), CLOSE_TIMEOUT).await;
}

/// `N` random bytes as hex. The OS random source failing is unrecoverable
/// for a server that issues challenges, so it is a panic of this session
/// only (the task ends; others are unaffected).
fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    hex::encode(bytes)
}

/// Cuts a label to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
