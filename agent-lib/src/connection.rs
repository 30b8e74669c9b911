//! The websocket session with the server, and reconnection.
//!
//! Session (see the `outrider_protocol` crate docs for the full order):
//! `Challenge` → `Hello` (signed) → `Welcome`/`Rejected`, then a loop that
//! sends un-acked results in batches, applies `Config` to the scheduler,
//! trims the outbox on `Ack`, and keeps reading so pings are answered
//! (tungstenite queues the pong and flushes it on the next read or write).
//! On stop: `Goodbye`, a close handshake (bounded by [`CLOSE_TIMEOUT`]) during
//! which late `Ack`s are still applied, return.
//!
//! Reconnects use one [`Backoff`] (reset after every session that got a
//! `Welcome`); a `Rejected` waits at least [`REJECTED_RETRY`]. Every
//! (re)connect resends all un-acked results; the server dedups by seq.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outrider_protocol::{
    AgentMessage, Hello, MAX_BATCH_RESULTS, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ServerMessage,
    Welcome,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::AgentSettings;
use crate::error::AgentError;
use crate::host::{Health, HostHooks};
use crate::identity::Identity;
use crate::outbox::SharedOutbox;
use crate::scheduler::Scheduler;

/// Time allowed for TCP connect plus the websocket upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for each handshake message from the server.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for Goodbye plus the close handshake on stop.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for sending one batch before the session counts as lost.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest wait after the server rejected us.
pub const REJECTED_RETRY: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a session ended.
enum SessionEnd {
    /// The agent was asked to stop; Goodbye was sent if possible.
    Stopped,
    /// The connection broke; reconnect.
    Lost(AgentError),
}

/// Everything the connection loop borrows from the agent.
pub(crate) struct Connection<'a> {
    pub settings: &'a AgentSettings,
    pub identity: &'a Identity,
    pub outbox: &'a Arc<SharedOutbox>,
    pub hooks: &'a Arc<dyn HostHooks>,
    pub stop: &'a CancellationToken,
}

