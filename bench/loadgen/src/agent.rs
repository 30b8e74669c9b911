//! One simulated agent: its own ed25519 key, the real handshake
//! (Challenge → Hello signed with the enrollment token → Welcome → Config),
//! websocket keepalives (tungstenite answers the server's pings), one result
//! batch per interval, answers to `RunCheck`, and the phase changes the
//! harness orders ([`Phase`]).
//!
//! Counting: a batch's samples count as ingested only when its `Ack`
//! arrives; a batch in flight when the connection drops is resent after the
//! reconnect (the server deduplicates by seq), so it is counted once.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use outrider_protocol::{
    AGENT_WS_PATH, AgentMessage, CheckResult, CheckState, Fingerprint, Hello, PROTOCOL_VERSION,
    PerfData, ServerMessage, auth_message, fingerprint_of,
};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Simulated agents per loopback source address by default (each address
/// has ≈ 28,000 ephemeral ports; TIME_WAIT after a reconnect storm needs the
/// headroom).
pub const AGENTS_PER_SOURCE_IP: usize = 1_000;

/// How long TCP connect + websocket upgrade, and then each handshake
/// message, may take before the attempt is retried (the real agent's
/// `CONNECT_TIMEOUT` and `HANDSHAKE_TIMEOUT`).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The real agent's reconnect policy: full jitter, the ceiling starting at
/// 500 ms and doubling up to 30 s, reset by a successful handshake.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// What the harness wants the agents to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One batch per interval.
    Steady,
    /// A new batch as soon as the previous one is acked.
    Burst,
    /// Drop the connection without a goodbye and reconnect at once;
    /// the number tells storms apart.
    Storm(u32),
    /// Say goodbye and stop.
    Stop,
}

/// Settings shared by all agents.
#[derive(Clone, Debug)]
pub struct Settings {
    pub server: SocketAddr,
    pub enrollment_token: String,
    /// The checks every agent reports (in turn, one result each per steady
    /// batch) and can run on demand.
    pub checks: Vec<String>,
    pub interval: Duration,
    pub perfdata_per_result: usize,
    pub results_per_burst_batch: usize,
    /// Reconnect like the real agent (jittered backoff) rather than at once.
    pub agent_backoff: bool,
    /// How many agents run, to spread their batches over the interval.
    pub agents: usize,
    /// What the agents see of update nudges.
    pub nudges: Arc<crate::nudge::Nudges>,
    /// Agents per loopback source address (127.0.0.2, 127.0.0.3, …).
    pub agents_per_ip: usize,
    /// Set when the server speaks HTTPS only.
    pub tls: Option<crate::server::Tls>,
    /// Orders to drop one agent's connection (`--scripted`).
    pub drops: Arc<Drops>,
    /// Several nodes (`--nodes`, [`crate::cluster`]): the agents dial these
    /// instead of `server` alone.
    pub nodes: Option<Arc<Nodes>>,
    /// Agent `i` makes its first attempt `i / agents` of this after the
    /// start (zero: all at once).
    pub connect_ramp: Duration,
    /// Present the enrollment token only until the first welcome, as the
    /// real agent does (agent-lib/src/connection.rs: the token is spent
    /// once the server welcomed the key); otherwise in every hello.
    pub token_once: bool,
}

/// The nodes of a cluster run and where each agent is: agent `i` prefers
/// node `i % N`, and after a failed attempt dials the next at once, as the
/// real agent walks its `server_url` + `extra_server_urls`
/// (agent-lib/src/connection/endpoints.rs): the node it was last welcomed at
/// first, the others in order, the reconnect backoff only after a full round.
#[derive(Debug)]
pub struct Nodes {
    pub addrs: Vec<SocketAddr>,
    /// The node each agent has a session with ([`NO_NODE`]: none).
    pub at: Vec<AtomicUsize>,
    /// Each agent's last ack: `(ms since epoch + 1) << 8 | node`; 0: none yet.
    pub last_ack: Vec<AtomicU64>,
    pub epoch: std::time::Instant,
}

/// The node to dial after `failures` failed attempts (since the last
/// welcome) of `count`: `remembered` (the node last welcomed at; at first
/// the agent's preferred one) opens every round, the others follow in
/// order. The backoff comes before each round but the first (`failures` a
/// multiple of `count`, see the run loop).
pub fn node_to_dial(remembered: usize, failures: usize, count: usize) -> usize {
    let count = count.max(1);
    (remembered + failures % count) % count
}

