//! `bsdiff-zstd`: a `bsdiff` crate patch stream, zstd-compressed.
//!
//! Applying does not use `bsdiff::patch`: that function appends to a `Vec`
//! as far as the patch says, so a hostile patch could grow the output (and
//! spin on empty control entries) as far as zstd can inflate. [`bspatch`]
//! reads the same stream but checks every control entry against the declared
//! output size and the base first; the tests check it against `bsdiff::patch`.
//! It also streams: diff bytes (base + delta) and extra bytes go to the
//! caller's writer in chunks as they are decoded, so no output is held.

use std::io::{self, BufReader, Read};

use crate::output::{CHUNK, Output};
use crate::{DeltaError, DeltaFormat, WINDOW_TOO_LARGE, bsdiff_window_log};

/// Makes the patch with a zstd window of 2^`window_log`, at most
/// [`bsdiff_window_log`] of the new build's size; `format` is the one named
/// in errors (`crate::exec` wraps this format, with a smaller window).
pub(crate) fn create(
    format: DeltaFormat,
    base: &[u8],
    new: &[u8],
    window_log: u32,
) -> Result<Vec<u8>, DeltaError> {
    let mut stream = Vec::with_capacity(new.len() + new.len() / 16 + 64);
    bsdiff::diff(base, new, &mut stream).map_err(|source| DeltaError::Diff { format, source })?;
    let window_log = window_log.min(bsdiff_window_log(new.len() as u64));
    crate::compress(format, &stream, &[], window_log, false)
}

/// What a patch is applied to: the base build's bytes, or a view of them
/// (`crate::exec` normalises the base as it is read instead of holding a
/// normalised copy).
pub(crate) trait Base {
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Copies `out.len()` bytes from `at` into `out`; the caller checked
    /// that they lie within [`Base::len`].
    fn read_into(&self, at: usize, out: &mut [u8]);
}

impl Base for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read_into(&self, at: usize, out: &mut [u8]) {
        out.copy_from_slice(&self[at..at + out.len()]);
    }
}

/// Streams the patched build into `out` (which bounds and counts it); the
/// memory is the zstd window (at most 2^`window_log`, as made by
/// [`create`]), a 64 KiB read buffer and two [`CHUNK`]s.
pub(crate) fn apply<B: Base + ?Sized>(
    format: DeltaFormat,
    base: &B,
    patch: &[u8],
    out: &mut Output<'_>,
    window_log: u32,
) -> Result<(), DeltaError> {
    let window_log = window_log.min(bsdiff_window_log(out.size() as u64));
    let mut decoder = zstd::stream::read::Decoder::with_buffer(patch)
        .map_err(|e| io_error(format, e, window_log))?;
    decoder
        .window_log_max(window_log)
        .map_err(|e| io_error(format, e, window_log))?;
    // Control entries are 24 bytes; buffer so they are not decoded piecemeal.
    let mut reader = BufReader::with_capacity(CHUNK, decoder);
    bspatch(format, base, &mut reader, out).map_err(|e| match e {
        Error::Delta(e) => e,
        Error::Io(e) => io_error(format, e, window_log),
    })
}

