//! One established session: the loop after `Welcome`.
//!
//! One task, one `select!` over: stop, the server's next frame, new results
//! in the outbox, a finished remote run, the keepalive tick, and the plugin
//! chunk deadline. Nothing in a branch waits on the server, so a slow RPC or
//! a plugin download never stalls acks, results or pings.
//!
//! - Keepalive: a ping every `keepalive_interval`; when no frame at all
//!   (pongs included) arrived for `keepalive_timeout`, the session is lost.
//! - Config: validated with `AgentConfig::validate`; a bad one is refused
//!   with an error naming the problem and the running config stays. Plugins
//!   the config needs and the cache lacks are fetched first, one chunk at a
//!   time (`GetPlugin` → `PluginChunk`), then the config is applied by diff
//!   and unreferenced plugins are removed. A newer config arriving during
//!   the fetch replaces the pending one (a download it still needs goes on). A plugin that fails is logged; its
//!   checks then report "plugin not downloaded", and the download is tried
//!   again when its backoff (`PluginRetries`, per content hash, kept across
//!   sessions) allows: at the start of a session, or when the earliest
//!   deadline passes.
//! - Collectors: in a session that agreed `collectors`, an applied config's
//!   collector set is handed to `collectors/assigned.rs` (which persists it
//!   and reconciles off this loop).
//! - RPC: `RunCheck`/`RunScript` start a bounded concurrent run (see
//!   `rpc.rs`); each answer is sent when the run ends.
//! - Versions: a message of a type this build does not know (a newer
//!   server) is skipped, counted and logged once per type; `CheckUpdate`
//!   asks the host to look for updates now.
//! - Samples: in a session that agreed `metric_samples`, each spooled
//!   sample batch goes out as one `Samples` frame after the results;
//!   `SamplesAck` deletes them from the samples spool.
//! - Stop: `Goodbye`, then a close handshake bounded by `close_timeout`
//!   during which late `Ack`s are still applied.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use outrider_protocol::{
    AgentConfig, AgentMessage, Decoded, MAX_BATCH_RESULTS, PluginRef, ServerMessage, capability,
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::{Connection, SessionEnd, Ws, recv, send, send_frame};
use crate::error::AgentError;
use crate::host::Health;
use crate::plugins::{Download, PluginRetries, Progress};
use crate::rpc::{Rpc, RpcRequest};
use crate::scheduler::Scheduler;

/// A config waiting for its plugins.
struct PendingConfig {
    config: AgentConfig,
    queue: VecDeque<PluginRef>,
    current: Option<Download>,
    /// When the server must have answered the current `GetPlugin`.
    deadline: Instant,
}

/// Per-session state of the loop.
struct SessionState {
    healthy: bool,
    heard: Instant,
    pending: Option<PendingConfig>,
    /// The connection's plugin backoff, lent for the session.
    retries: PluginRetries,
    /// Whether the missing plugins have been looked at in this session.
    retried: bool,
}

