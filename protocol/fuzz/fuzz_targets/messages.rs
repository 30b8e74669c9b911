//! `cargo fuzz run messages`: every frame either side can receive. Arbitrary
//! text decodes as an `AgentMessage` and as a `ServerMessage` to a message,
//! an unknown type or a typed error without panicking, and:
//!
//! - a decoded message re-encodes to a frame that decodes to the same
//!   message, and that encoding is canonical (encoding again gives the same
//!   text), so what the server stores is what the agent sent;
//! - an unknown type's tag is cut to a bounded length;
//! - the checks the receiver runs on a decoded message (`Hello::offered`,
//!   `AgentConfig::validate`, the key-possession proof) return instead of
//!   panicking, and the proof holds only for the exact key and signature of
//!   the golden transcript (`protocol/tests/golden/v2/full_session.json`):
//!   no mutated signature or key is ever accepted.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outrider_protocol::{AgentMessage, Decoded, Hello, ServerMessage, verify_proof};

/// The golden session's challenge nonce and the hello that answered it.
struct Golden {
    nonce: String,
    public_key: Vec<u8>,
    signature: Vec<u8>,
}

fn golden() -> &'static Golden {
    static GOLDEN: OnceLock<Golden> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let transcript: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/golden/v2/full_session.json"))
                .expect("golden transcript is JSON");
        let frames = transcript["frames"].as_array().expect("frames");
        let nonce = frames[0]["message"]["nonce"]
            .as_str()
            .expect("nonce")
            .to_owned();
        let hello = &frames[1]["message"];
        let hex = |field: &str| unhex(hello[field].as_str().expect("hello field"));
        Golden {
            nonce,
            public_key: hex("public_key"),
            signature: hex("signature"),
        }
    })
}

/// Lowercase-hex decoding for the golden fields (which are valid hex).
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("golden hex"))
        .collect()
}

/// Decodes `text` with `decode_frame`, checks the round trip of a message
/// and the bound on an unknown tag, and returns the message.
macro_rules! round_trip {
    ($ty:ty, $text:expr) => {{
        match <$ty>::decode_frame($text) {
            Ok(Decoded::Message(message)) => {
                let encoded = message.encode();
                let again = <$ty>::decode(&encoded).expect("an encoded message decodes");
                assert_eq!(again, message, "round trip changed the message: {encoded}");
                assert_eq!(again.encode(), encoded, "encoding is not canonical");
                Some(message)
            }
            Ok(Decoded::Unknown { kind }) => {
                assert!(kind.len() <= 64, "unknown tag kept at {} bytes", kind.len());
                assert!(!<$ty>::TYPES.contains(&kind.as_str()));
                None
            }
            Err(_) => None,
        }
    }};
}

fn check_hello(hello: &Hello) {
    let _ = hello.offered();
    let golden = golden();
    if verify_proof(
        &hello.fingerprint,
        &hello.public_key,
        &golden.nonce,
        &hello.signature,
    )
    .is_ok()
    {
        // Hex is case-insensitive; the bytes must be the golden ones.
        assert_eq!(
            unhex(&hello.public_key.to_ascii_lowercase()),
            golden.public_key
        );
        assert_eq!(
            unhex(&hello.signature.to_ascii_lowercase()),
            golden.signature
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match round_trip!(AgentMessage, text) {
        Some(AgentMessage::Hello(hello)) => check_hello(&hello),
        Some(AgentMessage::Results { results }) => {
            for result in &results {
                let _ = result.state.exit_code();
            }
        }
        _ => {}
    }
    if let Some(ServerMessage::Config(config)) = round_trip!(ServerMessage, text) {
        let _ = config.validate();
        for check in &config.checks {
            let _ = (check.plugin_name(), check.builtin_name());
        }
    }
});
