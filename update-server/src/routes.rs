//! HTTP routes of the release repository.
//!
//! Public, unauthenticated, cacheable (a static CDN can serve the same tree):
//! - `GET /v1/updates/root.json` — current root envelope
//! - `GET /v1/updates/channels/{channel}/manifest.json` — current manifest, `no-cache`
//! - `GET /v1/updates/blobs/{sha256}` — blob, immutable, streamed from disk
//!
//! Admin (the server mounts these behind its bearer-token layer):
//! - `PUT /api/v1/releases/root` — root envelope
//! - `PUT /api/v1/releases/blobs/{sha256}` — blob (up to [`MAX_BLOB_BYTES`])
//! - `PUT /api/v1/releases/channels/{channel}/manifest` — manifest envelope
//! - `GET /api/v1/releases/channels` — list of [`ChannelInfo`]
//!
//! Errors are JSON `{"error": "<one sentence>"}`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use outrider_signing::{Channel, Sha256};
use serde_json::json;
use tokio_util::io::ReaderStream;

use crate::Error;
use crate::store::{ChannelInfo, MAX_BLOB_BYTES, ReleaseStore};

/// Blobs are content-addressed, so they never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The public read routes.
pub fn public_router(store: Arc<ReleaseStore>) -> Router {
    Router::new()
        .route("/v1/updates/root.json", get(get_root))
        .route(
            "/v1/updates/channels/{channel}/manifest.json",
            get(get_manifest),
        )
        .route("/v1/updates/blobs/{sha256}", get(get_blob))
        .with_state(store)
}

/// The upload routes; mount behind admin authentication.
pub fn admin_router(store: Arc<ReleaseStore>) -> Router {
    Router::new()
        .route("/api/v1/releases/root", put(put_root))
        .route(
            "/api/v1/releases/blobs/{sha256}",
            // The limit must cover the whole blob; the store checks it again.
            put(put_blob).layer(DefaultBodyLimit::max(MAX_BLOB_BYTES as usize)),
        )
        .route(
            "/api/v1/releases/channels/{channel}/manifest",
            put(put_manifest),
        )
        .route("/api/v1/releases/channels", get(list_channels))
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
            Error::Signing(_) | Error::HashMismatch { .. } => StatusCode::BAD_REQUEST,
            Error::NoRoot
            | Error::StaleSequence { .. }
            | Error::MissingBlob { .. }
            | Error::BlobSize { .. } => StatusCode::CONFLICT,
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

/// Runs a blocking store call off the async workers.
async fn blocking<T, F>(store: Arc<ReleaseStore>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&ReleaseStore) -> Result<T, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(join) => {
            tracing::error!(error = %join, "release store task failed");
            Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the release store task failed".to_owned(),
            ))
        }
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

async fn get_root(State(store): State<Arc<ReleaseStore>>) -> Result<Response, ApiError> {
    let root = blocking(store, |s| s.root()).await?;
    Ok(metadata_response(root, "root"))
}

async fn get_manifest(
    State(store): State<Arc<ReleaseStore>>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    let channel = parse_channel(&channel)?;
    let what = format!("manifest for channel {channel}");
    let manifest = blocking(store, move |s| s.manifest(&channel)).await?;
    Ok(metadata_response(manifest, &what))
}

async fn get_blob(
    State(store): State<Arc<ReleaseStore>>,
    Path(sha): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sha = parse_sha(&sha)?;
    let etag = format!("\"{sha}\"");
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no blob {sha}"));
    let path = store.blob_path(&sha).ok_or_else(not_found)?;
    let etag_value = HeaderValue::from_str(&etag)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(Error::Io { path, source: e }.into()),
    };
    let len = file
        .metadata()
        .await
        .map_err(|source| Error::Io { path, source })?
        .len();
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(len)),
        (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        (header::ETAG, etag_value),
    ];
    Ok((headers, Body::from_stream(ReaderStream::new(file))).into_response())
}

async fn put_root(
    State(store): State<Arc<ReleaseStore>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    blocking(store, move |s| s.put_root(&body)).await?;
    Ok(Json(json!({ "ok": true })))
}

async fn put_blob(
    State(store): State<Arc<ReleaseStore>>,
    Path(sha): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sha = parse_sha(&sha)?;
    let size = body.len();
    blocking(store, move |s| s.put_blob(&sha, &body)).await?;
    Ok(Json(json!({ "sha256": sha, "size": size })))
}

async fn put_manifest(
    State(store): State<Arc<ReleaseStore>>,
    Path(channel): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let channel = parse_channel(&channel)?;
    let name = channel.clone();
    let sequence = blocking(store, move |s| s.put_manifest(&channel, &body)).await?;
    Ok(Json(json!({ "channel": name, "sequence": sequence })))
}

async fn list_channels(
    State(store): State<Arc<ReleaseStore>>,
) -> Result<Json<Vec<ChannelInfo>>, ApiError> {
    Ok(Json(blocking(store, |s| s.channels()).await?))
}
