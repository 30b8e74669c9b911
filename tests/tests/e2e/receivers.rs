//! Alert receivers through the real `outrider` CLI and `outrider-server`:
//! an operator adds a webhook, tests it, routes it, and a notification the
//! alert engine commits to `alert_outbox` reaches it; secrets never come
//! back, not even in errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_tests::{TestServer, secs, wait_until};

/// A loopback HTTP receiver answering 200 to every request; keeps the
/// bodies. Its thread stops (and is joined) when it is dropped.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (bodies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &kept),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            }
        });
        Receiver {
            url,
            bodies,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request from `stream`, keeps its body, answers 200.
fn answer(stream: TcpStream, kept: &Mutex<Vec<String>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_ok() {
        kept.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
    }
    let _ =
        (&stream).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

#[test]
fn operator_adds_tests_and_routes_a_receiver_and_an_outbox_notification_reaches_it() {
    let server = TestServer::start();
    let hook = Receiver::start();
    let (url, bodies) = (&hook.url, &hook.bodies);
    let secret = server.dir.path().join("hook.secret");
    std::fs::write(&secret, "e2e-webhook-secret-value\n").unwrap();
    let out = server.cli(&[
        "receivers",
        "add",
        "webhook",
        "ops",
        "--url",
        url,
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(out.contains("receiver ops added"), "{out}");
    let list = server.cli(&["receivers", "list"]);
    assert!(list.contains("ops") && list.contains("webhook"), "{list}");
    let json = server.cli(&["--json", "receivers"]);
    assert!(!json.contains("e2e-webhook-secret-value"), "{json}");

    let out = server.cli(&["receivers", "test", "ops"]);
    assert!(out.contains("accepted the test message"), "{out}");
    assert!(bodies.lock().unwrap()[0].contains("Test notification from Outrider"));

    let out = server.cli(&[
        "routes",
        "add",
        "--receiver",
        "ops",
        "--tag",
        "db",
        "--severity",
        "critical",
    ]);
    assert!(out.contains("route 1 added"), "{out}");
    let routes = server.cli(&["routes"]);
    assert!(
        routes.contains("db") && routes.contains("critical"),
        "{routes}"
    );

    // What the alert driver does: one committed outbox row.
    let notification = serde_json::json!([{
        "subject": {"check": {"agent": "0123456789abcdef0123", "name": "disk"}},
        "kind": "firing", "status": "CRITICAL", "title": "disk CRITICAL on db-1",
        "summary": "/ is 97% full", "resolve_cause": null,
        "incident_started_ms": 1_796_368_783_000_u64, "seq": 1
    }]);
    let key = "check/0123456789abcdef0123/disk@1796368783000#1";
    let db = rusqlite::Connection::open(server.data_dir().join("outrider.db")).unwrap();
    db.busy_timeout(secs(10)).unwrap();
    db.execute(
        "INSERT INTO alert_outbox (batch_key, group_key, tags, severity, notifications, created_at_ms)
         VALUES (?1, 'agent/0123456789abcdef0123', '[\"db\",\"prod\"]', 'critical', ?2, 0)",
        rusqlite::params![key, notification.to_string()],
    )
    .unwrap();
    let body = wait_until("the notification at the webhook", secs(20), || {
        bodies
            .lock()
            .unwrap()
            .iter()
            .find(|b| b.contains(key))
            .cloned()
    });
    assert!(body.contains("disk CRITICAL on db-1"), "{body}");

    // A Slack URL is a secret: a failing test says why without it.
    let slack = server.dir.path().join("slack.url");
    std::fs::write(&slack, "http://127.0.0.1:1/services/T0/B0/E2ESLACKSECRET\n").unwrap();
    server.cli(&[
        "receivers",
        "add",
        "slack",
        "chat",
        "--url-file",
        slack.to_str().unwrap(),
    ]);
    let out = server.cli_output(&["receivers", "test", "chat"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not accept the test message"),
        "{stderr}"
    );
    assert!(!stderr.contains("E2ESLACKSECRET"), "{stderr}");
    server.cli(&["receivers", "delete", "chat"]);
    let out = server.cli(&["receivers", "dead-letters"]);
    assert!(out.contains("no dead letters"), "{out}");
}
