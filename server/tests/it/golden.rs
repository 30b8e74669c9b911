//! Golden transcripts: every message of whole sessions of protocol 2, as an
//! agent of that protocol spoke them, kept under
//! `protocol/tests/golden/v2/` (see `docs/protocol.md`).
//!
//! Replay sends the recorded agent frames verbatim to today's server — only
//! what cannot be recorded is patched: the hello's signature (re-signed over
//! the fresh nonce with the fixed key kept with the fixtures), a presented
//! resume token and the correlation id of an RPC answer — and checks that
//! each server answer has the recorded shape: the same `type`, and every
//! recorded field present with a value of the same JSON kind (a newer
//! server may add fields; an old agent ignores them).
//!
//! `OUTRIDER_RECORD_GOLDEN=1` rewrites the fixtures from the current code;
//! only do that for a new protocol version's directory, never for one an
//! agent in the field still speaks.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use futures_util::StreamExt;
use outrider_protocol::{
    AgentMessage, CheckResult, CheckState, Fingerprint, Hello, PerfData, ServerMessage,
    auth_message, fingerprint_of,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Conn, ENROLLMENT_TOKEN, STEP, Server, run_in_background};

/// Who sent a recorded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Side {
    Agent,
    Server,
}

#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    from: Side,
    message: Value,
}

/// One recorded session.
#[derive(Debug, Serialize, Deserialize)]
struct Transcript {
    description: String,
    frames: Vec<Frame>,
}

/// The fixed test identity the fixtures were recorded with.
#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    /// Hex of the 32-byte ed25519 secret seed; a test key, nothing else.
    seed_hex: String,
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/golden/v2")
}

fn recording() -> bool {
    std::env::var_os("OUTRIDER_RECORD_GOLDEN").is_some()
}

fn test_key() -> SigningKey {
    let path = golden_dir().join("agent_key.json");
    if recording() && !path.exists() {
        let file = KeyFile {
            seed_hex: hex::encode([0x5a; 32]),
        };
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap() + "\n").unwrap();
    }
    let file: KeyFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let seed: [u8; 32] = hex::decode(file.seed_hex).unwrap().try_into().unwrap();
    SigningKey::from_bytes(&seed)
}

/// Records a session, or replays a recorded one and compares.
enum Tape {
    /// Frames recorded so far, and the directory they are saved in.
    Record(PathBuf, Vec<Frame>),
    Replay(VecDeque<Frame>),
}

impl Tape {
    fn open(name: &str) -> Tape {
        Tape::open_in(&golden_dir(), name)
    }

    /// [`Tape::open`] of a transcript in `dir` (a protocol version's).
    fn open_in(dir: &std::path::Path, name: &str) -> Tape {
        if recording() {
            return Tape::Record(dir.to_path_buf(), Vec::new());
        }
        let path = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("golden transcript {}: {e}", path.display()));
        let transcript: Transcript = serde_json::from_str(&text).unwrap();
        Tape::Replay(transcript.frames.into())
    }

    /// Saves a recording; checks a replay used every frame.
    fn finish(self, name: &str, description: &str) {
        match self {
            Tape::Record(dir, frames) => {
                let transcript = Transcript {
                    description: description.to_owned(),
                    frames,
                };
                let path = dir.join(format!("{name}.json"));
                std::fs::create_dir_all(&dir).unwrap();
                let text = serde_json::to_string_pretty(&transcript).unwrap() + "\n";
                std::fs::write(path, text).unwrap();
            }
            Tape::Replay(left) => assert!(left.is_empty(), "frames not replayed: {left:?}"),
        }
    }

    /// Sends the agent's next frame: `current` when recording, else the
    /// recorded frame with the fields of `current` that depend on this run
    /// (signature, resume token, RPC id) copied in.
    async fn agent(&mut self, conn: &mut Conn, current: AgentMessage) {
        let current = serde_json::to_value(&current).unwrap();
        let sent = match self {
            Tape::Record(_, frames) => {
                frames.push(Frame {
                    from: Side::Agent,
                    message: current.clone(),
                });
                current
            }
            Tape::Replay(frames) => {
                let frame = frames.pop_front().expect("transcript has more frames");
                assert_eq!(frame.from, Side::Agent, "expected to send {current}");
                let mut message = frame.message;
                for field in ["signature", "resume_token", "id"] {
                    if let (Some(slot), Some(live)) = (message.get_mut(field), current.get(field)) {
                        *slot = live.clone();
                    }
                }
                message
            }
        };
        conn.send_raw(Message::text(sent.to_string()))
            .await
            .expect("sending a recorded frame");
    }

    /// Receives the server's next frame; in a replay, checks its shape
    /// against the recording.
    async fn server(&mut self, conn: &mut Conn) -> ServerMessage {
        let received = loop {
            let frame = tokio::time::timeout(STEP, conn.ws.next())
                .await
                .expect("no server message within 5 s");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    break serde_json::from_str::<Value>(&text).unwrap();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a server message, got {other:?}"),
            }
        };
        match self {
            Tape::Record(_, frames) => frames.push(Frame {
                from: Side::Server,
                message: received.clone(),
            }),
            Tape::Replay(frames) => {
                let frame = frames.pop_front().expect("transcript has more frames");
                assert_eq!(frame.from, Side::Server, "the server sent {received}");
                assert_eq!(
                    frame.message["type"], received["type"],
                    "recorded {}, got {received}",
                    frame.message
                );
                if let Err(path) = same_shape(&frame.message, &received, "$") {
                    panic!("{path}: recorded {}, got {received}", frame.message);
                }
            }
        }
        serde_json::from_value(received).expect("server message decodes")
    }
}

