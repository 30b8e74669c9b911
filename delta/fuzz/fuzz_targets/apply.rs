//! `cargo fuzz run apply`: `outrider_delta::apply` on arbitrary bytes must
//! return (Ok or a typed error) without panicking or allocating beyond the
//! declared size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_signing::DeltaFormat;

fuzz_target!(|data: &[u8]| {
    // Layout: [format selector][new_size: u16 LE][base_len: u8][base][patch].
    let [selector, s0, s1, base_len, rest @ ..] = data else { return };
    let format = if selector & 1 == 0 { DeltaFormat::BsdiffZstd } else { DeltaFormat::ZstdPatchFrom };
    let new_size = u64::from(u16::from_le_bytes([*s0, *s1]));
    let (base, patch) = rest.split_at(usize::from(*base_len).min(rest.len()));
    if let Ok(out) = outrider_delta::apply(format, base, patch, new_size) {
        assert_eq!(out.len() as u64, new_size);
    }
});
