//! Integration tests of `outrider-delta`: round trips on build-like data and
//! the hostile-patch outcomes, each asserting its exact error variant.

use std::io::Write;
use std::sync::OnceLock;

use outrider_delta::{
    DeltaError, DeltaFormat, FIRST_FORMATS, apply, apply_to, create, create_smallest,
};
use proptest::prelude::*;

mod elf;
mod exec;

const FORMATS: [DeltaFormat; 2] = [DeltaFormat::BsdiffZstd, DeltaFormat::ZstdPatchFrom];

/// A base "build", the next "build" after a small edit, and a patch per format.
struct Fixture {
    base: Vec<u8>,
    new: Vec<u8>,
    patches: Vec<(DeltaFormat, Vec<u8>)>,
}

/// Build-like bytes: a few hundred KB drawn from a small vocabulary of
/// "instructions" plus noise, so they compress about as well as code does.
fn build_like(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocabulary: Vec<[u8; 8]> = (0..64).map(|_| next().to_le_bytes()).collect();
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        let r = next();
        if r % 4 == 0 {
            out.extend_from_slice(&r.to_le_bytes()[..3]);
        } else {
            out.extend_from_slice(&vocabulary[(r >> 8) as usize % vocabulary.len()]);
        }
    }
    out.truncate(len);
    out
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = build_like(300 * 1024, 0x5eed);
        let mut new = base.clone();
        // A changed string constant and a small inserted function: everything
        // after the insertion shifts, as in a real rebuild.
        new[1000..1016].copy_from_slice(b"plugin no output");
        new.splice(150_000..150_000, build_like(200, 7));
        let patches = FORMATS
            .map(|f| (f, create(f, &base, &new).expect("create")))
            .to_vec();
        Fixture { base, new, patches }
    })
}

#[test]
fn round_trip_both_formats_and_the_patch_is_small() {
    let fx = fixture();
    let full = zstd::bulk::compress(&fx.new, 10).unwrap();
    for (format, patch) in &fx.patches {
        let out = apply(*format, &fx.base, patch, fx.new.len() as u64).unwrap();
        assert!(out == fx.new, "{format:?} did not reproduce the new build");
        assert!(
            patch.len() * 10 < full.len(),
            "{format:?}: {} vs full {}",
            patch.len(),
            full.len()
        );
    }
}

#[test]
fn create_smallest_picks_the_smaller_format() {
    let fx = fixture();
    let (format, blob) = create_smallest(&FIRST_FORMATS, &fx.base, &fx.new).unwrap();
    let min = fx.patches.iter().map(|(_, p)| p.len()).min().unwrap();
    assert_eq!(blob.len(), min);
    assert_eq!(
        apply(format, &fx.base, &blob, fx.new.len() as u64).unwrap(),
        fx.new
    );
}

#[test]
fn wrong_base_does_not_produce_the_new_build() {
    let fx = fixture();
    let other = build_like(fx.base.len(), 99);
    for (format, patch) in &fx.patches {
        match apply(*format, &other, patch, fx.new.len() as u64) {
            Ok(out) => assert!(out != fx.new, "{format:?} ignored its base"),
            Err(e) => assert!(matches!(e, DeltaError::Corrupt { .. }), "{format:?}: {e:?}"),
        }
    }
    // A shorter base makes bsdiff read past its end: a typed error, not a panic.
    let err = apply(
        DeltaFormat::BsdiffZstd,
        &fx.base[..1000],
        &fx.patches[0].1,
        fx.new.len() as u64,
    );
    assert!(matches!(err, Err(DeltaError::Corrupt { .. })), "{err:?}");
}

#[test]
fn truncated_patch_is_corrupt() {
    let fx = fixture();
    for (format, patch) in &fx.patches {
        for len in [0, 3, patch.len() / 2, patch.len() - 1] {
            let err = apply(*format, &fx.base, &patch[..len], fx.new.len() as u64).unwrap_err();
            assert!(
                matches!(err, DeltaError::Corrupt { .. }),
                "{format:?} cut at {len}: {err:?}"
            );
        }
    }
}

