//! Writing a library to its destination while hashing it.
//!
//! The bytes go through a [`HashingFile`] (buffered file + SHA-256 + byte
//! count); only a file whose size and hash match the signed artifact is
//! fsynced and kept. Anything else is deleted before the error returns, so
//! a half-written or wrong library never survives at `dest`.

use std::io::{BufWriter, Write};
use std::path::Path;

use outrider_signing::{Artifact, Sha256};
use sha2::Digest;

use crate::UpdateError;

/// A file being written, with its running hash and length.
struct HashingFile {
    file: BufWriter<std::fs::File>,
    hasher: sha2::Sha256,
    written: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Creates `dest`, lets `produce` write the library into it, and keeps the
/// file only if it is exactly `artifact.size` bytes hashing to
/// `artifact.sha256`; `what` names the bytes in a mismatch error.
pub(crate) fn write_verified(
    dest: &Path,
    artifact: &Artifact,
    what: &'static str,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), UpdateError>,
) -> Result<(), UpdateError> {
    let io = |action, source| UpdateError::Io {
        action,
        path: dest.to_owned(),
        source,
    };
    let file = std::fs::File::create(dest).map_err(|e| io("creating", e))?;
    let mut out = HashingFile {
        file: BufWriter::new(file),
        hasher: sha2::Sha256::new(),
        written: 0,
    };
    let result = produce(&mut out).and_then(|()| {
        let HashingFile {
            file,
            hasher,
            written,
        } = out;
        let file = file
            .into_inner()
            .map_err(|e| io("writing", e.into_error()))?;
        if written != artifact.size {
            return Err(UpdateError::Truncated {
                what,
                expected: artifact.size,
                got: written,
            });
        }
        let actual = Sha256::from_bytes(hasher.finalize().into());
        if actual != artifact.sha256 {
            return Err(UpdateError::HashMismatch {
                what,
                expected: artifact.sha256,
                actual,
            });
        }
        file.sync_all().map_err(|e| io("syncing", e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}