/// [`Nodes::at`] of an agent without a session.
pub const NO_NODE: usize = usize::MAX;

impl Nodes {
    pub fn new(addrs: Vec<SocketAddr>, agents: usize) -> Nodes {
        Nodes {
            addrs,
            at: (0..agents).map(|_| AtomicUsize::new(NO_NODE)).collect(),
            last_ack: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            epoch: std::time::Instant::now(),
        }
    }

    /// The node and time (since the epoch) of agent `index`'s last ack.
    pub fn last_ack(&self, index: usize) -> Option<(usize, Duration)> {
        match self.last_ack[index].load(Ordering::Relaxed) {
            0 => None,
            v => Some((
                (v & 0xff) as usize,
                Duration::from_millis((v >> 8).saturating_sub(1)),
            )),
        }
    }

    pub fn record_ack(&self, index: usize, node: usize) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last_ack[index].store(ms << 8 | (node as u64 & 0xff), Ordering::Relaxed);
    }
}

/// Orders for single agents to drop their connection without a goodbye
/// and stay away for a while (`--scripted`, bench/dashboard.sh): a
/// presence change the harness times from the drop to a browser.
#[derive(Debug)]
pub struct Drops {
    /// Agent index → how long it stays away.
    pending: Mutex<HashMap<usize, Duration>>,
    /// Bumped at each order; every agent looks whether it is meant.
    generation: watch::Sender<u64>,
}

impl Default for Drops {
    fn default() -> Drops {
        Drops {
            pending: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
        }
    }
}

impl Drops {
    /// Orders agent `index` to drop its connection and stay away for `away`.
    pub fn order(&self, index: usize, away: Duration) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(index, away);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Takes the order for agent `index`, if there is one.
    fn take(&self, index: usize) -> Option<Duration> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index)
    }
}

/// Counters shared by all agents.
#[derive(Debug, Default)]
pub struct Counters {
    /// Agents with a session past `Config`.
    pub connected: AtomicUsize,
    /// Sessions completed up to `Config`, over the whole run.
    pub handshakes: AtomicU64,
    pub acked_batches: AtomicU64,
    pub acked_samples: AtomicU64,
    pub rpc_answered: AtomicU64,
    /// Connection attempts or sessions that failed (then retried).
    pub failures: AtomicU64,
    /// Failures by reason (digits removed, so similar errors group).
    pub failure_reasons: Mutex<HashMap<String, u64>>,
}

impl Counters {
    fn fail(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let key: String = reason
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(120)
            .collect();
        *self
            .failure_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// The `n` most frequent failure reasons with their counts, most
    /// frequent first; takes them out of the counters.
    pub fn top_failures(&self, n: usize) -> Vec<(String, u64)> {
        let mut reasons: Vec<(String, u64)> = self
            .failure_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        reasons.truncate(n);
        reasons
    }
}

/// What an agent knows about its own sequence numbers at the end.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub fingerprint: String,
    /// Highest seq assigned.
    pub sent_seq: u64,
    /// Highest `up_to` the server acknowledged.
    pub acked_seq: u64,
}

/// The deterministic key of agent `index`.
pub fn key(index: usize) -> SigningKey {
    let mut seed = [0x5au8; 32];
    seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// Source addresses the agents can use: 127.0.0.2…127.0.0.251, then
/// 127.0.1.2…, (the attackers of `--attack` use 127.1.x.y).
pub const MAX_SOURCE_IPS: usize = 250 * 256;

/// The `k`th agent source address.
fn source_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (k / 250) as u8, (k % 250 + 2) as u8)
}

