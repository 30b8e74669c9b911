//! Fixtures of the notifier tests: a real HTTP receiver on loopback that
//! records every request and answers as scripted, and outbox rows written
//! into the server's database as the alert driver writes them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outrider_alerting::model::ResolveCause;
use outrider_alerting::{Notification, NotificationKind, Status, Subject};
use serde_json::Value;
use tokio::sync::Notify;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// How the receiver answers the next request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with a `Retry-After` header.
    RetryAfter(u16, &'static str),
    /// Answers 200 only once [`Hook::release`] is called.
    Hold,
}

#[derive(Debug)]
struct Inner {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    arrived: Notify,
    /// Holds started so far; the n-th held request is answered once
    /// `released` reaches n (whether or not earlier ones are still waiting:
    /// a client that went away drops its request).
    holds: Mutex<u64>,
    released: tokio::sync::watch::Sender<u64>,
}

/// An HTTP receiver on 127.0.0.1 answering 200 unless scripted otherwise.
#[derive(Clone, Debug)]
pub struct Hook {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Hook {
    pub async fn start() -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Hook::serve(listener)
    }

    /// Serves on `listener` (a fixed port survives a server restart).
    pub fn serve(listener: tokio::net::TcpListener) -> Hook {
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            received: Mutex::default(),
            script: Mutex::default(),
            arrived: Notify::new(),
            holds: Mutex::new(0),
            released: tokio::sync::watch::Sender::new(0),
        });
        let handler_inner = inner.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let inner = handler_inner.clone();
                async move { answer(inner, uri.path().to_owned(), headers, body).await }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers for the next requests, in order.
    pub fn script(&self, replies: &[Reply]) {
        self.inner
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().cloned());
    }

    /// Lets the next held request be answered.
    pub fn release(&self) {
        self.inner.released.send_modify(|n| *n += 1);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Waits (up to `within`) until `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.inner.arrived.notified();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "the receiver got {} of {n} requests within {within:?}: {:#?}",
                    received.len(),
                    received
                        .iter()
                        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

async fn answer(inner: Arc<Inner>, path: String, headers: HeaderMap, body: Bytes) -> Response {
    inner.received.lock().unwrap().push(Received {
        at: Instant::now(),
        path,
        headers,
        body,
    });
    inner.arrived.notify_waiters();
    let reply = inner.script.lock().unwrap().pop_front();
    match reply {
        None | Some(Reply::Status(200)) => (StatusCode::OK, "ok").into_response(),
        Some(Reply::Status(code)) => {
            (StatusCode::from_u16(code).unwrap(), "scripted failure").into_response()
        }
        Some(Reply::RetryAfter(code, after)) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", after)],
            "slow down",
        )
            .into_response(),
        Some(Reply::Hold) => {
            let mine = {
                let mut holds = inner.holds.lock().unwrap();
                *holds += 1;
                *holds
            };
            let mut released = inner.released.subscribe();
            // The sender lives in `inner`, which this handler holds.
            let _ = released.wait_for(|n| *n >= mine).await;
            (StatusCode::OK, "ok").into_response()
        }
    }
}

/// A notification about check `name` of agent `agent`.
pub fn notification(agent: &str, name: &str, kind: NotificationKind, seq: u32) -> Notification {
    let resolved = kind == NotificationKind::Resolved;
    Notification {
        subject: Subject::Check {
            agent: agent.into(),
            name: name.into(),
        },
        kind,
        status: if resolved {
            Status::Ok
        } else {
            Status::Critical
        },
        title: format!("{name} CRITICAL on {agent}"),
        summary: "disk / is 97% full".into(),
        resolve_cause: resolved.then_some(ResolveCause::Recovered),
        incident_started_ms: 1_796_368_783_000,
        seq,
    }
}

/// The outbox `batch_key` of these notifications (see alert_outbox.sql).
pub fn batch_key(notifications: &[Notification]) -> String {
    let mut keys: Vec<String> = notifications
        .iter()
        .map(|n| format!("{}#{}", n.incident_key(), n.seq))
        .collect();
    keys.sort();
    keys.join(" ")
}

/// Inserts one outbox row into the server's database at `db`, as the alert
/// driver does; returns its batch key.
pub fn insert_outbox(db: &Path, tags: &[&str], notifications: &[Notification]) -> String {
    let key = batch_key(notifications);
    let severity = if notifications.iter().all(|n| n.status == Status::Ok) {
        "ok"
    } else {
        "critical"
    };
    let group = format!("agent/{}", notifications[0].subject.agent().unwrap());
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute(
        "INSERT INTO alert_outbox (batch_key, group_key, tags, severity, notifications, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            key,
            group,
            serde_json::to_string(tags).unwrap(),
            severity,
            serde_json::to_string(notifications).unwrap(),
            outrider_server::store::now_ms()
        ],
    )
    .unwrap();
    key
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, computed independently of the server.
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
