//! HTTP routes of the release repository.
//!
//! Public, unauthenticated, cacheable (a static CDN can serve the same tree):
//! - `GET /v1/updates/root.json` — current root envelope
//! - `GET /v1/updates/roots/{version}.json` — every root version, for clients
//!   walking the chain; immutable (404 for a version not stored)
//! - `GET /v1/updates/channels/{channel}/manifest.json` — current manifest, `no-cache`
//! - `GET /v1/updates/blobs/{sha256}` — blob, immutable, streamed from the store;
//!   `ETag: "<sha256>"` (`If-None-Match` → 304), `Accept-Ranges: bytes`, one
//!   `Range` (`a-b`, `a-`, `-n`) → 206 with `Content-Range`, a range past the
//!   end → 416 with `Content-Range: bytes */<len>`; a multi-range request gets
//!   the whole blob with 200 (always a correct answer, and resuming clients
//!   ask for one range)
//!
//! Admin (the server mounts these behind its bearer-token layer):
//! - `PUT /api/v1/releases/root` — root envelope
//! - `PUT /api/v1/releases/blobs/{sha256}` — blob (up to [`MAX_BLOB_BYTES`]),
//!   streamed into the store, refused as soon as it passes the cap
//! - `PUT /api/v1/releases/channels/{channel}/manifest` — manifest envelope
//! - `GET /api/v1/releases/channels` — list of [`ChannelInfo`]
//! - `GET /api/v1/releases/channels/{channel}/builds?target=T&limit=N` — the
//!   distinct builds the channel offered for triple `T`, newest first, as
//!   [`BuildInfo`] (`limit` defaults to 10, at most [`MAX_BUILDS`])
//! - `GET /api/v1/releases/channels/{channel}/manifests?limit=N` — the
//!   channel's stored manifest envelopes, newest first, each as the exact
//!   uploaded text (a JSON array of strings; `limit` as for builds). This is
//!   what a signer verifies against its own root before taking an older
//!   build from it: the builds listing above is the server's word, unsigned.
//!
//! Errors are JSON `{"error": "<one sentence>"}`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use outrider_signing::{Channel, Sha256};
use serde::Deserialize;
use serde_json::json;

use crate::Error;
use crate::artefacts::ArtefactStore;
use crate::store::{BuildInfo, ChannelInfo};

/// Blobs are content-addressed, so they never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Most builds one `builds` request lists.
pub const MAX_BUILDS: usize = 100;
const DEFAULT_BUILDS: usize = 10;

/// The public read routes, on any [`ArtefactStore`]: the directory store
/// (`Arc<ReleaseStore>`) or one shared by several nodes, so that any node
/// answers any update request.
pub fn public_router<S>(store: S) -> Router
where
    S: ArtefactStore + Clone + 'static,
{
    Router::new()
        .route("/v1/updates/root.json", get(get_root::<S>))
        .route("/v1/updates/roots/{file}", get(get_root_version::<S>))
        .route(
            "/v1/updates/channels/{channel}/manifest.json",
            get(get_manifest::<S>),
        )
        .route("/v1/updates/blobs/{sha256}", get(get_blob::<S>))
        .with_state(store)
}

/// The upload routes, on any [`ArtefactStore`]; mount behind admin
/// authentication.
pub fn admin_router<S>(store: S) -> Router
where
    S: ArtefactStore + Clone + 'static,
{
    Router::new()
        .route("/api/v1/releases/root", put(put_root::<S>))
        .route(
            "/api/v1/releases/blobs/{sha256}",
            // The body streams into the store, which refuses it as soon as
            // it passes the store's cap (never above `MAX_BLOB_BYTES`).
            put(put_blob::<S>),
        )
        .route(
            "/api/v1/releases/channels/{channel}/manifest",
            put(put_manifest::<S>),
        )
        .route("/api/v1/releases/channels", get(list_channels::<S>))
        .route(
            "/api/v1/releases/channels/{channel}/builds",
            get(list_builds::<S>),
        )
        .route(
            "/api/v1/releases/channels/{channel}/manifests",
            get(list_manifests::<S>),
        )
        .with_state(store)
}

