//! Accepting connections: an accept rate limit, the connection limits of
//! [`crate::limits`], optional TLS, and the local/remote address pair every
//! request can read ([`ConnAddrs`]).
//!
//! Both listeners implement [`axum::serve::Listener`], so the same serve
//! loop ([`crate::serve`]) runs plain HTTP (development, loopback) and
//! HTTPS. Each accepted socket first takes a [`crate::limits::Ticket`]
//! (refused sockets are closed at once, before any TLS work). TLS handshakes
//! run as tasks owned by the listener — at most [`MAX_HANDSHAKES`] at once,
//! each bounded by the handshake timeout — so one slow client never stalls
//! the accept loop; dropping the listener (at shutdown) aborts those in
//! flight.
//!
//! The rate limit is a token bucket: a reconnect storm of thousands of
//! agents is admitted at `rate` per second (with a burst of one second's
//! worth) instead of all at once, which keeps handshakes and registrations
//! from starving established sessions. It paces only connections the
//! per-address limits admitted: refused ones are accepted and closed at
//! full speed, so a flood from a few addresses drains out of the kernel's
//! accept queue instead of delaying everyone queued behind it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::limits::{ConnHandle, Guarded, Limits};

/// TLS handshakes in flight at once; further connections wait in the
/// kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 256;

/// Default time a client has to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`, 4096 on current kernels). std's and tokio's
/// default of 1024 overflowed under a handshake flood: while the accept
/// loop waited for handshake room, the kernel dropped SYNs and reset
/// half-open connections of everyone, not just the flooding addresses
/// (docs/security.md, "Denial of service").
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as std does,
/// so a restart does not wait for old connections in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Both ends of an accepted connection; request handlers read it as
/// `ConnectInfo<ConnAddrs>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAddrs {
    /// The server's address the client reached.
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What both listeners need besides the socket.
#[derive(Clone, Debug)]
pub struct AcceptSettings {
    /// New connections per second server-wide (0: unlimited).
    pub rate_per_sec: u32,
    pub limits: Arc<Limits>,
    /// How long a write may wait for the client before the connection is
    /// closed ([`crate::limits::Guarded`]).
    pub write_stall: Duration,
}

/// A token bucket admitting `rate` accepts per second, bursting to `rate`.
#[derive(Debug)]
pub struct AcceptLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl AcceptLimit {
    /// `rate_per_sec` of 0 means unlimited.
    pub fn new(rate_per_sec: u32) -> AcceptLimit {
        AcceptLimit {
            rate: f64::from(rate_per_sec),
            tokens: f64::from(rate_per_sec),
            last: Instant::now(),
        }
    }

    /// Waits until one more connection may be accepted.
    pub async fn admit(&mut self) {
        if self.rate <= 0.0 {
            return;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.last = Instant::now();
            self.tokens = 0.0;
        } else {
            self.tokens -= 1.0;
        }
    }
}

async fn accept_tcp(
    inner: &TcpListener,
    limit: &mut AcceptLimit,
    limits: &Arc<Limits>,
) -> (TcpStream, ConnAddrs, Arc<ConnHandle>) {
    loop {
        match inner.accept().await {
            Ok((stream, remote)) => {
                let ticket = match limits.admit(remote.ip()) {
                    Ok(ticket) => ticket,
                    Err(refusal) => {
                        // Closed at once: a refused socket costs no
                        // handshake and holds nothing.
                        debug!(%remote, "connection refused: {refusal}");
                        continue;
                    }
                };
                // Only admitted connections are paced: refusing is cheap,
                // and pacing refusals too would leave everyone else
                // queued behind a flood in the kernel's accept queue.
                limit.admit().await;
                let _ = stream.set_nodelay(true);
                let local = match stream.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        debug!("accepted socket has no local address: {e}");
                        continue;
                    }
                };
                return (stream, ConnAddrs { local, remote }, ConnHandle::new(ticket));
            }
            Err(e) => {
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Plain TCP with the accept rate limit and the connection limits.
#[derive(Debug)]
pub struct PlainListener {
    inner: TcpListener,
    limit: AcceptLimit,
    settings: AcceptSettings,
}

impl PlainListener {
    pub fn new(inner: TcpListener, settings: AcceptSettings) -> PlainListener {
        PlainListener {
            inner,
            limit: AcceptLimit::new(settings.rate_per_sec),
            settings,
        }
    }
}

impl Listener for PlainListener {
    type Io = Guarded<TcpStream>;
    type Addr = ConnAddrs;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addrs, handle) =
            accept_tcp(&self.inner, &mut self.limit, &self.settings.limits).await;
        (
            Guarded::new(stream, handle, self.settings.write_stall),
            addrs,
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        let local = self.inner.local_addr()?;
        Ok(ConnAddrs {
            local,
            remote: local,
        })
    }
}

type Handshake = Option<(Guarded<TlsStream<TcpStream>>, ConnAddrs)>;

/// TLS over TCP with the accept rate limit, the connection limits and
/// bounded concurrent handshakes.
pub struct TlsListener {
    inner: TcpListener,
    limit: AcceptLimit,
    settings: AcceptSettings,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    handshakes: JoinSet<Handshake>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("inner", &self.inner)
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    pub fn new(
        inner: TcpListener,
        settings: AcceptSettings,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
    ) -> Self {
        TlsListener {
            inner,
            limit: AcceptLimit::new(settings.rate_per_sec),
            settings,
            acceptor,
            handshake_timeout,
            handshakes: JoinSet::new(),
        }
    }
}

impl Listener for TlsListener {
    type Io = Guarded<TlsStream<TcpStream>>;
    type Addr = ConnAddrs;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
                (stream, addrs, handle) = accept_tcp(&self.inner, &mut self.limit, &self.settings.limits), if room => {
                    let acceptor = self.acceptor.clone();
                    let (timeout, stall) = (self.handshake_timeout, self.settings.write_stall);
                    let limits = self.settings.limits.clone();
                    // The handle (and so the ticket) lives in the task: a
                    // failed handshake gives it back.
                    self.handshakes.spawn(async move {
                        let failed = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => return Some((Guarded::new(tls, handle, stall), addrs)),
                            Ok(Err(e)) => format!("TLS handshake failed: {e}"),
                            Err(_) => "TLS handshake timed out".to_owned(),
                        };
                        limits.refusals.tls_handshake.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        debug!(remote = %addrs.remote, "{failed}");
                        None
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        let local = self.inner.local_addr()?;
        Ok(ConnAddrs {
            local,
            remote: local,
        })
    }
}

/// Builds a TLS acceptor (ring provider, TLS 1.2 and 1.3) from a PEM
/// certificate chain and a PEM private key, offering the `alpn` protocols
/// (none: the client's choice is not asked, HTTP/1.1 is spoken).
///
/// Fails with a message naming the file when either cannot be read or
/// parsed, or when the key does not match the certificate.
pub fn tls_acceptor(
    cert_path: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS certificates from {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading the TLS private key from {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key in {} does not fit the certificate in {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_accept_limit_admits_a_burst_then_the_rate() {
        let mut limit = AcceptLimit::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            limit.admit().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is immediate");
        for _ in 0..5 {
            limit.admit().await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(499) && waited <= Duration::from_millis(520),
            "5 more at 10/s take about 0.5 s, took {waited:?}"
        );
    }

    #[tokio::test]
    async fn unreadable_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let Err(err) = tls_acceptor(&cert, &dir.path().join("key.pem"), &[]) else {
            panic!("a bad certificate file was accepted");
        };
        let err = format!("{err:#}");
        assert!(err.contains("cert.pem"), "{err}");
    }
}