enum Error {
    Delta(DeltaError),
    Io(io::Error),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<DeltaError> for Error {
    fn from(e: DeltaError) -> Self {
        Error::Delta(e)
    }
}

fn corrupt(format: DeltaFormat, reason: &str) -> Error {
    Error::Delta(DeltaError::Corrupt {
        format,
        reason: reason.to_owned(),
    })
}

fn io_error(format: DeltaFormat, e: io::Error, window_log: u32) -> DeltaError {
    if e.to_string().contains(WINDOW_TOO_LARGE) {
        DeltaError::TooLarge {
            format,
            what: "zstd window",
            limit: 1 << window_log,
        }
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        DeltaError::Corrupt {
            format,
            reason: "truncated".to_owned(),
        }
    } else {
        DeltaError::Corrupt {
            format,
            reason: e.to_string(),
        }
    }
}

/// Applies a raw `bsdiff` patch stream into `out`, never producing more than
/// its declared size nor accepting more than size + 1 control entries (see
/// the crate docs for why that bound is sound). Output goes out in chunks of
/// at most [`CHUNK`] bytes as it is produced; nothing is kept.
fn bspatch<B: Base + ?Sized>(
    format: DeltaFormat,
    base: &B,
    patch: &mut impl Read,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut chunk = vec![0u8; CHUNK.min(out.size())];
    let mut old = vec![0u8; chunk.len()];
    let max_entries = out.size() as u64 + 1;
    let mut entries = 0u64;
    let mut base_pos = 0usize;
    let mut control = [0u8; 24];
    while read_control(format, patch, &mut control)? {
        entries += 1;
        if entries > max_entries {
            return Err(Error::Delta(DeltaError::TooLarge {
                format,
                what: "control entries",
                limit: max_entries,
            }));
        }
        let [mix_len, copy_len, seek] = [0, 8, 16].map(|at| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&control[at..at + 8]);
            u64::from_le_bytes(word)
        });
        // Checked up front so an oversized entry fails before any of it is
        // written; `out` would refuse it chunk by chunk anyway.
        let room = out.room() as u64;
        if mix_len > room || copy_len > room - mix_len {
            return Err(out.too_large().into());
        }
        // Both are ≤ room ≤ the declared size, a usize.
        let (mix_len, copy_len) = (mix_len as usize, copy_len as usize);
        if base_pos
            .checked_add(mix_len)
            .is_none_or(|end| end > base.len())
        {
            return Err(corrupt(
                format,
                "a control entry reads past the end of the base",
            ));
        }
        // Every piece is ≤ mix_len or copy_len ≤ the declared size, and
        // ≤ CHUNK, so it fits `chunk` and `old`.
        let mut done = 0;
        while done < mix_len {
            let len = (mix_len - done).min(CHUNK);
            let (diff, old) = (&mut chunk[..len], &mut old[..len]);
            patch.read_exact(diff)?;
            base.read_into(base_pos + done, old);
            for (n, o) in diff.iter_mut().zip(old.iter()) {
                *n = n.wrapping_add(*o);
            }
            out.write(diff)?;
            done += len;
        }
        let mut left = copy_len;
        while left > 0 {
            let extra = &mut chunk[..left.min(CHUNK)];
            patch.read_exact(extra)?;
            out.write(extra)?;
            left -= extra.len();
        }
        // Sign-magnitude, as bsdiff writes it.
        let magnitude =
            i64::try_from(seek & !(1 << 63)).map_err(|_| corrupt(format, "bad seek"))?;
        let seek = if seek >> 63 == 1 {
            -magnitude
        } else {
            magnitude
        };
        base_pos = i64::try_from(base_pos + mix_len)
            .ok()
            .and_then(|pos| pos.checked_add(seek))
            .and_then(|pos| usize::try_from(pos).ok())
            .ok_or_else(|| corrupt(format, "a control entry seeks before the start of the base"))?;
    }
    Ok(())
}