/// Runs agent `index` until the phase becomes [`Phase::Stop`].
pub async fn run(
    index: usize,
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    mut phase: watch::Receiver<Phase>,
) -> Tally {
    let key = key(index);
    let fp = fingerprint_of(&key.verifying_key());
    let source = source_ip(index / settings.agents_per_ip.max(1));
    let mut agent = Agent {
        index,
        source,
        key,
        fp,
        settings,
        counters,
        seq: 0,
        last_ts_ms: 0,
        acked_seq: 0,
        in_flight: None,
        node: 0,
        sessions: 0,
    };
    // Spread the steady batches evenly over the interval.
    let offset = agent
        .settings
        .interval
        .mul_f64(index as f64 / agent.settings.agents.max(1) as f64);
    let ramp = agent
        .settings
        .connect_ramp
        .mul_f64(index as f64 / agent.settings.agents.max(1) as f64);
    if !ramp.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(ramp) => {}
            _ = phase.wait_for(|p| *p == Phase::Stop) => {}
        }
    }
    let mut storm_seen = 0;
    let mut drops = agent.settings.drops.generation.subscribe();
    let mut attempt = 0u32;
    let mut rng = 0x2545_f491_4f6c_dd1d ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    // Cluster runs: the node last welcomed at, and failed attempts since.
    let node_count = agent
        .settings
        .nodes
        .as_ref()
        .map_or(1, |n| n.addrs.len().max(1));
    let mut remembered = index % node_count;
    let mut failures = 0usize;
    loop {
        if *phase.borrow() == Phase::Stop {
            break;
        }
        // The round: the remembered node, then the others from it on.
        let (node, server) = match &agent.settings.nodes {
            Some(nodes) => {
                let node = node_to_dial(remembered, failures, node_count);
                (node, nodes.addrs[node])
            }
            None => (0, agent.settings.server),
        };
        let ws = match agent.connect(source, server).await {
            Ok(ws) => ws,
            Err(e) => {
                agent.counters.fail(&format!("connect: {e:#}"));
                failures += 1;
                if !failures.is_multiple_of(node_count) {
                    // Nodes are left in this round: the next one at once.
                    continue;
                }
                let delay = agent.reconnect_delay(&mut attempt, &mut rng);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = phase.changed() => continue,
                }
            }
        };
        attempt = 0;
        failures = 0;
        remembered = node;
        agent.node = node;
        agent.sessions += 1;
        if let Some(nodes) = &agent.settings.nodes {
            nodes.at[index].store(node, Ordering::Relaxed);
        }
        agent.counters.connected.fetch_add(1, Ordering::Relaxed);
        agent.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        let end = agent
            .session(ws, &mut phase, &mut drops, &mut storm_seen, offset)
            .await;
        if let Some(nodes) = &agent.settings.nodes {
            nodes.at[index].store(NO_NODE, Ordering::Relaxed);
        }
        agent.counters.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            SessionEnd::Stopped => break,
            SessionEnd::Storm => {}
            SessionEnd::Dropped(away) => {
                // The socket is closed (the session owned it): the time a
                // browser's "down" is measured from.
                println!(
                    "DROPPED {} {} {}",
                    agent.index,
                    agent.fp,
                    outrider_protocol::unix_now_ms()
                );
                tokio::select! {
                    _ = tokio::time::sleep(away) => {}
                    _ = phase.wait_for(|p| *p == Phase::Stop) => break,
                }
                continue;
            }
            SessionEnd::Failed(why) => agent.counters.fail(&format!("session: {why}")),
        }
        // The connection is gone: wait as the real agent would.
        tokio::time::sleep(agent.reconnect_delay(&mut attempt, &mut rng)).await;
    }
    Tally {
        fingerprint: agent.fp.to_string(),
        sent_seq: agent.seq,
        acked_seq: agent.acked_seq,
    }
}

type Ws = WebSocketStream<Box<dyn crate::server::Stream>>;

struct Agent {
    index: usize,
    /// The loopback address it connects from, its websocket and its update
    /// fetches alike, as a real host would.
    source: Ipv4Addr,
    key: SigningKey,
    fp: Fingerprint,
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    seq: u64,
    last_ts_ms: i64,
    acked_seq: u64,
    /// The batch awaiting its ack: (its encoded frame, highest seq, samples).
    in_flight: Option<(String, u64, u64)>,
    /// The node of the current session (cluster runs; else 0).
    node: usize,
    /// Sessions opened so far.
    sessions: u64,
}

enum SessionEnd {
    Stopped,
    Storm,
    /// Ordered by [`Drops`]: away for this long.
    Dropped(Duration),
    Failed(String),
}

impl Agent {
    /// The delay before the next connection attempt: with agent backoff, a
    /// uniformly random time below the ceiling (500 ms doubling to 30 s);
    /// otherwise none.
    fn reconnect_delay(&self, attempt: &mut u32, rng: &mut u64) -> Duration {
        if !self.settings.agent_backoff {
            return Duration::ZERO;
        }
        let ceiling = RECONNECT_BASE
            .saturating_mul(1u32 << (*attempt).min(10))
            .min(RECONNECT_CAP);
        *attempt += 1;
        // xorshift64: reproducible per agent, no OS randomness needed.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        Duration::from_millis(*rng % (ceiling.as_millis() as u64 + 1))
    }

