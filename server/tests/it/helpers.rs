//! Shared fixtures: an in-process server on an ephemeral port, a scripted
//! test agent speaking the wire protocol over a real websocket, and a tiny
//! HTTP/1.1 client for the admin API.
//!
//! Every await on the network is wrapped in [`STEP`] so a broken feature
//! fails the test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use outrider_protocol::api::{AgentInfo, Event, Presence, ResultInfo};
use outrider_protocol::{
    AGENT_WS_PATH, AgentConfig, AgentMessage, CheckResult, CheckState, Fingerprint, Hello,
    PROTOCOL_VERSION, ServerMessage, Welcome, auth_message, fingerprint_of,
};
use outrider_server::ServerConfig;
use outrider_server::config::ResultNames;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single network step of a test.
pub const STEP: Duration = Duration::from_secs(5);

/// The enrollment token every test server is started with.
pub const ENROLLMENT_TOKEN: &str = "tok";

/// A server running in this process until [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// The dashboard's address, when started with one.
    pub dashboard: Option<SocketAddr>,
    pub admin_token: String,
    _dir: TempDir,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// The server's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Starts a server on 127.0.0.1:0 with a fresh data directory. Keepalive
    /// timers are long so an agent that is not reading is never declared silent.
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// [`Server::start`] with `configure` adjusting the config first.
    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), configure).await
    }

    /// Stops the server and starts a new one on the same data directory
    /// (on a new port), configured by `configure`.
    pub async fn restart(self, configure: impl FnOnce(&mut ServerConfig)) -> Server {
        let dir = self.stop_keeping_data().await;
        Server::start_in(dir, configure).await
    }

    /// [`Server::restart`] of a server with a dashboard, keeping one.
    pub async fn restart_with_dashboard(self) -> Server {
        let dir = self.stop_keeping_data().await;
        Server::start_full("127.0.0.1:0", dir, true, |_| {}).await
    }

    /// [`Server::start_with`] on an existing data directory.
    pub async fn start_in(dir: TempDir, configure: impl FnOnce(&mut ServerConfig)) -> Server {
        Server::start_bound("127.0.0.1:0", dir, configure).await
    }

    /// [`Server::start_in`] listening on `bind` (e.g. `0.0.0.0:0`); the
    /// test still connects through loopback.
    pub async fn start_bound(
        bind: &str,
        dir: TempDir,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Server {
        Server::start_full(bind, dir, false, configure).await
    }

    /// [`Server::start`] with the web dashboard on its own ephemeral port.
    pub async fn start_with_dashboard() -> Server {
        Server::start_full("127.0.0.1:0", tempfile::tempdir().unwrap(), true, |_| {}).await
    }

    /// [`Server::start_with_dashboard`] with `configure` adjusting the
    /// config first.
    pub async fn start_with_dashboard_and(configure: impl FnOnce(&mut ServerConfig)) -> Server {
        Server::start_full("127.0.0.1:0", tempfile::tempdir().unwrap(), true, configure).await
    }

    /// [`Server::start_with_dashboard`] speaking HTTPS only, with this
    /// certificate and key, on both ports.
    pub async fn start_tls_with_dashboard(cert: &std::path::Path, key: &std::path::Path) -> Server {
        Server::start_full("127.0.0.1:0", tempfile::tempdir().unwrap(), true, |c| {
            c.tls_cert = Some(cert.to_owned());
            c.tls_key = Some(key.to_owned());
        })
        .await
    }

    async fn start_full(
        bind: &str,
        dir: TempDir,
        with_dashboard: bool,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Server {
        let dashboard = match with_dashboard {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        };
        let dashboard_addr = dashboard.as_ref().map(|l| l.local_addr().unwrap());
        let listener = TcpListener::bind(bind).await.unwrap();
        let bound = listener.local_addr().unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], bound.port()));
        let mut config = ServerConfig::new(dir.path().to_owned(), bound);
        config.enrollment_token = Some(ENROLLMENT_TOKEN.into());
        config.ping_interval_secs = 60;
        config.down_after_secs = 120;
        // Most tests speak for agents without configuring their checks;
        // the tests of the name rule (ingest_bounds.rs) restore it.
        config.result_names = ResultNames::AnyValid;
        configure(&mut config);
        let tls = config.tls().is_some();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(outrider_server::run_with_dashboard(
            config,
            listener,
            dashboard,
            shutdown.clone(),
        ));
        let mut server = Server {
            addr,
            dashboard: dashboard_addr,
            admin_token: String::new(),
            _dir: dir,
            shutdown,
            task,
        };
        if tls {
            // Not speaking plain HTTP: wait for the token file instead.
            let token = server._dir.path().join("admin.token");
            let wait = async {
                while !token.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(STEP, wait)
                .await
                .expect("server never wrote its token");
        } else {
            // The server answers HTTP only after it wrote its tokens.
            let (status, _) = server.http("GET", "/healthz", None, None).await;
            assert_eq!(status, 200);
        }
        server.admin_token = std::fs::read_to_string(server._dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        server
    }

    /// A server speaking HTTPS only, with this certificate and key.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Server {
        Server::start_with(|c| {
            c.tls_cert = Some(cert.to_owned());
            c.tls_key = Some(key.to_owned());
        })
        .await
    }

    /// Cancels the server and waits for a clean exit.
    pub async fn stop(self) {
        drop(self.stop_keeping_data().await);
    }

    /// [`Server::stop`], handing back the data directory to inspect.
    pub async fn stop_keeping_data(self) -> TempDir {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server did not stop within 10 s")
            .expect("server task panicked");
        result.expect("server returned an error");
        self._dir
    }

    /// One HTTP/1.1 request; returns the status and the body parsed as JSON
    /// (a JSON string holding the raw text when it is not JSON).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let content_type = (!body.is_empty()).then_some("application/json");
        self.http_raw(method, path, auth, content_type, body.as_bytes())
            .await
    }

    /// One HTTP/1.1 request with a raw body.
    pub async fn http_raw(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, Value) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(auth) = auth {
            req.push_str(&format!("Authorization: {auth}\r\n"));
        }
        if let Some(content_type) = content_type {
            req.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body);
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            // The server may answer (and close) before reading a refused body.
            let _ = stream.write_all(&req).await;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await?;
            std::io::Result::Ok(buf)
        };
        let buf = tokio::time::timeout(STEP, exchange)
            .await
            .expect("HTTP request timed out")
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .expect("HTTP response has a header");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "chunked response: {head}"
        );
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("HTTP status line");
        let json = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
        (status, json)
    }

    /// Subscribes to `GET /api/v1/events` (HTTP/1.0, so the stream is not
    /// chunked) and waits for the response head.
    pub async fn events(&self) -> EventStream {
        let open = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            let req = format!(
                "GET /api/v1/events HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
                self.admin_token
            );
            stream.write_all(req.as_bytes()).await?;
            let mut reader = BufReader::new(stream);
            let mut status = String::new();
            reader.read_line(&mut status).await?;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await?;
                if line.trim().is_empty() {
                    break;
                }
            }
            std::io::Result::Ok((status, reader))
        };
        let (status, reader) = tokio::time::timeout(STEP, open)
            .await
            .expect("event stream did not open")
            .unwrap();
        assert!(status.contains(" 200 "), "event stream answered {status}");
        EventStream { reader }
    }

    /// A request with the admin token; panics unless the answer is 200.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let auth = format!("Bearer {}", self.admin_token);
        let (status, json) = self.http(method, path, Some(&auth), body).await;
        assert_eq!(status, 200, "{method} {path} answered {status}: {json}");
        json
    }

    pub async fn agents(&self) -> Vec<AgentInfo> {
        serde_json::from_value(self.admin("GET", "/api/v1/agents", None).await).unwrap()
    }

    pub async fn agent(&self, fp: &Fingerprint) -> AgentInfo {
        let agents = self.agents().await;
        agents
            .into_iter()
            .find(|a| &a.fingerprint == fp)
            .expect("agent is listed")
    }

    pub async fn latest_results(&self) -> Vec<ResultInfo> {
        serde_json::from_value(self.admin("GET", "/api/v1/results/latest", None).await).unwrap()
    }

    /// Polls the API until `fp` has `presence`, for ends of a session the
    /// agent cannot observe (its own socket is already gone).
    pub async fn wait_presence(&self, fp: &Fingerprint, presence: Presence) {
        let poll = async {
            loop {
                if self.agent(fp).await.presence == presence {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(STEP, poll).await.is_err() {
            panic!(
                "agent {fp} never became {presence:?}; now {:?}",
                self.agent(fp).await.presence
            );
        }
    }
}

/// A subscription to the server's live events.
#[derive(Debug)]
pub struct EventStream {
    reader: BufReader<TcpStream>,
}

impl EventStream {
    /// The next event; panics when none arrives within [`STEP`].
    pub async fn next(&mut self) -> Event {
        let read = async {
            let mut data = String::new();
            loop {
                let mut line = String::new();
                if self.reader.read_line(&mut line).await.unwrap() == 0 {
                    panic!("event stream ended");
                }
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                } else if line.is_empty() && !data.is_empty() {
                    return serde_json::from_str(&data).expect("event decodes");
                }
            }
        };
        tokio::time::timeout(STEP, read)
            .await
            .expect("no event within 5 s")
    }

    /// Skips events until `pick` returns `Some`.
    pub async fn find<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        loop {
            let event = self.next().await;
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }
}

/// An agent identity: a deterministic ed25519 key and labels.
#[derive(Debug)]
pub struct Agent {
    pub key: SigningKey,
    pub fp: Fingerprint,
    pub hostname: String,
    /// Tags announced in every hello.
    pub tags: Vec<String>,
}

impl Agent {
    pub fn new(seed: u8, hostname: &str) -> Agent {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let fp = fingerprint_of(&key.verifying_key());
        Agent {
            key,
            fp,
            hostname: hostname.to_owned(),
            tags: Vec::new(),
        }
    }

    /// The same identity announcing `tags`.
    pub fn with_tags(mut self, tags: &[&str]) -> Agent {
        self.tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// A correct hello answering `nonce`.
    pub fn hello(&self, nonce: &str, token: Option<&str>) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            fingerprint: self.fp.clone(),
            public_key: self.public_key_hex(),
            signature: hex::encode(self.key.sign(&auth_message(nonce, &self.fp)).to_bytes()),
            enrollment_token: token.map(str::to_owned),
            hostname: self.hostname.clone(),
            os: "linux".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
            build_sha256: Some("ab".repeat(32)),
            build_version: Some("1.2.3".into()),
            protocol_min: None,
            protocol_max: None,
            capabilities: Vec::new(),
            stub_version: None,
            channel: None,
            last_seq: 0,
            tags: self.tags.clone(),
            resume_token: None,
            config_version: 0,
        }
    }

    /// Connects and sends a correct hello; returns the server's answer.
    pub async fn try_connect(&self, server: &Server, token: Option<&str>) -> (Conn, ServerMessage) {
        self.try_connect_with(server, token, |_| {}).await
    }

    /// [`Agent::try_connect`] with `adjust` changing the hello first.
    pub async fn try_connect_with(
        &self,
        server: &Server,
        token: Option<&str>,
        adjust: impl FnOnce(&mut Hello),
    ) -> (Conn, ServerMessage) {
        let (mut conn, nonce) = Conn::open(server).await;
        let mut hello = self.hello(&nonce, token);
        adjust(&mut hello);
        conn.send(&AgentMessage::Hello(hello)).await;
        let answer = conn.recv().await;
        (conn, answer)
    }

    /// Connects with `token`, expecting a rejection and the close that
    /// follows it; returns the reason.
    pub async fn refused(&self, server: &Server, token: Option<&str>) -> String {
        let (conn, answer) = self.try_connect(server, token).await;
        expect_rejection(conn, answer).await
    }

    /// Connects, expecting Welcome then Config; returns `acked_seq` and the config.
    pub async fn connect(&self, server: &Server, token: Option<&str>) -> (Conn, u64, AgentConfig) {
        let (mut conn, answer) = self.try_connect(server, token).await;
        let acked_seq = match answer {
            ServerMessage::Welcome(Welcome {
                fingerprint,
                acked_seq,
                ..
            }) => {
                assert_eq!(fingerprint, self.fp);
                acked_seq
            }
            other => panic!("expected welcome, got {other:?}"),
        };
        let config = match conn.recv().await {
            ServerMessage::Config(config) => config,
            other => panic!("expected config after welcome, got {other:?}"),
        };
        (conn, acked_seq, config)
    }
}

