//! `zstd-patch-from`: the new build as one zstd frame whose matches may
//! refer to the base build, loaded as a raw-content reference prefix.
//!
//! Applying decodes as a stream into the caller's writer, in chunks of
//! [`CHUNK`] bytes. zstd's streaming decoder keeps its own window buffer of
//! min(window, frame content size) — about the size of the new build, since
//! a match near the end may reach back to the start — so this format cannot
//! be applied in less than base + new (≈ 2× the library) whatever the writer.
//! The decoder's `WindowLogMax` is set to what the declared sizes need, so a
//! frame asking for a larger window is refused rather than trusted, and a
//! frame that declares a content size above the declared output is refused
//! before anything is decoded.

use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer};

use crate::output::{CHUNK, Output};
use crate::{DeltaError, DeltaFormat, WINDOW_TOO_LARGE, patch_from_window_log};

const FORMAT: DeltaFormat = DeltaFormat::ZstdPatchFrom;

pub(crate) fn create(base: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let window_log = patch_from_window_log(base.len() as u64, new.len() as u64);
    crate::compress(FORMAT, new, base, window_log, true)
}

pub(crate) fn apply(base: &[u8], patch: &[u8], out: &mut Output<'_>) -> Result<(), DeltaError> {
    let corrupt = |reason: &str| DeltaError::Corrupt {
        format: FORMAT,
        reason: reason.to_owned(),
    };
    match zstd_safe::get_frame_content_size(patch) {
        Ok(Some(declared)) if declared > out.size() as u64 => return Err(out.too_large()),
        Ok(_) => {}
        Err(_) => return Err(corrupt("not a zstd frame")),
    }
    let window_log = patch_from_window_log(base.len() as u64, out.size() as u64);
    let zstd_error = |code| {
        let name = zstd_safe::get_error_name(code);
        if name == WINDOW_TOO_LARGE {
            DeltaError::TooLarge {
                format: FORMAT,
                what: "zstd window",
                limit: 1 << window_log,
            }
        } else {
            corrupt(name)
        }
    };
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(window_log))
        .map_err(zstd_error)?;
    dctx.ref_prefix(base).map_err(zstd_error)?;
    let mut chunk = vec![0u8; CHUNK];
    let mut input = InBuffer::around(patch);
    loop {
        let mut output = OutBuffer::around(&mut chunk[..]);
        let remaining = dctx
            .decompress_stream(&mut output, &mut input)
            .map_err(zstd_error)?;
        let produced = output.pos();
        out.write(&chunk[..produced])?;
        if remaining == 0 {
            break; // The frame is decoded and flushed.
        }
        // zstd flushes all it can whenever the output is not full, so a
        // partly filled chunk with all input consumed is a truncated frame.
        if produced < CHUNK && input.pos() == patch.len() {
            return Err(corrupt("truncated"));
        }
    }
    if input.pos() != patch.len() {
        return Err(corrupt("trailing bytes after the zstd frame"));
    }
    Ok(())
}