impl Connection<'_> {
    /// Connects, runs sessions and reconnects until `stop` fires.
    pub async fn run(&self, scheduler: &mut Scheduler) {
        let url = &self.settings.ws_url;
        let mut backoff = Backoff::reconnect();
        let mut degraded_reported = false;
        loop {
            let opened = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.open() => r,
            };
            let (failure, delay) = match opened {
                Ok(ws) => {
                    backoff.reset();
                    degraded_reported = false;
                    match self.session(ws, scheduler).await {
                        SessionEnd::Stopped => return,
                        SessionEnd::Lost(e) => (
                            format!("connection to {url} lost: {e}"),
                            backoff.next_delay(),
                        ),
                    }
                }
                Err(e @ AgentError::Rejected { .. }) => (
                    format!("{e} (at {url})"),
                    backoff.next_delay().max(REJECTED_RETRY),
                ),
                Err(e) => (
                    format!("cannot reach server at {url}: {e}"),
                    backoff.next_delay(),
                ),
            };
            self.hooks
                .warn(&format!("{failure}; retrying in {} ms", delay.as_millis()));
            if !degraded_reported {
                self.hooks.health(Health::Degraded, &failure);
                degraded_reported = true;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens the websocket and runs the handshake up to `Welcome`.
    async fn open(&self) -> Result<Ws, AgentError> {
        let url = &self.settings.ws_url;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        let (mut ws, _response) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| AgentError::Timeout("the websocket connection"))?
            .map_err(|e| AgentError::Connect {
                url: url.clone(),
                source: Box::new(e),
            })?;

        let nonce = match recv_within(&mut ws, "the server's challenge").await? {
            ServerMessage::Challenge { nonce } => nonce,
            other => {
                return Err(AgentError::Protocol(format!(
                    "expected a challenge, got {other:?}"
                )));
            }
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            fingerprint: self.identity.fingerprint().clone(),
            public_key: self.identity.public_key_hex(),
            signature: self.identity.sign_challenge(&nonce),
            enrollment_token: self.settings.agent.enrollment_token.clone(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            build_sha256: self.settings.build.as_ref().map(|b| b.sha256.clone()),
            build_version: self.settings.build.as_ref().map(|b| b.version.clone()),
            last_seq: self.outbox.lock().last_seq(),
            tags: Vec::new(),
            resume_token: None,
            config_version: 0,
        };
        send(&mut ws, &AgentMessage::Hello(hello)).await?;
        match recv_within(&mut ws, "the server's welcome").await? {
            ServerMessage::Welcome(Welcome { acked_seq, .. }) => {
                let (effect, pending) = {
                    let mut outbox = self.outbox.lock();
                    (outbox.welcome(acked_seq), outbox.len())
                };
                if effect.shifted_by > 0 {
                    self.hooks.info(&format!(
                        "fresh sequence counter continued above the server's {acked_seq} (shifted by {})",
                        effect.shifted_by
                    ));
                }
                self.hooks.info(&format!(
                    "connected to {url} as {}; {pending} un-acked results to send",
                    self.identity.fingerprint()
                ));
                Ok(ws)
            }
            ServerMessage::Rejected { reason } => {
                let _ = ws.close(None).await;
                Err(AgentError::Rejected { reason })
            }
            other => Err(AgentError::Protocol(format!(
                "expected welcome or rejected, got {other:?}"
            ))),
        }
    }

    /// Runs one established session until stop or failure.
    async fn session(&self, mut ws: Ws, scheduler: &mut Scheduler) -> SessionEnd {
        let mut healthy = false;
        loop {
            let sent = tokio::select! {
                biased;
                _ = self.stop.cancelled() => None,
                r = self.send_pending(&mut ws) => Some(r),
            };
            match sent {
                None => return self.goodbye(ws).await,
                Some(Err(e)) => return SessionEnd::Lost(e),
                Some(Ok(())) => {}
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return self.goodbye(ws).await,
                msg = recv(&mut ws) => match msg {
                    Ok(ServerMessage::Config(config)) => {
                        self.apply_config(scheduler, &config);
                        if !healthy {
                            self.hooks.health(Health::Ok, "connected and scheduling");
                            healthy = true;
                        }
                    }
                    Ok(ServerMessage::Ack { up_to }) => self.outbox.lock().ack(up_to),
                    Ok(ServerMessage::Rejected { reason }) => {
                        return SessionEnd::Lost(AgentError::Rejected { reason });
                    }
                    Ok(other) => self.hooks.warn(&format!("ignoring unexpected message from the server: {other:?}")),
                    Err(AgentError::Protocol(e)) => self.hooks.warn(&format!("ignoring undecodable frame: {e}")),
                    Err(e) => return SessionEnd::Lost(e),
                },
                () = self.outbox.pushed.notified() => {}
            }
        }
    }

    /// Sends every result not yet sent in this session, in batches.
    async fn send_pending(&self, ws: &mut Ws) -> Result<(), AgentError> {
        loop {
            // The lock is released before the await below.
            let results = self.outbox.lock().next_batch(MAX_BATCH_RESULTS);
            if results.is_empty() {
                return Ok(());
            }
            let count = results.len();
            tokio::time::timeout(SEND_TIMEOUT, send(ws, &AgentMessage::Results { results }))
                .await
                .map_err(|_| AgentError::Timeout("the server to accept results"))??;
            self.hooks.debug(&format!("sent {count} results"));
        }
    }

    fn apply_config(&self, scheduler: &mut Scheduler, config: &outrider_protocol::AgentConfig) {
        let s = scheduler.apply(config);
        self.hooks.info(&format!(
            "applied config version {}: started {:?}, restarted {:?}, stopped {:?}, unchanged {}",
            config.version,
            s.started,
            s.restarted,
            s.stopped,
            s.unchanged.len()
        ));
        for problem in s.invalid {
            self.hooks
                .warn(&format!("skipping invalid check: {problem}"));
        }
    }

    /// Says goodbye and closes the socket, bounded by [`CLOSE_TIMEOUT`].
    async fn goodbye(&self, mut ws: Ws) -> SessionEnd {
        let close = async {
            send(
                &mut ws,
                &AgentMessage::Goodbye {
                    reason: "agent stopping".into(),
                },
            )
            .await?;
            ws.close(None).await?;
            // Wait for the server's close frame and the end of the stream;
            // acks still in flight shrink the state blob we hand over.
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg
                    && let Ok(ServerMessage::Ack { up_to }) = ServerMessage::decode(&text)
                {
                    self.outbox.lock().ack(up_to);
                }
            }
            Ok::<(), AgentError>(())
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
            Ok(Ok(())) => self.hooks.info("said goodbye to the server"),
            Ok(Err(e)) => self.hooks.warn(&format!("goodbye failed: {e}")),
            Err(_) => self
                .hooks
                .warn("the server did not finish the close handshake in time"),
        }
        SessionEnd::Stopped
    }
}

async fn send(ws: &mut Ws, msg: &AgentMessage) -> Result<(), AgentError> {
    ws.send(Message::text(msg.encode()))
        .await
        .map_err(AgentError::from)
}

/// Reads the next protocol message, skipping control frames. Cancel-safe: a
/// message is consumed only when it is returned.
async fn recv(ws: &mut Ws) -> Result<ServerMessage, AgentError> {
    loop {
        match ws.next().await {
            None => return Err(AgentError::Closed(None)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => {
                return ServerMessage::decode(&text)
                    .map_err(|e| AgentError::Protocol(e.to_string()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(AgentError::Closed(
                    frame
                        .map(|f| f.reason.to_string())
                        .filter(|r| !r.is_empty()),
                ));
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(AgentError::Protocol("unexpected binary frame".into()));
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn recv_within(ws: &mut Ws, what: &'static str) -> Result<ServerMessage, AgentError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, recv(ws))
        .await
        .map_err(|_| AgentError::Timeout(what))?
}
