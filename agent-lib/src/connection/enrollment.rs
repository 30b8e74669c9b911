//! The enrollment token's life on the agent: presented until the server
//! has welcomed this key, then spent and removed from `agent.toml`.
//!
//! - Which token a Hello carries is [`token_to_present`]: none once this
//!   key was welcomed ([`super::saved`]`::enrolled_as`), and never one this
//!   process already enrolled with (its SHA-256 is kept in the connection
//!   state, carried across hot swaps): the stub hands every generation the
//!   `agent.toml` text it read at start, token included, and an agent the
//!   operator removed must not enroll itself again with it. After a
//!   restart the file is read afresh: a token found there was put back by
//!   the operator (or the file could not be edited, which was logged).
//! - After the first Welcome the `enrollment_token` line is cut out of
//!   `agent.toml` ([`without_enrollment_token`], a pure function): every
//!   other byte stays, comments and the `[policy]` table included. The
//!   file is replaced atomically (temp file in the same directory with the
//!   same mode, fsync, rename, fsync of the directory); a file the agent
//!   cannot write (read-only mount, other owner) is logged, never fatal.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use outrider_protocol::Fingerprint;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::AgentToml;

/// File name of the agent's settings in its config directory.
pub const AGENT_TOML: &str = "agent.toml";

/// SHA-256 (hex) of a token, so the connection state never holds it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token a Hello of `fingerprint` carries: the `configured` one unless
/// the server already welcomed this key (`enrolled_as`) or this process
/// already enrolled with it (`spent_sha256`).
pub fn token_to_present<'a>(
    configured: Option<&'a str>,
    spent_sha256: Option<&str>,
    enrolled_as: Option<&Fingerprint>,
    fingerprint: &Fingerprint,
) -> Option<&'a str> {
    let token = configured?;
    if enrolled_as == Some(fingerprint) {
        return None;
    }
    if spent_sha256.is_some_and(|spent| spent == token_sha256(token)) {
        return None;
    }
    Some(token)
}

/// Why the token line could not be cut out of `agent.toml`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenEdit {
    /// The file no longer parses (edited since the agent started).
    #[error("it does not parse: {0}")]
    Unparsable(String),
    /// The token is not a plain `enrollment_token = "..."` line of its own
    /// (a dotted key, an inline table, more on the same line).
    #[error("the enrollment_token line is not a plain `enrollment_token = \"...\"` line")]
    Layout,
}

/// Only the token of `agent.toml`, with where its value is in the text.
#[derive(Deserialize)]
struct TokenOnly {
    #[serde(default)]
    enrollment_token: Option<toml::Spanned<String>>,
}

/// `text` without its `enrollment_token` line, or `None` when it has none.
/// Every other byte is kept. Fails when the line cannot be cut out safely:
/// the result is checked to parse to the same settings minus the token.
pub fn without_enrollment_token(text: &str) -> Result<Option<String>, TokenEdit> {
    let parsed: TokenOnly =
        toml::from_str(text).map_err(|e| TokenEdit::Unparsable(e.message().to_owned()))?;
    let Some(token) = parsed.enrollment_token else {
        return Ok(None);
    };
    let span = token.span();
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let key = text[line_start..span.start]
        .trim()
        .strip_suffix('=')
        .map(str::trim_end);
    if !matches!(
        key,
        Some("enrollment_token" | "\"enrollment_token\"" | "'enrollment_token'")
    ) {
        return Err(TokenEdit::Layout);
    }
    let line_end = text[span.end..]
        .find('\n')
        .map_or(text.len(), |i| span.end + i + 1);
    let rest = text[span.end..line_end].trim();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return Err(TokenEdit::Layout);
    }
    let edited = format!("{}{}", &text[..line_start], &text[line_end..]);
    // Same settings, token gone: anything else means the cut went wrong.
    let before = AgentToml::parse(text).map_err(|e| TokenEdit::Unparsable(e.to_string()))?;
    match AgentToml::parse(&edited) {
        Ok(after)
            if after
                == (AgentToml {
                    enrollment_token: None,
                    ..before
                }) =>
        {
            Ok(Some(edited))
        }
        _ => Err(TokenEdit::Layout),
    }
}

/// What [`remove_enrollment_token`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// The line was removed.
    Removed,
    /// The file holds no token (already removed, or never had one).
    Absent,
}

/// Why `agent.toml` keeps its token; one sentence for the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemovalError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot edit {path}: {source}")]
    Edit {
        path: PathBuf,
        #[source]
        source: TokenEdit,
    },
    #[error("cannot rewrite {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Cuts the token line out of `<config_dir>/agent.toml`, atomically.
