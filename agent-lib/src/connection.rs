//! The websocket connection to the server: dialing, the handshake, and
//! reconnection. The established session itself is in `session.rs`.
//!
//! Dialing (see `dns.rs` for the fallback chain): each candidate address is
//! tried in order, TCP then (for `https://`) TLS then the websocket upgrade,
//! bounded by [`ConnectionTiming::connect_timeout`] per address. TLS is
//! always given the URL, never the IP, so a fallback IP is still verified
//! against the host name (SNI = host name).
//!
//! Handshake: `Challenge` → `Hello` (signed; carries the tags, the resume
//! token of the last `Welcome` and the running config version) →
//! `Welcome`/`Rejected`. The enrollment token is sent until the server has
//! welcomed this key once (see [`saved`]), then spent: removed from
//! `agent.toml` and never presented again by this process (see
//! [`enrollment`]); every Hello carries the signed proof of key possession. A `Welcome` records the resume token, the
//! fallback addresses and the enrollment (persisted, see [`saved`]) and
//! reports resolver health as an `outrider.dns` result when it changed.
//!
//! Versions: the Hello offers `AgentSettings::protocol` and
//! `AgentSettings::capabilities`; the Welcome names the version the server
//! chose (absent from servers before negotiation: 2). A message of a type
//! this build does not know is skipped, counted and logged once per type at
//! debug (see `docs/protocol.md`); a malformed one is logged and skipped.
//!
//! Several server URLs (`server_url` and `extra_server_urls`, the nodes of
//! one server): [`endpoints`] decides which one each attempt dials — a
//! per-agent shuffled order with the one last welcomed at first — and when
//! the backoff applies (after a full round). The endpoint of every
//! `Welcome` is remembered in `connection.json` ([`saved`]).
//!
//! Reconnects use one [`Backoff`] (reset after every session that got a
//! `Welcome`); a `Rejected` waits at least [`REJECTED_RETRY`], ten times
//! that when no enrollment token is left to present. Every
//! (re)connect resends all un-acked results; the server dedups by seq.

pub mod endpoints;
pub mod enrollment;
pub mod saved;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::SinkExt;
use outrider_protocol::{
    AgentMessage, Decoded, Hello, MAX_MESSAGE_BYTES, ServerMessage, Welcome, agreed_capabilities,
};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
pub use crate::config::timing::{
    CLOSE_TIMEOUT, CONNECT_TIMEOUT, ConnectionTiming, DNS_TIMEOUT, HANDSHAKE_TIMEOUT,
    KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, PLUGIN_CHUNK_TIMEOUT, PLUGIN_RETRY, PLUGIN_RETRY_CAP,
    REJECTED_RETRY, SEND_TIMEOUT,
};
use crate::config::{AgentSettings, ServerEndpoint, Transport};
use crate::dns::{AddrSource, DNS_CHECK, dns_outcome};
use crate::error::AgentError;
use crate::host::{Health, HostHooks};
use crate::identity::Identity;
use crate::outbox::SharedOutbox;
use crate::plugins::{PluginCache, PluginRetries};
use crate::rpc::Rpc;
use crate::scheduler::Scheduler;
use crate::state::ConnectionState;
use saved::SavedConnection;

/// Read buffer (allocated up front) and write batching target of the
/// websocket, instead of tungstenite's 128 KiB each: the agent's frames are
/// a few KiB, and a larger message still arrives whole (the buffer only sets
/// the read size).
const WS_BUFFER_BYTES: usize = 16 * 1024;
/// After a rejection with no enrollment token left to present, the wait is
/// this many times [`ConnectionTiming::rejected_retry`] (ten minutes): a
/// removed agent keeps knocking, rarely, until its operator gives it a new
/// token or uninstalls it.
pub const NO_TOKEN_RETRY_FACTOR: u32 = 10;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection was made, for the DNS report and the memory.
#[derive(Clone, Debug)]
struct Dialed {
    /// Index into `AgentSettings::endpoints`.
    endpoint: usize,
    addr: SocketAddr,
    source: AddrSource,
    /// Why the resolver failed, when the address came from the fallbacks.
    resolver_error: Option<String>,
}

/// Why a session ended.
enum SessionEnd {
    /// The agent was asked to stop; Goodbye was sent if possible.
    Stopped,
    /// The connection broke; reconnect.
    Lost(AgentError),
}

