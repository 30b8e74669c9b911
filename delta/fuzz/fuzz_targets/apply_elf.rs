//! `cargo fuzz run apply_elf`: `elf-x86-64-bsdiff-zstd` through
//! `outrider_delta::apply` and `apply_to` on arbitrary bases and patches
//! must return (Ok or a typed error) without panicking, allocating or
//! writing beyond the declared size, and must agree. The base is arbitrary
//! too: applying parses and rewrites it, so a hostile-looking ELF header or
//! section table must be as safe as a hostile patch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outrider_signing::DeltaFormat;

const FORMAT: DeltaFormat = DeltaFormat::ElfX86BsdiffZstd;

fuzz_target!(|data: &[u8]| {
    // Layout: [new_size: u16 LE][base_len: u16 LE][base][patch].
    let [s0, s1, b0, b1, rest @ ..] = data else { return };
    let new_size = u64::from(u16::from_le_bytes([*s0, *s1]));
    let base_len = usize::from(u16::from_le_bytes([*b0, *b1]));
    let (base, patch) = rest.split_at(base_len.min(rest.len()));
    let applied = outrider_delta::apply(FORMAT, base, patch, new_size);
    if let Ok(out) = &applied {
        assert_eq!(out.len() as u64, new_size);
    }
    let mut streamed = Vec::new();
    let result = outrider_delta::apply_to(FORMAT, base, patch, new_size, &mut streamed);
    assert!(streamed.len() as u64 <= new_size);
    assert_eq!(result.is_ok(), applied.is_ok());
    if let Ok(out) = applied {
        assert_eq!(streamed, out);
    }
});