/// Fails when the file cannot be read, edited safely or replaced; it is
/// then left as it was (a leftover temp file is removed).
pub fn remove_enrollment_token(config_dir: &Path) -> Result<Removal, RemovalError> {
    let path = config_dir.join(AGENT_TOML);
    let text = std::fs::read_to_string(&path).map_err(|source| RemovalError::Read {
        path: path.clone(),
        source,
    })?;
    let edited = match without_enrollment_token(&text) {
        Ok(Some(edited)) => edited,
        Ok(None) => return Ok(Removal::Absent),
        Err(source) => return Err(RemovalError::Edit { path, source }),
    };
    let write_err = |source| RemovalError::Write {
        path: path.clone(),
        source,
    };
    let mode = std::fs::metadata(&path)
        .map_err(write_err)?
        .permissions()
        .mode();
    let tmp = config_dir.join(format!(".{AGENT_TOML}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&tmp)?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        file.write_all(edited.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(config_dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(Removal::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# Outrider agent\nserver_url = \"https://mon.example\"\n";
    const POLICY: &str = "\n[policy]\n# local limits\nallow_adhoc = false\nallowed_commands = [\"/usr/lib/nagios/plugins/\"]\n";

    #[test]
    fn the_token_line_goes_and_every_other_byte_stays() {
        // (input, expected output)
        let cases = [
            (
                format!("{BASE}enrollment_token = \"abc\"\nchannel = \"dev\"\n{POLICY}"),
                format!("{BASE}channel = \"dev\"\n{POLICY}"),
            ),
            // Trailing comment, odd spacing, quoted key, no final newline.
            (
                format!("{BASE}  enrollment_token   =   'abc'   # first run only\n{POLICY}"),
                format!("{BASE}{POLICY}"),
            ),
            (
                format!("{BASE}\"enrollment_token\" = \"abc\""),
                BASE.to_owned(),
            ),
            // CRLF line endings stay CRLF.
            (
                "server_url = \"https://m.example\"\r\nenrollment_token = \"abc\"\r\ntags = [\"web\"]\r\n"
                    .to_owned(),
                "server_url = \"https://m.example\"\r\ntags = [\"web\"]\r\n".to_owned(),
            ),
            // A multi-line string value goes whole.
            (
                format!("{BASE}enrollment_token = \"\"\"\nabc\"\"\"\nchannel = \"dev\"\n"),
                format!("{BASE}channel = \"dev\"\n"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                without_enrollment_token(&input),
                Ok(Some(expected)),
                "{input:?}"
            );
        }
        assert_eq!(without_enrollment_token(BASE), Ok(None));
    }

    #[test]
    fn a_token_that_cannot_be_cut_safely_is_left_alone() {
        let two_on_a_line = format!("{BASE}enrollment_token = \"abc\"; channel = \"dev\"\n");
        assert!(without_enrollment_token(&two_on_a_line).is_err());
        assert!(matches!(
            without_enrollment_token("server_url = "),
            Err(TokenEdit::Unparsable(_))
        ));
        // A token-looking line inside [policy] is not the setting: the
        // file does not parse as agent.toml at all, and is left alone.
        let in_policy = format!("{BASE}[policy]\nenrollment_token = \"abc\"\n");
        assert_eq!(without_enrollment_token(&in_policy), Ok(None));
    }

    #[test]
    fn a_token_is_presented_only_until_it_enrolled_this_key() {
        let me: Fingerprint = "0123456789abcdef0123".parse().unwrap();
        let other: Fingerprint = "ffffffffffffffffffff".parse().unwrap();
        let spent = token_sha256("tok");
        // (configured, spent, enrolled_as, presented)
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a Fingerprint>,
            Option<&'a str>,
        );
        let cases: [Case; 6] = [
            (Some("tok"), None, None, Some("tok")),
            (Some("tok"), None, Some(&me), None),
            // Enrolled as another key (identity regenerated): present it.
            (Some("tok"), None, Some(&other), Some("tok")),
            // Forgotten by the server (Rejected), but this token is spent.
            (Some("tok"), Some(&spent), None, None),
            // The operator put a new token in: it is presented.
            (Some("new"), Some(&spent), None, Some("new")),
            (None, None, None, None),
        ];
        for (configured, spent, enrolled, want) in cases {
            assert_eq!(
                token_to_present(configured, spent, enrolled, &me),
                want,
                "{configured:?} {spent:?} {enrolled:?}"
            );
        }
    }

    #[test]
    fn the_file_is_replaced_keeping_its_mode_and_a_read_only_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AGENT_TOML);
        let text = format!("{BASE}enrollment_token = \"abc\"\n{POLICY}");
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            remove_enrollment_token(dir.path()).unwrap(),
            Removal::Removed
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{BASE}{POLICY}")
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(
            remove_enrollment_token(dir.path()).unwrap(),
            Removal::Absent
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no leftovers"
        );

        // The replacement cannot be written (here: its temp name is taken
        // by a directory, which fails for root too): an error naming the
        // file, which stays as it was.
        std::fs::write(&path, &text).unwrap();
        let blocker = dir.path().join(format!(".{AGENT_TOML}.tmp"));
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let err = remove_enrollment_token(dir.path()).unwrap_err();
        assert!(matches!(err, RemovalError::Write { .. }), "{err}");
        assert!(err.to_string().contains("agent.toml"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::remove_dir_all(&blocker).unwrap();

        // A directory the agent cannot write: the same.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let result = remove_enrollment_token(dir.path());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // Root ignores permissions; the refusal is only observable otherwise.
        let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path).unwrap()) == 0;
        if !root {
            let err = result.unwrap_err();
            assert!(matches!(err, RemovalError::Write { .. }), "{err}");
            assert!(err.to_string().contains("agent.toml"), "{err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }
}
