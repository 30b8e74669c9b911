//! The agent's top level: one runtime, one shutdown tree.
//!
//! [`run_agent`] loads the identity, builds the tokio runtime, runs the
//! scheduler, the collector supervisor and the connection until the stop
//! token fires, stops every check (killing running plugins) and collector
//! (killing its process group), and returns the state blob for the next
//! generation. The runtime is dropped before returning, which joins every
//! thread it started, so the caller (the stub's generation thread, or a test)
//! can unload the library afterwards.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio_util::sync::CancellationToken;

use crate::collectors::{Supervisor, SupervisorSettings, assigned};
use crate::config::AgentSettings;
use crate::connection::{AgentParts, Connection};
use crate::error::AgentError;
use crate::host::HostHooks;
use crate::identity::Identity;
use crate::listeners::Listeners;
use crate::outbox::{Handover, Outbox, SharedOutbox};
use crate::scheduler::Scheduler;
use crate::state::StateBlob;

/// Runs the agent until `stop` is cancelled and returns the state blob.
///
/// Fails before starting when the identity key cannot be loaded or created,
/// or the runtime cannot be built; once running, network and plugin problems
/// are logged and retried, never returned.
pub fn run_agent(
    settings: AgentSettings,
    stop: CancellationToken,
    hooks: Arc<dyn HostHooks>,
) -> Result<StateBlob, AgentError> {
    run_with_stop_fd(settings, stop, None, hooks)
}

/// [`run_agent`], additionally stopping when `stop_fd` becomes readable (the
/// stub's stop pipe; never read, only watched).
pub(crate) fn run_with_stop_fd(
    settings: AgentSettings,
    stop: CancellationToken,
    stop_fd: Option<OwnedFd>,
    hooks: Arc<dyn HostHooks>,
) -> Result<StateBlob, AgentError> {
    let identity = Identity::load_or_create(&settings.config_dir)?;
    // Before the runtime: reads the system's CA store from disk.
    let tls = crate::tls::client_config(&settings.extra_roots, hooks.as_ref())?;
    // current_thread: the agent is I/O-bound (sockets, pipes, pidfds), so one
    // thread — the stub's generation thread itself — does all the work. The
    // only other threads are tokio's blocking pool (DNS lookups), which the
    // runtime's drop joins. Fewer threads, nothing to leak on unload.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(AgentError::Runtime)?;
    let result = runtime.block_on(async {
        let watcher = watch_stop_fd(stop_fd, &stop, &hooks);
        let agent = agent_main(&settings, &identity, tls, &stop, &hooks);
        let (watched, state) = tokio::join!(watcher, agent);
        watched.and(state)
    });
    // Joins the blocking pool; must happen before the library can be unloaded.
    drop(runtime);
    result
}

