//! A loopback HTTP/1.1 file server that can misbehave on purpose: the
//! fault-injecting peer of the download tests. Serves a directory; answers
//! `Range: bytes=N-` with 206 unless told to ignore ranges. Bounded: it
//! handles at most 64 connections and stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How the server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Correct behaviour.
    None,
    /// Sends 200 with the whole file even when a range was asked for.
    IgnoreRange,
    /// Closes the connection after this many body bytes (once), then behaves.
    CutOnceAfter(usize),
    /// Appends this many extra bytes to every body, without Content-Length.
    Endless(usize),
}

pub struct FaultyServer {
    pub url: String,
    stop: Arc<AtomicBool>,
    pub ranges_seen: Arc<Mutex<Vec<u64>>>,
    pub requests: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    addr: std::net::SocketAddr,
}

impl FaultyServer {
    /// Plain HTTP.
    pub fn start(root: PathBuf, fault: Fault) -> FaultyServer {
        FaultyServer::spawn(root, fault, None)
    }

    /// HTTPS with `tls` (its certificate for `localhost`), served at
    /// `https://localhost:<port>`.
    pub fn start_tls(root: PathBuf, tls: Arc<rustls::ServerConfig>) -> FaultyServer {
        FaultyServer::spawn(root, Fault::None, Some(tls))
    }

    fn spawn(root: PathBuf, fault: Fault, tls: Option<Arc<rustls::ServerConfig>>) -> FaultyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ranges_seen = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, r, q) = (stop.clone(), ranges_seen.clone(), requests.clone());
        let scheme = if tls.is_some() {
            "https://localhost"
        } else {
            "http://127.0.0.1"
        };
        let thread = std::thread::spawn(move || {
            let mut cut_done = false;
            for stream in listener.incoming().take(64) {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                q.fetch_add(1, Ordering::SeqCst);
                let fault = match fault {
                    Fault::CutOnceAfter(_) if cut_done => Fault::None,
                    Fault::CutOnceAfter(n) => {
                        cut_done = true;
                        Fault::CutOnceAfter(n)
                    }
                    other => other,
                };
                let _ = match &tls {
                    None => serve_one(stream, &root, fault, &r),
                    Some(config) => rustls::ServerConnection::new(config.clone())
                        .map_err(std::io::Error::other)
                        .and_then(|conn| {
                            let mut tls = rustls::StreamOwned::new(conn, stream);
                            serve_one(&mut tls, &root, fault, &r)?;
                            tls.conn.send_close_notify();
                            tls.flush()
                        }),
                };
            }
        });
        FaultyServer {
            url: format!("{scheme}:{}", addr.port()),
            stop,
            ranges_seen,
            requests,
            thread: Some(thread),
            addr,
        }
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one<S: Read + Write>(
    mut stream: S,
    root: &std::path::Path,
    fault: Fault,
    ranges: &Mutex<Vec<u64>>,
) -> std::io::Result<()> {
    // A GET has no body: nothing is left in the reader's buffer after the
    // headers, so the stream is written to directly afterwards.
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let mut range_start = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse::<u64>().ok();
        }
    }
    drop(reader);
    let mut out = stream;
    let Ok(body) = std::fs::read(root.join(&path)) else {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    if let Some(start) = range_start {
        ranges.lock().unwrap().push(start);
    }
    let (status, slice, extra_header) = match range_start {
        Some(start) if fault != Fault::IgnoreRange && (start as usize) < body.len() => (
            "206 Partial Content",
            &body[start as usize..],
            format!(
                "Content-Range: bytes {start}-{}/{}\r\n",
                body.len() - 1,
                body.len()
            ),
        ),
        _ => ("200 OK", &body[..], String::new()),
    };
    match fault {
        Fault::Endless(extra) => {
            write!(
                out,
                "HTTP/1.1 {status}\r\n{extra_header}Connection: close\r\n\r\n"
            )?;
            out.write_all(slice)?;
            out.write_all(&vec![b'A'; extra])?;
        }
        Fault::CutOnceAfter(n) => {
            write!(
                out,
                "HTTP/1.1 {status}\r\n{extra_header}Content-Length: {}\r\nConnection: close\r\n\r\n",
                slice.len()
            )?;
            out.write_all(&slice[..n.min(slice.len())])?;
        }
        _ => {
            write!(
                out,
                "HTTP/1.1 {status}\r\n{extra_header}Content-Length: {}\r\nConnection: close\r\n\r\n",
                slice.len()
            )?;
            out.write_all(slice)?;
        }
    }
    // One request per connection: dropping the stream closes it.
    Ok(())
}
