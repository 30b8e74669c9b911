//! Binary deltas between two builds of the agent library (docs/updates.md).
//!
//! Three formats, named in the manifest by [`DeltaFormat`]:
//!
//! - **`bsdiff-zstd`**: the patch stream of the `bsdiff` crate (no header; a
//!   sequence of 24-byte control entries `mix_len, copy_len, seek` as
//!   little-endian sign-magnitude `i64`s, each followed by `mix_len` bytes
//!   added bytewise to the base and `copy_len` literal bytes), compressed as
//!   one zstd frame at level 19 with a window of at most
//!   2^[`BSDIFF_MAX_WINDOW_LOG`].
//! - **`zstd-patch-from`**: one zstd frame of the new build, compressed with
//!   the base build as raw-content reference prefix, long-distance matching
//!   on, and a window covering base + new.
//! - **`elf-x86-64-bsdiff-zstd`**: a table of labels and a `bsdiff-zstd`
//!   patch between the two builds after their branch and RIP-relative
//!   displacements were replaced by labels of their targets (matched
//!   across the builds) and their relative relocations and unwind search
//!   table were difference-coded, so that code that moved does not change
//!   them (`exec.rs` has the rules and the layout). Applying rewrites the
//!   base the same way, patches, and maps the labels back as the result
//!   streams out, by the new build's section layout from the patch header.
//!   Only for x86-64 ELF builds: [`create_smallest`] skips it for anything else
//!   ([`DeltaError::NotApplicable`]). Clients released before it know it as
//!   [`DeltaFormat::Unknown`], so publishers offer it beside an older format
//!   (docs/updates.md).
//!
//! Blobs are exactly what is stored and served. This crate does no file I/O:
//! [`apply_to`] writes to the caller's writer, [`apply`] into a `Vec`.
//!
//! # Memory bounds of [`apply_to`]
//!
//! Everything allocated is derived from the caller's declared `new_size`
//! (from the signed manifest) and the base length, never from the patch:
//!
//! - The output goes to the caller's writer through a bound that refuses to
//!   pass `new_size` bytes ([`DeltaError::TooLarge`], `what = "output"`) and
//!   counts them ([`DeltaError::WrongSize`] if short).
//! - `bsdiff-zstd` holds no output: the patch is decompressed as a stream,
//!   with a zstd window capped at 2^[`bsdiff_window_log`]`(new_size)` ≤ 1 MiB,
//!   and the patched bytes go out in 64 KiB chunks as they are produced. The
//!   control stream is checked entry by entry (output space left, base
//!   bounds, seek range), and at most `new_size + 1` entries are accepted —
//!   `bsdiff` emits at most one entry per distinct scan position in
//!   `0..=new_size`, and the cap keeps a bomb of empty entries from spinning.
//!   Memory: base + patch + ≈ 1.5 MiB.
//! - `zstd-patch-from` is decompressed as a stream too, but zstd's decoder
//!   keeps a window buffer of min(window, content size) ≈ the new build
//!   (matches reach back across the whole new build into the base), with the
//!   window limit set to [`patch_from_window_log`] of the sizes and a frame
//!   declaring more content than `new_size` refused up front. Memory: base +
//!   patch + ≈ new, so this format cannot be applied below ≈ 2× the build.
//! - `elf-x86-64-bsdiff-zstd` normalises each read of the base again from
//!   a place an instruction or table entry starts (one per KiB) and maps the
//!   labels back as the output streams out, by the new build's section
//!   layout from the patch header (checked to lie sorted and apart within
//!   `new_size`), holding at most 16 KiB of a section at a time. Its
//!   bsdiff-zstd body has a zstd window of at most 128 KiB. Memory: the
//!   base, the patch, the base's distinct targets (4 bytes each), a label
//!   table of 8 bytes per label and ≈ 50 bytes per KiB of rewritten
//!   sections, all bounded by the base length (and `new_size` for fresh
//!   labels), and ≈ 0.5 MiB of buffers; no copy of either build.
//! - Declared sizes above [`MAX_SIZE`] are refused up front.
//!
//! [`apply`] adds a `Vec` of `new_size` bytes to that.
//!
//! Applying does not check the result's hash: the caller compares it with the
//! manifest's `sha256` and falls back to the full artifact on mismatch.

mod bsdiff_zstd;
mod error;
mod exec;
mod output;
mod patch_from;

use std::io::Write;

use output::Output;

pub use error::DeltaError;
pub use outrider_signing::DeltaFormat;

/// Largest base or new build this crate handles (1 GiB); far above any agent
/// library, low enough that a declared size cannot ask for absurd memory.
pub const MAX_SIZE: u64 = 1 << 30;

/// zstd level for patches: publishing is rare and offline, downloads are not.
pub const LEVEL: i32 = 19;

