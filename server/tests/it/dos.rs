//! Denial of service, each attack in small form against the real server on
//! loopback (`docs/security.md`, "Denial of service"): after each, a
//! legitimate agent or admin request still gets through.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use outrider_protocol::api::Presence;
use outrider_protocol::{AgentMessage, CheckState, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Agent, Closed, Conn, ENROLLMENT_TOKEN, STEP, Server, result};

/// `outrider_connections_refused_total{reason}` from `/metrics`.
pub async fn refused(server: &Server, reason: &str) -> u64 {
    let (status, body) = server.http("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("the exposition is text");
    let prefix = format!("outrider_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .parse()
        .unwrap()
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("binding a 127.x address");
    tokio::time::timeout(STEP, socket.connect(server))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Reads until the server closes `stream` (EOF or reset), within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .map_err(|_| format!("still open after {limit:?}"))
}

/// `GET /healthz` over `stream`; the status, 0 when refused.
async fn healthz(mut stream: TcpStream) -> u16 {
    let exchange = async {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        std::io::Result::Ok(text)
    };
    // A refused connection is closed or reset: no status (0).
    let text = tokio::time::timeout(STEP, exchange)
        .await
        .expect("healthz timed out")
        .unwrap_or_default();
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn slowloris_headers_and_idle_keepalives_are_closed_after_the_header_timeout() {
    let server = Server::start_with(|c| c.http_header_timeout_secs = 1).await;
    // Slowloris: a request line and one header, then a byte now and then.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A keep-alive connection that finished a request and went quiet.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let start = Instant::now();

    // Meanwhile the server answers others.
    assert_eq!(server.http("GET", "/healthz", None, None).await.0, 200);
    let trickle = async {
        for _ in 0..20 {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The trickle stops once the server closed the socket; 2 s is
    // the timeout plus margin, below the trickle's own length.
    tokio::time::timeout(Duration::from_secs(3), trickle)
        .await
        .unwrap();
    closed_within(&mut slow, STEP).await.unwrap();
    closed_within(&mut idle, STEP).await.unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?}, want about the 1 s timeout"
    );
    assert_eq!(server.http("GET", "/healthz", None, None).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_refused_while_another_address_gets_in() {
    let server = Server::start_with(|c| c.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 3], server.addr).await);
    }
    // The server accepts in order, so it counted the three first; an
    // admitted fourth would stay open for the 10 s header timeout.
    let mut fourth = connect_from([127, 0, 0, 3], server.addr).await;
    closed_within(&mut fourth, STEP).await.unwrap();
    // Another address is served.
    assert_eq!(
        healthz(connect_from([127, 0, 0, 4], server.addr).await).await,
        200
    );
    assert!(refused(&server, "ip_connections").await >= 1);
    // Freed connections free the address.
    drop(held);
    let deadline = Instant::now() + STEP;
    loop {
        let status = healthz(connect_from([127, 0, 0, 3], server.addr).await).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "127.0.0.3 still refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_rate_limited() {
    let server = Server::start_with(|c| {
        c.connection_rate_per_ip = 1;
        c.connection_burst_per_ip = 5;
    })
    .await;
    let mut served = 0;
    for _ in 0..20 {
        if healthz(connect_from([127, 0, 0, 5], server.addr).await).await == 200 {
            served += 1;
        }
    }
    // The burst, plus what refilled during the loop (well under 1 s).
    assert!((5..=7).contains(&served), "{served} of 20 served");
    assert!(refused(&server, "ip_rate").await >= 13);
    assert_eq!(
        healthz(connect_from([127, 0, 0, 6], server.addr).await).await,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_before_authentication_closes_that_connection_only() {
    let server = Server::start().await;
    let agent = Agent::new(1, "legit");
    let (mut legit, _, _) = agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;

    let (mut hostile, _nonce) = Conn::open(&server).await;
    // 64 KiB, far beyond a hello but within the post-authentication limit.
    let _ = hostile.send_raw(Message::text("x".repeat(64 * 1024))).await;
    // Whatever the server manages to say, the connection ends.
    let ends = async {
        while let Some(Ok(frame)) = hostile.ws.next().await {
            if let Message::Close(_) = frame {
                break;
            }
        }
    };
    tokio::time::timeout(STEP, ends)
        .await
        .expect("the hostile connection is still open");
    assert_eq!(refused(&server, "preauth_bytes").await, 1);

    // The authenticated agent sends a large batch: normal limits apply.
    let long = "y".repeat(60 * 1024);
    let up_to = legit
        .send_results(vec![result(1, "big", CheckState::Ok, &long)])
        .await;
    assert_eq!(up_to, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_large_hello_within_the_preauth_limit_is_welcomed() {
    let server = Server::start().await;
    let tags: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}", "t".repeat(62)))
        .collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let agent = Agent::new(7, &"h".repeat(255)).with_tags(&tags);
    agent.connect(&server, Some(ENROLLMENT_TOKEN)).await;
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_websockets_hold_no_agent_slot() {
    let server = Server::start_with(|c| c.max_agent_connections = 1).await;
    // Idle websockets that never say hello.
    let (_idle1, _) = Conn::open(&server).await;
    let (_idle2, _) = Conn::open(&server).await;
    // A real agent still gets the one slot.
    let first = Agent::new(1, "first");
    let (conn, _, _) = first.connect(&server, Some(ENROLLMENT_TOKEN)).await;

    // A second authenticated agent is told to come back later, without a
    // `Rejected` (which would make it drop its enrollment token).
    let second = Agent::new(2, "second");
    let (mut refused_conn, nonce) = Conn::open(&server).await;
    refused_conn
        .send(&AgentMessage::Hello(
            second.hello(&nonce, Some(ENROLLMENT_TOKEN)),
        ))
        .await;
    assert_eq!(
        refused_conn.closed().await,
        Closed::Frame(1013, "agent connection cap reached".into())
    );
    assert_eq!(refused(&server, "agent_slots").await, 1);
    // The API is not affected by the agent cap.
    assert_eq!(server.agents().await.len(), 1);

    // The slot comes back when the session ends.
    drop(conn);
    server.wait_presence(&first.fp, Presence::Down).await;
    let deadline = Instant::now() + STEP;
    loop {
        let (mut conn, nonce) = Conn::open(&server).await;
        conn.send(&AgentMessage::Hello(
            second.hello(&nonce, Some(ENROLLMENT_TOKEN)),
        ))
        .await;
        match tokio::time::timeout(STEP, conn.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                let answer = ServerMessage::decode(&text).unwrap();
                assert!(matches!(answer, ServerMessage::Welcome(_)), "{answer:?}");
                break;
            }
            // The first session's slot is not back yet.
            Some(Ok(Message::Close(_))) => {}
            other => panic!("expected welcome or close, got {other:?}"),
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_after_its_timeout() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = Server::start_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
        c.tls_handshake_timeout_secs = 1;
    })
    .await;
    // Half a ClientHello record header, then nothing.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let start = Instant::now();
    closed_within(&mut stalled, STEP).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        start.elapsed()
    );
    server.stop().await;
}