/// Whether `actual` has every field of `recorded` with a value of the same
/// JSON kind (recursively; arrays by their first elements). `Err` names the
/// first field that differs.
fn same_shape(recorded: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (recorded, actual) {
        (Value::Object(r), Value::Object(a)) => {
            for (key, value) in r {
                let inner = format!("{path}.{key}");
                let Some(other) = a.get(key) else {
                    return Err(format!("{inner} is missing"));
                };
                same_shape(value, other, &inner)?;
            }
            Ok(())
        }
        (Value::Array(r), Value::Array(a)) => match (r.first(), a.first()) {
            (Some(r), Some(a)) => same_shape(r, a, &format!("{path}[0]")),
            (Some(_), None) => Err(format!("{path} is empty")),
            _ => Ok(()),
        },
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => Err(format!("{path} changed kind")),
    }
}

/// The protocol-2 hello of the golden agent.
fn hello(key: &SigningKey, fp: &Fingerprint, nonce: &str, resume: Option<String>) -> Hello {
    Hello {
        protocol_version: 2,
        fingerprint: fp.clone(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(key.sign(&auth_message(nonce, fp)).to_bytes()),
        enrollment_token: Some(ENROLLMENT_TOKEN.into()),
        hostname: "golden-1".into(),
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
        tags: vec!["web".into()],
        resume_token: resume,
        config_version: 0,
    }
}

fn results() -> Vec<CheckResult> {
    vec![
        CheckResult {
            seq: 1,
            check: "disk".into(),
            state: CheckState::Ok,
            summary: "DISK OK".into(),
            long_output: "/ 40%\n/var 12%".into(),
            perfdata: vec![PerfData {
                label: "root".into(),
                value: 40.0,
                uom: "%".into(),
                warn: Some("80".into()),
                crit: Some("90".into()),
                min: Some(0.0),
                max: Some(100.0),
            }],
            started_at_ms: 1_700_000_000_000,
            duration_ms: 12,
            unknown_perfdata: Vec::new(),
            update_event: None,
        },
        CheckResult {
            seq: 2,
            check: "disk".into(),
            state: CheckState::Critical,
            summary: "DISK CRITICAL".into(),
            long_output: String::new(),
            perfdata: Vec::new(),
            started_at_ms: 1_700_000_060_000,
            duration_ms: 9,
            unknown_perfdata: Vec::new(),
            update_event: None,
        },
    ]
}

#[tokio::test]
async fn full_session_of_protocol_2_still_works() {
    let server = Arc::new(Server::start().await);
    let key = test_key();
    let fp = fingerprint_of(&key.verifying_key());
    // A plugin the check uses, so the session downloads it.
    let plugin: Vec<u8> = (0..=255u8).cycle().take(300).collect();
    let auth = format!("Bearer {}", server.admin_token);
    let (status, body) = server
        .http_raw(
            "PUT",
            "/api/v1/plugins/check_gold",
            Some(&auth),
            Some("application/octet-stream"),
            &plugin,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sha = body["sha256"].as_str().unwrap().to_owned();
    let check = json!({ "command": ["plugin:check_gold", "-w", "80"], "interval_secs": 60,
        "timeout_secs": 10 });
    server
        .admin("PUT", "/api/v1/checks/disk", Some(&check))
        .await;

    let mut tape = Tape::open("full_session");
    let mut resume = None;
    for round in 0..2 {
        let mut conn = Conn::open_raw(&server).await;
        let ServerMessage::Challenge { nonce } = tape.server(&mut conn).await else {
            panic!("expected a challenge");
        };
        let hello = hello(&key, &fp, &nonce, resume.take());
        tape.agent(&mut conn, AgentMessage::Hello(hello)).await;
        let ServerMessage::Welcome(welcome) = tape.server(&mut conn).await else {
            panic!("expected a welcome");
        };
        assert_eq!(welcome.fingerprint, fp);
        if round == 1 {
            // Resumed while running no config: the config comes again;
            // goodbye ends the second session.
            assert!(welcome.resumed);
            let ServerMessage::Config(_) = tape.server(&mut conn).await else {
                panic!("expected the config");
            };
            let bye = AgentMessage::Goodbye {
                reason: "agent stopping".into(),
            };
            tape.agent(&mut conn, bye).await;
            break;
        }
        resume = Some(welcome.resume_token.clone());
        let ServerMessage::Config(config) = tape.server(&mut conn).await else {
            panic!("expected the config");
        };
        assert_eq!(config.plugins[0].sha256, sha);
        let get = AgentMessage::GetPlugin {
            sha256: sha.clone(),
            offset: 0,
        };
        tape.agent(&mut conn, get).await;
        let ServerMessage::PluginChunk { total, .. } = tape.server(&mut conn).await else {
            panic!("expected a plugin chunk");
        };
        assert_eq!(total, 300);
        let missing = AgentMessage::GetPlugin {
            sha256: "cd".repeat(32),
            offset: 0,
        };
        tape.agent(&mut conn, missing).await;
        let ServerMessage::PluginMissing { .. } = tape.server(&mut conn).await else {
            panic!("expected plugin_missing");
        };
        let batch = AgentMessage::Results { results: results() };
        tape.agent(&mut conn, batch).await;
        let ServerMessage::Ack { up_to } = tape.server(&mut conn).await else {
            panic!("expected an ack");
        };
        assert_eq!(up_to, 2);

        let call = run_in_background(&server, fp.as_str(), json!({ "check": "disk" }));
        let ServerMessage::RunCheck { id, .. } = tape.server(&mut conn).await else {
            panic!("expected run_check");
        };
        let mut answer = results().remove(1);
        answer.seq = 0;
        let reply = AgentMessage::RpcResult {
            id,
            result: Some(answer),
            error: None,
        };
        tape.agent(&mut conn, reply).await;
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");

        let path = format!("/api/v1/agents/{fp}/allow-adhoc");
        let allow = json!({ "allow_adhoc": true });
        server.admin("PUT", &path, Some(&allow)).await;
        let ServerMessage::Config(config) = tape.server(&mut conn).await else {
            panic!("expected the config push");
        };
        assert!(config.allow_adhoc);
        let script = json!({ "script": "echo hi", "interpreter": "sh", "timeout_secs": 5 });
        let call = run_in_background(&server, fp.as_str(), script);
        let ServerMessage::RunScript { id, .. } = tape.server(&mut conn).await else {
            panic!("expected run_script");
        };
        let refusal = AgentMessage::RpcResult {
            id,
            result: None,
            error: Some("the runner is full".into()),
        };
        tape.agent(&mut conn, refusal).await;
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 422, "{body}");
        // The connection drops without goodbye; the next round resumes.
        drop(conn);
    }
    tape.finish(
        "full_session",
        "protocol 2: enrollment, config, plugin download (found and missing), results and ack, \
         run_check and run_script answered, a lost connection, a resumed session ended by goodbye",
    );
    let stored = server.latest_results().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
}

#[tokio::test]
async fn rejected_hello_of_protocol_2_is_still_refused() {
    let server = Server::start().await;
    let key = test_key();
    let fp = fingerprint_of(&key.verifying_key());
    let mut tape = Tape::open("rejected");
    let mut conn = Conn::open_raw(&server).await;
    let ServerMessage::Challenge { nonce } = tape.server(&mut conn).await else {
        panic!("expected a challenge");
    };
    let mut hello = hello(&key, &fp, &nonce, None);
    hello.enrollment_token = Some("wrong".into());
    tape.agent(&mut conn, AgentMessage::Hello(hello)).await;
    let ServerMessage::Rejected { reason } = tape.server(&mut conn).await else {
        panic!("expected a rejection");
    };
    assert!(reason.contains("enrollment token"), "{reason}");
    tape.finish(
        "rejected",
        "protocol 2: an unknown agent with a wrong enrollment token is rejected",
    );
}

/// Where sessions of protocol 3 that use capabilities are kept.
fn golden_dir_v3() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/golden/v3")
}