/// Largest zstd window for `bsdiff-zstd` patches (2^20 = 1 MiB). bsdiff has
/// already taken care of long-range matches, so the window only serves the
/// local redundancy of the diff stream: on two real agent-lib builds
/// (docs/benchmarks.md) 2^23 and 2^20 gave the same patch size to the byte and
/// 2^17 a smaller one, while every window byte is client memory when applying.
pub const BSDIFF_MAX_WINDOW_LOG: u32 = 20;

/// zstd's message when a frame's window exceeds `WindowLogMax`.
const WINDOW_TOO_LARGE: &str = "Frame requires too much memory for decoding";

/// Formats this build can make and apply, and the order [`create_smallest`]
/// prefers them in on a tie.
pub const SUPPORTED: [DeltaFormat; 3] = [
    DeltaFormat::BsdiffZstd,
    DeltaFormat::ZstdPatchFrom,
    DeltaFormat::ElfX86BsdiffZstd,
];

/// The formats every released client can apply: those of the first release
/// with deltas. A manifest's `deltas` map offers only these, so clients that
/// predate a newer format still find a delta they know
/// (`outrider_signing::Target::more_deltas`).
pub const FIRST_FORMATS: [DeltaFormat; 2] = [DeltaFormat::BsdiffZstd, DeltaFormat::ZstdPatchFrom];

/// Makes a patch from `base` to `new` in `format`, already compressed (the
/// blob as stored and served).
///
/// The patch is applied once before it is returned and must reproduce `new`.
///
/// # Errors
///
/// [`DeltaError::UnknownFormat`] for a format this build cannot make,
/// [`DeltaError::TooLarge`] if an input exceeds [`MAX_SIZE`],
/// [`DeltaError::Compress`] / [`DeltaError::Diff`] if zstd or bsdiff fail, and
/// [`DeltaError::SelfCheck`] if the patch does not round-trip.
pub fn create(format: DeltaFormat, base: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    for len in [base.len(), new.len()] {
        check_size(format, len as u64)?;
    }
    let blob = match format {
        DeltaFormat::BsdiffZstd => bsdiff_zstd::create(format, base, new, BSDIFF_MAX_WINDOW_LOG)?,
        DeltaFormat::ZstdPatchFrom => patch_from::create(base, new)?,
        DeltaFormat::ElfX86BsdiffZstd => exec::create(base, new)?,
        DeltaFormat::Unknown => return Err(DeltaError::UnknownFormat(format)),
    };
    match apply(format, base, &blob, new.len() as u64) {
        Ok(out) if out == new => Ok(blob),
        Ok(_) => Err(DeltaError::SelfCheck {
            format,
            source: None,
        }),
        Err(e) => Err(DeltaError::SelfCheck {
            format,
            source: Some(Box::new(e)),
        }),
    }
}

