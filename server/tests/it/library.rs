//! The real agent library in this test process: `run_agent` on a thread of
//! its own, paired with an in-process [`Server`](crate::helpers::Server),
//! for the tests that need the library's own behaviour (negotiation,
//! collectors, spooled samples) rather than a scripted agent.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use outrider_agent::{AgentError, AgentSettings, Health, HostHooks, Level, StateBlob, run_agent};
use tokio_util::sync::CancellationToken;

use crate::helpers::ENROLLMENT_TOKEN;

/// A host for the library: its log lines kept for failure messages, health
/// and update-check requests ignored.
#[derive(Debug, Default)]
pub struct QuietHost {
    pub logs: Mutex<Vec<String>>,
}

impl HostHooks for QuietHost {
    fn log(&self, _level: Level, message: &str) {
        self.logs.lock().unwrap().push(message.to_owned());
    }
    fn health(&self, _health: Health, _message: &str) {}
    fn request_update_check(&self) {}
}

/// An `agent.toml` for `server_addr` with the test enrollment token and the
/// listeners off (every test in this process would share their default
/// ports), then `extra` (top-level keys first, tables after).
pub fn agent_toml(server_addr: &str, extra: &str) -> String {
    format!(
        "server_url = \"http://{server_addr}\"\nenrollment_token = \"{ENROLLMENT_TOKEN}\"\n\
         listeners = {{ statsd = \"off\", graphite = \"off\" }}\n{extra}"
    )
}

/// Settings read from `toml`, which is also written to `dir/agent.toml` as
/// a stub would leave it.
pub fn settings(toml: &str, dir: &Path) -> AgentSettings {
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
    AgentSettings::new(toml, dir, dir).unwrap()
}

/// A running library agent; [`LibraryAgent::stop`] ends it.
pub struct LibraryAgent {
    stop: CancellationToken,
    thread: JoinHandle<Result<StateBlob, AgentError>>,
    /// Its host, for the log lines.
    pub host: Arc<QuietHost>,
}

impl LibraryAgent {
    /// Starts `run_agent` with `settings` on a new thread.
    pub fn start(settings: AgentSettings) -> LibraryAgent {
        let stop = CancellationToken::new();
        let host = Arc::new(QuietHost::default());
        let thread = {
            let (stop, host) = (stop.clone(), host.clone());
            std::thread::spawn(move || run_agent(settings, stop, host))
        };
        LibraryAgent { stop, thread, host }
    }

    /// The log lines so far, for a failure message.
    pub fn logs(&self) -> Vec<String> {
        self.host.logs.lock().unwrap().clone()
    }

    /// Cancels the agent and waits up to `within` for a clean end: no
    /// panic, no error.
    pub async fn stop(self, within: Duration) {
        self.stop.cancel();
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        tokio::time::timeout(within, joined)
            .await
            .expect("agent stopped in time")
            .unwrap()
            .expect("agent did not panic")
            .expect("agent ran cleanly");
    }
}
