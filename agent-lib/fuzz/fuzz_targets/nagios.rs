//! `cargo fuzz run nagios`: the Nagios output parser and the threshold range
//! parser on arbitrary plugin output must return without panicking, and
//! what they return must hold their documented invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_agent::nagios::{MAX_SKIPPED_NOTED, Range, parse_output, parse_perfdata};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let out = parse_output(&text);
    assert!(!out.summary.contains('\n'));
    assert!(out.skipped.len() <= MAX_SKIPPED_NOTED && out.skipped.len() <= out.skipped_count);
    for p in &out.perfdata {
        assert!(!p.label.is_empty() && p.value.is_finite());
    }
    let _ = out.skipped_note();
    let _ = parse_perfdata(&text);
    for word in text.split([' ', ';', '\n']) {
        if let Ok(r) = Range::parse(word) {
            assert!(r.start <= r.end);
            let _ = r.alerts(r.start);
        }
    }
});
