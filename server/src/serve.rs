//! The HTTP serve loop: axum's router on hyper's connections, with what
//! `axum::serve` does not offer — a header-read timeout — and each
//! connection's [`ConnHandle`] handed to the handlers. The API port speaks
//! HTTP/1 (with upgrades, for agents' websockets); the dashboard's port
//! also HTTP/2 ([`Protocols`]), which browsers speak over TLS when ALPN
//! offers it, so each tab's live stream is not one of HTTP/1's six
//! connections per host.
//!
//! hyper starts the header-read timeout whenever it waits for a request:
//! on a fresh connection and between two requests of a keep-alive one. So
//! one timeout closes both a slowloris client (headers trickled a byte at
//! a time) and an idle keep-alive connection. Writes the client does not
//! take are bounded by [`crate::limits::Guarded`]; websocket sessions,
//! once upgraded, leave hyper and bound themselves
//! ([`crate::agent_ws`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as AutoBuilder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use tracing::{debug, warn};

use crate::limits::{ConnHandle, Guarded};
use crate::listener::ConnAddrs;

/// How long shutdown waits for open requests to finish.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Streams one HTTP/2 connection may have open at once (a browser's tabs'
/// live streams and their page loads).
const MAX_H2_STREAMS: u32 = 64;

/// What a port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1 with upgrades: the API and the agents' websockets.
    Http1,
    /// HTTP/1.1 or HTTP/2, as the client's first bytes say (no upgrades):
    /// the dashboard.
    Http1And2,
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests
/// finish (for at most `DRAIN_GRACE`, 5 s).
pub async fn serve<L, S>(
    mut listener: L,
    app: Router,
    header_timeout: Duration,
    protocols: Protocols,
    shutdown: &CancellationToken,
) where
    L: Listener<Io = Guarded<S>, Addr = ConnAddrs>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let (io, addrs) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let handle: Arc<ConnHandle> = io.handle().clone();
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(addrs));
            request.extensions_mut().insert(handle.clone());
            let mut app = app.clone();
            app.call(request)
        });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let served = match protocols {
                Protocols::Http1 => {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout);
                    let conn = builder
                        .serve_connection(TokioIo::new(io), service)
                        .with_upgrades();
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        served = conn.as_mut() => served.map_err(Into::into),
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await.map_err(Into::into)
                        }
                    }
                }
                Protocols::Http1And2 => {
                    let mut builder = AutoBuilder::new(TokioExecutor::new());
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout);
                    builder
                        .http2()
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(MAX_H2_STREAMS)
                        // Pings find a browser that went away, so its
                        // live streams end.
                        .keep_alive_interval(header_timeout)
                        .keep_alive_timeout(header_timeout);
                    let conn = builder.serve_connection(TokioIo::new(io), service);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        served = conn.as_mut() => served,
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = served {
                debug!(remote = %addrs.remote, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_GRACE, connections.wait())
        .await
        .is_err()
    {
        warn!(
            left = connections.len(),
            "HTTP connections did not finish within the grace period"
        );
    }
}
