//! Where update documents and blobs come from: the `Transport` trait and
//! its two implementations (HTTP(S) with Range, and a local directory laid
//! out like `outrider release export` writes it).
//!
//! Paths are relative to the repository root (`…/v1/updates/`):
//! `root.json`, `roots/<v>.json`, `channels/<c>/manifest.json`,
//! `blobs/<sha256>`. They are built from validated types only, and both
//! transports refuse anything with `..`, a leading `/` or a backslash.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::UpdateError;

/// An open body, positioned at `start`.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    /// The byte offset the body starts at: the requested offset when the
    /// source honoured it, 0 when it sent the whole document instead.
    pub start: u64,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// A source of update documents and blobs.
pub trait Transport {
    /// Opens `path` from byte `offset`; `Ok(None)` when it does not exist.
    fn open(&self, path: &str, offset: u64) -> Result<Option<Body>, UpdateError>;
    /// A printable location of `path`, for messages.
    fn locate(&self, path: &str) -> String;
}

fn check_path(path: &str) -> Result<(), UpdateError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(UpdateError::Transport {
            url: path.to_owned(),
            reason: "refusing an unsafe path".into(),
        });
    }
    Ok(())
}

/// HTTP(S) repository, e.g. `https://updates.example.com/v1/updates`.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    base: String,
    agent: ureq::Agent,
}

impl HttpTransport {
    /// A transport for the repository at `base` (no trailing slash needed),
    /// trusting for `https://` what `tls` trusts ([`crate::tls::client_config`]).
    pub fn new(base: &str, tls: Arc<rustls::ClientConfig>) -> HttpTransport {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .tls_config(tls)
            .build();
        HttpTransport {
            base: base.trim_end_matches('/').to_owned(),
            agent,
        }
    }
}

impl Transport for HttpTransport {
    fn open(&self, path: &str, offset: u64) -> Result<Option<Body>, UpdateError> {
        check_path(path)?;
        let url = self.locate(path);
        let mut request = self.agent.get(&url);
        if offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        match request.call() {
            Ok(resp) if resp.status() == 206 => {
                // Content-Range: bytes <start>-<end>/<total>
                let start = resp
                    .header("Content-Range")
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                match start {
                    Some(start) if start == offset => Ok(Some(Body {
                        reader: Box::new(resp.into_reader()),
                        start,
                    })),
                    _ => Err(UpdateError::Transport {
                        url,
                        reason: "206 response with a wrong Content-Range".into(),
                    }),
                }
            }
            Ok(resp) => Ok(Some(Body {
                reader: Box::new(resp.into_reader()),
                start: 0,
            })),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            // Our partial file is longer than the blob: start over.
            Err(ureq::Error::Status(416, _)) if offset > 0 => self.open(path, 0),
            Err(ureq::Error::Status(code @ (429 | 503), resp)) => Err(UpdateError::Backoff {
                url: format!("{url} (HTTP {code})"),
                retry_after_secs: resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse().ok()),
            }),
            Err(ureq::Error::Status(code, _)) => Err(UpdateError::Transport {
                url,
                reason: format!("HTTP {code}"),
            }),
            Err(ureq::Error::Transport(t)) => Err(UpdateError::Transport {
                url,
                reason: t.to_string(),
            }),
        }
    }

    fn locate(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }
}

/// A repository in a local directory (the `v1/updates` folder of an export).
#[derive(Debug, Clone)]
pub struct FileTransport {
    root: PathBuf,
}

impl FileTransport {
    /// A transport reading below `root`.
    pub fn new(root: impl Into<PathBuf>) -> FileTransport {
        FileTransport { root: root.into() }
    }
}

impl Transport for FileTransport {
    fn open(&self, path: &str, offset: u64) -> Result<Option<Body>, UpdateError> {
        check_path(path)?;
        let full = self.root.join(path);
        let io = |source| UpdateError::Io {
            action: "reading",
            path: full.clone(),
            source,
        };
        let mut file = match std::fs::File::open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let len = file.metadata().map_err(io)?.len();
        let start = if offset <= len { offset } else { 0 };
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        Ok(Some(Body {
            reader: Box::new(file),
            start,
        }))
    }

    fn locate(&self, path: &str) -> String {
        self.root.join(path).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "blobs/../../x",
            "a//b",
            "a\\b",
            "",
            "./x",
        ] {
            assert!(
                matches!(check_path(bad), Err(UpdateError::Transport { .. })),
                "{bad}"
            );
        }
        assert!(check_path("channels/dev/manifest.json").is_ok());
    }

    #[test]
    fn file_transport_reads_from_offset_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/x"), b"0123456789").unwrap();
        let t = FileTransport::new(dir.path());
        let mut body = t.open("blobs/x", 4).unwrap().unwrap();
        assert_eq!(body.start, 4);
        let mut rest = String::new();
        body.reader.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "456789");
        assert!(t.open("blobs/y", 0).unwrap().is_none());
    }
}
