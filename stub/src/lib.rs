//! The stub: the small program installed once that never changes.
//!
//! Its whole job, in order (DESIGN.md §4–5):
//! 1. read `agent.toml` and the trusted `root.json`;
//! 2. fetch the channel manifest and verify it against the root
//!    ([`update`]);
//! 3. download the build, cap its size while streaming, check both hashes,
//!    and install it under `versions/<sha256>/` (temp + fsync + rename);
//! 4. copy it to a unique `run/` path, load it and call `run()` on a
//!    generation thread ([`generation`]);
//! 5. turn SIGTERM/SIGINT into a write to the generation's `stop_fd`, wait
//!    for `run()` to return, join the thread, unload, exit 0.
//!
//! A bug here cannot be fixed by an update, so the stub stays small: no
//! async runtime, no agent logic, every failure a typed [`StubError`].

mod config;
mod error;
mod generation;
mod layout;
mod signals;
mod state;
pub mod update;

use std::time::Duration;

use tracing::{info, warn};

pub use crate::error::{StubError, chain as error_chain};
pub use crate::layout::Layout;
use crate::signals::{Signal, Signals};

/// First retry delay when no build can be obtained.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay when no build can be obtained.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a generation gets to return from `run()` after the stop signal.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the stub until a stop signal, with the files of `layout`.
///
/// Fails on unusable configuration or trust root, on a state directory that
/// cannot be written, or when the agent library fails to load or stop.
pub fn run(layout: &Layout) -> Result<(), StubError> {
    let config = config::StubConfig::load(&layout.agent_toml)?;
    let root = update::load_root(&layout.root_json)?;
    layout.prepare()?;
    let signals = Signals::install()?;
    let mut state = state::StubState::load(&layout.state_json)?;
    let mut updater = update::Updater::new(&config, layout, root);

    // Step 2-3: get a verified build, retrying with backoff until one is
    // available or we are told to stop. A build already installed is used
    // when the server cannot be reached.
    let mut delay = RETRY_MIN;
    let build = loop {
        match updater.fetch_latest(&mut state) {
            Ok(build) => break build,
            Err(err) => {
                // Keep what the failed check learned (floors, a rotated root).
                if let Err(e) = state.save(&layout.state_json) {
                    warn!("cannot record the update state: {}", error::chain(&e));
                }
                let fallback = state
                    .current
                    .and_then(|sha| updater.installed(&sha, state.current_version.as_deref()));
                if let Some(build) = fallback {
                    warn!(
                        "update check failed, running the installed build: {}",
                        error::chain(&err)
                    );
                    break build;
                }
                warn!(
                    "no usable agent build yet, retrying in {delay:?}: {}",
                    error::chain(&err)
                );
            }
        }
        if signals.wait(delay) == Some(Signal::Stop) {
            info!("stop requested before an agent build was available");
            return Ok(());
        }
        delay = (delay * 2).min(RETRY_MAX);
    };
    state.current = Some(build.sha256);
    state.current_version = Some(build.version.clone());
    state.save(&layout.state_json)?;

    // Step 4: load and run.
    let generation = generation::Generation::start(layout, &config, &build, 1, Vec::new())?;
    info!(sha256 = %build.sha256, version = %build.version, "agent library loaded and running");

    // Step 5: wait for a stop signal or for the library to return.
    loop {
        if generation.is_finished() {
            warn!("agent library returned without being asked to stop");
            break;
        }
        match signals.wait(Duration::from_millis(250)) {
            Some(Signal::Stop) => {
                info!("stop requested, stopping the agent library");
                break;
            }
            Some(Signal::Reload) => {
                info!("SIGHUP received; configuration reload is not supported yet")
            }
            None => {}
        }
    }
    let outcome = generation.stop(STOP_DEADLINE)?;
    info!(
        status = outcome.status,
        state_bytes = outcome.state.len(),
        last_health = ?outcome.health,
        "agent library stopped and unloaded"
    );
    if outcome.status != outrider_abi::status::OK {
        return Err(StubError::AgentFailed {
            status: outcome.status,
        });
    }
    Ok(())
}
