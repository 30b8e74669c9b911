//! Shared secrets: the admin API token and the bootstrap enrollment token.
//!
//! Both are random 32-byte hex strings generated on first start into files
//! of mode 0600 in the data directory (unless given explicitly), so a fresh
//! server is never open to the network without a secret. Further enrollment
//! tokens, with expiry and use counts, live in the store
//! (`store::tokens`); agents may present either kind.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;
use crate::error::ApiError;

/// A secret compared in constant time; `Debug` never prints it.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Uses `given` when present (and records it in `path`), else reads
    /// `path`, else generates a new secret into `path`.
    ///
    /// Fails when the file cannot be read or written, or holds an empty token.
    pub fn load_or_create(path: &Path, given: Option<&str>) -> anyhow::Result<Secret> {
        if let Some(token) = given {
            write_secret(path, token)?;
            return Ok(Secret(token.to_owned()));
        }
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(Secret(text.trim().to_owned())),
            Ok(_) => anyhow::bail!(
                "{} is empty; delete it to generate a new token",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes)
                    .map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
                let token = hex::encode(bytes);
                write_secret(path, &token)?;
                Ok(Secret(token))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), presented.as_bytes())
    }

    /// The secret itself, for printing to the operator who owns it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Writes `token` to `path` with mode 0600 (temp file + fsync + rename).
fn write_secret(path: &Path, token: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Whether `a == b`, in a time that depends only on their lengths: a
/// secret is never compared with an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header, trimmed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Middleware: requires `Authorization: Bearer <admin token>`.
pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(req.headers()) {
        Some(token) if state.admin_token.matches(token) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::Unauthorized(
            "the admin token is not valid for this server",
        )),
        None => Err(ApiError::Unauthorized(
            "missing 'Authorization: Bearer <admin token>' header",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_secret_is_persisted_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = Secret::load_or_create(&path, None).unwrap();
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Secret::load_or_create(&path, None).unwrap();
        assert!(again.matches(first.expose()));
        assert!(!again.matches("wrong"));
        assert!(!again.matches(""));
    }

    #[test]
    fn given_secret_wins_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enrollment.token");
        let s = Secret::load_or_create(&path, Some("letmein")).unwrap();
        assert!(s.matches("letmein"));
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "letmein");
    }
}
