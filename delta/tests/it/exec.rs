//! `elf-x86-64-bsdiff-zstd` on ELF builds that differ as releases do: it
//! must rebuild them exactly, beat plain bsdiff when code moves, and refuse
//! hostile patches and bases with typed errors.

use std::sync::OnceLock;

use outrider_delta::{
    DeltaError, DeltaFormat, SUPPORTED, apply, apply_to, create, create_smallest,
};
use proptest::prelude::*;

use crate::elf::Build;

const ELF: DeltaFormat = DeltaFormat::ElfX86BsdiffZstd;

struct Pair {
    base: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
}

/// 3,000 functions; the release inserts three near the start, so nearly
/// every function, its relocation and its unwind entry moves.
fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let old = Build::new(3000, 0x5eed);
        let base = old.elf();
        let new = old.with_inserted(40, &[12, 3, 25]).elf();
        let patch = create(ELF, &base, &new).expect("create");
        Pair { base, new, patch }
    })
}

#[test]
fn rebuilds_the_new_build_exactly_through_both_apply_paths() {
    let p = pair();
    let size = p.new.len() as u64;
    assert!(apply(ELF, &p.base, &p.patch, size).unwrap() == p.new);
    let mut out = Vec::new();
    apply_to(ELF, &p.base, &p.patch, size, &mut out).unwrap();
    assert!(out == p.new);
}

#[test]
fn moved_code_costs_less_than_with_plain_bsdiff() {
    let p = pair();
    let plain = create(DeltaFormat::BsdiffZstd, &p.base, &p.new).unwrap();
    assert!(
        p.patch.len() * 2 < plain.len(),
        "elf {} vs bsdiff {}",
        p.patch.len(),
        plain.len()
    );
    let (format, blob) = create_smallest(&SUPPORTED, &p.base, &p.new).unwrap();
    assert_eq!(format, ELF);
    assert_eq!(blob, p.patch);
}

#[test]
fn a_base_that_is_not_an_elf_file_is_not_applicable() {
    let p = pair();
    let size = p.new.len() as u64;
    let mut base = p.base.clone();
    base[4] = 1; // ELFCLASS32
    let err = apply(ELF, &base, &p.patch, size).unwrap_err();
    assert!(
        matches!(err, DeltaError::NotApplicable { format: ELF, .. }),
        "{err:?}"
    );
    let err = create(ELF, b"plain bytes", &p.new).unwrap_err();
    assert!(
        matches!(err, DeltaError::NotApplicable { format: ELF, .. }),
        "{err:?}"
    );
}

#[test]
fn truncated_or_mis_sized_patches_are_typed_errors() {
    let p = pair();
    let size = p.new.len() as u64;
    for len in [0, 3, p.patch.len() / 2, p.patch.len() - 1] {
        let err = apply(ELF, &p.base, &p.patch[..len], size).unwrap_err();
        assert!(
            matches!(err, DeltaError::Corrupt { format: ELF, .. }),
            "cut at {len}: {err:?}"
        );
    }
    let err = apply(ELF, &p.base, &p.patch, size + 1).unwrap_err();
    assert!(
        matches!(err, DeltaError::WrongSize { expected, got, .. } if expected == size + 1 && got == size),
        "{err:?}"
    );
    let mut out = Vec::new();
    let err = apply_to(ELF, &p.base, &p.patch, size - 1, &mut out).unwrap_err();
    assert!(
        matches!(err, DeltaError::TooLarge { what: "output", .. }),
        "{err:?}"
    );
    // The output streams, so a prefix went out (the caller discards it on
    // error), but never a byte past the declared size.
    assert!(out.len() < p.new.len(), "wrote {} bytes", out.len());
    assert!(out == p.new[..out.len()]);
}

#[test]
fn another_base_does_not_produce_the_new_build() {
    let p = pair();
    let other = Build::new(3000, 99).elf();
    match apply(ELF, &other, &p.patch, p.new.len() as u64) {
        Ok(out) => assert!(out != p.new),
        Err(e) => assert!(matches!(e, DeltaError::Corrupt { .. }), "{e:?}"),
    }
}

/// Bytes before the label table frame's length: tag and version (4), the
/// section count (2) and 17 per section.
fn layout_end(patch: &[u8]) -> usize {
    6 + 17 * usize::from(u16::from_le_bytes([patch[4], patch[5]]))
}