/// The reason of a `Rejected` answer, after checking the server closes
/// the connection with 1008 "rejected".
pub async fn expect_rejection(mut conn: Conn, answer: ServerMessage) -> String {
    let reason = match answer {
        ServerMessage::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert_eq!(
        conn.closed().await,
        Closed::Frame(POLICY, "rejected".into())
    );
    reason
}

/// One agent websocket.
#[derive(Debug)]
pub struct Conn {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the agent saw it.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with this code and reason.
    Frame(u16, String),
    /// The TCP connection ended or failed without a close frame.
    Dropped,
}

impl Conn {
    /// Opens the websocket without reading anything (the challenge is
    /// still to be read).
    pub async fn open_raw(server: &Server) -> Conn {
        let url = format!("ws://{}{AGENT_WS_PATH}", server.addr);
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect");
        Conn { ws }
    }

    /// Opens the websocket and reads the challenge; returns the nonce.
    pub async fn open(server: &Server) -> (Conn, String) {
        let url = format!("ws://{}{AGENT_WS_PATH}", server.addr);
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect");
        let mut conn = Conn { ws };
        match conn.recv().await {
            ServerMessage::Challenge { nonce } => (conn, nonce),
            other => panic!("expected challenge, got {other:?}"),
        }
    }

    pub async fn send(&mut self, msg: &AgentMessage) {
        self.send_raw(Message::text(msg.encode()))
            .await
            .expect("sending a message");
    }

    pub async fn send_raw(
        &mut self,
        msg: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        tokio::time::timeout(STEP, self.ws.send(msg))
            .await
            .expect("send timed out")
    }

    /// Next server message, skipping keepalives; panics on close or timeout.
    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            let frame = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("no server message within 5 s");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return ServerMessage::decode(&text).expect("server message decodes");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a server message, got {other:?}"),
            }
        }
    }

    /// Reads until the connection ends; panics if a message arrives first.
    pub async fn closed(&mut self) -> Closed {
        self.closed_within(STEP).await
    }

    /// [`Conn::closed`], waiting up to `wait` for the end.
    pub async fn closed_within(&mut self, wait: Duration) -> Closed {
        loop {
            let frame = tokio::time::timeout(wait, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("connection still open after {wait:?}"));
            match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(f)))) => {
                    return Closed::Frame(f.code.into(), f.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | Some(Err(_)) | None => return Closed::Dropped,
                Some(Ok(other)) => panic!("expected the connection to close, got {other:?}"),
            }
        }
    }

    /// Sends a batch and returns the acknowledged sequence number.
    pub async fn send_results(&mut self, results: Vec<CheckResult>) -> u64 {
        self.send(&AgentMessage::Results { results }).await;
        match self.recv().await {
            ServerMessage::Ack { up_to } => up_to,
            other => panic!("expected ack, got {other:?}"),
        }
    }
}