#[test]
fn declared_size_mismatch_is_wrong_size_or_too_large() {
    let fx = fixture();
    let len = fx.new.len() as u64;
    for (format, patch) in &fx.patches {
        let err = apply(*format, &fx.base, patch, len + 1).unwrap_err();
        assert!(
            matches!(err, DeltaError::WrongSize { expected, got, .. } if expected == len + 1 && got == len),
            "{format:?}: {err:?}"
        );
        let err = apply(*format, &fx.base, patch, len - 1).unwrap_err();
        assert!(
            matches!(err, DeltaError::TooLarge { what: "output", .. }),
            "{format:?}: {err:?}"
        );
    }
}

/// 8 MiB of zeros in a few KB, with or without a content size; the window is
/// the smallest zstd has, so the frame passes the window check.
fn zero_bomb(prefix: &[u8], content_size: bool) -> Vec<u8> {
    let zeros = vec![0u8; 8 << 20];
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.window_log(10).unwrap();
    encoder.include_contentsize(content_size).unwrap();
    if content_size {
        encoder
            .set_pledged_src_size(Some((prefix.len() + zeros.len()) as u64))
            .unwrap();
    }
    encoder.write_all(prefix).unwrap();
    encoder.write_all(&zeros).unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    bomb
}

#[test]
fn zstd_bomb_is_too_large() {
    // bsdiff-zstd: zeros parse as empty control entries; a big copy entry
    // asks for more output than declared. Both stop at the declared size.
    let err = apply(
        DeltaFormat::BsdiffZstd,
        b"base",
        &zero_bomb(&[], true),
        1000,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::TooLarge {
                what: "control entries",
                limit: 1001,
                ..
            }
        ),
        "{err:?}"
    );
    let mut entry = [0u8; 24];
    entry[8..16].copy_from_slice(&(8u64 << 20).to_le_bytes());
    let err = apply(
        DeltaFormat::BsdiffZstd,
        b"base",
        &zero_bomb(&entry, false),
        1000,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::TooLarge {
                what: "output",
                limit: 1000,
                ..
            }
        ),
        "{err:?}"
    );
    // zstd-patch-from: refused from the frame header, or when the output fills.
    for content_size in [true, false] {
        let err = apply(
            DeltaFormat::ZstdPatchFrom,
            b"base",
            &zero_bomb(&[], content_size),
            1000,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::TooLarge {
                    what: "output",
                    limit: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn window_beyond_the_declared_sizes_is_too_large() {
    // A frame that declares a 16 KiB window for a 100-byte build.
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_contentsize(false).unwrap();
    encoder.window_log(14).unwrap();
    encoder.write_all(&build_like(20_000, 3)).unwrap();
    let patch = encoder.finish().unwrap();
    for format in FORMATS {
        let err = apply(format, b"", &patch, 100).unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::TooLarge {
                    what: "zstd window",
                    ..
                }
            ),
            "{format:?}: {err:?}"
        );
    }
}

#[test]
fn unknown_format_is_refused() {
    let fx = fixture();
    let err = apply(
        DeltaFormat::Unknown,
        &fx.base,
        &fx.patches[0].1,
        fx.new.len() as u64,
    )
    .unwrap_err();
    assert!(
        matches!(err, DeltaError::UnknownFormat(DeltaFormat::Unknown)),
        "{err:?}"
    );
}

#[test]
fn apply_to_a_vec_equals_apply() {
    let fx = fixture();
    for (format, patch) in &fx.patches {
        let mut out = Vec::new();
        apply_to(*format, &fx.base, patch, fx.new.len() as u64, &mut out).unwrap();
        assert!(out == fx.new, "{format:?} did not reproduce the new build");
        assert!(out == apply(*format, &fx.base, patch, fx.new.len() as u64).unwrap());
    }
}

/// Accepts `room` bytes, then fails every write; or fails only on flush.
struct Failing {
    room: usize,
    fail_flush: bool,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.fail_flush {
            Err(std::io::Error::other("flush failed"))
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_failing_writer_is_a_write_error() {
    let fx = fixture();
    let len = fx.new.len();
    for (format, patch) in &fx.patches {
        for (room, fail_flush) in [(0, false), (len / 2, false), (len, true)] {
            let mut out = Failing { room, fail_flush };
            let err = apply_to(*format, &fx.base, patch, len as u64, &mut out).unwrap_err();
            let expected = if fail_flush {
                "flush failed"
            } else {
                "disk full"
            };
            assert!(
                matches!(&err, DeltaError::Write { format: f, source } if f == format && source.to_string() == expected),
                "{format:?} room {room}: {err:?}"
            );
        }
    }
}

#[test]
fn apply_to_refuses_too_much_or_too_little_output() {
    let fx = fixture();
    let len = fx.new.len() as u64;
    for (format, patch) in &fx.patches {
        let mut out = Vec::new();
        let err = apply_to(*format, &fx.base, patch, len + 1, &mut out).unwrap_err();
        assert!(
            matches!(err, DeltaError::WrongSize { expected, got, .. } if expected == len + 1 && got == len),
            "{format:?}: {err:?}"
        );
        let mut out = Vec::new();
        let err = apply_to(*format, &fx.base, patch, len - 1, &mut out).unwrap_err();
        assert!(
            matches!(err, DeltaError::TooLarge { what: "output", limit, .. } if limit == len - 1),
            "{format:?}: {err:?}"
        );
        assert!((out.len() as u64) < len, "{format:?} wrote {}", out.len());
    }
    // Without a content size in the frame, patch-from is stopped by the
    // output bound itself while streaming, not by the header check.
    let mut out = Vec::new();
    let err = apply_to(
        DeltaFormat::ZstdPatchFrom,
        b"base",
        &zero_bomb(&[], false),
        100_000,
        &mut out,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::TooLarge {
                what: "output",
                limit: 100_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(out.len() <= 100_000, "wrote {}", out.len());
}

fn any_format() -> impl Strategy<Value = DeltaFormat> {
    prop_oneof![
        Just(DeltaFormat::BsdiffZstd),
        Just(DeltaFormat::ZstdPatchFrom),
        Just(DeltaFormat::ElfX86BsdiffZstd)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn garbage_never_panics(
        format in any_format(),
        base in proptest::collection::vec(any::<u8>(), 0..256),
        patch in proptest::collection::vec(any::<u8>(), 0..512),
        zstd_magic in any::<bool>(),
        new_size in 0u64..4096,
    ) {
        // Half the inputs start with the zstd magic so the frame parser is reached.
        let patch = if zstd_magic { [&[0x28, 0xb5, 0x2f, 0xfd][..], &patch].concat() } else { patch };
        if let Ok(out) = apply(format, &base, &patch, new_size) {
            prop_assert_eq!(out.len() as u64, new_size);
        }
    }

    #[test]
    fn garbage_through_apply_to_never_panics(
        format in any_format(),
        base in proptest::collection::vec(any::<u8>(), 0..256),
        patch in proptest::collection::vec(any::<u8>(), 0..512),
        zstd_magic in any::<bool>(),
        new_size in 0u64..4096,
        room in 0usize..5000,
    ) {
        let patch = if zstd_magic { [&[0x28, 0xb5, 0x2f, 0xfd][..], &patch].concat() } else { patch };
        let mut out = Vec::new();
        let result = apply_to(format, &base, &patch, new_size, &mut out);
        prop_assert!(out.len() as u64 <= new_size);
        if result.is_ok() {
            prop_assert_eq!(out.len() as u64, new_size);
            prop_assert_eq!(&out, &apply(format, &base, &patch, new_size).unwrap());
        }
        // The same through a writer that gives out part way.
        let mut failing = Failing { room, fail_flush: false };
        if apply_to(format, &base, &patch, new_size, &mut failing).is_ok() {
            prop_assert!(room >= new_size as usize);
        }
    }

    #[test]
    fn mutated_patches_never_panic(
        which in 0usize..2,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let fx = fixture();
        let (format, patch) = &fx.patches[which];
        let mut patch = patch.clone();
        for (at, byte) in flips {
            let at = at % patch.len();
            patch[at] ^= byte.max(1);
        }
        if let Ok(out) = apply(*format, &fx.base, &patch, fx.new.len() as u64) {
            prop_assert_eq!(out.len(), fx.new.len());
        }
    }
}
