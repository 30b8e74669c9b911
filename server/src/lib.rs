//! `outrider-server`: the central server of one Outrider installation.
//!
//! One process, one port (HTTPS, or plain HTTP on loopback), one embedded
//! SQLite file — or one node of several sharing a PostgreSQL database
//! ([`cluster`], [`relay`]). It serves
//! - the agent websocket endpoint ([`agent_ws`]): registration with
//!   key-possession proof, presence, per-agent config push ([`configs`]),
//!   plugin downloads ([`plugins`]), RPCs ([`sessions`]), result ingest
//!   with acks;
//! - the admin REST API ([`api`]) used by the `outrider` CLI, behind a
//!   bearer token, and its live event stream ([`events`]);
//! - the update repository of [`outrider_update_server`]: public read routes
//!   for stubs, admin upload routes for `outrider release`;
//! - on a port of its own, the web dashboard ([`dashboard`]), for a
//!   browser logged in with the admin or the viewer token.
//!
//! Side effects come in as arguments: [`run`] takes a bound listener and a
//! shutdown token, which is what makes the end-to-end tests cheap.

pub mod agent_ws;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod configs;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod ingest;
pub mod install;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod nudges;
pub mod openapi;
pub mod plugins;
pub mod relay;
pub mod releases;
pub mod rpc;
pub mod serve;
pub mod sessions;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outrider_update_server::ArtefactStore;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
    /// Release artefacts: the directory store, or PostgreSQL on a shared
    /// database ([`releases`]).
    pub releases: releases::Releases,
    pub sessions: sessions::Sessions,
    /// Every agent's computed config document, shared by all sessions.
    pub configs: configs::ConfigCache,
    /// Plugin files: a directory, or PostgreSQL on a shared database.
    pub plugin_files: plugins::PluginFileBackend,
    pub config: ServerConfig,
    pub admin_token: auth::Secret,
    /// The dashboard's read-only login (`viewer.token`): sees, never acts.
    pub viewer_token: auth::Secret,
    /// One permit per authenticated agent session: the agent cap.
    pub agent_slots: Arc<Semaphore>,
    /// With several nodes, one permit per hello being answered
    /// (`--max-concurrent-hellos`; see `agent_ws::HELLO_QUEUE_WAIT`). One
    /// node on SQLite answers hellos as they come: its store orders the
    /// work, a hello costs it about a millisecond, and agents sent away
    /// would only come back later (10,000 reconnecting took 38 s with
    /// turns instead of 10 without).
    pub hellos: Option<Arc<Semaphore>>,
    /// Connection limits and refusal counters ([`limits`]).
    pub limits: Arc<limits::Limits>,
    /// Live event stream; ingest publishes each stored result with
    /// [`events::Events::result`].
    pub events: events::Events,
    /// Where committed results go ([`ingest`]).
    pub sinks: Vec<ingest::Sink>,
    /// The alert engine's driver ([`alerts`]).
    pub alerts: Arc<alerts::Alerts>,
    /// Metric side: ingest counters, Graphite queue ([`metrics`]).
    pub metrics: metrics::Metrics,
    /// Alert notification routing and delivery ([`notify`]).
    pub notifier: Arc<notify::Notifier>,
    /// Update nudges after release changes ([`nudges`]).
    pub nudges: Arc<nudges::Nudges>,
    /// This node's name: `local` on SQLite, else `--node-id` or the one
    /// kept in `<data-dir>/node.id` ([`cluster::node_id`]).
    pub node: backend::presence::NodeId,
    /// The bus to the other nodes sharing the database (`relay`); `None`
    /// on SQLite, one node.
    pub bus: Option<backend::postgres::bus::PgBus>,
    /// Whether this node's heartbeats reach the database (`cluster`).
    pub beat_health: cluster::BeatHealth,
    pub shutdown: CancellationToken,
    /// Agent sessions run as upgraded connections outside axum's graceful
    /// shutdown, so they are tracked here and awaited by [`run`].
    pub tasks: TaskTracker,
}

/// Runs the server on `listener`, without a dashboard, until `shutdown`
/// is cancelled; see [`run_with_dashboard`].
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_dashboard(config, listener, None, shutdown).await
}