#[test]
fn header_layouts_that_lie_are_corrupt_before_any_output() {
    let p = pair();
    let size = p.new.len();
    // The fixture's rewritten sections: .rela.dyn, .eh_frame_hdr, .text.
    assert_eq!(layout_end(&p.patch), 6 + 3 * 17);
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut patch = p.patch.clone();
        edit(&mut patch);
        patch
    };
    let put = |patch: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        patch[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // Entry i starts at 6 + 17 i: kind, offset u32, size u32, address u64.
    let entry = |i: usize| 6 + 17 * i;
    let text_offset = u32::from_le_bytes(p.patch[entry(2) + 1..entry(2) + 5].try_into().unwrap());
    let table: [(&str, Vec<u8>, &str); 8] = [
        (
            "count too big",
            with(&|b| put(b, 4, &u16::MAX.to_le_bytes())),
            "truncated section layout",
        ),
        (
            "count takes in the label table",
            with(&|b| put(b, 4, &40u16.to_le_bytes())),
            "section layout",
        ),
        (
            "offset past the end",
            with(&|b| put(b, entry(2) + 1, &(size as u32).to_le_bytes())),
            "past the end of the build",
        ),
        (
            "size past the end",
            with(&|b| put(b, entry(2) + 5, &u32::MAX.to_le_bytes())),
            "past the end of the build",
        ),
        (
            "overlapping",
            with(&|b| put(b, entry(1) + 1, &(text_offset - 1).to_le_bytes())),
            "overlapping",
        ),
        (
            "over the ELF header",
            with(&|b| put(b, entry(0) + 1, &8u32.to_le_bytes())),
            "over the ELF header",
        ),
        (
            "unknown kind",
            with(&|b| b[entry(1)] = 7),
            "unknown section kind",
        ),
        (
            "empty section",
            with(&|b| put(b, entry(0) + 5, &0u32.to_le_bytes())),
            "an empty section",
        ),
    ];
    for (name, patch, reason) in table {
        let err = apply(ELF, &p.base, &patch, size as u64).unwrap_err();
        assert!(
            matches!(&err, DeltaError::Corrupt { format: ELF, reason: r } if r.contains(reason)),
            "{name}: {err:?}"
        );
        let mut out = Vec::new();
        let err = apply_to(ELF, &p.base, &patch, size as u64, &mut out).unwrap_err();
        assert!(matches!(err, DeltaError::Corrupt { .. }), "{name}: {err:?}");
        assert!(out.is_empty(), "{name}: wrote {} bytes", out.len());
    }
}

#[test]
fn a_layout_that_lies_within_bounds_never_makes_the_new_build() {
    // Such a patch is as hostile as any other: it makes some output of the
    // declared size, or fails, and the caller's hash check refuses it.
    let p = pair();
    let size = p.new.len() as u64;
    let end = layout_end(&p.patch);
    let entry = |i: usize| 6 + 17 * i;
    let mut moved_code = p.patch.clone();
    moved_code[entry(2) + 9] ^= 1; // the code's address
    let mut shifted = p.patch.clone();
    let offset = u32::from_le_bytes(shifted[entry(2) + 1..entry(2) + 5].try_into().unwrap());
    shifted[entry(2) + 1..entry(2) + 5].copy_from_slice(&(offset + 1).to_le_bytes());
    let mut relabelled_kind = p.patch.clone();
    relabelled_kind[entry(1)] = 1; // .eh_frame_hdr taken for relocations
    let without_code = [
        &p.patch[..4],
        &2u16.to_le_bytes(),
        &p.patch[6..entry(2)],
        &p.patch[end..],
    ]
    .concat();
    for (name, patch) in [
        ("moved code", moved_code),
        ("shifted code", shifted),
        ("wrong kind", relabelled_kind),
        ("without code", without_code),
    ] {
        match apply(ELF, &p.base, &patch, size) {
            Ok(out) => assert!(out != p.new, "{name}: made the new build"),
            Err(e) => assert!(matches!(e, DeltaError::Corrupt { .. }), "{name}: {e:?}"),
        }
    }
}