/// Reads one 24-byte control entry; `false` on a clean end of the stream.
fn read_control(
    format: DeltaFormat,
    patch: &mut impl Read,
    control: &mut [u8; 24],
) -> Result<bool, Error> {
    let mut filled = 0;
    while filled < control.len() {
        match patch.read(&mut control[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(corrupt(format, "truncated control entry")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: DeltaFormat = DeltaFormat::BsdiffZstd;

    fn entry(mix: u64, copy: u64, seek: i64) -> Vec<u8> {
        let seek = if seek < 0 {
            seek.unsigned_abs() | 1 << 63
        } else {
            seek as u64
        };
        [mix, copy, seek]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    fn run(base: &[u8], stream: &[u8], new_size: usize) -> Result<Vec<u8>, DeltaError> {
        let mut sink = Vec::new();
        let mut out = Output::new(FORMAT, &mut sink, new_size);
        bspatch(FORMAT, base, &mut &stream[..], &mut out).map_err(|e| match e {
            Error::Delta(e) => e,
            Error::Io(e) => io_error(FORMAT, e, 20),
        })?;
        out.finish()?;
        Ok(sink)
    }

    #[test]
    fn matches_bsdiff_patch_on_a_real_diff() {
        let base: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = base.clone();
        new[100..110].copy_from_slice(b"0123456789");
        new.extend_from_slice(b"tail");
        let mut stream = Vec::new();
        bsdiff::diff(&base, &new, &mut stream).unwrap();
        let mut reference = Vec::new();
        bsdiff::patch(&base, &mut &stream[..], &mut reference).unwrap();
        assert_eq!(reference, new);
        assert_eq!(run(&base, &stream, new.len()).unwrap(), new);
    }

    #[test]
    fn entries_longer_than_a_chunk_stream_in_chunks() {
        /// Records the largest single write.
        struct Largest(Vec<u8>, usize);
        impl io::Write for Largest {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.1 = self.1.max(buf.len());
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mix, copy) = (3 * CHUNK + 5, CHUNK + 1);
        let base: Vec<u8> = (0..mix).map(|i| (i % 251) as u8).collect();
        let stream = [
            entry(mix as u64, copy as u64, 0),
            vec![1; mix],
            vec![7; copy],
        ]
        .concat();
        let mut sink = Largest(Vec::new(), 0);
        let mut out = Output::new(FORMAT, &mut sink, mix + copy);
        assert!(bspatch(FORMAT, &base[..], &mut &stream[..], &mut out).is_ok());
        out.finish().unwrap();
        let expected: Vec<u8> = base.iter().map(|b| b + 1).chain(vec![7; copy]).collect();
        assert!(sink.0 == expected);
        assert_eq!(sink.1, CHUNK);
    }

    #[test]
    fn negative_seek_is_honoured() {
        // Copy "ab" from base[0..2], seek back 2, mix them again: "abab".
        let stream = [entry(2, 0, -2), vec![0, 0], entry(2, 0, 0), vec![0, 0]].concat();
        assert_eq!(run(b"ab", &stream, 4).unwrap(), b"abab");
    }

    #[test]
    fn entries_beyond_the_output_are_too_large() {
        let stream = entry(0, 1 << 40, 0);
        let err = run(b"", &stream, 10).unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::TooLarge {
                    what: "output",
                    limit: 10,
                    ..
                }
            ),
            "{err:?}"
        );
        let stream = entry(u64::MAX, u64::MAX, 0);
        assert!(matches!(
            run(b"", &stream, 10),
            Err(DeltaError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_flood_of_empty_entries_is_too_large() {
        let stream = entry(0, 0, 0).repeat(12);
        let err = run(b"", &stream, 10).unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::TooLarge {
                    what: "control entries",
                    limit: 11,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn reading_past_the_base_or_seeking_before_it_is_corrupt() {
        let past_end = [entry(3, 0, 0), vec![0; 3]].concat();
        assert!(matches!(
            run(b"ab", &past_end, 3),
            Err(DeltaError::Corrupt { .. })
        ));
        let before_start = [entry(0, 0, -1), entry(1, 0, 0), vec![0]].concat();
        assert!(matches!(
            run(b"ab", &before_start, 1),
            Err(DeltaError::Corrupt { .. })
        ));
        let huge_seek = [entry(0, 0, i64::MAX), entry(1, 0, 0), vec![0]].concat();
        assert!(matches!(
            run(b"ab", &huge_seek, 1),
            Err(DeltaError::Corrupt { .. })
        ));
    }

    #[test]
    fn truncation_is_corrupt() {
        let stream = [entry(0, 4, 0), b"ab".to_vec()].concat();
        assert!(matches!(
            run(b"", &stream, 4),
            Err(DeltaError::Corrupt { .. })
        ));
        assert!(matches!(
            run(b"", &stream[..10], 4),
            Err(DeltaError::Corrupt { .. })
        ));
    }
}