/// What the connection borrows from the agent's top level for its whole
/// life.
#[derive(Clone, Copy)]
pub(crate) struct AgentParts<'a> {
    pub settings: &'a AgentSettings,
    pub identity: &'a Identity,
    pub outbox: &'a Arc<SharedOutbox>,
    pub hooks: &'a Arc<dyn HostHooks>,
    pub stop: &'a CancellationToken,
    /// Where a session hands the server's collector set
    /// (`collectors/assigned.rs`).
    pub collectors: &'a crate::collectors::assigned::Assignments,
}

/// The connection loop and what it remembers between sessions.
pub(crate) struct Connection<'a> {
    agent: AgentParts<'a>,
    tls: Arc<ClientConfig>,
    plugins: PluginCache,
    /// Survives sessions, so a reconnect does not reset a plugin's backoff.
    plugin_retries: PluginRetries,
    memory: ConnectionState,
    /// Server messages of unknown types skipped, and the types seen (each
    /// logged once; at most [`MAX_UNKNOWN_KINDS`] remembered).
    unknown: UnknownMessages,
    /// The capabilities agreed for the current session.
    agreed: Vec<String>,
    /// Shuffles the endpoints for this agent ([`endpoints::dial_seed`]).
    dial_seed: u64,
}

/// Unknown message types remembered for logging once each.
const MAX_UNKNOWN_KINDS: usize = 64;

/// The count of skipped server messages of unknown types.
#[derive(Debug, Default)]
struct UnknownMessages {
    count: u64,
    kinds: std::collections::BTreeSet<String>,
}

impl UnknownMessages {
    /// Counts one; true the first time `kind` is seen.
    fn record(&mut self, kind: &str) -> bool {
        self.count += 1;
        self.kinds.len() < MAX_UNKNOWN_KINDS && self.kinds.insert(kind.to_owned())
    }
}

