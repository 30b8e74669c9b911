//! `GET /api/v1/openapi.json`: the OpenAPI 3 description of every HTTP
//! route of the server, served without authentication (it documents the
//! API; it grants nothing).
//!
//! The document is `server/openapi.json`, kept in the repository and
//! compiled into the binary. The integration test `openapi` checks it both
//! ways against the routes the server registers (every `.route(...)` of
//! this crate and of `outrider-update-server`): a route added without
//! documentation, or documentation of a route that is gone, fails the test.

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The document, as kept in the repository.
pub const DOCUMENT: &str = include_str!("../openapi.json");

/// The route serving [`DOCUMENT`].
pub fn routes() -> Router {
    Router::new().route(
        PATH,
        get(|| async { ([(CONTENT_TYPE, "application/json")], DOCUMENT).into_response() }),
    )
}