    async fn connect(&self, source: Ipv4Addr, server: SocketAddr) -> anyhow::Result<Ws> {
        // One deadline for TCP connect, TLS and upgrade, as the real agent has.
        let deadline = Instant::now() + STEP_TIMEOUT;
        let dial = crate::server::dial(Some(source), server, self.settings.tls.as_ref());
        let stream = tokio::time::timeout_at(deadline, dial)
            .await
            .context("connect timed out")?
            .context("connect")?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(outrider_protocol::MAX_MESSAGE_BYTES));
        let url = format!("ws://{server}{AGENT_WS_PATH}");
        let (mut ws, _) = tokio::time::timeout_at(
            deadline,
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)),
        )
        .await
        .context("websocket upgrade timed out")?
        .context("websocket upgrade")?;
        let nonce = match next(&mut ws).await.context("waiting for the challenge")? {
            ServerMessage::Challenge { nonce } => nonce,
            other => anyhow::bail!("expected challenge, got {other:?}"),
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            fingerprint: self.fp.clone(),
            public_key: hex::encode(self.key.verifying_key().as_bytes()),
            signature: hex::encode(self.key.sign(&auth_message(&nonce, &self.fp)).to_bytes()),
            enrollment_token: (!self.settings.token_once || self.sessions == 0)
                .then(|| self.settings.enrollment_token.clone()),
            hostname: format!("sim-{:05}", self.index),
            os: "linux".into(),
            arch: "x86_64".into(),
            agent_version: "loadgen".into(),
            build_sha256: None,
            build_version: None,
            protocol_min: Some(outrider_protocol::PROTOCOL_MIN),
            protocol_max: Some(outrider_protocol::PROTOCOL_MAX),
            capabilities: vec![outrider_protocol::capability::UPDATE_NUDGE.to_owned()],
            stub_version: None,
            channel: Some(crate::nudge::CHANNEL.to_owned()),
            last_seq: self.seq,
            tags: Vec::new(),
            resume_token: None,
            config_version: 0,
        };
        ws.send(Message::text(AgentMessage::Hello(hello).encode()))
            .await?;
        match next(&mut ws).await.context("waiting for welcome")? {
            ServerMessage::Welcome(_) => {}
            other => anyhow::bail!("expected welcome, got {other:?}"),
        }
        match next(&mut ws).await.context("waiting for config")? {
            ServerMessage::Config(_) => {}
            other => anyhow::bail!("expected config, got {other:?}"),
        }
        Ok(ws)
    }

    async fn session(
        &mut self,
        mut ws: Ws,
        phase: &mut watch::Receiver<Phase>,
        drops: &mut watch::Receiver<u64>,
        storm_seen: &mut u32,
        offset: Duration,
    ) -> SessionEnd {
        // A batch interrupted by a storm goes again; the server keeps one copy.
        if let Some((frame, _, _)) = &self.in_flight
            && let Err(e) = ws.send(Message::text(frame.clone())).await
        {
            return SessionEnd::Failed(format!("resending a batch: {e}"));
        }
        // Cluster runs: after a move to another node, a batch at once, so
        // its ack shows the new session carries data (the real agent
        // resends its un-acked results on every connect; the simulated one
        // holds none between batches, so it sends the next one early).
        if self.settings.nodes.is_some()
            && self.sessions > 1
            && self.in_flight.is_none()
            && let Err(e) = self.send_batch(&mut ws, self.settings.checks.len()).await
        {
            return SessionEnd::Failed(format!("sending a batch: {e}"));
        }
        let interval = self.settings.interval;
        let mut due = Instant::now() + offset;
        loop {
            let current = *phase.borrow_and_update();
            match current {
                Phase::Stop => {
                    let bye = AgentMessage::Goodbye {
                        reason: "loadgen done".into(),
                    };
                    let _ = ws.send(Message::text(bye.encode())).await;
                    let _ = ws.close(None).await;
                    return SessionEnd::Stopped;
                }
                Phase::Storm(n) if n > *storm_seen => {
                    *storm_seen = n;
                    // Dropping the stream closes the TCP connection without
                    // a websocket close or goodbye: the server sees a lost agent.
                    return SessionEnd::Storm;
                }
                _ => {}
            }
            if current == Phase::Burst
                && self.in_flight.is_none()
                && let Err(e) = self
                    .send_batch(&mut ws, self.settings.results_per_burst_batch)
                    .await
            {
                return SessionEnd::Failed(format!("sending a batch: {e}"));
            }
            let steady = matches!(current, Phase::Steady | Phase::Storm(_));
            tokio::select! {
                _ = phase.changed() => {}
                Ok(()) = drops.changed() => {
                    if let Some(away) = self.settings.drops.take(self.index) {
                        return SessionEnd::Dropped(away);
                    }
                }
                _ = tokio::time::sleep_until(due), if steady => {
                    due += interval;
                    if self.in_flight.is_none()
                        && let Err(e) = self.send_batch(&mut ws, self.settings.checks.len()).await
                    {
                        return SessionEnd::Failed(format!("sending a batch: {e}"));
                    }
                }
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(f))) => return SessionEnd::Failed(format!("server closed: {f:?}")),
                        Some(Err(e)) => return SessionEnd::Failed(format!("reading: {e}")),
                        Some(Ok(Message::Binary(_))) => return SessionEnd::Failed("binary frame".into()),
                        None => return SessionEnd::Failed("connection ended".into()),
                    };
                    match ServerMessage::decode(&text) {
                        Ok(ServerMessage::Ack { up_to }) => {
                            self.acked_seq = self.acked_seq.max(up_to);
                            if let Some(nodes) = &self.settings.nodes {
                                nodes.record_ack(self.index, self.node);
                            }
                            if let Some((_, last, samples)) = self.in_flight
                                && up_to >= last
                            {
                                self.in_flight = None;
                                self.counters.acked_batches.fetch_add(1, Ordering::Relaxed);
                                self.counters.acked_samples.fetch_add(samples, Ordering::Relaxed);
                            }
                        }
                        Ok(ServerMessage::RunCheck { id, check }) => {
                            let result = CheckResult {
                                seq: 0,
                                ..self.result(&check)
                            };
                            let answer = AgentMessage::RpcResult { id, result: Some(result), error: None };
                            if let Err(e) = ws.send(Message::text(answer.encode())).await {
                                return SessionEnd::Failed(format!("answering an RPC: {e}"));
                            }
                            self.counters.rpc_answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(ServerMessage::CheckUpdate { .. }) => {
                            self.settings
                                .nudges
                                .on_nudge(self.settings.server, self.source)
                                .await;
                        }
                        Ok(_) => {}
                        Err(e) => return SessionEnd::Failed(format!("undecodable server message: {e}")),
                    }
                }
            }
        }
    }

    /// Sends a batch of `n` new results (the checks in turn) and records it
    /// as in flight.
    async fn send_batch(
        &mut self,
        ws: &mut Ws,
        n: usize,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let settings = self.settings.clone();
        let results: Vec<CheckResult> = (0..n)
            .map(|i| {
                self.seq += 1;
                CheckResult {
                    seq: self.seq,
                    ..self.result(&settings.checks[i % settings.checks.len()])
                }
            })
            .collect();
        let samples = (n * self.settings.perfdata_per_result) as u64;
        let frame = AgentMessage::Results { results }.encode();
        self.in_flight = Some((frame.clone(), self.seq, samples));
        ws.send(Message::text(frame)).await
    }

    /// A result of `check` with distinct start times (points are keyed by
    /// series and time, so equal times would overwrite each other).
    fn result(&mut self, check: &str) -> CheckResult {
        let now = outrider_protocol::unix_now_ms();
        self.last_ts_ms = now.max(self.last_ts_ms + 1);
        CheckResult {
            seq: 0,
            check: check.to_owned(),
            state: CheckState::Ok,
            summary: "OK - simulated".into(),
            long_output: String::new(),
            perfdata: (0..self.settings.perfdata_per_result)
                .map(|i| PerfData {
                    label: format!("m{i}"),
                    value: (self.seq % 100) as f64 + i as f64 / 10.0,
                    uom: String::new(),
                    warn: None,
                    crit: None,
                    min: None,
                    max: None,
                })
                .collect(),
            unknown_perfdata: Vec::new(),
            started_at_ms: self.last_ts_ms,
            duration_ms: 1,
            update_event: None,
        }
    }
}

async fn next(ws: &mut Ws) -> anyhow::Result<ServerMessage> {
    loop {
        let frame = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection closed"))??;
        match frame {
            Message::Text(text) => return Ok(ServerMessage::decode(&text)?),
            Message::Close(f) => anyhow::bail!("closed: {f:?}"),
            _ => continue,
        }
    }
}