/// Makes each of `formats` and returns the smallest as `(format, blob)`.
///
/// The caller keeps it only if it is smaller than the zstd-compressed full
/// build. A format that does not apply to these builds
/// ([`DeltaError::NotApplicable`], e.g. `elf-x86-64-bsdiff-zstd` for
/// anything but an x86-64 ELF file) is skipped.
///
/// Only size decides: `bsdiff-zstd` is also the format that is cheapest to
/// apply (base + ≈ 1.5 MiB through [`apply_to`], against base + ≈ new for
/// `zstd-patch-from` and base + label tables + ≈ 0.5 MiB for
/// `elf-x86-64-bsdiff-zstd`; see the crate docs), and earlier formats win a
/// tie, but a smaller blob in another format still wins.
///
/// # Errors
///
/// As [`create`], for whichever format fails first other than by not
/// applying; [`DeltaError::NotApplicable`] if none of `formats` applies.
pub fn create_smallest(
    formats: &[DeltaFormat],
    base: &[u8],
    new: &[u8],
) -> Result<(DeltaFormat, Vec<u8>), DeltaError> {
    let mut best: Option<(DeltaFormat, Vec<u8>)> = None;
    let mut skipped = None;
    for &format in formats {
        let blob = match create(format, base, new) {
            Ok(blob) => blob,
            Err(e) if skips(&e) => {
                skipped = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if best.as_ref().is_none_or(|(_, b)| blob.len() < b.len()) {
            best = Some((format, blob));
        }
    }
    best.ok_or_else(|| {
        skipped.unwrap_or(DeltaError::NotApplicable {
            format: DeltaFormat::Unknown,
            reason: "no delta format was asked for",
        })
    })
}

/// Whether [`create_smallest`] goes on without a format that failed with
/// `error`: only when the format does not apply to the inputs. Every other
/// failure (a self-check that did not round-trip, zstd failing) is a bug or
/// a broken machine the publisher must see.
fn skips(error: &DeltaError) -> bool {
    matches!(error, DeltaError::NotApplicable { .. })
}

/// Applies a patch blob to `base`, producing exactly `new_size` bytes.
///
/// [`apply_to`] into a `Vec` of capacity `new_size`: memory is that of
/// [`apply_to`] plus the output (≈ 2.2× the build for `bsdiff-zstd`, ≈ 3.1×
/// for `zstd-patch-from`, whose decoder window is another copy of the build;
/// docs/benchmarks.md). Prefer [`apply_to`] where the output goes to a file
/// anyway.
///
/// # Errors
///
/// As [`apply_to`], except that there is no writer to fail; also
/// [`DeltaError::TooLarge`] (`what = "output"`) if `new_size` bytes cannot be
/// allocated.
pub fn apply(
    format: DeltaFormat,
    base: &[u8],
    patch: &[u8],
    new_size: u64,
) -> Result<Vec<u8>, DeltaError> {
    let capacity = check_inputs(format, base, new_size)?;
    let mut out = Vec::new();
    out.try_reserve_exact(capacity)
        .map_err(|_| DeltaError::TooLarge {
            format,
            what: "output",
            limit: new_size,
        })?;
    // The bound inside `apply_to` keeps `out` within its capacity.
    apply_to(format, base, patch, new_size, &mut out)?;
    Ok(out)
}

/// Applies a patch blob to `base`, writing exactly `new_size` bytes to `out`
/// as they are produced (no output buffer for bsdiff-zstd: memory is the
/// base, the patch, the zstd window and a small chunk). Same errors as
/// `apply`; on error `out` may have received a prefix — the caller discards
/// it.
///
/// Writes are at most 64 KiB but can be a few bytes each (one per bsdiff
/// control entry), so give a file a `BufWriter`; `out` is flushed at the end.
/// Memory is bounded by the declared sizes (see the crate docs); the
/// result's hash is for the caller to check, e.g. with a hashing writer.
///
/// # Errors
///
/// [`DeltaError::UnknownFormat`] for [`DeltaFormat::Unknown`];
/// [`DeltaError::TooLarge`] if `new_size` or `base` exceed [`MAX_SIZE`] or the
/// patch asks for more output, window or control entries than the sizes
/// allow; [`DeltaError::Corrupt`] for a malformed or truncated patch;
/// [`DeltaError::UnsupportedVersion`] for a patch in a layout of its format
/// that this build does not read;
/// [`DeltaError::WrongSize`] if it produces fewer than `new_size` bytes;
/// [`DeltaError::Write`] if writing to or flushing `out` fails.
pub fn apply_to(
    format: DeltaFormat,
    base: &[u8],
    patch: &[u8],
    new_size: u64,
    out: &mut dyn Write,
) -> Result<(), DeltaError> {
    let new_size = check_inputs(format, base, new_size)?;
    let mut output = Output::new(format, out, new_size);
    match format {
        DeltaFormat::BsdiffZstd => {
            bsdiff_zstd::apply(format, base, patch, &mut output, BSDIFF_MAX_WINDOW_LOG)?
        }
        DeltaFormat::ZstdPatchFrom => patch_from::apply(base, patch, &mut output)?,
        DeltaFormat::ElfX86BsdiffZstd => exec::apply(base, patch, &mut output)?,
        DeltaFormat::Unknown => return Err(DeltaError::UnknownFormat(format)),
    }
    output.finish()
}

/// zstd window log for a `bsdiff-zstd` patch of a build of `new_size` bytes:
/// enough for the largest well-formed patch stream (`new_size` data bytes plus
/// 24 bytes for each of at most `new_size + 1` control entries), capped at
/// [`BSDIFF_MAX_WINDOW_LOG`].
pub fn bsdiff_window_log(new_size: u64) -> u32 {
    let stream_bound = new_size.saturating_mul(25).saturating_add(24);
    ceil_log2(stream_bound).min(BSDIFF_MAX_WINDOW_LOG)
}

/// zstd window log for `zstd-patch-from`: the last byte of the new build may
/// refer to the first byte of the base, so the window spans both.
pub fn patch_from_window_log(base_len: u64, new_size: u64) -> u32 {
    ceil_log2(base_len.saturating_add(new_size))
}

/// Compresses `src` as one zstd frame at [`LEVEL`] with its content size,
/// `window_log`, optional long-distance matching, and `prefix` (if not empty)
/// as raw-content reference prefix.
fn compress(
    format: DeltaFormat,
    src: &[u8],
    prefix: &[u8],
    window_log: u32,
    long_distance: bool,
) -> Result<Vec<u8>, DeltaError> {
    use zstd::zstd_safe::{self, CCtx, CParameter};
    let err = |code| DeltaError::Compress {
        format,
        reason: zstd_safe::get_error_name(code).to_owned(),
    };
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(LEVEL))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log))
        .map_err(err)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(long_distance))
        .map_err(err)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(err)?;
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).map_err(err)?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(src.len()));
    cctx.compress2(&mut out, src).map_err(err)?;
    Ok(out)
}

