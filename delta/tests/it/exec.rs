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
    assert!(out.is_empty(), "wrote {} bytes of a wrong build", out.len());
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
