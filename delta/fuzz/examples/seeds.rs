//! Writes seed inputs for the `apply` target into `corpus/apply/`: real
//! patches made by `outrider_delta::create` in both formats, in the
//! target's input layout, so the fuzzer starts from valid zstd frames and
//! bsdiff control streams instead of having to discover them. Likewise for
//! `apply_elf` into `corpus/apply_elf/`: ELF builds from the crate's test
//! fixture (`delta/tests/it/elf.rs`) and their `elf-x86-64-bsdiff-zstd`
//! patches.
//!
//! `cargo run --manifest-path delta/fuzz/Cargo.toml --example seeds`

use outrider_signing::DeltaFormat;

#[path = "../../tests/it/elf.rs"]
#[allow(dead_code)]
mod elf;

fn main() {
    elf_seeds();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/apply");
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let text: Vec<u8> = (0..200u32)
        .flat_map(|i| format!("line {i} of the build\n").into_bytes())
        .collect();
    let base = &text[..255];
    let mut changed = base.to_vec();
    changed[10..20].copy_from_slice(b"CHANGED!!!");
    changed.extend_from_slice(b"and a new tail");
    let pairs: [(&str, &[u8], &[u8]); 4] = [
        ("edit", base, &changed),
        ("same", base, base),
        ("empty-base", b"", b"fresh content, nothing to copy"),
        ("shrink", base, &base[..40]),
    ];
    for (name, base, new) in pairs {
        for (selector, format) in [
            (0u8, DeltaFormat::BsdiffZstd),
            (1u8, DeltaFormat::ZstdPatchFrom),
        ] {
            let patch = outrider_delta::create(format, base, new).expect("create patch");
            let size = u16::try_from(new.len()).expect("seed fits the u16 size field");
            let mut input = vec![selector];
            input.extend_from_slice(&size.to_le_bytes());
            input.push(u8::try_from(base.len()).expect("seed base fits the u8 length field"));
            input.extend_from_slice(base);
            input.extend_from_slice(&patch);
            std::fs::write(dir.join(format!("{name}-{selector}")), input).expect("write seed");
        }
    }
}

/// Seeds for `apply_elf`: `[new_size: u16][base_len: u16][base][patch]`.
fn elf_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/apply_elf");
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, count, at, extra) in [
        ("insert", 20, 3, &[7, 1][..]),
        ("same", 12, 0, &[][..]),
        ("append", 8, 8, &[30][..]),
    ] {
        let old = elf::Build::new(count, 42);
        let (base, new) = (old.elf(), old.with_inserted(at, extra).elf());
        let patch = outrider_delta::create(DeltaFormat::ElfX86BsdiffZstd, &base, &new)
            .expect("create patch");
        let mut input = Vec::new();
        input.extend_from_slice(&u16::try_from(new.len()).expect("fits u16").to_le_bytes());
        input.extend_from_slice(&u16::try_from(base.len()).expect("fits u16").to_le_bytes());
        input.extend_from_slice(&base);
        input.extend_from_slice(&patch);
        std::fs::write(dir.join(name), input).expect("write seed");
    }
}
