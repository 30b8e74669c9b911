//! A small blocking client for the server's admin REST API.
//!
//! Requests carry `Authorization: Bearer <admin token>`; error responses are
//! JSON `{"error": "..."}` and are turned into one readable sentence.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{GlobalArgs, UsageError};

/// Where the CLI looks for a server when none is given.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8470";

/// Largest response body the CLI reads (a manifest, a listing).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// An authenticated connection to one server.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl ApiClient {
    /// Builds a client from the global flags. Fails with a [`UsageError`] when
    /// no admin token can be found.
    pub fn from_args(args: &GlobalArgs) -> Result<ApiClient> {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => t.trim().to_owned(),
            (None, file) => {
                let path = file.clone().unwrap_or_else(default_token_file);
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        UsageError(format!(
                            "no admin token: pass --token or OUTRIDER_TOKEN, or make {} readable ({e})",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(ApiClient::new(&args.server, token))
    }

    /// A client for `base` (e.g. `http://127.0.0.1:8470`) using `token`.
    pub fn new(base: &str, token: String) -> ApiClient {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build();
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` and decode the JSON body.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.request("GET", path), None)?;
        resp.into_json()
            .with_context(|| format!("decoding the response of GET {path}"))
    }

    /// `GET path` and return the raw body, or `None` on 404.
    pub fn get_bytes_opt(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.request("GET", path).call() {
            Ok(resp) => Ok(Some(read_body(resp)?)),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(describe(e, "GET", &self.url(path))),
        }
    }

    /// `PUT path` with a raw body.
    pub fn put_bytes(&self, path: &str, body: &[u8]) -> Result<()> {
        self.send(self.request("PUT", path), Some(body)).map(drop)
    }

    /// `POST path` (or another `method`) with a JSON body, decoding the JSON answer.
    pub fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let bytes = serde_json::to_vec(body).context("encoding the request")?;
        let req = self
            .request(method, path)
            .set("Content-Type", "application/json");
        let resp = self.send(req, Some(&bytes))?;
        resp.into_json()
            .with_context(|| format!("decoding the response of {method} {path}"))
    }

    /// `PUT path` with a raw body, decoding the JSON answer.
    pub fn put_bytes_json<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T> {
        let req = self
            .request("PUT", path)
            .set("Content-Type", "application/octet-stream");
        self.send(req, Some(body))?
            .into_json()
            .with_context(|| format!("decoding the response of PUT {path}"))
    }

    /// `DELETE path`, decoding the JSON answer.
    pub fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request("DELETE", path), None)?
            .into_json()
            .with_context(|| format!("decoding the response of DELETE {path}"))
    }

    /// `POST path` with a JSON body, waiting up to `timeout` for the answer
    /// (run-now waits for the agent).
    pub fn post_json_slow<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T> {
        let bytes = serde_json::to_vec(body).context("encoding the request")?;
        let req = self
            .request("POST", path)
            .timeout(timeout)
            .set("Content-Type", "application/json");
        self.send(req, Some(&bytes))?
            .into_json()
            .with_context(|| format!("decoding the response of POST {path}"))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    fn send(&self, req: ureq::Request, body: Option<&[u8]>) -> Result<ureq::Response> {
        let method = req.method().to_owned();
        let url = req.url().to_owned();
        let result = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        result.map_err(|e| describe(e, &method, &url))
    }
}

/// The token file the server writes into its default data directory.
pub fn default_token_file() -> PathBuf {
    outrider_home().join("server").join("admin.token")
}

/// `$OUTRIDER_HOME`, else `~/.outrider`: where quickstart keeps its state.
pub fn outrider_home() -> PathBuf {
    if let Some(home) = std::env::var_os("OUTRIDER_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".outrider")
}

fn read_body(resp: ureq::Response) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut body)
        .context("reading the response body")?;
    Ok(body)
}

fn describe(err: ureq::Error, method: &str, url: &str) -> anyhow::Error {
    match err {
        ureq::Error::Status(code, resp) => {
            let text = resp.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            if code == 401 {
                anyhow!(UsageError(format!(
                    "{method} {url}: the server refused the admin token ({message})"
                )))
            } else {
                anyhow!("{method} {url} failed with HTTP {code}: {message}")
            }
        }
        ureq::Error::Transport(t) => anyhow!("{method} {url}: cannot reach the server: {t}"),
    }
}

/// Clap parser for a name or id that the CLI puts into a URL path (or a
/// query value) as is: letters, digits, `_`, `.`, `-`, and not `.` or `..`.
/// Anything else would be read by the URL parser as another route
/// (`a/../../tokens/x`), a query (`a?b`) or a fragment; every name the
/// server accepts passes.
pub fn path_segment(text: &str) -> Result<String, String> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if text.is_empty() || !plain || text == "." || text == ".." {
        return Err(format!(
            "{text:?} is not a name: use letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_change_the_route_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/../../tokens/x",
            "a?b",
            "a#b",
            "a b",
            "a%2f",
        ] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }
        for good in ["load", "check_disk.sh", "0123456789abcdef0123", "a-b"] {
            assert_eq!(path_segment(good).as_deref(), Ok(good));
        }
    }
}