impl Connection<'_> {
    /// Runs one established session until stop or failure.
    pub(super) async fn session(
        &mut self,
        ws: Ws,
        scheduler: &mut Scheduler,
        rpc: &mut Rpc,
    ) -> SessionEnd {
        let retries = PluginRetries::new(
            self.agent.settings.timing.plugin_retry,
            self.agent.settings.timing.plugin_retry_cap,
        );
        let mut state = SessionState {
            healthy: false,
            heard: Instant::now(),
            pending: None,
            retries: std::mem::replace(&mut self.plugin_retries, retries),
            retried: false,
        };
        let end = self.session_loop(ws, scheduler, rpc, &mut state).await;
        self.plugin_retries = state.retries;
        end
    }

    async fn session_loop(
        &mut self,
        mut ws: Ws,
        scheduler: &mut Scheduler,
        rpc: &mut Rpc,
        state: &mut SessionState,
    ) -> SessionEnd {
        let timing = self.agent.settings.timing;
        // A resumed session with an unchanged config gets no Config frame:
        // running a config already counts as scheduling.
        if scheduler.config().is_some() {
            self.report_healthy(state);
        }
        let mut pings = tokio::time::interval_at(
            Instant::now() + timing.keepalive_interval,
            timing.keepalive_interval,
        );
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let executor = scheduler.executor();
        loop {
            let sent = tokio::select! {
                biased;
                _ = self.agent.stop.cancelled() => None,
                r = self.send_pending(&mut ws) => Some(r),
            };
            match sent {
                None => return self.goodbye(ws).await,
                Some(Err(e)) => return SessionEnd::Lost(e),
                Some(Ok(())) => {}
            }
            let fetch_deadline = state
                .pending
                .as_ref()
                .filter(|p| p.current.is_some())
                .map(|p| p.deadline);
            // At once in a new session, then when a backoff expires.
            let retry_due = if state.retried {
                state.retries.next_due()
            } else {
                Some(Instant::now())
            };
            let step = tokio::select! {
                biased;
                _ = self.agent.stop.cancelled() => return self.goodbye(ws).await,
                msg = recv(&mut ws, &mut state.heard) => match msg {
                    Ok(Decoded::Message(msg)) => self.handle(msg, &mut ws, scheduler, rpc, state).await,
                    Ok(Decoded::Unknown { kind }) => {
                        if self.unknown.record(&kind) {
                            self.agent.hooks.debug(&format!(
                                "skipping server messages of unknown type {kind:?} \
                                 ({} unknown messages so far)",
                                self.unknown.count
                            ));
                        }
                        Ok(())
                    }
                    Err(AgentError::Protocol(e)) => {
                        self.agent.hooks.warn(&format!("ignoring undecodable frame: {e}"));
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                () = self.agent.outbox.pushed.notified() => Ok(()),
                // A modified plugin was removed: fetch it again at once.
                () = executor.plugin_removed() => {
                    state.retried = false;
                    Ok(())
                }
                answer = rpc.finished(), if !rpc.is_idle() => send(&mut ws, &timing, &answer).await,
                _ = pings.tick() => {
                    let silent = state.heard.elapsed();
                    if silent >= timing.keepalive_timeout {
                        Err(AgentError::KeepaliveTimeout { silent_ms: silent.as_millis() })
                    } else {
                        send_frame(&mut ws, &timing, Message::Ping(Default::default())).await
                    }
                }
                () = sleep_until_opt(retry_due), if state.pending.is_none() => {
                    state.retried = true;
                    self.retry_missing_plugins(&mut ws, scheduler, state).await
                }
                () = sleep_until_opt(fetch_deadline) => {
                    self.fetch_failed(state, AgentError::Timeout("a plugin chunk from the server"));
                    self.fetch_next(&mut ws, scheduler, state).await
                }
            };
            if let Err(e) = step {
                return SessionEnd::Lost(e);
            }
        }
    }

    /// Handles one server message; an error ends the session.
    async fn handle(
        &self,
        msg: ServerMessage,
        ws: &mut Ws,
        scheduler: &mut Scheduler,
        rpc: &mut Rpc,
        state: &mut SessionState,
    ) -> Result<(), AgentError> {
        match msg {
            ServerMessage::Config(config) => self.on_config(config, ws, scheduler, state).await?,
            ServerMessage::PluginChunk {
                sha256,
                offset,
                total,
                data,
            } => {
                self.on_plugin_chunk(sha256, offset, total, &data, ws, scheduler, state)
                    .await?;
            }
            ServerMessage::PluginMissing { sha256, reason } => {
                let Some(download) = current_download(state, &sha256) else {
                    return Ok(());
                };
                let e = AgentError::PluginMissing {
                    name: download.plugin().name.clone(),
                    sha256,
                    reason,
                };
                self.fetch_failed(state, e);
                self.fetch_next(ws, scheduler, state).await?;
            }
            ServerMessage::Ack { up_to } => self.agent.outbox.lock().ack(up_to),
            ServerMessage::SamplesAck { up_to } => self.agent.outbox.lock().ack_samples(up_to),
            ServerMessage::RunCheck { id, check } => {
                self.start_rpc(ws, rpc, scheduler, RpcRequest::RunCheck { id, check })
                    .await?;
            }
            ServerMessage::RunScript {
                id,
                script,
                interpreter,
                timeout_secs,
            } => {
                let request = RpcRequest::RunScript {
                    id,
                    script,
                    interpreter,
                    timeout_secs,
                };
                self.start_rpc(ws, rpc, scheduler, request).await?;
            }
            ServerMessage::Rejected { reason } => return Err(AgentError::Rejected { reason }),
            ServerMessage::CheckUpdate { reason } => {
                self.agent.hooks.info(&format!(
                    "the server asks for an update check now: {reason}"
                ));
                self.agent.hooks.request_update_check();
            }
            other => self.agent.hooks.warn(&format!(
                "ignoring unexpected message from the server: {other:?}"
            )),
        }
        if state.pending.is_none() && scheduler.config().is_some() {
            self.report_healthy(state);
        }
        Ok(())
    }

    /// A new config: refused when invalid (the running one stays), else
    /// pending until its missing plugins are fetched.
    async fn on_config(
        &self,
        config: AgentConfig,
        ws: &mut Ws,
        scheduler: &mut Scheduler,
        state: &mut SessionState,
    ) -> Result<(), AgentError> {
        if let Err(source) = config.validate() {
            let e = AgentError::BadConfig {
                version: config.version,
                source,
            };
            let running = scheduler
                .config()
                .map_or("none".to_owned(), |c| c.version.to_string());
            self.agent.hooks.error(&format!(
                "{e}; the running config (version {running}) stays"
            ));
            return Ok(());
        }
        let now = Instant::now();
        let (queue, waiting): (Vec<PluginRef>, Vec<PluginRef>) = self
            .plugins
            .missing(&config)
            .into_iter()
            .partition(|p| state.retries.ready(&p.sha256, now));
        let mut queue = VecDeque::from(queue);
        for p in &waiting {
            self.agent.hooks.info(&format!(
                "plugin {} failed to download recently; it is tried again after its backoff",
                p.name
            ));
        }
        // A download the new config still needs goes on where it is: the
        // server's answer to its last GetPlugin is on the way, and starting
        // over would take that answer for a chunk out of order. Any other
        // download is dropped with the old config (and its temp file).
        let (current, deadline) = match state.pending.take() {
            Some(old) => {
                self.agent.hooks.info(&format!(
                    "config version {} replaces version {} while its plugins were downloading",
                    config.version, old.config.version
                ));
                let kept = old.current.filter(|d| {
                    queue
                        .iter()
                        .any(|p| p.sha256 == d.plugin().sha256 && p.size == d.plugin().size)
                });
                if let Some(d) = &kept {
                    queue.retain(|p| p.sha256 != d.plugin().sha256);
                }
                (kept, old.deadline)
            }
            None => (None, Instant::now()),
        };
        let needed = queue.len() + usize::from(current.is_some());
        if needed > 0 {
            self.agent.hooks.info(&format!(
                "config version {} needs {needed} plugins; downloading",
                config.version,
            ));
        }
        state.pending = Some(PendingConfig {
            config,
            queue,
            current,
            deadline,
        });
        self.fetch_next(ws, scheduler, state).await
    }

    /// Fetches the plugins the running config lacks whose backoff allows
    /// (downloads that failed earlier), then re-applies it (a no-op diff).
    async fn retry_missing_plugins(
        &self,
        ws: &mut Ws,
        scheduler: &mut Scheduler,
        state: &mut SessionState,
    ) -> Result<(), AgentError> {
        let Some(config) = scheduler.config() else {
            state.retries.retain(&[]);
            return Ok(());
        };
        let missing = self.plugins.missing(config);
        // Only plugins still lacking keep a deadline, so a due deadline
        // always has something to fetch (no busy loop).
        state.retries.retain(&missing);
        let now = Instant::now();
        if !missing.iter().any(|p| state.retries.ready(&p.sha256, now)) {
            return Ok(());
        }
        self.agent.hooks.info(&format!(
            "retrying the missing plugins of config version {}",
            config.version
        ));
        let config = config.clone();
        self.on_config(config, ws, scheduler, state).await
    }

    /// One chunk of the plugin being downloaded: ask for the next, install
    /// a complete file, or abandon a bad download and move on.
    #[expect(
        clippy::too_many_arguments,
        reason = "the chunk's four fields plus the session's three parts"
    )]
    async fn on_plugin_chunk(
        &self,
        sha256: String,
        offset: u64,
        total: u64,
        data: &str,
        ws: &mut Ws,
        scheduler: &mut Scheduler,
        state: &mut SessionState,
    ) -> Result<(), AgentError> {
        let timing = self.agent.settings.timing;
        let Some(download) = current_download(state, &sha256) else {
            self.agent.hooks.warn(&format!(
                "ignoring a chunk of plugin {sha256} nobody asked for"
            ));
            return Ok(());
        };
        match download.accept(offset, total, data) {
            Ok(Progress::More { offset }) => {
                let get = AgentMessage::GetPlugin { sha256, offset };
                send(ws, &timing, &get).await?;
                if let Some(p) = state.pending.as_mut() {
                    p.deadline = Instant::now() + timing.plugin_chunk_timeout;
                }
                Ok(())
            }
            Ok(Progress::Complete) => {
                self.install_current(state).await;
                self.fetch_next(ws, scheduler, state).await
            }
            Err(e) => {
                self.fetch_failed(state, e);
                self.fetch_next(ws, scheduler, state).await
            }
        }
    }

    async fn start_rpc(
        &self,
        ws: &mut Ws,
        rpc: &mut Rpc,
        scheduler: &Scheduler,
        request: RpcRequest,
    ) -> Result<(), AgentError> {
        let id = request.id().to_owned();
        self.agent.hooks.info(&request.describe());
        match rpc.start(request, scheduler.config(), &scheduler.executor()) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.agent
                    .hooks
                    .warn(&format!("remote run {id} refused: {error}"));
                let refusal = AgentMessage::RpcResult {
                    id,
                    result: None,
                    error: Some(error),
                };
                send(ws, &self.agent.settings.timing, &refusal).await
            }
        }
    }

    /// Starts the next plugin download of the pending config, or applies
    /// the config when none is left.
    async fn fetch_next(
        &self,
        ws: &mut Ws,
        scheduler: &mut Scheduler,
        state: &mut SessionState,
    ) -> Result<(), AgentError> {
        let timing = self.agent.settings.timing;
        let Some(pending) = state.pending.as_mut() else {
            return Ok(());
        };
        if pending.current.is_some() {
            return Ok(());
        }
        while let Some(plugin) = pending.queue.pop_front() {
            match Download::start(&self.plugins, plugin.clone()) {
                Ok(download) => {
                    let get = AgentMessage::GetPlugin {
                        sha256: download.plugin().sha256.clone(),
                        offset: 0,
                    };
                    pending.current = Some(download);
                    pending.deadline = Instant::now() + timing.plugin_chunk_timeout;
                    return send(ws, &timing, &get).await;
                }
                Err(e) => self.plugin_failed(&mut state.retries, &plugin, &e),
            }
        }
        let Some(pending) = state.pending.take() else {
            return Ok(());
        };
        self.apply_config(scheduler, &pending.config);
        Ok(())
    }

    /// Verifies and installs the completed download (fsync off the loop's
    /// thread).
    async fn install_current(&self, state: &mut SessionState) {
        let Some(download) = state.pending.as_mut().and_then(|p| p.current.take()) else {
            return;
        };
        let plugin = download.plugin().clone();
        match tokio::task::spawn_blocking(move || download.finish()).await {
            Ok(Ok(path)) => {
                state.retries.succeeded(&plugin.sha256);
                self.agent.hooks.info(&format!(
                    "plugin {} installed as {}",
                    plugin.name,
                    path.display()
                ));
            }
            Ok(Err(e)) => self.plugin_failed(&mut state.retries, &plugin, &e),
            Err(e) => self.plugin_failed(&mut state.retries, &plugin, &e),
        }
    }

    /// Abandons the current download (its temp file goes with it).
    fn fetch_failed(&self, state: &mut SessionState, error: AgentError) {
        if let Some(download) = state.pending.as_mut().and_then(|p| p.current.take()) {
            self.plugin_failed(&mut state.retries, download.plugin(), &error);
        }
    }

    /// Logs a failed download and starts (or extends) its backoff.
    fn plugin_failed(
        &self,
        retries: &mut PluginRetries,
        plugin: &PluginRef,
        error: &dyn std::fmt::Display,
    ) {
        let delay = retries.failed(&plugin.sha256, Instant::now());
        self.agent.hooks.error(&format!(
            "downloading plugin {} failed: {error}; nothing was installed, its checks report \
             UNKNOWN; next attempt in {} s",
            plugin.name,
            delay.as_secs()
        ));
    }

    fn apply_config(&self, scheduler: &mut Scheduler, config: &AgentConfig) {
        // Only a server that announced collectors speaks for them: an older
        // one's config has no set, and the last set received keeps running.
        if self.agreed.iter().any(|c| c == capability::COLLECTORS) {
            self.agent
                .collectors
                .send_replace(Some(std::sync::Arc::new(config.collectors.clone())));
        }
        let s = scheduler.apply(config);
        self.agent.hooks.info(&format!(
            "applied config version {}: started {:?}, restarted {:?}, stopped {:?}, unchanged {}",
            config.version,
            s.started,
            s.restarted,
            s.stopped,
            s.unchanged.len()
        ));
        for problem in s.invalid {
            self.agent
                .hooks
                .warn(&format!("skipping invalid check: {problem}"));
        }
        if !config.tags.is_empty() {
            self.agent
                .hooks
                .debug(&format!("the server lists tags {:?}", config.tags));
        }
        match self.plugins.prune(config) {
            Ok(removed) if !removed.is_empty() => self
                .agent
                .hooks
                .info(&format!("removed unreferenced plugins {removed:?}")),
            Ok(_) => {}
            Err(e) => self
                .agent
                .hooks
                .warn(&format!("cannot clean the plugin cache: {e}")),
        }
    }

    fn report_healthy(&self, state: &mut SessionState) {
        if !state.healthy {
            self.agent
                .hooks
                .health(Health::Ok, "connected and scheduling");
            state.healthy = true;
        }
    }

    /// Sends every result not yet sent in this session, in batches, then
    /// every sample batch (none unless the session agreed
    /// `metric_samples`: they stay spooled for a server that takes them).
    async fn send_pending(&self, ws: &mut Ws) -> Result<(), AgentError> {
        self.send_pending_results(ws).await?;
        loop {
            // One batch per frame: a batch is at most half a frame.
            let batches = self
                .agent
                .outbox
                .lock()
                .next_sample_batches(&self.agreed, 1);
            let Some(batch) = batches.into_iter().next() else {
                return Ok(());
            };
            let (seq, count) = (batch.seq, batch.samples.len());
            send(
                ws,
                &self.agent.settings.timing,
                &AgentMessage::Samples(batch),
            )
            .await?;
            self.agent
                .hooks
                .debug(&format!("sent sample batch {seq} ({count} samples)"));
        }
    }

    async fn send_pending_results(&self, ws: &mut Ws) -> Result<(), AgentError> {
        loop {
            // The lock is released before the await below.
            let results = self.agent.outbox.lock().next_batch(MAX_BATCH_RESULTS);
            if results.is_empty() {
                return Ok(());
            }
            let count = results.len();
            send(
                ws,
                &self.agent.settings.timing,
                &AgentMessage::Results { results },
            )
            .await?;
            self.agent.hooks.debug(&format!("sent {count} results"));
        }
    }

    /// Says goodbye and closes the socket, bounded by `close_timeout`.
    async fn goodbye(&self, mut ws: Ws) -> SessionEnd {
        let close = async {
            let bye = AgentMessage::Goodbye {
                reason: "agent stopping".into(),
            };
            ws.send(Message::text(bye.encode())).await?;
            ws.close(None).await?;
            // Wait for the server's close frame and the end of the stream;
            // acks still in flight shrink the state blob we hand over.
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg {
                    match ServerMessage::decode(&text) {
                        Ok(ServerMessage::Ack { up_to }) => self.agent.outbox.lock().ack(up_to),
                        Ok(ServerMessage::SamplesAck { up_to }) => {
                            self.agent.outbox.lock().ack_samples(up_to);
                        }
                        _ => {}
                    }
                }
            }
            Ok::<(), AgentError>(())
        };
        match tokio::time::timeout(self.agent.settings.timing.close_timeout, close).await {
            Ok(Ok(())) => self.agent.hooks.info("said goodbye to the server"),
            Ok(Err(e)) => self.agent.hooks.warn(&format!("goodbye failed: {e}")),
            Err(_) => self
                .agent
                .hooks
                .warn("the server did not finish the close handshake in time"),
        }
        SessionEnd::Stopped
    }
}

/// The download in progress, if it is for `sha256`.
fn current_download<'s>(state: &'s mut SessionState, sha256: &str) -> Option<&'s mut Download> {
    state
        .pending
        .as_mut()
        .and_then(|p| p.current.as_mut())
        .filter(|d| d.plugin().sha256 == sha256)
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
