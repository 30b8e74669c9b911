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
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// HTTP(S) repository, e.g. `https://updates.example.com/v1/updates`, or
/// several copies of one (the nodes of a server): a request goes to the
/// copy that answered last and moves on to the next when that one cannot
/// be reached (a connection or TLS failure, or an HTTP 5xx other than 503);
/// any other answer, a 404 included, is the repository's. Safe because
/// every document is verified against the trusted root, whichever node
/// served it.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    /// At least one base URL, without a trailing slash.
    bases: Vec<String>,
    /// Index into `bases` of the copy that answered last.
    current: Arc<AtomicUsize>,
    agent: ureq::Agent,
}

impl HttpTransport {
    /// A transport for the repository at `base` (no trailing slash needed),
    /// trusting for `https://` what `tls` trusts ([`crate::tls::client_config`]).
    pub fn new(base: &str, tls: Arc<rustls::ClientConfig>) -> HttpTransport {
        HttpTransport::with_copies(&[base.to_owned()], tls)
    }

    /// A transport for a repository served at each of `bases` (an empty
    /// list means none: every request fails), tried in this order first.
    pub fn with_copies(bases: &[String], tls: Arc<rustls::ClientConfig>) -> HttpTransport {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .tls_config(tls)
            .build();
        HttpTransport {
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            current: Arc::new(AtomicUsize::new(0)),
            agent,
        }
    }

    /// Opens `path` at the copy `base`: the outer error means this copy
    /// cannot be reached (try the next), the inner result is the answer.
    fn open_at(
        &self,
        base: &str,
        path: &str,
        offset: u64,
    ) -> Result<Result<Option<Body>, UpdateError>, UpdateError> {
        let url = format!("{base}/{path}");
        let mut request = self.agent.get(&url);
        if offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
        }
        match request.call() {
            Ok(resp) if resp.status() == 206 => Ok({
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
            }),
            Ok(resp) => Ok(Ok(Some(Body {
                reader: Box::new(resp.into_reader()),
                start: 0,
            }))),
            Err(ureq::Error::Status(404, _)) => Ok(Ok(None)),
            // Our partial file is longer than the blob: start over.
            Err(ureq::Error::Status(416, _)) if offset > 0 => self.open_at(base, path, 0),
            Err(ureq::Error::Status(code @ (429 | 503), resp)) => Ok(Err(UpdateError::Backoff {
                url: format!("{url} (HTTP {code})"),
                retry_after_secs: resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse().ok()),
            })),
            Err(ureq::Error::Status(code, _)) => {
                let failed = UpdateError::Transport {
                    url,
                    reason: format!("HTTP {code}"),
                };
                if code >= 500 {
                    Err(failed)
                } else {
                    Ok(Err(failed))
                }
            }
            Err(ureq::Error::Transport(t)) => Err(UpdateError::Transport {
                url,
                reason: t.to_string(),
            }),
        }
    }
}

impl Transport for HttpTransport {
    fn open(&self, path: &str, offset: u64) -> Result<Option<Body>, UpdateError> {
        check_path(path)?;
        let first = self.current.load(Ordering::Relaxed);
        let mut unreachable = UpdateError::Transport {
            url: path.to_owned(),
            reason: "no repository URL configured".into(),
        };
        for i in 0..self.bases.len() {
            let at = (first + i) % self.bases.len();
            match self.open_at(&self.bases[at], path, offset) {
                Ok(answer) => {
                    self.current.store(at, Ordering::Relaxed);
                    return answer;
                }
                Err(e) => unreachable = e,
            }
        }
        Err(unreachable)
    }

    fn locate(&self, path: &str) -> String {
        let at = self.current.load(Ordering::Relaxed);
        let base = self.bases.get(at).map_or("", String::as_str);
        format!("{base}/{path}")
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
