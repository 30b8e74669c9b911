//! `outrider-update-server`: the release repository the server mounts.
//!
//! [`ReleaseStore`] keeps the update root, per-channel signed manifests
//! (with history) and content-addressed zstd blobs in one directory;
//! [`public_router`] serves them read-only and cacheable under
//! `/v1/updates/`, [`admin_router`] accepts uploads under
//! `/api/v1/releases/`. The store never signs: the operator's CLI signs with
//! offline keys and the store only verifies before accepting.

pub mod artefacts;
mod directory;
mod error;
mod routes;
mod store;

pub use artefacts::{ArtefactStore, BlobCaps, BlobStream, GcReport};
pub use error::Error;
pub use routes::{admin_router, public_router};
pub use store::{
    BuildInfo, ChannelInfo, MAX_BLOB_BYTES, ManifestHook, ReleaseStore, decode_manifest,
};