impl<'a> Connection<'a> {
    /// A connection continuing from `carried` (the previous generation's
    /// memory), else from `<data_dir>/connection.json`.
    pub fn new(
        agent: AgentParts<'a>,
        tls: Arc<ClientConfig>,
        carried: Option<ConnectionState>,
    ) -> Connection<'a> {
        let AgentParts {
            settings,
            hooks,
            identity,
            ..
        } = agent;
        let endpoints = &settings.endpoints;
        let memory = match carried {
            Some(memory) if memory.saved.belongs_to(endpoints) => memory,
            _ => ConnectionState {
                saved: SavedConnection::load(&settings.data_dir, endpoints).unwrap_or_else(|e| {
                    hooks.warn(&format!(
                        "{e}; starting without DNS fallback addresses or a remembered server URL"
                    ));
                    SavedConnection::empty(&endpoints[0].host)
                }),
                ..ConnectionState::default()
            },
        };
        Connection {
            agent,
            tls,
            plugins: PluginCache::new(&settings.data_dir),
            plugin_retries: PluginRetries::new(
                settings.timing.plugin_retry,
                settings.timing.plugin_retry_cap,
            ),
            memory,
            unknown: UnknownMessages::default(),
            agreed: Vec::new(),
            dial_seed: endpoints::dial_seed(&identity.fingerprint().to_string()),
        }
    }

    /// What to hand to the next generation.
    pub fn into_state(self) -> ConnectionState {
        self.memory
    }

    /// Connects, runs sessions and reconnects until `stop` fires; remote
    /// runs still going are cancelled and joined before returning.
    pub async fn run(&mut self, scheduler: &mut Scheduler) {
        let mut rpc = Rpc::new(&self.agent.settings.data_dir, self.agent.stop.child_token());
        self.reconnect_loop(scheduler, &mut rpc).await;
        rpc.shutdown().await;
    }

    async fn reconnect_loop(&mut self, scheduler: &mut Scheduler, rpc: &mut Rpc) {
        let settings = self.agent.settings;
        let mut backoff = Backoff::reconnect();
        let mut degraded_reported = false;
        // Failed attempts since the start or the last Welcome.
        let mut failures: u32 = 0;
        loop {
            let chosen = self.next_dial(failures).endpoint;
            let url = settings.endpoints[chosen].ws_url.clone();
            // Dialing and waiting for the challenge stop at once on stop.
            // The rest of the handshake does not: once the Hello is out the
            // server may already count us connected, so it runs to the
            // Welcome (bounded by the handshake timeout) and the session
            // then says goodbye instead of vanishing.
            let challenged = tokio::select! {
                _ = self.agent.stop.cancelled() => return,
                r = self.dial_and_challenge(chosen) => r,
            };
            let opened = match challenged {
                Ok((ws, dialed, nonce)) => self.handshake(ws, &dialed, &nonce, scheduler).await,
                Err(e) => Err(e),
            };
            let (failure, delay) = match opened {
                Ok(ws) => {
                    backoff.reset();
                    degraded_reported = false;
                    failures = 0;
                    match self.session(ws, scheduler, rpc).await {
                        SessionEnd::Stopped => return,
                        SessionEnd::Lost(e) => {
                            if matches!(e, AgentError::Rejected { .. }) {
                                self.forget_enrollment().await;
                            }
                            (
                                format!("connection to {url} lost: {e}"),
                                backoff.next_delay(),
                            )
                        }
                    }
                }
                Err(e @ AgentError::Rejected { .. }) => {
                    failures = failures.saturating_add(1);
                    let rejected_retry = self.agent.settings.timing.rejected_retry;
                    // Without a token to present, only the operator can
                    // change the answer (and a new token needs a restart
                    // anyway): knock rarely.
                    let floor = if self.forget_enrollment().await {
                        rejected_retry
                    } else {
                        rejected_retry.saturating_mul(NO_TOKEN_RETRY_FACTOR)
                    };
                    let delay = self.round_delay(failures, &mut backoff);
                    (format!("{e} (at {url})"), delay.max(floor))
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let failure = format!("cannot reach server at {url}: {e}");
                    if self.next_dial(failures).pause == endpoints::Pause::None {
                        // Other URLs are left in this round: no wait, and
                        // not degraded while one of them may answer.
                        self.agent
                            .hooks
                            .warn(&format!("{failure}; trying the next server URL"));
                        continue;
                    }
                    (failure, self.round_delay(failures, &mut backoff))
                }
            };
            self.agent
                .hooks
                .warn(&format!("{failure}; retrying in {} ms", delay.as_millis()));
            if !degraded_reported {
                self.agent.hooks.health(Health::Degraded, &failure);
                degraded_reported = true;
            }
            tokio::select! {
                _ = self.agent.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The attempt after `failures` failed ones ([`endpoints::next_dial`]).
    fn next_dial(&self, failures: u32) -> endpoints::NextDial {
        let configured = &self.agent.settings.endpoints;
        let remembered = self.memory.saved.remembered(configured);
        endpoints::next_dial(configured.len(), self.dial_seed, remembered, failures)
    }

    /// The wait before the attempt after `failures` failed ones: the
    /// backoff's next delay when a round over the endpoints just ended, else
    /// none.
    fn round_delay(&self, failures: u32, backoff: &mut Backoff) -> std::time::Duration {
        match self.next_dial(failures).pause {
            endpoints::Pause::Backoff => backoff.next_delay(),
            endpoints::Pause::None => std::time::Duration::ZERO,
        }
    }

    /// Opens a connection to endpoint `chosen` and reads the server's
    /// challenge nonce.
    async fn dial_and_challenge(&self, chosen: usize) -> Result<(Ws, Dialed, String), AgentError> {
        let (mut ws, dialed) = self.dial(chosen).await?;
        let timing = &self.agent.settings.timing;
        match recv_within(&mut ws, timing, "the server's challenge").await? {
            ServerMessage::Challenge { nonce } => Ok((ws, dialed, nonce)),
            other => Err(AgentError::Protocol(format!(
                "expected a challenge, got {other:?}"
            ))),
        }
    }

    /// Answers the challenge with a signed Hello and waits for `Welcome`.
    async fn handshake(
        &mut self,
        mut ws: Ws,
        dialed: &Dialed,
        nonce: &str,
        scheduler: &Scheduler,
    ) -> Result<Ws, AgentError> {
        let timing = &self.agent.settings.timing;
        let settings = self.agent.settings;
        let hello = Hello {
            // The floor: servers before negotiation accept only an exact 2.
            protocol_version: settings.protocol.min(),
            protocol_min: Some(settings.protocol.min()),
            protocol_max: Some(settings.protocol.max()),
            capabilities: settings.capabilities.clone(),
            stub_version: settings.stub_version.clone(),
            channel: Some(settings.agent.channel.clone()),
            fingerprint: self.agent.identity.fingerprint().clone(),
            public_key: self.agent.identity.public_key_hex(),
            signature: self.agent.identity.sign_challenge(nonce),
            // The org token only until the server has welcomed this key.
            enrollment_token: enrollment::token_to_present(
                settings.agent.enrollment_token.as_deref(),
                self.memory.spent_token_sha256.as_deref(),
                self.memory.saved.enrolled_as.as_ref(),
                self.agent.identity.fingerprint(),
            )
            .map(str::to_owned),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            build_sha256: self.agent.settings.build.as_ref().map(|b| b.sha256.clone()),
            build_version: self
                .agent
                .settings
                .build
                .as_ref()
                .map(|b| b.version.clone()),
            last_seq: self.agent.outbox.lock().last_seq(),
            tags: self.agent.settings.agent.tags.clone(),
            resume_token: self.memory.resume_token.clone(),
            config_version: scheduler.config().map_or(0, |c| c.version),
        };
        send(&mut ws, timing, &AgentMessage::Hello(hello)).await?;
        match recv_within(&mut ws, timing, "the server's welcome").await? {
            ServerMessage::Welcome(welcome) => {
                let version = welcome.protocol_version;
                if !(settings.protocol.min()..=settings.protocol.max()).contains(&version) {
                    return Err(AgentError::Protocol(format!(
                        "the server chose protocol version {version}, outside the offered {}",
                        settings.protocol
                    )));
                }
                let agreed =
                    agreed_capabilities(version, &settings.capabilities, &welcome.capabilities);
                self.agent.hooks.debug(&format!(
                    "protocol version {version}, capabilities {agreed:?}"
                ));
                self.agreed = agreed;
                self.welcomed(&welcome, dialed).await;
                Ok(ws)
            }
            ServerMessage::Rejected { reason } => {
                // Bounded: a server that stops reading must not hold the
                // reconnect loop (and so the stop) here.
                let _ = tokio::time::timeout(timing.close_timeout, ws.close(None)).await;
                Err(AgentError::Rejected { reason })
            }
            other => Err(AgentError::Protocol(format!(
                "expected welcome or rejected, got {other:?}"
            ))),
        }
    }

    /// Applies a `Welcome`: outbox sync, resume token, fallback addresses,
    /// the DNS report.
    async fn welcomed(&mut self, welcome: &Welcome, dialed: &Dialed) {
        let Welcome {
            acked_seq,
            resume_token,
            resumed,
            server_addrs,
            ..
        } = welcome;
        let (effect, pending) = {
            let mut outbox = self.agent.outbox.lock();
            (outbox.welcome(*acked_seq), outbox.len())
        };
        if effect.shifted_by > 0 {
            self.agent.hooks.info(&format!(
                "fresh sequence counter continued above the server's {acked_seq} (shifted by {})",
                effect.shifted_by
            ));
        }
        self.memory.resume_token = Some(resume_token.clone()).filter(|t| !t.is_empty());
        let fingerprint = self.agent.identity.fingerprint();
        let endpoint = &self.agent.settings.endpoints[dialed.endpoint];
        if self
            .memory
            .saved
            .record(endpoint, dialed.addr.ip(), server_addrs, fingerprint)
        {
            self.save_memory().await;
        }
        let broken = dialed.resolver_error.is_some();
        if broken != self.memory.dns_broken {
            let host = &endpoint.host;
            let outcome = dns_outcome(
                host,
                dialed.resolver_error.as_deref(),
                dialed.addr,
                dialed.source,
            );
            self.agent.hooks.warn(&outcome.summary);
            self.agent.outbox.push(DNS_CHECK, outcome);
            self.memory.dns_broken = broken;
        }
        self.spend_enrollment_token().await;
        self.agent.hooks.info(&format!(
            "connected to {} at {} as {}{}; {pending} un-acked results to send",
            endpoint.ws_url,
            dialed.addr,
            self.agent.identity.fingerprint(),
            if *resumed { " (session resumed)" } else { "" },
        ));
    }

    /// After a Welcome: the configured enrollment token is spent. It is
    /// never presented again by this process and its line is removed from
    /// `agent.toml` (once per token; a file that cannot be edited is
    /// logged, and the agent runs on).
    async fn spend_enrollment_token(&mut self) {
        let Some(token) = self.agent.settings.agent.enrollment_token.as_deref() else {
            return;
        };
        let sha = enrollment::token_sha256(token);
        if self.memory.spent_token_sha256.as_deref() == Some(sha.as_str()) {
            return;
        }
        self.memory.spent_token_sha256 = Some(sha);
        let dir = self.agent.settings.config_dir.clone();
        let removed =
            tokio::task::spawn_blocking(move || enrollment::remove_enrollment_token(&dir)).await;
        let hooks = self.agent.hooks;
        match removed {
            Ok(Ok(enrollment::Removal::Removed)) => hooks.info(
                "enrolled: the enrollment token was removed from agent.toml; this agent \
                 reconnects with its key alone",
            ),
            Ok(Ok(enrollment::Removal::Absent)) => {}
            Ok(Err(e)) => hooks.warn(&format!(
                "enrolled, but the enrollment token stays in agent.toml: {e}; remove the \
                 `enrollment_token` line by hand (this agent no longer needs it)"
            )),
            Err(e) => hooks.warn(&format!("removing the enrollment token failed: {e}")),
        }
    }

    /// After a `Rejected`: present the enrollment token again next time, in
    /// case the server forgot this agent.
    /// Returns whether the next Hello has a token to present.
    async fn forget_enrollment(&mut self) -> bool {
        let forgot = self.memory.saved.enrolled_as.take().is_some();
        let presentable = enrollment::token_to_present(
            self.agent.settings.agent.enrollment_token.as_deref(),
            self.memory.spent_token_sha256.as_deref(),
            None,
            self.agent.identity.fingerprint(),
        )
        .is_some();
        if presentable {
            if forgot {
                self.agent
                    .hooks
                    .info("the next attempt presents the enrollment token again");
            }
        } else {
            // Said on every refusal: the one thing that helps is the operator's.
            self.agent.hooks.warn(
                "this agent has no unused enrollment token: to enroll it again, put a new \
                 token (`outrider tokens create`) into agent.toml as `enrollment_token` and \
                 restart the agent",
            );
        }
        if forgot {
            self.save_memory().await;
        }
        presentable
    }

    /// Persists the connection memory on the blocking pool: the write
    /// fsyncs, which must not stall the runtime thread.
    async fn save_memory(&self) {
        let saved = self.memory.saved.clone();
        let dir = self.agent.settings.data_dir.clone();
        let written = tokio::task::spawn_blocking(move || saved.save(&dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = written {
            self.agent.hooks.warn(&format!(
                "cannot save the connection memory in {}: {e}",
                self.agent.settings.data_dir.display()
            ));
        }
    }

    /// Finds the addresses of endpoint `chosen` (resolver, then the
    /// fallback chain when they are of its host) and opens the websocket to
    /// the first that answers: every address of a name with several is
    /// tried.
    async fn dial(&self, chosen: usize) -> Result<(Ws, Dialed), AgentError> {
        let endpoint = &self.agent.settings.endpoints[chosen];
        let timing = &self.agent.settings.timing;
        let (candidates, resolver_error) = match endpoint.ip_literal() {
            Some(ip) => (
                vec![(SocketAddr::new(ip, endpoint.port), AddrSource::Literal)],
                None,
            ),
            None => {
                let lookup = self
                    .agent
                    .settings
                    .resolver
                    .resolve(&endpoint.host, endpoint.port);
                match tokio::time::timeout(timing.dns_timeout, lookup).await {
                    Ok(Ok(addrs)) if !addrs.is_empty() => (
                        addrs
                            .into_iter()
                            .map(|a| (a, AddrSource::Resolver))
                            .collect(),
                        None,
                    ),
                    failed => {
                        let error = match failed {
                            Ok(Ok(_)) => "the resolver returned no addresses".to_owned(),
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => {
                                format!("no answer within {} ms", timing.dns_timeout.as_millis())
                            }
                        };
                        // The remembered addresses are of one host only.
                        let fallbacks = if self.memory.saved.host == endpoint.host {
                            self.memory.saved.candidates(endpoint.port)
                        } else {
                            Vec::new()
                        };
                        (fallbacks, Some(error))
                    }
                }
            }
        };
        let mut last_error = None;
        for (addr, source) in candidates {
            let attempt =
                tokio::time::timeout(timing.connect_timeout, self.upgrade(endpoint, addr));
            match attempt.await {
                Ok(Ok(ws)) => {
                    let dialed = Dialed {
                        endpoint: chosen,
                        addr,
                        source,
                        resolver_error,
                    };
                    return Ok((ws, dialed));
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => last_error = Some(AgentError::Timeout("the websocket connection")),
            }
            if source.is_fallback() {
                self.agent.hooks.debug(&format!(
                    "fallback address {addr} failed: {}",
                    last_error
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ));
            }
        }
        Err(match (resolver_error, last_error) {
            (Some(reason), Some(e)) => AgentError::Resolve {
                host: endpoint.host.clone(),
                reason: format!("{reason}; the last fallback address failed with: {e}"),
            },
            (Some(reason), None) => AgentError::Resolve {
                host: endpoint.host.clone(),
                reason: format!("{reason}; no fallback address is known yet"),
            },
            (None, Some(e)) => e,
            (None, None) => AgentError::Resolve {
                host: endpoint.host.clone(),
                reason: "no addresses".into(),
            },
        })
    }

    /// TCP to `addr`, TLS for `wss://` (verified against the URL's host
    /// name, not `addr`), then the websocket upgrade.
    async fn upgrade(&self, endpoint: &ServerEndpoint, addr: SocketAddr) -> Result<Ws, AgentError> {
        let url = &endpoint.ws_url;
        let failed = |source| AgentError::Connect {
            url: format!("{url} ({addr})"),
            source: Box::new(source),
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| failed(e.into()))?;
        // Results are small frames sent as they come: do not wait for more.
        let _ = tcp.set_nodelay(true);
        let request = url.as_str().into_client_request().map_err(failed)?;
        let connector = match endpoint.transport {
            Transport::Tls => Connector::Rustls(self.tls.clone()),
            Transport::Plain => Connector::Plain,
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_BUFFER_BYTES)
            .write_buffer_size(WS_BUFFER_BYTES)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
            request,
            tcp,
            Some(config),
            Some(connector),
        )
        .await
        .map_err(failed)?;
        Ok(ws)
    }
}

/// Sends one message, bounded by the send timeout.
async fn send(
    ws: &mut Ws,
    timing: &ConnectionTiming,
    msg: &AgentMessage,
) -> Result<(), AgentError> {
    send_frame(ws, timing, Message::text(msg.encode())).await
}

async fn send_frame(
    ws: &mut Ws,
    timing: &ConnectionTiming,
    frame: Message,
) -> Result<(), AgentError> {
    tokio::time::timeout(timing.send_timeout, ws.send(frame))
        .await
        .map_err(|_| AgentError::Timeout("the server to accept a frame"))?
        .map_err(AgentError::from)
}

/// Reads the next protocol message, skipping control frames; every frame
/// (pongs included) refreshes `heard`. Cancel-safe: a message is consumed
/// only when it is returned.
async fn recv(
    ws: &mut Ws,
    heard: &mut tokio::time::Instant,
) -> Result<Decoded<ServerMessage>, AgentError> {
    use futures_util::StreamExt;
    loop {
        let frame = ws.next().await;
        *heard = tokio::time::Instant::now();
        match frame {
            None => return Err(AgentError::Closed(None)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => {
                return ServerMessage::decode_frame(&text)
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

/// The next known handshake message within the handshake timeout; unknown
/// types (a newer server) are skipped.
async fn recv_within(
    ws: &mut Ws,
    timing: &ConnectionTiming,
    what: &'static str,
) -> Result<ServerMessage, AgentError> {
    let mut heard = tokio::time::Instant::now();
    let known = async {
        loop {
            if let Decoded::Message(m) = recv(ws, &mut heard).await? {
                return Ok(m);
            }
        }
    };
    tokio::time::timeout(timing.handshake_timeout, known)
        .await
        .map_err(|_| AgentError::Timeout(what))?
}