/// `ceil(log2(n))`, clamped to zstd's window range (2^10 ..= 2^31).
fn ceil_log2(n: u64) -> u32 {
    let log = u64::BITS - n.saturating_sub(1).leading_zeros();
    log.clamp(10, 31)
}

/// Refuses an unknown format and sizes above [`MAX_SIZE`] before anything
/// is allocated; returns `new_size`.
fn check_inputs(format: DeltaFormat, base: &[u8], new_size: u64) -> Result<usize, DeltaError> {
    if format == DeltaFormat::Unknown {
        return Err(DeltaError::UnknownFormat(format));
    }
    check_size(format, base.len() as u64)?;
    check_size(format, new_size)
}

fn check_size(format: DeltaFormat, size: u64) -> Result<usize, DeltaError> {
    if size > MAX_SIZE {
        return Err(DeltaError::TooLarge {
            format,
            what: "input",
            limit: MAX_SIZE,
        });
    }
    // MAX_SIZE (1 GiB) fits in usize on every platform we build for.
    usize::try_from(size).map_err(|_| DeltaError::TooLarge {
        format,
        what: "input",
        limit: MAX_SIZE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_log2_clamps_to_zstd_range() {
        assert_eq!(ceil_log2(0), 10);
        assert_eq!(ceil_log2(1024), 10);
        assert_eq!(ceil_log2(1025), 11);
        assert_eq!(ceil_log2(1 << 20), 20);
        assert_eq!(ceil_log2((1 << 20) + 1), 21);
        assert_eq!(ceil_log2(u64::MAX), 31);
    }

    #[test]
    fn windows_follow_declared_sizes() {
        assert_eq!(bsdiff_window_log(100), 12); // 2524 bytes of stream at most
        assert_eq!(bsdiff_window_log(17 << 20), BSDIFF_MAX_WINDOW_LOG);
        assert_eq!(patch_from_window_log(17 << 20, 17 << 20), 26);
    }

    #[test]
    fn sizes_above_max_are_refused_before_anything_is_allocated() {
        let err = apply(DeltaFormat::BsdiffZstd, b"", b"", MAX_SIZE + 1).unwrap_err();
        assert!(
            matches!(err, DeltaError::TooLarge { what: "input", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn only_a_format_that_does_not_apply_is_skipped() {
        let format = DeltaFormat::ElfX86BsdiffZstd;
        let io = || std::io::Error::other("disk");
        let table: [(DeltaError, bool); 7] = [
            (
                DeltaError::NotApplicable {
                    format,
                    reason: "not an ELF file",
                },
                true,
            ),
            (
                DeltaError::SelfCheck {
                    format,
                    source: None,
                },
                false,
            ),
            (
                DeltaError::Compress {
                    format,
                    reason: "x".into(),
                },
                false,
            ),
            (
                DeltaError::Diff {
                    format,
                    source: io(),
                },
                false,
            ),
            (
                DeltaError::TooLarge {
                    format,
                    what: "input",
                    limit: 1,
                },
                false,
            ),
            (DeltaError::UnknownFormat(DeltaFormat::Unknown), false),
            (
                DeltaError::Corrupt {
                    format,
                    reason: "x".into(),
                },
                false,
            ),
        ];
        for (error, expected) in table {
            assert_eq!(skips(&error), expected, "{error:?}");
        }
    }

    #[test]
    fn create_smallest_skips_the_elf_format_for_other_files() {
        let base = b"not an executable, just some bytes".repeat(20);
        let mut new = base.clone();
        new[7] = b'X';
        let (format, _) = create_smallest(&SUPPORTED, &base, &new).unwrap();
        assert_ne!(format, DeltaFormat::ElfX86BsdiffZstd);
        let err = create_smallest(&[DeltaFormat::ElfX86BsdiffZstd], &base, &new).unwrap_err();
        assert!(matches!(err, DeltaError::NotApplicable { .. }), "{err:?}");
    }

    #[test]
    fn unknown_format_is_refused() {
        assert!(matches!(
            apply(DeltaFormat::Unknown, b"a", b"b", 1),
            Err(DeltaError::UnknownFormat(DeltaFormat::Unknown))
        ));
        assert!(matches!(
            create(DeltaFormat::Unknown, b"a", b"b"),
            Err(DeltaError::UnknownFormat(DeltaFormat::Unknown))
        ));
    }
}