#[tokio::test]
async fn collectors_and_samples_session_of_protocol_3_still_works() {
    let server = Server::start().await;
    let collector = json!({
        "collector": {"name": "app", "kind": "command", "argv": ["/usr/bin/app-exporter", "-v"],
                      "interval_secs": 30},
    });
    server
        .admin("PUT", "/api/v1/collectors/app", Some(&collector))
        .await;
    let key = test_key();
    let fp = fingerprint_of(&key.verifying_key());
    let mut tape = Tape::open_in(&golden_dir_v3(), "collectors_and_samples");
    let mut conn = Conn::open_raw(&server).await;
    let ServerMessage::Challenge { nonce } = tape.server(&mut conn).await else {
        panic!("expected a challenge");
    };
    let mut hello = hello(&key, &fp, &nonce, None);
    hello.protocol_min = Some(2);
    hello.protocol_max = Some(3);
    hello.capabilities = vec!["collectors".into(), "metric_samples".into()];
    tape.agent(&mut conn, AgentMessage::Hello(hello)).await;
    let ServerMessage::Welcome(welcome) = tape.server(&mut conn).await else {
        panic!("expected a welcome");
    };
    assert_eq!(welcome.protocol_version, 3);
    let ServerMessage::Config(config) = tape.server(&mut conn).await else {
        panic!("expected the config");
    };
    assert_eq!(config.collectors.len(), 1);
    let running = CheckResult {
        seq: 1,
        check: "outrider.collector.app".into(),
        state: CheckState::Ok,
        summary: "running".into(),
        long_output: String::new(),
        perfdata: Vec::new(),
        unknown_perfdata: Vec::new(),
        started_at_ms: 1_700_000_000_000,
        duration_ms: 0,
        update_event: None,
    };
    tape.agent(
        &mut conn,
        AgentMessage::Results {
            results: vec![running],
        },
    )
    .await;
    let ServerMessage::Ack { up_to: 1 } = tape.server(&mut conn).await else {
        panic!("expected the ack");
    };
    let batch = outrider_protocol::SampleBatch {
        seq: 1,
        samples: vec![outrider_protocol::MetricSample {
            name: "app.requests".into(),
            tags: vec![outrider_protocol::MetricTag {
                key: "env".into(),
                value: "prod".into(),
            }],
            value: 42.0,
            kind: "counter".into(),
            unit: String::new(),
            timestamp_ms: 1_700_000_000_000,
        }],
    };
    tape.agent(&mut conn, AgentMessage::Samples(batch)).await;
    let ServerMessage::SamplesAck { up_to: 1 } = tape.server(&mut conn).await else {
        panic!("expected the samples ack");
    };
    let bye = AgentMessage::Goodbye {
        reason: "agent stopping".into(),
    };
    tape.agent(&mut conn, bye).await;
    tape.finish(
        "collectors_and_samples",
        "protocol 3 with the collectors and metric_samples capabilities: config with a \
         collector, its result acked, a sample batch acked, goodbye",
    );
    server.stop().await;
}
