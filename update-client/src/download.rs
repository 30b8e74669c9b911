//! Capped, resumable, hash-checked downloads.
//!
//! A blob is streamed into `downloads/<sha256>.part`. A later attempt
//! resumes from the part's length with a Range request; a source that
//! ignores the range sends everything again and the part is restarted. The
//! stream is cut one byte past the declared size (endless-data attack), and
//! the complete file must hash to the expected value before its bytes are
//! returned; a mismatching part is deleted so a poisoned prefix is never
//! resumed.

use std::io::{Read, Write};
use std::path::Path;

use outrider_signing::Sha256;

use crate::transport::Transport;
use crate::{UpdateError, check_hash};

const CHUNK: usize = 64 * 1024;

/// Fetches a small document whole, refusing more than `limit` bytes.
pub(crate) fn small(
    transport: &impl Transport,
    path: &str,
    limit: u64,
    what: &'static str,
) -> Result<Option<Vec<u8>>, UpdateError> {
    let Some(body) = transport.open(path, 0)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    body.reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| UpdateError::Transport {
            url: transport.locate(path),
            reason: e.to_string(),
        })?;
    if bytes.len() as u64 > limit {
        return Err(UpdateError::TooLarge { what, limit });
    }
    Ok(Some(bytes))
}

/// Fetches `blobs/<sha256>` of exactly `size` bytes, resuming a previous
/// partial download, and returns its verified bytes.
pub(crate) fn blob(
    transport: &impl Transport,
    downloads: &Path,
    sha256: &Sha256,
    size: u64,
    what: &'static str,
) -> Result<Vec<u8>, UpdateError> {
    std::fs::create_dir_all(downloads).map_err(|source| UpdateError::Io {
        action: "creating",
        path: downloads.to_owned(),
        source,
    })?;
    let part = downloads.join(format!("{sha256}.part"));
    let io = |action, source| UpdateError::Io {
        action,
        path: part.clone(),
        source,
    };
    let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    if have < size {
        let path = format!("blobs/{sha256}");
        let body = transport
            .open(&path, have)?
            .ok_or(UpdateError::MissingBlob {
                what,
                sha256: *sha256,
            })?;
        if body.start != have {
            have = 0;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(have == 0)
            .append(have > 0)
            .open(&part)
            .map_err(|e| io("opening", e))?;
        // Read at most one byte past what is missing, to detect endless data.
        let mut reader = body.reader.take(size - have + 1);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // A signal arrived mid-read (EINTR): nothing failed, read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Keep what arrived: the next attempt resumes from it.
                    let _ = file.flush();
                    return Err(UpdateError::Transport {
                        url: transport.locate(&path),
                        reason: e.to_string(),
                    });
                }
            };
            if have + n as u64 > size {
                drop(file);
                let _ = std::fs::remove_file(&part);
                return Err(UpdateError::TooLarge { what, limit: size });
            }
            file.write_all(&buf[..n]).map_err(|e| io("writing", e))?;
            have += n as u64;
        }
        file.flush().map_err(|e| io("writing", e))?;
        if have < size {
            return Err(UpdateError::Truncated {
                what,
                expected: size,
                got: have,
            });
        }
    }
    let bytes = std::fs::read(&part).map_err(|e| io("reading", e))?;
    // Verified or not, the part is done: a poisoned prefix is never resumed.
    let _ = std::fs::remove_file(&part);
    check_hash(what, sha256, &bytes).map(|()| bytes)
}