async fn agent_main(
    settings: &AgentSettings,
    identity: &Identity,
    tls: Arc<rustls::ClientConfig>,
    stop: &CancellationToken,
    hooks: &Arc<dyn HostHooks>,
) -> Result<StateBlob, AgentError> {
    let mut state = match StateBlob::decode(&settings.state_in) {
        Ok(state) => state,
        Err(e) => {
            hooks.error(&format!(
                "{e}; starting without the previous generation's state"
            ));
            None
        }
    };
    let spool_dir = settings.data_dir.join("spool");
    let carried = state.as_mut().map(|s| Handover {
        next_seq: s.next_seq,
        seq_synced: s.seq_synced,
        unacked: std::mem::take(&mut s.unacked),
    });
    let outbox = match Outbox::open(
        &spool_dir,
        carried.as_ref(),
        settings.agent.spool_limits(),
        hooks.clone(),
    ) {
        Ok(outbox) => Arc::new(SharedOutbox::new(outbox)),
        Err(source) => {
            // Ends the stop-fd watcher too: nothing runs without a spool.
            stop.cancel();
            return Err(AgentError::Spool {
                path: spool_dir,
                source,
            });
        }
    };
    report_update_events(&settings.events, &outbox);
    let mut scheduler = Scheduler::new(
        outbox.clone(),
        hooks.clone(),
        stop.child_token(),
        &settings.data_dir,
        settings.policy.clone(),
    );
    if let Some(state) = &state {
        scheduler.carry_next_runs(&state.next_runs);
    }
    // Collectors run under the same shutdown tree. Their definitions come
    // from the server's config (`collectors/assigned.rs`), or, until it sends
    // them, from the last set saved on disk; across a hot swap, the
    // processes are adopted from the previous generation (below).
    // Not a child of `stop`: at the stop, this function first asks the host
    // whether a generation that adopts follows, then either hands the
    // collectors over or stops them (both below, on every path out of the
    // running agent); a task that saw `stop` itself would stop its process
    // before that decision.
    let mut collectors = Supervisor::new(
        SupervisorSettings::new(&settings.data_dir, settings.policy.clone()),
        outbox.clone(),
        hooks.clone(),
        CancellationToken::new(),
    );
    // Collectors the previous generation left running: adopted, not
    // restarted (their definitions come with them).
    if let Some(handed) = state.as_mut().map(|s| std::mem::take(&mut s.collectors))
        && !handed.is_empty()
    {
        let summary = collectors.adopt(handed).await;
        hooks.info(&format!(
            "collectors taken over from the previous generation: {:?}",
            summary.started
        ));
    }
    // Early, so that a lent socket's queue is read again soon after a swap.
    let listeners = Listeners::start(
        &settings.listeners,
        state.as_ref().and_then(|s| s.listeners_ok),
        hooks.clone(),
        outbox.clone(),
        collectors.data_signal(),
        stop.child_token(),
    );
    let (assignments, assigned) = tokio::sync::watch::channel(None);
    let follow = assigned::Follow {
        data_dir: settings.data_dir.clone(),
        policy: settings.policy.clone(),
        report: outbox.clone(),
        hooks: hooks.clone(),
        stop: stop.clone(),
    };
    let collectors = assigned::follow(collectors, assigned, follow);
    // The carried config was validated by the generation that applied it,
    // which may be an older build with other rules: validate it again (a
    // plugin hash becomes a file path). A refused one is simply not run;
    // the server sends its config on connect.
    if let Some(config) = state.as_ref().and_then(|s| s.config.as_ref()) {
        match config.validate() {
            Ok(()) => {
                scheduler.apply(config);
            }
            Err(e) => hooks.error(&format!(
                "the previous generation's config version {} is invalid ({e}); waiting for the \
                 server's",
                config.version
            )),
        }
    }
    let servers: Vec<&str> = settings
        .endpoints
        .iter()
        .map(|e| e.ws_url.as_str())
        .collect();
    hooks.info(&format!(
        "agent {} starting as {}, server {}, {} results carried over",
        env!("CARGO_PKG_VERSION"),
        identity.fingerprint(),
        servers.join(" "),
        outbox.lock().len()
    ));

    // The stub's update outcomes: at start, then every few seconds.
    let seen = state.as_ref().map_or(0, |s| s.update_events_seen);
    let seen = crate::update_events::take_and_queue(hooks.as_ref(), &outbox, seen);
    let carried = state.as_ref().and_then(|s| s.connection.clone());
    let parts = AgentParts {
        settings,
        identity,
        outbox: &outbox,
        hooks,
        stop,
        collectors: &assignments,
    };
    let mut connection = Connection::new(parts, tls, carried);
    // The syncer and the event poll stop with `stop`, like the connection.
    let events = crate::update_events::poll(
        hooks.clone(),
        outbox.clone(),
        seen,
        settings.update_events_poll,
        stop.clone(),
    );
    let ((), (), update_events_seen, collectors) = tokio::join!(
        connection.run(&mut scheduler),
        outbox.sync_sealed(stop),
        events,
        collectors
    );
    let connection = connection.into_state();

    let config = scheduler.config().cloned();
    let next_runs = scheduler.next_runs();
    scheduler.shutdown().await;
    // A library that adopts runs next: leave the collectors running.
    let handed = match hooks.hands_over() {
        true => {
            let handed = collectors.hand_over().await;
            hooks.info(&format!(
                "a generation that adopts follows: {} collector(s) left running for it",
                handed.iter().filter(|c| c.process.is_some()).count()
            ));
            handed
        }
        false => {
            hooks.info("the process ends (or the host cannot say otherwise): stopping collectors");
            collectors.shutdown().await;
            Vec::new()
        }
    };
    // Last before the handover: the partial interval goes into the spool.
    let listeners_ok = listeners.reported_ok;
    listeners.stop().await;
    let Handover {
        next_seq,
        seq_synced,
        unacked,
    } = outbox.lock().handover();
    let blob = StateBlob {
        next_seq,
        seq_synced,
        unacked,
        config,
        next_runs,
        connection: Some(connection),
        update_events_seen,
        collectors: handed,
        listeners_ok,
        ..StateBlob::default()
    };
    hooks.info(&format!(
        "agent stopped; handing over {} un-acked results",
        blob.unacked.len()
    ));
    Ok(blob)
}

/// Cancels `stop` once `fd` is readable; returns when `stop` is cancelled.
async fn watch_stop_fd(
    fd: Option<OwnedFd>,
    stop: &CancellationToken,
    hooks: &Arc<dyn HostHooks>,
) -> Result<(), AgentError> {
    let Some(fd) = fd else {
        stop.cancelled().await;
        return Ok(());
    };
    let fd = match crate::sys::async_fd(fd, Interest::READABLE) {
        Ok(fd) => fd,
        Err(e) => {
            // Without the stop pipe the stub could never stop us: refuse to run.
            stop.cancel();
            return Err(AgentError::Runtime(e));
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        ready = fd.readable() => {
            if let Err(e) = ready {
                hooks.error(&format!("watching the stop pipe failed ({e}); stopping"));
            }
            stop.cancel();
        }
    }
    Ok(())
}

/// Name of the synthetic check that carries the stub's update events.
pub const UPDATE_EVENT_CHECK: &str = "outrider.update";

/// Queues each update event the stub handed over (a rollback, say) as a
/// WARNING result of [`UPDATE_EVENT_CHECK`], so operators see it with the
/// other results; an event already queued (handed over by a failed
/// generation's state blob) is not queued twice.
fn report_update_events(events: &[String], outbox: &SharedOutbox) {
    let mut outbox = outbox.lock();
    for event in events {
        if outbox.holds(UPDATE_EVENT_CHECK, event) {
            continue;
        }
        let outcome =
            crate::runner::RunOutcome::note(outrider_protocol::CheckState::Warning, event.clone());
        outbox.push(UPDATE_EVENT_CHECK, outcome);
    }
}
