//! `cargo fuzz run spool_record`: a spool record body of arbitrary bytes
//! (`agent-lib/src/spool/record.rs`) decodes to a payload or to an error,
//! never a panic; a body that decodes encodes again to one that decodes to
//! the same payload, and a samples batch never decodes as a check result or
//! the other way round.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_agent::spool::{Kind, Payload};

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = Payload::from_body(data) else {
        return;
    };
    let body = payload
        .to_body()
        .expect("a decoded payload holds only finite values");
    let again = Payload::from_body(&body).expect("an encoded payload decodes");
    assert_eq!(again, payload);
    assert_eq!(
        again.kind() == Kind::Samples,
        body.starts_with(br#"{"kind":"samples""#)
    );
});
