//! The output side of applying: a writer that refuses to exceed the declared
//! size and counts what went through, so both formats stream into the
//! caller's writer under the same bound.

use std::io::Write;

use crate::{DeltaError, DeltaFormat};

/// Size of the chunks output is produced and written in (64 KiB).
pub(crate) const CHUNK: usize = 64 * 1024;

/// Forwards to the caller's writer at most `size` bytes in total.
pub(crate) struct Output<'a> {
    format: DeltaFormat,
    out: &'a mut dyn Write,
    size: usize,
    written: usize,
}

impl<'a> Output<'a> {
    pub(crate) fn new(format: DeltaFormat, out: &'a mut dyn Write, size: usize) -> Self {
        Output {
            format,
            out,
            size,
            written: 0,
        }
    }

    /// The declared output size.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Bytes that may still be written.
    pub(crate) fn room(&self) -> usize {
        self.size - self.written
    }

    /// The error for output beyond the declared size.
    pub(crate) fn too_large(&self) -> DeltaError {
        DeltaError::TooLarge {
            format: self.format,
            what: "output",
            limit: self.size as u64,
        }
    }

    /// Writes all of `buf`, or nothing if it would go past the declared size.
    ///
    /// # Errors
    ///
    /// [`DeltaError::TooLarge`] (`what = "output"`) past the declared size,
    /// [`DeltaError::Write`] if the caller's writer fails.
    pub(crate) fn write(&mut self, buf: &[u8]) -> Result<(), DeltaError> {
        if buf.len() > self.room() {
            return Err(self.too_large());
        }
        self.out
            .write_all(buf)
            .map_err(|source| DeltaError::Write {
                format: self.format,
                source,
            })?;
        self.written += buf.len();
        Ok(())
    }

    /// Checks that exactly the declared size was written and flushes the
    /// caller's writer, so a buffered write error is reported here.
    ///
    /// # Errors
    ///
    /// [`DeltaError::WrongSize`] if fewer bytes were written,
    /// [`DeltaError::Write`] if flushing fails.
    pub(crate) fn finish(self) -> Result<(), DeltaError> {
        if self.written != self.size {
            return Err(DeltaError::WrongSize {
                format: self.format,
                expected: self.size as u64,
                got: self.written as u64,
            });
        }
        self.out.flush().map_err(|source| DeltaError::Write {
            format: self.format,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: DeltaFormat = DeltaFormat::BsdiffZstd;

    #[test]
    fn refuses_a_write_past_the_size_and_writes_none_of_it() {
        let mut sink = Vec::new();
        let mut out = Output::new(FORMAT, &mut sink, 4);
        out.write(b"abc").unwrap();
        let err = out.write(b"de").unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::TooLarge {
                    what: "output",
                    limit: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        out.write(b"d").unwrap();
        out.finish().unwrap();
        assert_eq!(sink, b"abcd");
    }

    #[test]
    fn finishing_short_is_wrong_size() {
        let mut sink = Vec::new();
        let mut out = Output::new(FORMAT, &mut sink, 4);
        out.write(b"ab").unwrap();
        let err = out.finish().unwrap_err();
        assert!(
            matches!(
                err,
                DeltaError::WrongSize {
                    expected: 4,
                    got: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
