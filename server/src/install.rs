//! `GET /install.sh`: the agent installer (`packaging/install.sh`), with the
//! URL of this server filled in, so the one-line install needs no `--server`:
//! `curl -sSf https://SERVER/install.sh | sh -s -- --token TOKEN --root-sha256 PIN`.
//!
//! The URL, decided by [`base_url`]: `--public-url` when the operator gave
//! one; else the scheme and host a trusted proxy (`--trusted-proxy`) says
//! the client used (`X-Forwarded-Proto`, `X-Forwarded-Host`); else the
//! scheme this server speaks plus the request's `Host`. Forwarded headers
//! from any other peer are ignored: anyone can send them. A host that is
//! not a plain `host[:port]` is refused rather than pasted into a shell
//! script.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::PublicUrl;

/// The installer as committed; `@OUTRIDER_SERVER_URL@` is replaced per request.
const SCRIPT: &str = include_str!("../../packaging/install.sh");
/// The placeholder `install.sh` carries in place of the server URL.
const PLACEHOLDER: &str = "@OUTRIDER_SERVER_URL@";

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What decides the URL the installer names; from the server's config.
#[derive(Clone, Debug)]
pub struct Origin {
    /// `--public-url`, which wins over anything a request says.
    pub public_url: Option<PublicUrl>,
    /// The scheme this server speaks (`https` with TLS).
    pub scheme: &'static str,
    /// `--trusted-proxy`: peers whose forwarded headers are believed.
    pub trusted_proxies: Vec<IpAddr>,
}

/// Why no URL could be decided for a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("install.sh needs a Host header of the form host[:port]")]
    BadHost,
    #[error("X-Forwarded-Host from the trusted proxy is not of the form host[:port]")]
    BadForwardedHost,
    #[error("X-Forwarded-Proto from the trusted proxy is neither http nor https")]
    BadForwardedProto,
}

/// The base URL for a request from `peer` with `headers`; see the module
/// note for the order. Fails when the host (or a trusted proxy's forwarded
/// value) could inject into the script.
pub fn base_url(origin: &Origin, peer: IpAddr, headers: &HeaderMap) -> Result<String, OriginError> {
    if let Some(url) = &origin.public_url {
        return Ok(url.as_str().to_owned());
    }
    // Proxies append to these lists; the first value is the client's.
    let forwarded = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split(',').next())
            .map(str::trim)
    };
    let trusted = origin.trusted_proxies.contains(&peer);
    let scheme = match forwarded(&X_FORWARDED_PROTO).filter(|_| trusted) {
        None => origin.scheme,
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        Some(_) => return Err(OriginError::BadForwardedProto),
    };
    let host = match forwarded(&X_FORWARDED_HOST).filter(|_| trusted) {
        Some(host) if is_plain_host(host) => host,
        Some(_) => return Err(OriginError::BadForwardedHost),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| is_plain_host(h))
            .ok_or(OriginError::BadHost)?,
    };
    Ok(format!("{scheme}://{host}"))
}

