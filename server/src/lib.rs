//! `outrider-server`: the central server of one Outrider installation.
//!
//! One process, one port, one embedded SQLite file. It serves
//! - the agent websocket endpoint ([`agent_ws`]): registration with
//!   key-possession proof, presence, config push, result ingest with acks;
//! - the admin REST API ([`api`]) used by the `outrider` CLI, behind a
//!   bearer token;
//! - the update repository of [`outrider_update_server`]: public read routes
//!   for stubs, admin upload routes for `outrider release`.
//!
//! Side effects come in as arguments: [`run`] takes a bound listener and a
//! shutdown token, which is what makes the end-to-end tests cheap.

pub mod agent_ws;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod events;
pub mod metrics;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use crate::config::ServerConfig;
use crate::store::Store;

/// How long shutdown waits for agent sessions to close before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a request handler or agent session needs, shared.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub releases: Arc<outrider_update_server::ReleaseStore>,
    pub sessions: agent_ws::Sessions,
    pub config: ServerConfig,
    pub admin_token: auth::Secret,
    pub enrollment_token: auth::Secret,
    /// Bumped whenever the check configuration changes; sessions push the
    /// new document to their agent.
    pub config_version: watch::Sender<u64>,
    /// Live event stream; ingest publishes each stored result with
    /// [`events::Events::result`].
    pub events: events::Events,
    /// Metric side: ingest counters, Graphite queue ([`metrics`]).
    pub metrics: metrics::Metrics,
    pub shutdown: CancellationToken,
    /// Agent sessions run as upgraded connections outside axum's graceful
    /// shutdown, so they are tracked here and awaited by [`run`].
    pub tasks: TaskTracker,
}

/// Runs the server on `listener` until `shutdown` is cancelled.
///
/// Fails when the data directory or the database cannot be opened, or when
/// serving fails; returns `Ok` after a clean shutdown.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir.join("outrider.db")).await?;
    let releases = outrider_update_server::ReleaseStore::open(&config.data_dir.join("releases"))
        .with_context(|| "opening the release store")?;
    let admin_token = auth::Secret::load_or_create(&config.data_dir.join("admin.token"), None)?;
    let enrollment_token = auth::Secret::load_or_create(
        &config.data_dir.join("enrollment.token"),
        config.enrollment_token.as_deref(),
    )?;
    let version = store.config_version().await?;
    let marked = store.mark_connected_down().await?;
    if marked > 0 {
        info!(
            agents = marked,
            "agents left connected by the previous run are marked down until they reconnect"
        );
    }
    let metric_side = metrics::Metrics::new(config.metrics.clone())?;
    let state = Arc::new(AppState {
        store,
        releases: Arc::new(releases),
        sessions: agent_ws::Sessions::default(),
        config,
        admin_token,
        enrollment_token,
        config_version: watch::Sender::new(version),
        events: events::Events::default(),
        metrics: metric_side,
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
    });
    metrics::spawn(&state);

    let addr = listener.local_addr().context("reading the bound address")?;
    if let Some(ready) = &state.config.ready_file {
        write_ready_file(ready, &addr.to_string())?;
    }
    info!(%addr, data_dir = %state.config.data_dir.display(), "outrider-server listening");

    let app = api::router(state.clone());
    let serve = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    serve.await.context("serving HTTP")?;

    state.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, state.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = state.tasks.len(),
            "agent sessions did not close within the grace period"
        );
    }
    info!("outrider-server stopped");
    Ok(())
}

/// Writes the bound address atomically so a supervisor (or a test) can find
/// the port when listening on port 0.
fn write_ready_file(path: &std::path::Path, addr: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
