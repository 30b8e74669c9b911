//! `cargo fuzz run envelope`: signed envelopes and everything that verifies
//! them (`Envelope::from_bytes`, `TrustedRoot::from_bytes_self_signed`,
//! `TrustedRoot::successor`, `verify_manifest`) against the fixed keys of
//! `src/lib.rs`. Nothing may panic, and nothing may be accepted but the
//! exact payloads those keys signed.
//!
//! Input: `[mode][rest]`. Even mode: `rest` is envelope bytes, given to
//! every verifier. Odd mode: `rest` mutates a genuine envelope —
//! `[document][(index: u16 LE, xor: u8)…]` flips bytes of its payload and
//! signatures (and, with bit 1 of `document`, repeats its first signature);
//! whatever changed, the result must be refused — except the signature of a
//! key the verifying root does not know, which verifiers skip by design.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use libfuzzer_sys::fuzz_target;
use outrider_signing::{
    Envelope, ManifestPolicy, SequenceFloor, TrustedRoot, sha256, verify_manifest,
};
use outrider_signing_fuzz::{CHANNEL, Fixtures, NOW, fixtures};

fn payload_of(envelope: &[u8]) -> Vec<u8> {
    Envelope::from_bytes(envelope)
        .expect("an accepted envelope parses")
        .payload()
        .to_vec()
}

fn verify_as_manifest(f: &Fixtures, bytes: &[u8], floor: Option<SequenceFloor>) -> bool {
    let channel = CHANNEL.parse().expect("fixture channel");
    let policy = ManifestPolicy {
        channel: &channel,
        now_unix: NOW,
        floor,
    };
    match verify_manifest(&f.trusted, bytes, &policy) {
        Ok(verified) => {
            let payload = payload_of(bytes);
            assert_eq!(verified.payload_sha256, sha256(&payload));
            assert!(
                f.manifest_payloads[..2].contains(&payload),
                "accepted a manifest nobody signed"
            );
            true
        }
        Err(_) => false,
    }
}

fn raw(f: &Fixtures, bytes: &[u8]) {
    if let Ok(envelope) = Envelope::from_bytes(bytes) {
        let again = Envelope::from_bytes(&envelope.to_bytes()).expect("re-encoded envelope parses");
        assert_eq!(again, envelope, "envelope round trip");
    }
    if let Ok(root) = TrustedRoot::from_bytes_self_signed(bytes, NOW) {
        assert_eq!(root.envelope_bytes(), bytes);
        assert!(
            f.root_payloads.contains(&payload_of(bytes)),
            "accepted a root nobody signed"
        );
    }
    if f.trusted.successor(bytes).is_ok() {
        assert_eq!(
            payload_of(bytes),
            f.root_payloads[1],
            "accepted a successor nobody signed"
        );
    }
    if verify_as_manifest(f, bytes, None) {
        // With the floor at sequence 6, sequence 5 is a rollback.
        let floor = SequenceFloor {
            sequence: 6,
            payload_sha256: sha256(&f.manifest_payloads[1]),
        };
        if verify_as_manifest(f, bytes, Some(floor)) {
            assert_eq!(payload_of(bytes), f.manifest_payloads[1]);
        }
    }
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("fixture hex"))
        .collect()
}

fn mutated(f: &Fixtures, rest: &[u8]) {
    let [document, edits @ ..] = rest else { return };
    let original = match document % 3 {
        0 => &f.roots[1],
        1 => &f.manifests[0],
        _ => &f.manifests[1],
    };
    let mut wire: serde_json::Value = serde_json::from_slice(original).expect("fixture is JSON");
    let text = |v: &serde_json::Value| v.as_str().expect("fixture string").to_owned();
    // The payload, then each signature: the bytes the edits index into.
    let mut fields = vec![
        BASE64
            .decode(text(&wire["payload"]))
            .expect("fixture base64"),
    ];
    let mut signatures = wire["signatures"].as_array().expect("signatures").clone();
    fields.extend(signatures.iter().map(|s| unhex(&text(&s["sig"]))));
    let genuine = fields.clone();
    let total: usize = fields.iter().map(Vec::len).sum();
    for edit in edits.chunks_exact(3) {
        let mut at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % total;
        for field in &mut fields {
            if at < field.len() {
                field[at] ^= edit[2];
                break;
            }
            at -= field.len();
        }
    }
    // Root v1 does not know release2, whose signature is the second one of
    // manifests[1]: its verifier skips it, so changing it changes nothing.
    let counted = if document % 3 == 2 { 2 } else { fields.len() };
    let repeat = document & 2 != 0;
    if fields[..counted] == genuine[..counted] && !repeat {
        return;
    }
    wire["payload"] = BASE64.encode(&fields[0]).into();
    for (s, sig) in signatures.iter_mut().zip(&fields[1..]) {
        s["sig"] = sig
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into();
    }
    if repeat {
        signatures.push(signatures[0].clone());
    }
    wire["signatures"] = signatures.into();
    let bytes = serde_json::to_vec(&wire).expect("JSON serialises");
    match document % 3 {
        0 => assert!(
            f.trusted.successor(&bytes).is_err(),
            "accepted a mutated root"
        ),
        _ => assert!(
            !verify_as_manifest(f, &bytes, None),
            "accepted a mutated manifest"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => mutated(f, rest),
        Some((_, rest)) => raw(f, rest),
        None => {}
    }
});
