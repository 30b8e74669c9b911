//! SIGKILL of the real server binary at each step of a delivery: after
//! routing, while the receiver is slow to answer, and after the receiver
//! accepted but before the mark committed. Every notification must still
//! arrive, and the only duplicates allowed are resends of the same message
//! with the same idempotency key (the module docs of `server/src/notify.rs`
//! say why that is "exactly once" for receivers that deduplicate by key).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrider_alerting::NotificationKind;
use serde_json::{Value, json};

use crate::notify_support::{Hook, Reply, insert_outbox, notification};

const AGENT: &str = "0123456789abcdef0123";
const SECRET: &str = "crash-test-secret-0123";

/// The real `outrider-server` binary, killed with SIGKILL.
struct Proc {
    child: Child,
    addr: String,
    token: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(dir: &Path) -> Proc {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(env!("CARGO_BIN_EXE_outrider-server"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0", "--enrollment-token", "tok"])
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting outrider-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(addr) = std::fs::read_to_string(&ready) {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "the server never became ready: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let token = std::fs::read_to_string(dir.join("data/admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Proc {
            child,
            addr,
            token,
            log,
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let answer = reqwest::Client::new()
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    }

    /// Waits until a log line contains every one of `needles`.
    async fn wait_log(&self, needles: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needles:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn state_of(db: &Path, batch_key: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row(
        "SELECT state FROM notify_deliveries WHERE batch_key = ?1",
        [batch_key],
        |r| r.get(0),
    )
    .ok()
}

async fn wait_state(db: &Path, batch_key: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while state_of(db, batch_key).as_deref() != Some(state) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{batch_key} never became {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_delivery_step_loses_nothing_and_duplicates_only_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let db: PathBuf = dir.path().join("data/outrider.db");
    let hook = Hook::start().await;

    let server = Proc::start(dir.path());
    server
        .post(
            "/api/v1/receivers",
            json!({"name": "ops",
                   "config": {"kind": "webhook", "url": hook.url("/hook"), "secret": SECRET}}),
        )
        .await;

    // Step 1: killed after routing, before sending. The receiver holds the
    // first message, so the worker (which sends in order) cannot have sent
    // the second, routed one when the server dies.
    hook.script(&[Reply::Hold]);
    let first = insert_outbox(
        &db,
        &[],
        &[notification(AGENT, "load", NotificationKind::Firing, 1)],
    );
    hook.wait_for(1, Duration::from_secs(20)).await;
    let key = insert_outbox(
        &db,
        &["prod"],
        &[notification(AGENT, "disk", NotificationKind::Firing, 1)],
    );
    wait_state(&db, &key, "pending").await;
    server.kill();
    hook.release();
    assert_eq!(hook.received().len(), 1, "the routed message was not sent");
    assert_eq!(state_of(&db, &first).as_deref(), Some("pending"));

    // Step 2: killed while the receiver is slow to answer. The restarted
    // server first resends the held message (accepted now), then the
    // routed one, which the receiver holds.
    hook.script(&[Reply::Status(200), Reply::Hold]);
    let server = Proc::start(dir.path());
    hook.wait_for(3, Duration::from_secs(20)).await;
    server.kill();
    hook.release();
    assert_eq!(state_of(&db, &first).as_deref(), Some("sent"));
    assert_eq!(state_of(&db, &key).as_deref(), Some("pending"));

    // Step 3: killed after the receiver accepted, before the mark committed
    // (the test holds the database's write lock across the acceptance).
    hook.script(&[Reply::Hold]);
    let server = Proc::start(dir.path());
    hook.wait_for(4, Duration::from_secs(20)).await;
    let mut lock = rusqlite::Connection::open(&db).unwrap();
    let tx = lock
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    hook.release();
    server
        .wait_log(&["accepted by the receiver; marking it sent", &key])
        .await;
    server.kill();
    tx.rollback().unwrap();
    drop(lock);
    assert_eq!(state_of(&db, &key).as_deref(), Some("pending"));

    // A clean start delivers what is left, and new notifications too.
    let server = Proc::start(dir.path());
    let later = insert_outbox(
        &db,
        &["prod"],
        &[notification(AGENT, "disk", NotificationKind::Resolved, 2)],
    );
    wait_state(&db, &key, "sent").await;
    wait_state(&db, &later, "sent").await;
    server.kill();

    let got = hook.received();
    let mut by_key: BTreeMap<String, Vec<&crate::notify_support::Received>> = BTreeMap::new();
    for r in &got {
        by_key
            .entry(r.header("idempotency-key").unwrap())
            .or_default()
            .push(r);
    }
    let batches: Vec<String> = by_key
        .values()
        .map(|rs| rs[0].json()["batch_key"].as_str().unwrap().to_owned())
        .collect();
    // 0 lost, 0 duplicated after dedupe by key.
    let mut expected = vec![first.clone(), key.clone(), later];
    expected.sort();
    let mut batches_sorted = batches.clone();
    batches_sorted.sort();
    assert_eq!(
        batches_sorted, expected,
        "one message per notification after dedupe by key"
    );
    for copies in by_key.values() {
        assert!(
            copies.iter().all(|r| r.body == copies[0].body),
            "every resend is the same message"
        );
    }
    let resends = by_key
        .values()
        .find(|rs| rs[0].json()["batch_key"] == key.as_str())
        .unwrap();
    assert_eq!(
        resends.len(),
        3,
        "sent while slow, accepted before the mark, then once more"
    );
    let first_copies = by_key
        .values()
        .find(|rs| rs[0].json()["batch_key"] == first.as_str())
        .unwrap();
    assert_eq!(
        first_copies.len(),
        2,
        "held when the server died, then accepted"
    );
}
