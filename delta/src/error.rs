//! The one error type of this crate.

use outrider_signing::DeltaFormat;

/// Why a patch could not be made or applied.
///
/// Every outcome a caller must tell apart is its own variant; in particular a
/// hostile patch ends in [`DeltaError::TooLarge`], [`DeltaError::Corrupt`] or
/// [`DeltaError::WrongSize`], never in a panic or an unbounded allocation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The format is not one this build can make or apply (e.g.
    /// [`DeltaFormat::Unknown`] from a newer manifest); take the full artifact.
    #[error("delta format {0:?} is not supported by this build; use the full artifact")]
    UnknownFormat(DeltaFormat),
    /// A declared size, or what the patch asks for, exceeds a hard limit.
    #[error("{format:?} patch exceeds the limit on {what} ({limit} bytes)")]
    TooLarge {
        /// Format of the patch.
        format: DeltaFormat,
        /// Which limit: "output", "zstd window", "control entries", "input".
        what: &'static str,
        /// The limit that was hit, in bytes (or entries for "control entries").
        limit: u64,
    },
    /// The patch applied cleanly but produced a different size than declared.
    #[error("{format:?} patch produced {got} bytes, but {expected} were declared")]
    WrongSize {
        /// Format of the patch.
        format: DeltaFormat,
        /// Size declared by the caller (the manifest).
        expected: u64,
        /// Size actually produced.
        got: u64,
    },
    /// The patch is malformed: bad zstd frame, truncated, or out-of-bounds
    /// bsdiff control values.
    #[error("{format:?} patch is corrupt: {reason}")]
    Corrupt {
        /// Format of the patch.
        format: DeltaFormat,
        /// What was wrong, for the log.
        reason: String,
    },
    /// The patch is in a layout version of its format that this build does
    /// not read: made by an older or newer build. It is not applied; take
    /// another delta or the full artifact.
    #[error(
        "{format:?} patch has layout version {found}, this build reads version {supported}; use the full artifact"
    )]
    UnsupportedVersion {
        /// Format of the patch.
        format: DeltaFormat,
        /// Version the patch has.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// The inputs are not what the format handles: for
    /// `elf-x86-64-bsdiff-zstd`, a base or new build that is not an x86-64
    /// ELF file with a layout the normalisation can rebuild exactly. When
    /// making patches another format is taken; when applying, the full build.
    #[error("{format:?} does not apply to these builds: {reason}")]
    NotApplicable {
        /// Format of the patch.
        format: DeltaFormat,
        /// What is wrong with the input, for the log.
        reason: &'static str,
    },
    /// zstd compression failed while making a patch.
    #[error("compressing the {format:?} patch failed: {reason}")]
    Compress {
        /// Format being made.
        format: DeltaFormat,
        /// zstd's error name.
        reason: String,
    },
    /// bsdiff failed while making a patch (only I/O into a `Vec`, so in
    /// practice never).
    #[error("making the {format:?} patch failed")]
    Diff {
        /// Format being made.
        format: DeltaFormat,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A patch just made did not reproduce the new build when applied; a bug
    /// in this crate or its dependencies, never shipped.
    #[error("the {format:?} patch just made does not reproduce the new build")]
    SelfCheck {
        /// Format being made.
        format: DeltaFormat,
        /// What applying it returned, if it failed.
        #[source]
        source: Option<Box<DeltaError>>,
    },
    /// The caller's writer failed while [`crate::apply_to`] was writing the
    /// output (disk full, closed pipe, …); says nothing about the patch.
    #[error("writing the output of the {format:?} patch failed")]
    Write {
        /// Format of the patch.
        format: DeltaFormat,
        /// The writer's error.
        #[source]
        source: std::io::Error,
    },
}