#[test]
fn patches_of_another_layout_version_are_refused() {
    let p = pair();
    let size = p.new.len() as u64;
    // Version 1: the label table frame's length, the frame, the body.
    let v1 = p.patch[layout_end(&p.patch)..].to_vec();
    let mut v3 = p.patch.clone();
    v3[3] = 3;
    for (patch, found) in [(v1, 1), (v3, 3)] {
        let mut out = Vec::new();
        let err = apply_to(ELF, &p.base, &patch, size, &mut out).unwrap_err();
        assert!(
            matches!(err, DeltaError::UnsupportedVersion { format: ELF, found: f, supported: 2 } if f == found),
            "{err:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn a_label_the_table_does_not_give_is_corrupt() {
    // The label table without its fresh labels, those of the inserted
    // functions' targets: the body still uses them.
    let p = pair();
    let end = layout_end(&p.patch);
    let len = u32::from_le_bytes(p.patch[end..end + 4].try_into().unwrap()) as usize;
    let (frame, body) = p.patch[end + 4..].split_at(len);
    let mut table = zstd::decode_all(frame).unwrap();
    let n = u32::from_le_bytes(table[..4].try_into().unwrap()) as usize;
    let used = table[4..4 + n].iter().filter(|f| **f != 0).count();
    let fresh_at = 4 + n + 4 * used;
    assert_ne!(
        table[fresh_at..fresh_at + 4],
        [0; 4],
        "the release has fresh labels"
    );
    table.truncate(fresh_at);
    table.extend_from_slice(&0u32.to_le_bytes());
    let frame = zstd::bulk::compress(&table, 3).unwrap();
    let patch = [
        &p.patch[..end],
        &(frame.len() as u32).to_le_bytes(),
        &frame,
        body,
    ]
    .concat();
    let err = apply(ELF, &p.base, &patch, p.new.len() as u64).unwrap_err();
    assert!(
        matches!(&err, DeltaError::Corrupt { format: ELF, reason } if reason.contains("unknown label")),
        "{err:?}"
    );
}

#[test]
fn a_failing_writer_is_a_write_error_through_the_relabelling() {
    let p = pair();
    let len = p.new.len();
    for (room, fail_flush, expected) in [
        (0, false, "disk full"),
        (len / 2, false, "disk full"),
        (len, true, "flush failed"),
    ] {
        let mut out = crate::Failing { room, fail_flush };
        let err = apply_to(ELF, &p.base, &p.patch, len as u64, &mut out).unwrap_err();
        assert!(
            matches!(&err, DeltaError::Write { format: ELF, source } if source.to_string() == expected),
            "room {room}: {err:?}"
        );
    }
}

/// A real shared object from the system's toolchain: the C library mapped
/// into this test process (the test binary itself where there is none, which
/// is slower: it is tens of MB). A byte changed in the middle round-trips.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn round_trips_on_a_real_shared_object() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .map(std::path::PathBuf::from);
    let path = libc.unwrap_or_else(|| std::env::current_exe().unwrap());
    let exe = std::fs::read(&path).unwrap();
    let mut new = exe.clone();
    let middle = new.len() / 2;
    new[middle] ^= 0x55;
    let patch = create(ELF, &exe, &new).unwrap();
    assert!(apply(ELF, &exe, &patch, new.len() as u64).unwrap() == new);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_release_of_a_build_round_trips(
        count in 1usize..200,
        seed in any::<u64>(),
        at in any::<usize>(),
        extra in proptest::collection::vec(0usize..40, 0..5),
    ) {
        let old = Build::new(count, seed);
        let new = old.with_inserted(at % (count + 1), &extra);
        let (base, new) = (old.elf(), new.elf());
        let patch = create(ELF, &base, &new).unwrap();
        prop_assert!(apply(ELF, &base, &patch, new.len() as u64).unwrap() == new);
    }

    #[test]
    fn mutated_patches_and_bases_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        in_base in any::<bool>(),
    ) {
        let p = pair();
        let (mut base, mut patch) = (p.base.clone(), p.patch.clone());
        let target = if in_base { &mut base } else { &mut patch };
        for (at, byte) in flips {
            let at = at % target.len();
            target[at] ^= byte.max(1);
        }
        if let Ok(out) = apply(ELF, &base, &patch, p.new.len() as u64) {
            prop_assert_eq!(out.len(), p.new.len());
        }
    }

    #[test]
    fn mutated_headers_never_panic(
        flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..6),
        table_flips in proptest::collection::vec((0usize..384, any::<u8>()), 0..6),
    ) {
        // Bytes of the ELF and section headers, where offsets and sizes live.
        let p = pair();
        let mut base = p.base.clone();
        let shoff = base.len() - 384;
        for (at, byte) in flips {
            base[at] ^= byte.max(1);
        }
        for (at, byte) in table_flips {
            base[shoff + at] ^= byte.max(1);
        }
        if let Ok(out) = apply(ELF, &base, &p.patch, p.new.len() as u64) {
            prop_assert_eq!(out.len(), p.new.len());
        }
    }
}
