//! Shared secrets: the admin API token and the bootstrap enrollment token.
//!
//! Both are random 32-byte hex strings generated on first start into files
//! of mode 0600 in the data directory (unless given explicitly), so a fresh
//! server is never open to the network without a secret. Further enrollment
//! tokens, with expiry and use counts, live in the store
//! (`store::tokens`); agents may present either kind.
//!
//! File permissions are checked on start, as ssh checks its keys: the data
//! directory is made 0700 if it is more open (it is the server's own; a
//! warning says so), and a token file that others may read or write stops
//! the server — the token may have leaked, so the operator must look at it
//! (`chmod 600`, or delete the file to have a new token generated).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    /// Fails when the file cannot be read or written, holds an empty token,
    /// or is open to other users ([`token_file_problem`]).
    pub fn load_or_create(path: &Path, given: Option<&str>) -> anyhow::Result<Secret> {
        if let Some(token) = given {
            write_secret(path, token)?;
            return Ok(Secret(token.to_owned()));
        }
        if let Ok(meta) = std::fs::metadata(path) {
            check_token_mode(path, meta.permissions().mode())?;
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

/// Why a token file of `mode` must not be used, or `None`: anyone but
/// its owner may read or write it.
pub fn token_file_problem(mode: u32) -> Option<String> {
    let open = mode & 0o077;
    (open != 0).then(|| {
        let who = if mode & 0o007 != 0 {
            "every user"
        } else {
            "its group"
        };
        format!("it is accessible to {who} (mode {:04o})", mode & 0o7777)
    })
}

/// Fails with a message naming `path` when [`token_file_problem`] finds one.
fn check_token_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    match token_file_problem(mode) {
        None => Ok(()),
        Some(problem) => anyhow::bail!(
            "refusing to use token file {}: {problem}; the token may have leaked. Run \
             `chmod 600 {}` if it did not, or delete the file to generate a new token",
            path.display(),
            path.display()
        ),
    }
}

/// Reads a token given as a file (`--enrollment-token-file`,
/// `--metrics-token-file`). Fails when it cannot be read, is empty, or is
/// open to other users.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    check_token_mode(path, meta.permissions().mode())?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(token.to_owned())
}

/// Whether the data directory of `mode` must be narrowed to 0700: group or
/// other users have any access to it.
pub fn data_dir_too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Creates the data directory `dir` with mode 0700, or narrows an existing
/// one to 0700 with a warning. Fails when it cannot be created or changed.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("inspecting data directory {}", dir.display()))?
        .permissions()
        .mode();
    if data_dir_too_open(mode) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making data directory {} private (0700)", dir.display()))?;
        tracing::warn!(
            dir = %dir.display(),
            was = format!("{:04o}", mode & 0o7777),
            "the data directory (database, tokens, plugins) was open to other users; it is now 0700"
        );
    }
    Ok(())
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
    fn token_and_directory_modes_by_table() {
        for (mode, problem) in [
            (0o600, None),
            (0o400, None),
            (0o100600, None),
            (0o640, Some("its group (mode 0640)")),
            (0o620, Some("its group")),
            (0o644, Some("every user (mode 0644)")),
            (0o606, Some("every user")),
            (0o604, Some("every user")),
        ] {
            let got = token_file_problem(mode);
            match problem {
                None => assert_eq!(got, None, "{mode:o}"),
                Some(needle) => assert!(got.unwrap().contains(needle), "{mode:o}"),
            }
        }
        for (mode, open) in [
            (0o700, false),
            (0o40700, false),
            (0o750, true),
            (0o755, true),
            (0o701, true),
        ] {
            assert_eq!(data_dir_too_open(mode), open, "{mode:o}");
        }
    }

    #[test]
    fn a_token_file_others_can_read_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        Secret::load_or_create(&path, None).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secret::load_or_create(&path, None).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("mode 0644")
                && err.contains("chmod 600"),
            "{err}"
        );
        let given = dir.path().join("given.token");
        std::fs::write(&given, "from-a-file\n").unwrap();
        std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_token_file(&given).is_err());
        std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&given).unwrap(), "from-a-file");
    }

    #[test]
    fn the_data_directory_is_created_or_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/data");
        prepare_data_dir(&data).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_data_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
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