/// Serves the installer naming [`base_url`].
pub fn script(origin: &Origin, peer: IpAddr, headers: &HeaderMap) -> Response {
    let url = match base_url(origin, peer, headers) {
        Ok(url) => url,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let body = SCRIPT.replacen(PLACEHOLDER, &url, 1);
    (
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The one-line install the server prints at start: the installer from
/// `base`, with the pin of the served `root` (the SHA-256 of its exact
/// bytes, what `install.sh --root-sha256` checks). The enrollment token is
/// left as `TOKEN`: a secret has no place in a log.
pub fn install_command(base: &str, root: Option<&[u8]>) -> String {
    let pin = match root {
        Some(bytes) => outrider_signing::sha256(bytes).to_string(),
        None => "PIN (no root yet: outrider keys publish-root)".to_owned(),
    };
    format!("curl -sSf {base}/install.sh | sh -s -- --token TOKEN --root-sha256 {pin}")
}

/// The one-line install of a new host: the installer from `base` with
/// enrollment `token` and the pin of the served `root`; `None` before a
/// root is published (an installer without a pin cannot verify anything).
pub fn install_command_with_token(base: &str, token: &str, root: Option<&[u8]>) -> Option<String> {
    let pin = outrider_signing::sha256(root?).to_string();
    Some(format!(
        "curl -sSf {base}/install.sh | sh -s -- --token {token} --root-sha256 {pin}"
    ))
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

    const PROXY: &str = "10.0.0.2";
    const CLIENT: &str = "203.0.113.9";

    fn origin(public_url: Option<&str>) -> Origin {
        Origin {
            public_url: public_url.map(|u| u.parse().unwrap()),
            scheme: "http",
            trusted_proxies: vec![PROXY.parse().unwrap()],
        }
    }

    /// The decision by table: who asks, what it sends, what the script names.
    #[test]
    fn the_url_comes_from_public_url_then_trusted_proxies_then_host() {
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let host: Headers = &[("host", "10.0.0.1:8470")];
        let forwarded: Headers = &[
            ("host", "10.0.0.1:8470"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "mon.example.com"),
        ];
        let chained: Headers = &[
            ("host", "10.0.0.1:8470"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "mon.example.com, inner:8470"),
        ];
        let evil_host: Headers = &[("host", "10.0.0.1"), ("x-forwarded-host", "x'$(reboot)")];
        let evil_proto: Headers = &[("host", "10.0.0.1"), ("x-forwarded-proto", "javascript")];
        type Case<'a> = (
            Option<&'a str>,
            &'a str,
            Headers<'a>,
            Result<&'a str, OriginError>,
        );
        let cases: &[Case] = &[
            (None, CLIENT, host, Ok("http://10.0.0.1:8470")),
            // Anyone can send forwarded headers: ignored unless from a proxy.
            (None, CLIENT, forwarded, Ok("http://10.0.0.1:8470")),
            (None, PROXY, forwarded, Ok("https://mon.example.com")),
            (None, PROXY, chained, Ok("https://mon.example.com")),
            (None, PROXY, host, Ok("http://10.0.0.1:8470")),
            (None, CLIENT, evil_host, Ok("http://10.0.0.1")),
            (None, PROXY, evil_host, Err(OriginError::BadForwardedHost)),
            (None, PROXY, evil_proto, Err(OriginError::BadForwardedProto)),
            (None, CLIENT, &[("host", "a'b")], Err(OriginError::BadHost)),
            (None, CLIENT, &[], Err(OriginError::BadHost)),
            // --public-url wins over everything a request says.
            (
                Some("https://mon.example.com/"),
                CLIENT,
                forwarded,
                Ok("https://mon.example.com"),
            ),
            (
                Some("https://mon.example.com"),
                PROXY,
                chained,
                Ok("https://mon.example.com"),
            ),
            (
                Some("https://mon.example.com"),
                CLIENT,
                &[],
                Ok("https://mon.example.com"),
            ),
        ];
        for (public_url, peer, headers, want) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in *headers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            let got = base_url(&origin(*public_url), peer.parse().unwrap(), &map);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{public_url:?} {peer} {headers:?}"
            );
        }
    }

    #[test]
    fn the_printed_install_command_pins_the_served_root() {
        let root = b"{\"payload\": \"e30=\", \"signatures\": []}\n";
        let pin = outrider_signing::sha256(root).to_string();
        assert_eq!(
            install_command("https://mon.example.com", Some(root)),
            format!(
                "curl -sSf https://mon.example.com/install.sh | sh -s -- --token TOKEN --root-sha256 {pin}"
            )
        );
        assert!(install_command("https://m", None).contains("keys publish-root"));
    }

    #[test]
    fn served_script_names_the_decided_url() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:9".parse().unwrap());
        let response = script(&origin(None), CLIENT.parse().unwrap(), &headers);
        assert_eq!(response.status(), StatusCode::OK);
        headers.insert(header::HOST, "a'b".parse().unwrap());
        let response = script(&origin(None), CLIENT.parse().unwrap(), &headers);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