/// Defines check `load` (`/bin/true`, every minute) for every agent and
/// waits until `conn` has received the config that carries it.
pub async fn define_load_check(server: &Server, conn: &mut Conn) {
    let check =
        serde_json::json!({ "command": ["/bin/true"], "interval_secs": 60, "timeout_secs": 5 });
    server
        .admin("PUT", "/api/v1/checks/load", Some(&check))
        .await;
    assert!(matches!(conn.recv().await, ServerMessage::Config(_)));
}

/// A result of `check` with sequence `seq`.
pub fn result(seq: u64, check: &str, state: CheckState, summary: &str) -> CheckResult {
    CheckResult {
        seq,
        check: check.into(),
        state,
        summary: summary.into(),
        long_output: String::new(),
        perfdata: Vec::new(),
        unknown_perfdata: Vec::new(),
        started_at_ms: 1_700_000_000_000 + seq as i64,
        duration_ms: 12,
        update_event: None,
    }
}

/// Close code the server uses for protocol violations, rejections and replacement.
pub const POLICY: u16 = 1008;

/// Starts `POST /api/v1/agents/{fp}/run` with `body` in the background.
pub fn run_in_background(
    server: &std::sync::Arc<Server>,
    fp: &str,
    body: Value,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let server = server.clone();
    let path = format!("/api/v1/agents/{fp}/run");
    tokio::spawn(async move {
        let auth = format!("Bearer {}", server.admin_token);
        server.http("POST", &path, Some(&auth), Some(&body)).await
    })
}

/// A fresh database of the test binary's private PostgreSQL cluster
/// (`outrider-pgtest`), as the `--database` of a node (libpq key=value).
pub async fn shared_database() -> String {
    outrider_pgtest::Cluster::shared()
        .unwrap_or_else(|e| panic!("{e}"))
        .database()
        .await
        .unwrap()
        .conninfo()
}