/// An error response: a status and one sentence.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl From<Error> for ApiError {
    fn from(err: Error) -> ApiError {
        use outrider_signing::Error as S;
        let status = match &err {
            Error::Signing(S::TooLarge { .. }) | Error::TooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Signing(_) | Error::HashMismatch { .. } | Error::Upload(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::NoRoot
            | Error::StaleSequence { .. }
            | Error::MissingBlob { .. }
            | Error::BlobSize { .. } => StatusCode::CONFLICT,
            Error::StorageFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %err, "release store failure");
        }
        ApiError(status, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn parse_channel(raw: &str) -> Result<Channel, ApiError> {
    raw.parse()
        .map_err(|e: outrider_signing::Error| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

fn parse_sha(raw: &str) -> Result<Sha256, ApiError> {
    raw.parse()
        .map_err(|e: outrider_signing::Error| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

fn metadata_response(bytes: Option<Vec<u8>>, what: &str) -> Response {
    match bytes {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        None => ApiError(
            StatusCode::NOT_FOUND,
            format!("no {what} has been published"),
        )
        .into_response(),
    }
}

async fn get_root<S: ArtefactStore>(State(store): State<S>) -> Result<Response, ApiError> {
    let root = store.root().await?;
    Ok(metadata_response(root, "root"))
}

/// `{version}.json`: the router matches whole path segments only.
async fn get_root_version<S: ArtefactStore>(
    State(store): State<S>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no root {file}"));
    let version = file
        .strip_suffix(".json")
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(not_found)?;
    let bytes = store.root_version(version).await?.ok_or_else(not_found)?;
    // A stored version's bytes never change.
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, IMMUTABLE),
        ],
        bytes,
    )
        .into_response())
}

async fn get_manifest<S: ArtefactStore>(
    State(store): State<S>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    let channel = parse_channel(&channel)?;
    let what = format!("manifest for channel {channel}");
    let manifest = store.manifest(channel).await?;
    Ok(metadata_response(manifest, &what))
}

async fn get_blob<S: ArtefactStore>(
    State(store): State<S>,
    Path(sha): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sha = parse_sha(&sha)?;
    let etag = format!("\"{sha}\"");
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no blob {sha}"));
    let len = store.blob_len(sha).await?.ok_or_else(not_found)?;
    let etag_value = HeaderValue::from_str(&etag)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        (header::ETAG, etag_value),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
    ];
    // The blob exists and never changes, so a matching tag means "unchanged".
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    // `If-Range` with another validator asks for the whole (changed) entity.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(raw) if if_range_ok => parse_range(raw, len),
        _ => ByteRange::Full,
    };
    let octets = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    match range {
        ByteRange::Full => {
            let length = (header::CONTENT_LENGTH, HeaderValue::from(len));
            // Deleted since `blob_len` (garbage collection): gone.
            let stream = store.read_blob(sha, 0..len).await?.ok_or_else(not_found)?;
            let body = Body::from_stream(stream);
            Ok((common, [octets, length], body).into_response())
        }
        ByteRange::Unsatisfiable => {
            let content_range = HeaderValue::from_str(&format!("bytes */{len}"))
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                common,
                [(header::CONTENT_RANGE, content_range)],
            )
                .into_response())
        }
        ByteRange::Partial { first, last } => {
            let count = last - first + 1;
            let stream = store
                .read_blob(sha, first..last + 1)
                .await?
                .ok_or_else(not_found)?;
            let content_range = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let headers = [
                octets,
                (header::CONTENT_LENGTH, HeaderValue::from(count)),
                (header::CONTENT_RANGE, content_range),
            ];
            let body = Body::from_stream(stream);
            Ok((StatusCode::PARTIAL_CONTENT, common, headers, body).into_response())
        }
    }
}

/// Whether an `If-None-Match` value (`*` or a list of tags, weak or strong)
/// names `etag`. Weak comparison is right here: the blob is immutable.
fn etag_matches(header_value: &str, etag: &str) -> bool {
    header_value.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*" || tag == etag
    })
}

/// What a `Range` header asks of an entity of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteRange {
    /// No usable range: serve the whole entity with 200.
    Full,
    /// Bytes `first..=last`, both within the entity: 206.
    Partial { first: u64, last: u64 },
    /// A well-formed range that starts past the end: 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` (RFC 9110 §14.1.2) against