/// Runs the server on `listener`, and the web dashboard on `dashboard`
/// when given, until `shutdown` is cancelled.
///
/// Fails when the configuration is invalid (see [`ServerConfig::validate`]),
/// the TLS files are unusable, the data directory or the database cannot be
/// opened, or serving fails; returns `Ok` after a clean shutdown.
pub async fn run_with_dashboard(
    mut config: ServerConfig,
    listener: TcpListener,
    dashboard: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let tls = config
        .tls()
        .map(|(cert, key)| listener::tls_acceptor(cert, key, &[]))
        .transpose()?;
    // The dashboard offers HTTP/2 to browsers (see `serve::Protocols`).
    let dashboard_tls = config
        .tls()
        .map(|(cert, key)| listener::tls_acceptor(cert, key, &[b"h2", b"http/1.1"]))
        .transpose()?;
    auth::prepare_data_dir(&config.data_dir)?;
    // Tokens given as files are read once, here.
    if let Some(file) = config.metrics.metrics_token_file.take() {
        config.metrics.metrics_token = Some(auth::read_token_file(&file)?);
    }
    let given_enrollment = match (&config.enrollment_token, &config.enrollment_token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(file)) => Some(auth::read_token_file(file)?),
        (None, None) => None,
    };
    let store = Store::open(&config.data_dir.join("outrider.db")).await?;
    let shared = cluster::connect(&config.cluster).await?;
    let (store, node) = match shared.clone() {
        Some(pg) => {
            let node = cluster::node_id(config.cluster.node_id.clone(), &config.data_dir)?;
            info!(%node, "sharing the --database with the other nodes; metrics stay in this node's file");
            (store.with_postgres(pg, node.clone()), node)
        }
        None => (
            store,
            cluster::SQLITE_NODE.parse().expect("a valid node id"),
        ),
    };
    // On a shared database every node serves every update and plugin
    // request from it; otherwise the data directory holds them.
    let releases = match &shared {
        Some(pg) => releases::Releases::postgres(backend::PgArtefacts::new(
            pg.clone(),
            config.shared_release_caps(),
        )),
        None => releases::Releases::directory(
            outrider_update_server::ReleaseStore::open_with_caps(
                &config.data_dir.join("releases"),
                config.release_caps(),
            )
            .with_context(|| "opening the release store")?,
        ),
    };
    let admin_token = auth::Secret::load_or_create(&config.data_dir.join("admin.token"), None)?;
    let viewer_token = auth::Secret::load_or_create(&config.data_dir.join("viewer.token"), None)?;
    let enrollment_token = auth::Secret::load_or_create(
        &config.data_dir.join("enrollment.token"),
        given_enrollment.as_deref(),
    )?;
    // The server's own token is a row of the store like the others: it
    // expires, may be limited and can be revoked (store/tokens.rs).
    let bootstrap = store
        .ensure_bootstrap_token(store::BootstrapToken {
            secret: enrollment_token.expose().to_owned(),
            expires_in_secs: config.enrollment_token_expires_in_secs,
            uses: config.enrollment_token_max_uses,
        })
        .await?;
    match store::token_status(&bootstrap, store::now_ms()) {
        Some(status) => warn!(
            "the bootstrap enrollment token ({}) is {status}; create enrollment tokens with \
             `outrider tokens create`, or delete it to have a new one generated",
            config.data_dir.join("enrollment.token").display()
        ),
        None => info!(
            expires_at_ms = bootstrap.expires_at_ms,
            "bootstrap enrollment token in {}",
            config.data_dir.join("enrollment.token").display()
        ),
    }
    let plugin_files = match &shared {
        Some(pg) => plugins::PluginFileBackend::Postgres(backend::PgPluginFiles::new(pg.clone())),
        None => plugins::PluginFileBackend::Directory(plugins::PluginFiles::open(
            &config.data_dir.join("plugins"),
        )?),
    };
    // One node: whatever the previous run left connected is down until it
    // reconnects. Several: other nodes hold sessions; the presence sweep
    // ends this node's old ones (cluster::sweep).
    let marked = if store.is_shared() {
        0
    } else {
        store.mark_connected_down().await?
    };
    if marked > 0 {
        info!(
            agents = marked,
            "agents left connected by the previous run are marked down until they reconnect"
        );
    }
    let bound = listener.local_addr().context("reading the bound address")?;
    let mut metric_side = metrics::Metrics::new(config.metrics.clone(), bound)?;
    let remote_write = match &config.metrics.remote_write_url {
        Some(url) => {
            let m = &config.metrics;
            let settings = metrics::remote_write::Settings {
                url: metrics::remote_write::check_url(url)?,
                queue_dir: metrics::remote_write::queue_dir(&config.data_dir),
                queue_bytes: m.remote_write_queue_bytes,
                batch_samples: m.remote_write_batch_samples as usize,
                flush_interval: Duration::from_millis(m.remote_write_flush_interval_ms),
                timeout: Duration::from_secs(m.remote_write_timeout_secs),
                auth: match (
                    &m.remote_write_bearer_token_file,
                    &m.remote_write_basic_auth_user,
                    &m.remote_write_basic_auth_password_file,
                ) {
                    (Some(file), _, _) => metrics::remote_write::Auth::Bearer(
                        auth::read_token_file(file).context("--remote-write-bearer-token-file")?,
                    ),
                    (None, Some(user), Some(file)) => metrics::remote_write::Auth::Basic {
                        user: user.clone(),
                        password: auth::read_token_file(file)
                            .context("--remote-write-basic-auth-password-file")?,
                    },
                    // MetricsConfig::validate refused half a basic auth.
                    _ => metrics::remote_write::Auth::None,
                },
            };
            let (feed, worker) =
                metrics::remote_write::open(settings).context("opening the remote_write queue")?;
            metric_side.remote_write = Some(feed);
            Some(worker)
        }
        None => None,
    };
    if let metrics::MetricsAccess::Closed { listen } = &metric_side.access {
        warn!(
            %listen,
            "no metrics token and not listening on loopback: GET /metrics answers 401 until the server runs with --metrics-token-file"
        );
    }
    let alerting = match &config.alerting_config {
        Some(path) => alerts::load_config(path)?,
        None => config.alerting.clone(),
    };
    let started_ms = u64::try_from(store::now_ms()).unwrap_or(0);
    // The outbox's doorbell: the alert driver rings it, the notifier answers.
    let outbox_rows = Arc::new(tokio::sync::Notify::new());
    let notifier =
        Arc::new(notify::Notifier::new(outbox_rows.clone()).context("starting the notifier")?);
    let goodbye_grace = Duration::from_millis(config.alert_goodbye_grace_ms);
    // Several nodes: no engine here unless this node leads alert
    // evaluation (`alerts::lead`, below); what it observes goes to the
    // shared log through the appender.
    let (alerts, appender) = match &shared {
        Some(pg) => {
            let (alerts, appender) = alerts::Alerts::shared(
                store.clone(),
                pg.clone(),
                alerting,
                goodbye_grace,
                outbox_rows,
            );
            (alerts, Some(appender))
        }
        None => (
            alerts::Alerts::start(
                store.clone(),
                alerting,
                goodbye_grace,
                started_ms,
                outbox_rows,
            )
            .await
            .context("starting alerting")?,
            None,
        ),
    };
    let alerts = Arc::new(if config.no_alerting {
        info!("alerting is off (--no-alerting): nothing is decided or sent");
        alerts.disabled()
    } else {
        alerts
    });
    let sinks = ingest::sinks(
        metric_side.graphite.clone(),
        metric_side.remote_write.clone(),
        alerts.clone(),
    );
    let nudges = Arc::new(nudges::Nudges::new(Duration::from_secs(
        config.nudge_window_secs,
    )));
    // Several nodes: the bus to the others, started before the state that
    // holds it; its tasks stop with `shutdown` and are awaited with the
    // sessions.
    let (bus, bus_incoming, bus_tasks) = match &shared {
        Some(pg) => {
            let (bus, incoming, tasks) = backend::postgres::bus::PgBus::start(
                pg.clone(),
                pg.listen_config(),
                node.clone(),
                backend::bus::BusConfig::default(),
                shutdown.clone(),
            );
            (Some(bus), Some(incoming), Some(tasks))
        }
        None => (None, None, None),
    };
    releases.set_manifest_hook({
        let nudges = nudges.clone();
        let bus = bus.clone();
        let runtime = tokio::runtime::Handle::current();
        Box::new(move |channel, sequence| match &bus {
            // Every node, this one included, nudges its own agents.
            Some(bus) => {
                let (bus, channel) = (bus.clone(), channel.as_str().to_owned());
                runtime
                    .spawn(async move { relay::nudge_scheduled(&bus, &channel, sequence).await });
            }
            None => {
                nudges.schedule(channel.as_str(), sequence);
            }
        })
    });
    let state = Arc::new(AppState {
        notifier: notifier.clone(),
        store,
        releases,
        nudges: nudges.clone(),
        sessions: sessions::Sessions::default(),
        configs: configs::ConfigCache::default(),
        plugin_files,
        agent_slots: Arc::new(Semaphore::new(config.max_agent_connections)),
        hellos: shared
            .is_some()
            .then(|| Arc::new(Semaphore::new(config.max_concurrent_hellos))),
        limits: limits::Limits::new(config.limit_settings()),
        config,
        admin_token,
        viewer_token,
        events: events::Events::default(),
        sinks,
        alerts: alerts.clone(),
        metrics: metric_side,
        node,
        bus,
        beat_health: Default::default(),
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
    });
    // Before any task is spawned: a failure here has nothing to stop.
    configs::refresh(&state, None)
        .await
        .context("computing agent configs")?;
    metrics::spawn(&state);
    if let (Some(incoming), Some(tasks)) = (bus_incoming, bus_tasks) {
        relay::start(&state, incoming);
        state.tasks.spawn(tasks.join());
    }
    if state.store.is_shared() {
        state
            .tasks
            .spawn(cluster::heartbeat(state.clone(), shutdown.clone()));
        state.tasks.spawn(cluster::singleton(
            state.clone(),
            backend::leader::Job::PresenceSweep,
            shutdown.clone(),
            cluster::sweep,
        ));
        state.tasks.spawn(cluster::singleton(
            state.clone(),
            backend::leader::Job::Retention,
            shutdown.clone(),
            |state, cancel| {
                metrics::retention::run(
                    state.store.clone(),
                    metrics::retention::Policy::from_config(&state.metrics.config),
                    metrics::retention::Parts::RESULTS,
                    cancel,
                )
            },
        ));
        state.tasks.spawn(cluster::singleton(
            state.clone(),
            backend::leader::Job::ReleaseGc,
            shutdown.clone(),
            releases::collect_garbage,
        ));
        if !state.config.no_alerting {
            if let Some(appender) = appender {
                state.tasks.spawn(appender.run(shutdown.clone()));
            }
            state.tasks.spawn(cluster::singleton_with_term(
                state.clone(),
                backend::leader::Job::AlertEvaluation,
                shutdown.clone(),
                alerts::lead,
            ));
        }
    }
    state.tasks.spawn({
        let shutdown = shutdown.clone();
        async move { nudges.run(shutdown).await }
    });
    state.tasks.spawn(alerts::run(
        alerts,
        Duration::from_millis(state.config.alert_tick_ms),
        shutdown.clone(),
    ));

    state.tasks.spawn({
        let shutdown = shutdown.clone();
        let store = state.store.clone();
        async move { notifier.run(store, shutdown).await }
    });

    let addr = listener.local_addr().context("reading the bound address")?;
    if let Some(ready) = &state.config.ready_file {
        write_ready_file(ready, &addr.to_string())?;
    }
    info!(%addr, tls = tls.is_some(), data_dir = %state.config.data_dir.display(), "outrider-server listening");
    let base = match &state.config.public_url {
        Some(url) => url.as_str().to_owned(),
        None => format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
    };
    let root = state.releases.root().await.ok().flatten();
    info!(
        command = %install::install_command(&base, root.as_deref()),
        "install agents with (set --public-url when agents reach this server by another name)"
    );

    let app = api::router(state.clone());
    let dashboard = match dashboard {
        Some(listener) => {
            let addr = listener
                .local_addr()
                .context("reading the dashboard's address")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            info!(url = %format!("{scheme}://{addr}/"), "dashboard listening; log in with admin.token or viewer.token");
            Some((
                listener,
                dashboard::start(state.clone(), base.clone()).await?,
            ))
        }
        None => None,
    };
    // remote_write stops last: agent sessions commit results until they
    // close, and what they commit must still reach its queue. Its own
    // token is cancelled once the sessions are done (below). Spawned here,
    // after the last fallible step, so no early return leaves it running.
    let remote_write = remote_write.map(|worker| {
        info!(url = ?state.config.metrics.remote_write_url, "forwarding to a remote_write receiver");
        let stop = CancellationToken::new();
        let task = tokio::spawn(metrics::remote_write::run(
            worker,
            state.store.clone(),
            stop.clone(),
        ));
        (stop, task)
    });
    let accept = listener::AcceptSettings {
        rate_per_sec: state.config.accept_rate_per_sec,
        limits: state.limits.clone(),
        write_stall: Duration::from_secs(state.config.http_idle_timeout_secs),
    };
    let header_timeout = Duration::from_secs(state.config.http_header_timeout_secs);
    let handshake = Duration::from_secs(state.config.tls_handshake_timeout_secs);
    // Both ports share the connection limits; either serve loop returns
    // only at shutdown.
    let serve_on = |listener: TcpListener,
                    app: axum::Router,
                    tls: Option<tokio_rustls::TlsAcceptor>,
                    protocols: serve::Protocols| {
        let (accept, shutdown) = (accept.clone(), shutdown.clone());
        async move {
            match tls {
                Some(acceptor) => {
                    let listener =
                        listener::TlsListener::new(listener, accept, acceptor, handshake);
                    serve::serve(listener, app, header_timeout, protocols, &shutdown).await
                }
                None => {
                    let listener = listener::PlainListener::new(listener, accept);
                    serve::serve(listener, app, header_timeout, protocols, &shutdown).await
                }
            }
        }
    };
    let api = serve_on(listener, app, tls, serve::Protocols::Http1);
    match dashboard {
        Some((dash_listener, dash_app)) => {
            let dash = serve_on(
                dash_listener,
                dash_app,
                dashboard_tls,
                serve::Protocols::Http1And2,
            );
            tokio::join!(api, dash);
        }
        None => api.await,
    }
    // Serving failed or shutdown began: either way every task stops now.
    shutdown.cancel();
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
    if let Some((stop, task)) = remote_write {
        stop.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            warn!("remote_write did not write its last batch to its queue within the grace period");
        }
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
