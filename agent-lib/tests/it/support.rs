//! Shared helpers: a recording host, a protocol-speaking websocket server
//! (plain or TLS with a certificate made at test time), an agent running on
//! its own thread, a resolver that fails on demand, and plugin scripts.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outrider_agent::{
    AgentError, AgentSettings, ConnectionTiming, Health, HostHooks, Level, Resolve, ResolveFuture,
    StateBlob, run_agent,
};
use outrider_protocol::{
    AgentConfig, AgentMessage, CheckResult, CheckSpec, Hello, ServerMessage, Welcome, verify_proof,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
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
    /// Calls of `request_update_check`.
    pub update_checks: AtomicUsize,
    /// Update-event JSON buffers `take_update_events` hands out, in order.
    pub update_events: Mutex<std::collections::VecDeque<Vec<u8>>>,
    /// What `hands_over` answers: a stub of ABI 1.2 that loaded a next
    /// library which adopts.
    pub hands_over: bool,
}

impl HostHooks for Recorder {
    fn log(&self, level: Level, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_owned()));
    }
    fn health(&self, health: Health, message: &str) {
        let _ = self.health.send((health, message.to_owned()));
    }
    fn request_update_check(&self) {
        self.update_checks.fetch_add(1, Ordering::SeqCst);
    }
    fn take_update_events(&self) -> Option<Vec<u8>> {
        self.update_events.lock().unwrap().pop_front()
    }
    fn hands_over(&self) -> bool {
        self.hands_over
    }
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

/// A resolver answering fixed addresses in order, failing while `broken`
/// is set, and never answering while `hanging` is set.
#[derive(Debug)]
pub struct TestResolver {
    pub broken: AtomicBool,
    pub hanging: AtomicBool,
    answers: Vec<IpAddr>,
}

impl TestResolver {
    pub fn new(answer: &str) -> Arc<TestResolver> {
        TestResolver::answering(&[answer])
    }

    /// A resolver answering all of `answers` (a name with several
    /// addresses), in this order.
    pub fn answering(answers: &[&str]) -> Arc<TestResolver> {
        Arc::new(TestResolver {
            broken: AtomicBool::new(false),
            hanging: AtomicBool::new(false),
            answers: answers.iter().map(|a| a.parse().unwrap()).collect(),
        })
    }

    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }

    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.store(hanging, Ordering::SeqCst);
    }
}

/// The error text of a broken [`TestResolver`].
pub const RESOLVER_FAILURE: &str = "injected resolver failure (SERVFAIL)";

impl Resolve for TestResolver {
    fn resolve<'a>(&'a self, _host: &'a str, port: u16) -> ResolveFuture<'a> {
        let broken = self.broken.load(Ordering::SeqCst);
        let hanging = self.hanging.load(Ordering::SeqCst);
        let answers: Vec<SocketAddr> = self
            .answers
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        Box::pin(async move {
            if hanging {
                std::future::pending::<()>().await;
            }
            if broken {
                Err(std::io::Error::other(RESOLVER_FAILURE))
            } else {
                Ok(answers)
            }
        })
    }
}

/// How to start an [`Agent`] beyond the defaults.
#[derive(Default)]
pub struct AgentOptions {
    /// The previous generation's state blob.
    pub state_in: Option<StateBlob>,
    /// Extra agent.toml lines.
    pub toml_extra: String,
    /// The agent.toml `policy` value (an inline table); `None` for
    /// [`TEST_POLICY`]. `Some("{}")` is the default policy of a real host.
    pub policy: Option<String>,
    /// Replaces the system resolver.
    pub resolver: Option<Arc<dyn Resolve>>,
    /// Replaces the default connection timing.
    pub timing: Option<ConnectionTiming>,
    /// Changes the settings last (protocol range, stub version…).
    pub adjust: Option<fn(&mut AgentSettings)>,
    /// Update events the host hands out, one buffer per call.
    pub update_events: Vec<Vec<u8>>,
    /// The agent.toml `listeners` value (an inline table); `None` for
    /// [`LISTENERS_OFF`].
    pub listeners: Option<String>,
    /// Whether the host says a generation that adopts follows the stop.
    pub hands_over: bool,
}

/// Both metric listeners off.
pub const LISTENERS_OFF: &str = r#"{ statsd = "off", graphite = "off" }"#;

