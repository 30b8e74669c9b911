//! Shared helpers: a recording host, a protocol-speaking websocket server,
//! an agent running on its own thread, and plugin scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outrider_agent::{AgentError, AgentSettings, Health, HostHooks, Level, StateBlob, run_agent};
use outrider_protocol::{
    AgentMessage, CheckResult, CheckSpec, Hello, ServerMessage, Welcome, verify_proof,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(5);

/// Writes an executable `#!/bin/sh` script into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The command running `script` through /bin/sh (which reads the file
/// instead of exec'ing it, so a concurrent fork elsewhere in the test binary
/// cannot make the exec fail with ETXTBSY).
pub fn sh(script: &Path) -> Vec<String> {
    vec!["/bin/sh".into(), script.to_str().unwrap().into()]
}

/// True once `pid` no longer exists (or is a zombie waiting for init).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to [`WAIT`] for `pid` to disappear.
pub async fn assert_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !process_gone(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} is still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a pid written by a script.
pub fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A host that records logs and forwards health reports to the test.
pub struct Recorder {
    pub logs: Mutex<Vec<(Level, String)>>,
    health: mpsc::UnboundedSender<(Health, String)>,
}

impl HostHooks for Recorder {
    fn log(&self, level: Level, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_owned()));
    }
    fn health(&self, health: Health, message: &str) {
        let _ = self.health.send((health, message.to_owned()));
    }
    fn request_update_check(&self) {}
}

impl Recorder {
    pub fn logged(&self, needle: &str) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.contains(needle))
    }
}

/// An agent running `run_agent` on its own thread, like the stub runs it.
pub struct Agent {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<StateBlob, AgentError>>>,
    pub hooks: Arc<Recorder>,
    health: mpsc::UnboundedReceiver<(Health, String)>,
}

impl Agent {
    /// Starts an agent for `server_url` with its config dir in `dir`.
    pub fn start(dir: &Path, server_url: &str, state_in: Option<&StateBlob>) -> Agent {
        let toml = format!(
            "server_url = \"{server_url}\"\nenrollment_token = \"tok-123\"\ntags = [\"test\"]\n"
        );
        let mut settings = AgentSettings::new(&toml, dir, dir).unwrap();
        settings.state_in = state_in.map(StateBlob::encode).unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let hooks = Arc::new(Recorder {
            logs: Mutex::new(Vec::new()),
            health: tx,
        });
        let stop = CancellationToken::new();
        let thread = {
            let (stop, hooks) = (stop.clone(), hooks.clone());
            std::thread::spawn(move || run_agent(settings, stop, hooks))
        };
        Agent {
            stop,
            thread: Some(thread),
            hooks,
            health: rx,
        }
    }

    /// Waits for a health report of `wanted`.
    pub async fn wait_health(&mut self, wanted: Health) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let (h, msg) = self.health.recv().await.expect("agent is running");
                if h == wanted {
                    return msg;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {wanted:?} health report; logs: {:?}", self.hooks.logs))
    }

    /// Asks the agent to stop (like the stub's stop pipe).
    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    /// Waits for `run_agent` to return.
    pub async fn join(mut self) -> StateBlob {
        let thread = self.thread.take().unwrap();
        let joined = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || thread.join()))
            .await
            .expect("run_agent returned in time")
            .unwrap();
        joined
            .expect("run_agent did not panic")
            .expect("run_agent succeeded")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A failing test must not leave the agent thread running.
        self.stop.cancel();
    }
}

/// A websocket endpoint on 127.0.0.1 speaking the server side of the protocol.
pub struct FakeServer {
    listener: TcpListener,
    pub url: String,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        FakeServer { listener, url }
    }

    /// Accepts the next agent connection.
    pub async fn accept(&self) -> ServerConn {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("agent connects")
            .unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ServerConn { ws }
    }
}

/// One accepted agent connection.
pub struct ServerConn {
    ws: WebSocketStream<TcpStream>,
}

impl ServerConn {
    pub async fn send(&mut self, msg: ServerMessage) {
        self.ws.send(Message::text(msg.encode())).await.unwrap();
    }

    /// The next agent message (control frames skipped).
    pub async fn recv(&mut self) -> AgentMessage {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("agent message in time");
            match msg.expect("connection open").unwrap() {
                Message::Text(t) => return AgentMessage::decode(&t).unwrap(),
                Message::Close(f) => panic!("agent closed the connection: {f:?}"),
                _ => {}
            }
        }
    }

    /// The next `Results` batch.
    pub async fn recv_results(&mut self) -> Vec<CheckResult> {
        match self.recv().await {
            AgentMessage::Results { results } => results,
            other => panic!("expected results, got {other:?}"),
        }
    }

    /// Challenge → verified Hello → `Welcome{acked_seq}`; returns the Hello.
    pub async fn handshake(&mut self, acked_seq: u64) -> Hello {
        let nonce = "5a".repeat(32);
        self.send(ServerMessage::Challenge {
            nonce: nonce.clone(),
        })
        .await;
        let AgentMessage::Hello(hello) = self.recv().await else {
            panic!("expected hello")
        };
        verify_proof(
            &hello.fingerprint,
            &hello.public_key,
            &nonce,
            &hello.signature,
        )
        .expect("valid proof");
        self.send(ServerMessage::Welcome(Welcome {
            fingerprint: hello.fingerprint.clone(),
            acked_seq,
            resume_token: String::new(),
            resumed: false,
            server_addrs: Vec::new(),
        }))
        .await;
        hello
    }

    /// Skips results until the Goodbye, then waits for the close handshake.
    pub async fn expect_goodbye(mut self) -> String {
        let reason = loop {
            match self.recv().await {
                AgentMessage::Goodbye { reason } => break reason,
                AgentMessage::Results { .. } => continue,
                other => panic!("expected goodbye, got {other:?}"),
            }
        };
        let closed = tokio::time::timeout(WAIT, async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if msg.is_close() {
                    return true;
                }
            }
            false
        });
        assert!(closed.await.unwrap(), "agent sent a close frame");
        reason
    }
}

/// A check spec running `command` every second.
pub fn check(name: &str, command: Vec<String>) -> CheckSpec {
    CheckSpec {
        name: name.into(),
        command,
        interval_secs: 1,
        timeout_secs: 5,
    }
}
