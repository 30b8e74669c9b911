//! The dashboard's static files, compiled into the binary: htmx and uPlot
//! (vendored in `server/static/vendor/`, versions and licences in its
//! README), `live.js`, `chart.js`, and one stylesheet (uPlot's CSS, then `app.css`).
//!
//! Each is served at `/assets/<stem>.<first 16 hex of its sha256>.<ext>`
//! with `Cache-Control: immutable`: a changed file gets a new name, so a
//! browser never runs a stale script and never asks twice.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One served file.
#[derive(Debug)]
pub struct Asset {
    /// The name pages refer to it by (`htmx.js`).
    pub logical: &'static str,
    /// The name it is served under, with its content hash.
    pub hashed: String,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTMX: &[u8] = include_bytes!("../../static/vendor/htmx.min.js");
const UPLOT: &[u8] = include_bytes!("../../static/vendor/uPlot.iife.min.js");
const LIVE: &[u8] = include_bytes!("../../static/live.js");
const CHART: &[u8] = include_bytes!("../../static/chart.js");
/// The one stylesheet: uPlot's, then ours.
const CSS: &str = concat!(
    include_str!("../../static/vendor/uPlot.min.css"),
    "\n",
    include_str!("../../static/app.css")
);

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        ("htmx.js", "text/javascript; charset=utf-8", HTMX),
        ("uplot.js", "text/javascript; charset=utf-8", UPLOT),
        ("live.js", "text/javascript; charset=utf-8", LIVE),
        ("chart.js", "text/javascript; charset=utf-8", CHART),
        ("app.css", "text/css; charset=utf-8", CSS.as_bytes()),
    ]
    .into_iter()
    .map(|(logical, content_type, body)| {
        let hash = hex::encode(Sha256::digest(body));
        // Every logical name has one dot (see the table above).
        let (stem, ext) = logical.split_once('.').unwrap_or((logical, ""));
        Asset {
            logical,
            hashed: format!("{stem}.{}.{ext}", &hash[..16]),
            content_type,
            body,
        }
    })
    .collect()
});

/// The URL of the asset called `logical`.
///
/// # Panics
/// When no asset has that name: the names are constants of this crate's
/// templates, so a test renders every page and catches a typo.
pub fn url(logical: &str) -> String {
    let asset = ASSETS
        .iter()
        .find(|a| a.logical == logical)
        .unwrap_or_else(|| panic!("no dashboard asset named {logical:?}"));
    format!("/assets/{}", asset.hashed)
}

/// `GET /assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.hashed == name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no such asset; reload the page\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_files_are_the_pinned_releases() {
        // The versions and hashes of server/static/vendor/README.md.
        for (body, sha256) in [
            (
                HTMX,
                "71ea67185bfa8c98c39d31717c6fce5d852370fcdfd129db4543774d3145c0de",
            ),
            (
                UPLOT,
                "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
            ),
            (
                include_bytes!("../../static/vendor/uPlot.min.css").as_slice(),
                "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
            ),
        ] {
            assert_eq!(hex::encode(Sha256::digest(body)), sha256);
        }
    }

    #[test]
    fn names_carry_the_content_hash() {
        let css = url("app.css");
        let hash = hex::encode(Sha256::digest(CSS.as_bytes()));
        assert_eq!(css, format!("/assets/app.{}.css", &hash[..16]));
        let names: std::collections::BTreeSet<_> = ASSETS.iter().map(|a| &a.hashed).collect();
        assert_eq!(names.len(), ASSETS.len());
    }
}
