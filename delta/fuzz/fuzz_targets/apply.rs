//! `cargo fuzz run apply`: `outrider_delta::apply` and `apply_to` on arbitrary
//! bytes must return (Ok or a typed error) without panicking, allocating or
//! writing beyond the declared size, and must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_signing::DeltaFormat;

fuzz_target!(|data: &[u8]| {
    // Layout: [format selector][new_size: u16 LE][base_len: u8][base][patch].
    let [selector, s0, s1, base_len, rest @ ..] = data else { return };
    let format = if selector & 1 == 0 { DeltaFormat::BsdiffZstd } else { DeltaFormat::ZstdPatchFrom };
    let new_size = u64::from(u16::from_le_bytes([*s0, *s1]));
    let (base, patch) = rest.split_at(usize::from(*base_len).min(rest.len()));
    let applied = outrider_delta::apply(format, base, patch, new_size);
    if let Ok(out) = &applied {
        assert_eq!(out.len() as u64, new_size);
    }
    // The streaming path never writes past the declared size and agrees with `apply`.
    let mut streamed = Vec::new();
    let result = outrider_delta::apply_to(format, base, patch, new_size, &mut streamed);
    assert!(streamed.len() as u64 <= new_size);
    assert_eq!(result.is_ok(), applied.is_ok());
    if let Ok(out) = applied {
        assert_eq!(streamed, out);
    }
});