/// an entity of `len` bytes. A malformed header or another unit is ignored
/// (the whole entity is served, as the RFC allows), and so is a multi-range
/// request: clients of this repository resume one download at a time, and a
/// 200 with the full blob is always a correct answer.
fn parse_range(raw: &str, len: u64) -> ByteRange {
    let Some(spec) = raw
        .trim()
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| raw.trim()[6..].trim())
    else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Full;
    };
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (
        number(first),
        first.trim().is_empty(),
        number(last),
        last.trim().is_empty(),
    ) {
        // bytes=-n: the last n bytes.
        (None, true, Some(n), _) => {
            if n == 0 || len == 0 {
                ByteRange::Unsatisfiable
            } else {
                ByteRange::Partial {
                    first: len.saturating_sub(n),
                    last: len - 1,
                }
            }
        }
        // bytes=a- : from a to the end.
        (Some(a), _, None, true) if a < len => ByteRange::Partial {
            first: a,
            last: len - 1,
        },
        (Some(_), _, None, true) => ByteRange::Unsatisfiable,
        // bytes=a-b with a <= b; b past the end is clamped.
        (Some(a), _, Some(b), _) if a <= b => {
            if a < len {
                ByteRange::Partial {
                    first: a,
                    last: b.min(len - 1),
                }
            } else {
                ByteRange::Unsatisfiable
            }
        }
        _ => ByteRange::Full,
    }
}

async fn put_root<S: ArtefactStore>(
    State(store): State<S>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    store.put_root(body.to_vec()).await?;
    Ok(Json(json!({ "ok": true })))
}

async fn put_blob<S: ArtefactStore>(
    State(store): State<S>,
    Path(sha): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sha = parse_sha(&sha)?;
    let size = store.put_blob_stream(sha, body.into_data_stream()).await?;
    Ok(Json(json!({ "sha256": sha, "size": size })))
}

async fn put_manifest<S: ArtefactStore>(
    State(store): State<S>,
    Path(channel): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let channel = parse_channel(&channel)?;
    let name = channel.clone();
    let sequence = store.put_manifest(channel, body.to_vec()).await?;
    Ok(Json(json!({ "channel": name, "sequence": sequence })))
}

async fn list_channels<S: ArtefactStore>(
    State(store): State<S>,
) -> Result<Json<Vec<ChannelInfo>>, ApiError> {
    Ok(Json(store.channels().await?))
}

/// Query of the builds listing.
#[derive(Debug, Deserialize)]
struct BuildsQuery {
    target: String,
    limit: Option<usize>,
}

async fn list_builds<S: ArtefactStore>(
    State(store): State<S>,
    Path(channel): Path<String>,
    Query(query): Query<BuildsQuery>,
) -> Result<Json<Vec<BuildInfo>>, ApiError> {
    let channel = parse_channel(&channel)?;
    let limit = query.limit.unwrap_or(DEFAULT_BUILDS).min(MAX_BUILDS);
    let triple = query.target;
    Ok(Json(store.builds(channel, triple, limit).await?))
}

/// Query of the manifest history listing.
#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn list_manifests<S: ArtefactStore>(
    State(store): State<S>,
    Path(channel): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Vec<String>>, ApiError> {
    let channel = parse_channel(&channel)?;
    let limit = query.limit.unwrap_or(DEFAULT_BUILDS).min(MAX_BUILDS);
    let envelopes = store.manifest_history(channel, limit).await?;
    // Envelopes are JSON text (see outrider_signing's envelope format), so
    // they travel as strings byte for byte; a stored one that is not UTF-8
    // would be corrupt and is sent lossily, which then fails verification.
    Ok(Json(
        envelopes
            .into_iter()
            .map(|e| {
                String::from_utf8(e)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        let p = |first, last| Partial { first, last };
        for (raw, want) in [
            ("bytes=0-9", p(0, 9)),
            ("bytes=5-", p(5, 99)),
            ("bytes=-10", p(90, 99)),
            ("bytes=-1000", p(0, 99)),
            ("bytes=90-1000", p(90, 99)),
            ("BYTES = 1-1", Full),
            ("Bytes=1-1", p(1, 1)),
            ("bytes=100-", Unsatisfiable),
            ("bytes=100-200", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=9-5", Full),
            ("bytes=0-1,5-6", Full),
            ("bytes=x-1", Full),
            ("bytes=+1-2", Full),
            ("items=0-1", Full),
            ("bytes=", Full),
            ("bytes=-", Full),
        ] {
            assert_eq!(parse_range(raw, 100), want, "{raw}");
        }
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn etags() {
        let tag = "\"abc\"";
        assert!(etag_matches("\"abc\"", tag));
        assert!(etag_matches("W/\"abc\"", tag));
        assert!(etag_matches("\"x\", \"abc\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"abd\"", tag));
        assert!(!etag_matches("abc", tag));
    }
}
