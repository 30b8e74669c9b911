//! `GET /install.sh`: the agent installer (`packaging/install.sh`), with the
//! URL of this server filled in, so the one-line install needs no `--server`:
//! `curl -sSf https://SERVER/install.sh | sh -s -- --token TOKEN`.
//!
//! The URL is the scheme this server speaks plus the `Host` the client used
//! to reach it. A `Host` that is not a plain `host[:port]` is refused rather
//! than pasted into a shell script.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The installer as committed; `@OUTRIDER_SERVER_URL@` is replaced per request.
const SCRIPT: &str = include_str!("../../packaging/install.sh");
/// The placeholder `install.sh` carries in place of the server URL.
const PLACEHOLDER: &str = "@OUTRIDER_SERVER_URL@";

/// Serves the installer for a server reached over `scheme` (`http`/`https`).
pub fn script(scheme: &'static str, headers: &HeaderMap) -> Response {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_plain_host(h))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "install.sh needs a Host header of the form host[:port]\n",
        )
            .into_response();
    };
    let body = SCRIPT.replacen(PLACEHOLDER, &format!("{scheme}://{host}"), 1);
    (
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `host[:port]` with a DNS name, IPv4 or bracketed IPv6: nothing a shell
/// would interpret inside single quotes, no path, no user info.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_is_in_the_script_once() {
        assert_eq!(SCRIPT.matches(PLACEHOLDER).count(), 1);
    }

    #[test]
    fn host_headers_that_could_inject_are_refused() {
        assert!(is_plain_host("outrider.example.com:8470"));
        assert!(is_plain_host("[::1]:8470"));
        for bad in ["", "a'b", "x/y", "a b", "u@h", "$(reboot)"] {
            assert!(!is_plain_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn served_script_names_this_server() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:9".parse().unwrap());
        let response = script("http", &headers);
        assert_eq!(response.status(), StatusCode::OK);
    }
}
