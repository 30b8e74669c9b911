//! Every message of every golden transcript (`protocol/tests/golden/v*/`)
//! decodes with today's types, and encoding it again keeps every field it
//! had: an agent of today understands a server of that protocol, and a
//! server of today understands an agent of it. The server replays the same
//! transcripts against a live server (`server/tests/it/golden.rs`).

use std::path::{Path, PathBuf};

use outrider_protocol::{AgentMessage, ServerMessage};
use serde_json::Value;

fn transcripts() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut found = Vec::new();
    for version in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(version.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") && !path.ends_with("agent_key.json") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Whether every field of `recorded` is in `again` with the same value
/// (objects may gain fields; nothing else may change).
fn kept(recorded: &Value, again: &Value) -> bool {
    match (recorded, again) {
        (Value::Object(r), Value::Object(a)) => r
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|other| kept(v, other))),
        (Value::Array(r), Value::Array(a)) => {
            r.len() == a.len() && r.iter().zip(a).all(|(r, a)| kept(r, a))
        }
        _ => recorded == again,
    }
}

#[test]
fn golden_transcripts_decode_with_todays_types() {
    let files = transcripts();
    assert!(files.len() >= 2, "no golden transcripts found: {files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for path in files {
        let transcript: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for frame in transcript["frames"].as_array().unwrap() {
            let message = &frame["message"];
            let text = message.to_string();
            let again = match frame["from"].as_str().unwrap() {
                "server" => ServerMessage::decode(&text)
                    .unwrap_or_else(|e| panic!("{}: {text}: {e}", path.display()))
                    .encode(),
                "agent" => AgentMessage::decode(&text)
                    .unwrap_or_else(|e| panic!("{}: {text}: {e}", path.display()))
                    .encode(),
                other => panic!("{}: unknown side {other}", path.display()),
            };
            let again: Value = serde_json::from_str(&again).unwrap();
            assert!(
                kept(message, &again),
                "{}: {message} became {again}",
                path.display()
            );
            kinds.insert(message["type"].as_str().unwrap().to_owned());
        }
    }
    // The transcripts cover every message type of protocol 2.
    for kind in [
        "challenge",
        "hello",
        "welcome",
        "rejected",
        "config",
        "results",
        "ack",
        "get_plugin",
        "plugin_chunk",
        "plugin_missing",
        "run_check",
        "run_script",
        "rpc_result",
        "goodbye",
    ] {
        assert!(kinds.contains(kind), "no {kind} in the golden transcripts");
    }
}
