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

pub mod args;
mod children;
mod config;
mod error;
pub mod generation;
mod layout;
mod lock;
pub mod logging;
pub mod memory;
mod reexec;
mod signals;
pub mod sockets;
mod state;
pub mod stub_update;
pub mod supervisor;
#[cfg(test)]
mod swap_support;
#[cfg(test)]
mod swap_tests;
pub mod update;

use tracing::info;

/// Public for the benchmark harness `stub/examples/swap_bench.rs`.
pub use crate::config::StubConfig;
pub use crate::error::{StubError, chain as error_chain};
pub use crate::layout::Layout;
use crate::signals::Signals;

/// Runs the stub until a stop signal, with the files of `layout`.
///
/// Fails on unusable configuration or trust root, when another stub holds
/// the instance lock, on a state directory that cannot be written, or when
/// the agent library cannot be stopped.
pub fn run(layout: &Layout) -> Result<(), StubError> {
    // Take over from a previous image of this process (re-exec) first:
    // the environment is read before any thread exists.
    let handover = reexec::take_handover()?;
    let lock = lock::InstanceLock::acquire(&layout.data_dir)?;
    let config = config::StubConfig::load(&layout.agent_toml)?;
    let root = update::load_root(&layout.root_json)?;
    layout.prepare()?;
    let signals = Signals::install()?;
    let mut state = state::StubState::load(&layout.state_json)?;
    state.trust_root_version(root.root().version);
    // An unfinished stub trial (stub_update.rs, step 4) before anything else.
    let running = update::hash_file(std::path::Path::new("/proc/self/exe")).ok();
    if let stub_update::AtStart::Relaunch(program) =
        stub_update::at_start(&mut state, running, now_unix_ms())
    {
        state.save(&layout.state_json)?;
        tracing::warn!(program = %program.display(), "a new stub is on trial; starting it again");
        let handover = state.current.clone().map(|start| reexec::Handover {
            start,
            probation: false,
            generation: 1,
            reason: "stub trial".into(),
            state: Vec::new(),
        });
        if let Some(handover) = handover {
            let err = reexec::exec_self(&program, &handover, &lock);
            tracing::error!("cannot start the new stub: {}", error_chain(&err));
        }
        // Not startable: the trial ends here, refused, at the next start.
        if let Some(trial) = state.stub_trial.as_mut() {
            trial.starts = stub_update::MAX_TRIAL_STARTS;
        }
    }
    state.save(&layout.state_json)?;
    let updater = Box::new(update::Updater::new(&config, layout, root));
    info!(pid = std::process::id(), channel = %config.channel, "outrider-agent stub starting");
    let result =
        supervisor::Supervisor::new(layout, &signals, &lock, config, updater, state, running)
            .run(handover);
    // The process ends: nothing the library left may outlive it.
    children::stop_leftovers();
    result
}

/// Wall clock in Unix milliseconds (0 before 1970).
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