/// The host policy of test agents: they run scripts through `/bin/sh`
/// (see [`sh`]), which the default policy refuses, and the fake server
/// decides about ad-hoc scripts alone.
pub const TEST_POLICY: &str =
    r#"{ allow_adhoc = true, allowed_commands = ["builtin:", "plugin:", "/bin", "/usr/bin"] }"#;

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
        let options = AgentOptions {
            state_in: state_in.cloned(),
            ..AgentOptions::default()
        };
        Agent::start_with(dir, server_url, options)
    }

    /// Starts an agent with `options`.
    pub fn start_with(dir: &Path, server_url: &str, options: AgentOptions) -> Agent {
        // Listeners off unless a test asks: parallel agents would compete
        // for the default ports.
        let toml = format!(
            "server_url = \"{server_url}\"\nenrollment_token = \"tok-123\"\ntags = [\"test\"]\n\
             listeners = {}\npolicy = {}\n{}\n",
            options.listeners.as_deref().unwrap_or(LISTENERS_OFF),
            options.policy.as_deref().unwrap_or(TEST_POLICY),
            options.toml_extra
        );
        let mut settings = AgentSettings::new(&toml, dir, dir).unwrap();
        settings.state_in = options
            .state_in
            .as_ref()
            .map(StateBlob::encode)
            .unwrap_or_default();
        if let Some(resolver) = options.resolver {
            settings.resolver = resolver;
        }
        if let Some(timing) = options.timing {
            settings.timing = timing;
        }
        if let Some(adjust) = options.adjust {
            adjust(&mut settings);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let hooks = Arc::new(Recorder {
            logs: Mutex::new(Vec::new()),
            health: tx,
            update_checks: AtomicUsize::new(0),
            update_events: Mutex::new(options.update_events.into()),
            hands_over: options.hands_over,
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

    /// Waits up to [`WAIT`] for a log line containing `needle`; returns it.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self
                .hooks
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|(_, m)| m.contains(needle))
                .map(|(_, m)| m.clone());
            if let Some(line) = found {
                return line;
            }
            if tokio::time::Instant::now() >= deadline {
                let logs = self.hooks.logs.lock().unwrap().clone();
                panic!("no log line containing {needle:?}; logs: {logs:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the agent to stop (like the stub's stop pipe).
    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    /// The clean stop a test ends with: stop, expect the Goodbye and the
    /// close handshake on `conn`, and wait for `run_agent` to return.
    pub async fn stop_via(self, conn: ServerConn) -> StateBlob {
        self.request_stop();
        conn.expect_goodbye().await;
        self.join().await
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
        if std::thread::panicking() {
            // The agent's side of the story, for the failure report.
            for (level, line) in self.hooks.logs.lock().unwrap().iter() {
                eprintln!("agent log {level:?}: {line}");
            }
        }
    }
}

/// A websocket endpoint on loopback speaking the server side of the
/// protocol, plain or behind TLS.
pub struct FakeServer {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    pub url: String,
}

/// A self-signed certificate for `host`, made at test time.
pub struct TestCert {
    /// PEM of the certificate (it is its own CA).
    pub pem: String,
    pub acceptor: TlsAcceptor,
}

impl TestCert {
    pub fn new(host: &str) -> TestCert {
        let key = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
        let der = key.cert.der().clone();
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], private)
        .unwrap();
        TestCert {
            pem: key.cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// Writes the PEM into `dir` and returns the agent.toml line trusting it.
    pub fn trust_line(&self, dir: &Path) -> String {
        let path = dir.join("server-ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        format!("tls_ca_file = \"{}\"", path.display())
    }
}

impl FakeServer {
    /// A plain websocket server on 127.0.0.1.
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        FakeServer {
            listener,
            tls: None,
            url,
        }
    }

    /// A plain websocket server on `addr` (a port freed before: another
    /// node coming up where one was missing).
    pub async fn start_at(addr: SocketAddr) -> FakeServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        FakeServer {
            listener,
            tls: None,
            url: format!("http://{addr}"),
        }
    }

    /// A server on `addr` (port 0 for any) behind TLS with `cert`, whose
    /// URL names `host` (the agent resolves it through its resolver).
    pub async fn start_tls(addr: &str, host: &str, cert: &TestCert) -> FakeServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let url = format!("https://{host}:{}", listener.local_addr().unwrap().port());
        FakeServer {
            listener,
            tls: Some(cert.acceptor.clone()),
            url,
        }
    }

    /// Two TLS servers on the same port of `first_ip` and `second_ip` (a
    /// server's two nodes); retries when the port is taken on the second.
    pub async fn start_tls_pair(
        first_ip: &str,
        second_ip: &str,
        host: &str,
        cert: &TestCert,
    ) -> (FakeServer, FakeServer) {
        for _ in 0..20 {
            let first = FakeServer::start_tls(&format!("{first_ip}:0"), host, cert).await;
            let second_addr = format!("{second_ip}:{}", first.port());
            if let Ok(listener) = TcpListener::bind(&second_addr).await {
                let second = FakeServer {
                    listener,
                    tls: Some(cert.acceptor.clone()),
                    url: first.url.clone(),
                };
                return (first, second);
            }
        }
        panic!("no port free on both {first_ip} and {second_ip}");
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Accepts the next agent connection.
    pub async fn accept(&self) -> ServerConn {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("agent connects")
            .unwrap();
        let io: Box<dyn Io> = match &self.tls {
            Some(acceptor) => Box::new(acceptor.accept(tcp).await.expect("TLS handshake")),
            None => Box::new(tcp),
        };
        let ws = tokio_tungstenite::accept_async(io).await.unwrap();
        ServerConn { ws }
    }

    /// Accepts the next TCP connection and returns the TLS handshake's error.
    pub async fn accept_failing_tls(&self) -> std::io::Error {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("agent connects")
            .unwrap();
        let acceptor = self.tls.as_ref().expect("a TLS server");
        match acceptor.accept(tcp).await {
            Ok(_) => panic!("the TLS handshake succeeded"),
            Err(e) => e,
        }
    }
}

/// The byte stream under a server-side websocket: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One accepted agent connection.
pub struct ServerConn {
    ws: WebSocketStream<Box<dyn Io>>,
}

impl ServerConn {
    pub async fn send(&mut self, msg: ServerMessage) {
        self.ws.send(Message::text(msg.encode())).await.unwrap();
    }

    /// Sends a raw text frame (a message this protocol does not have).
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
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
        self.handshake_with(Welcome {
            fingerprint: "00".repeat(10).parse().unwrap(),
            acked_seq,
            resume_token: String::new(),
            resumed: false,
            server_addrs: Vec::new(),
            // A server before negotiation.
            protocol_version: 2,
            capabilities: Vec::new(),
        })
        .await
    }

    /// Challenge → verified Hello → `welcome` (its fingerprint replaced by
    /// the agent's); returns the Hello.
    pub async fn handshake_with(&mut self, welcome: Welcome) -> Hello {
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
            ..welcome
        }))
        .await;
        hello
    }

    /// The next message that is not a `Results` batch.
    pub async fn recv_skipping_results(&mut self) -> AgentMessage {
        loop {
            match self.recv().await {
                AgentMessage::Results { .. } => continue,
                other => return other,
            }
        }
    }

    /// Waits for a result of `check` (skipping others), within [`WAIT`].
    pub async fn recv_result_of(&mut self, check: &str) -> CheckResult {
        loop {
            if let AgentMessage::Results { results } = self.recv().await
                && let Some(r) = results.into_iter().find(|r| r.check == check)
            {
                return r;
            }
        }
    }

    /// Reads (and so answers pings) for `period`; returns how many pings
    /// arrived. Panics if the agent closes the connection.
    pub async fn answer_pings_for(&mut self, period: Duration) -> usize {
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + period;
        while let Ok(frame) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match frame {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    panic!("the agent closed the connection")
                }
                Some(Ok(_)) => {}
            }
        }
        pings
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

/// Connection timing for tests: short connect and DNS timeouts, so a
/// fallback address is reached quickly.
pub fn fast_timing() -> ConnectionTiming {
    ConnectionTiming {
        connect_timeout: Duration::from_secs(2),
        dns_timeout: Duration::from_secs(1),
        ..ConnectionTiming::default()
    }
}

/// A `Config` message: version `version` running `checks`, nothing else.
pub fn config(version: u64, checks: Vec<CheckSpec>) -> ServerMessage {
    ServerMessage::Config(AgentConfig {
        version,
        checks,
        ..AgentConfig::default()
    })
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
