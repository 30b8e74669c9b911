//! `cargo fuzz run roots`: the client's root chain step
//! (`UpdateClient::refresh_root`) from the fixed root v1 of
//! `signing/fuzz/src/lib.rs`, over a repository whose `roots/2.json`,
//! `roots/3.json`, … are the fuzzer's input. It must not panic, must stop
//! within its bound, and may only ever arrive at a root the fixed root keys
//! signed as that version (v2 or v3 of the fixtures).
//!
//! Input: a sequence of `[length: u16 LE][envelope bytes]`, one per version
//! from 2 on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_signing::Envelope;
use outrider_signing_fuzz::{CHANNEL, NOW, fixtures};
use outrider_update_client::UpdateClient;
use outrider_update_client_fuzz::Memory;

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let mut repo = Memory::default();
    let mut rest = data;
    let mut version = 2u64;
    while let [l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (document, after) = tail.split_at(len);
        repo.0
            .insert(format!("roots/{version}.json"), document.to_vec());
        rest = after;
        version += 1;
    }
    let downloads = std::env::temp_dir().join("outrider-fuzz-unused-downloads");
    let client = UpdateClient::new(repo, CHANNEL.parse().expect("channel"), &downloads);
    let Ok(newest) = client.refresh_root(&f.trusted, NOW) else {
        return;
    };
    let reached = newest.root().version;
    assert!(
        (1..=3).contains(&reached),
        "walked to root version {reached}, which nobody signed"
    );
    let payload = Envelope::from_bytes(newest.envelope_bytes()).expect("accepted root parses");
    assert_eq!(
        payload.payload(),
        &f.root_payloads[usize::try_from(reached - 1).expect("small")][..],
        "arrived at a root nobody signed"
    );
});
