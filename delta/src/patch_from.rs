//! `zstd-patch-from`: the new build as one zstd frame whose matches may
//! refer to the base build, loaded as a raw-content reference prefix.
//!
//! Applying decompresses in one shot straight into an output buffer of
//! exactly `new_size` bytes, so zstd allocates no window buffer of its own:
//! the memory is the output plus a decoder context (~100 KiB). The decoder's
//! `WindowLogMax` is still set to what the declared sizes need, so a frame
//! asking for a larger window is refused rather than trusted.

use zstd::zstd_safe::{self, DCtx, DParameter};

use crate::{DeltaError, DeltaFormat, patch_from_window_log};

const FORMAT: DeltaFormat = DeltaFormat::ZstdPatchFrom;

/// zstd's message when the output would not fit the buffer given.
const DST_TOO_SMALL: &str = "Destination buffer is too small";

pub(crate) fn create(base: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let window_log = patch_from_window_log(base.len() as u64, new.len() as u64);
    crate::compress(FORMAT, new, base, window_log, true)
}

pub(crate) fn apply(base: &[u8], patch: &[u8], new_size: usize) -> Result<Vec<u8>, DeltaError> {
    let too_large = || DeltaError::TooLarge {
        format: FORMAT,
        what: "output",
        limit: new_size as u64,
    };
    let corrupt = |reason: &str| DeltaError::Corrupt {
        format: FORMAT,
        reason: reason.to_owned(),
    };
    match zstd_safe::get_frame_content_size(patch) {
        Ok(Some(declared)) if declared > new_size as u64 => return Err(too_large()),
        Ok(_) => {}
        Err(_) => return Err(corrupt("not a zstd frame")),
    }
    let zstd_error = |code| corrupt(zstd_safe::get_error_name(code));
    let mut dctx = DCtx::create();
    let window_log = patch_from_window_log(base.len() as u64, new_size as u64);
    dctx.set_parameter(DParameter::WindowLogMax(window_log))
        .map_err(zstd_error)?;
    dctx.ref_prefix(base).map_err(zstd_error)?;
    let mut out = Vec::new();
    out.try_reserve_exact(new_size).map_err(|_| too_large())?;
    // Writes at most `out.capacity()` bytes: the output cap.
    dctx.decompress(&mut out, patch).map_err(|code| {
        if zstd_safe::get_error_name(code) == DST_TOO_SMALL {
            too_large()
        } else {
            zstd_error(code)
        }
    })?;
    Ok(out)
}
