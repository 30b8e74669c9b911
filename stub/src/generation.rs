//! One generation: one loaded copy of the agent library running `run()` on
//! its own thread (DESIGN.md §3–4).
//!
//! Discipline that makes unloading real:
//! - every generation loads its own copy `run/agent.<version>.<gen>.so`
//!   (dlopen of a path already loaded silently returns the old code);
//! - all calls into the library happen on the generation thread; when
//!   `run()` returns the thread exits, so its TLS destructors run while the
//!   library is still mapped; the stub joins it and only then unloads.
//!
//! The host callbacks the library calls are `extern "C"` functions here;
//! each catches panics, because unwinding across `extern "C"` aborts.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use outrider_abi::{ABI_MAJOR, ABI_MINOR, AgentApiV1, Bytes, EntryV1, HostApiV1};
use tracing::{debug, error, info, trace, warn};

use crate::StubError;
use crate::config::StubConfig;
use crate::layout::Layout;
use crate::signals::{pipe, poke};
use crate::update::Build;

/// Version of this stub, handed to the library.
const STUB_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the library reported through the host callbacks.
#[derive(Debug, Default)]
struct Reports {
    health: Option<(u32, String)>,
    state: Option<Vec<u8>>,
    update_requested: bool,
}

/// Shared between the stub and the library's callbacks (`host_ctx`).
#[derive(Debug, Default)]
struct HostContext {
    reports: Mutex<Reports>,
}

impl HostContext {
    fn with<R>(&self, f: impl FnOnce(&mut Reports) -> R) -> R {
        f(&mut self.reports.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The owned inputs a `HostApiV1` points into; kept alive for the whole run.
#[derive(Debug)]
struct HostInputs {
    config: Vec<u8>,
    state_in: Vec<u8>,
    data_dir: Vec<u8>,
    stop_fd: i32,
}

/// How a stopped generation ended.
#[derive(Debug)]
pub struct Outcome {
    /// The return value of `run()` (see `outrider_abi::status`).
    pub status: i32,
    /// The state blob handed over via `put_state` (empty if none).
    pub state: Vec<u8>,
    /// The last health report, if any.
    pub health: Option<(u32, String)>,
}

/// A running generation.
#[derive(Debug)]
pub struct Generation {
    thread: Option<JoinHandle<i32>>,
    stop_write: OwnedFd,
    /// Kept open until the thread is joined: the library polls it.
    _stop_read: OwnedFd,
    context: std::sync::Arc<HostContext>,
    library: Option<libloading::Library>,
    run_copy: PathBuf,
}

impl Generation {
    /// Copies `build` to a unique run path, loads it, checks its ABI table
    /// and starts `run()` on a new thread.
    ///
    /// Fails when the copy or the load fails, the entry symbol is missing,
    /// or the library refuses our ABI (or we refuse its).
    pub fn start(
        layout: &Layout,
        config: &StubConfig,
        build: &Build,
        number: u64,
        state_in: Vec<u8>,
    ) -> Result<Generation, StubError> {
        let run_copy = layout
            .run_dir
            .join(format!("agent.{}.{number}.so", sanitize(&build.version)));
        std::fs::copy(&build.path, &run_copy)
            .map_err(StubError::io("copying build to", &run_copy))?;
        let loaded = load(&run_copy);
        let (library, api) = match loaded {
            Ok(pair) => pair,
            Err(e) => {
                let _ = std::fs::remove_file(&run_copy);
                return Err(e);
            }
        };
        let bad = |reason: String| StubError::BadLibrary {
            path: run_copy.clone(),
            reason,
        };
        let agent_version = String::from_utf8_lossy(
            // SAFETY: the library promises `agent_version` points to static
            // bytes valid while it is loaded, and it is loaded here.
            unsafe { api.agent_version.as_slice() },
        )
        .into_owned();
        debug!(%agent_version, abi_minor = api.abi_minor, "agent library ABI accepted");

        let (stop_read, stop_write) =
            pipe().map_err(|e| bad(format!("cannot create stop pipe: {e}")))?;
        let host_config = serde_json::json!({
            "agent_toml": config.agent_toml,
            "config_dir": layout.config_dir,
            "log_dir": layout.log_dir,
            "build": { "sha256": build.sha256.to_string(), "version": build.version },
        });
        let inputs = HostInputs {
            config: host_config.to_string().into_bytes(),
            state_in,
            data_dir: layout.data_dir.to_string_lossy().into_owned().into_bytes(),
            stop_fd: stop_read.as_raw_fd(),
        };
        let context = std::sync::Arc::new(HostContext::default());
        let ctx_for_thread = context.clone();
        let run_fn = api.run;
        let thread = std::thread::Builder::new()
            .name(format!("agent-gen-{number}"))
            .spawn(move || run_generation(run_fn, &inputs, &ctx_for_thread))
            .map_err(|e| bad(format!("cannot start the generation thread: {e}")))?;
        info!(generation = number, path = %run_copy.display(), %agent_version, "generation started");
        Ok(Generation {
            thread: Some(thread),
            stop_write,
            _stop_read: stop_read,
            context,
            library: Some(library),
            run_copy,
        })
    }

    /// Whether `run()` has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The last health report of the library.
    #[allow(dead_code)] // read by the probation logic of the hot-swap issue
    pub fn health(&self) -> Option<(u32, String)> {
        self.context.with(|r| r.health.clone())
    }

    /// Signals the library to stop, waits up to `deadline` for `run()` to
    /// return, joins the thread, unloads the library and removes its copy.
    ///
    /// Fails with [`StubError::StopTimeout`] when the library does not
    /// return in time; the library then stays loaded (unloading code that
    /// still runs would crash the process) and the caller must exit.
    pub fn stop(mut self, deadline: Duration) -> Result<Outcome, StubError> {
        if let Err(e) = poke(&self.stop_write) {
            warn!("cannot signal the stop pipe: {e}");
        }
        let started = Instant::now();
        while !self.is_finished() {
            if started.elapsed() > deadline {
                // Leak the library on purpose: its code is still running.
                std::mem::forget(self.library.take());
                return Err(StubError::StopTimeout {
                    secs: deadline.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(status)) => status,
            Some(Err(_)) | None => return Err(StubError::GenerationPanicked),
        };
        if let Some(library) = self.library.take()
            && let Err(e) = library.close()
        {
            warn!("unloading the agent library failed: {e}");
        }
        let _ = std::fs::remove_file(&self.run_copy);
        let (state, health) = self
            .context
            .with(|r| (r.state.take().unwrap_or_default(), r.health.take()));
        Ok(Outcome {
            status,
            state,
            health,
        })
    }
}

/// Loads the library at `path` and returns its checked ABI table.
fn load(path: &std::path::Path) -> Result<(libloading::Library, &'static AgentApiV1), StubError> {
    let bad = |reason: String| StubError::BadLibrary {
        path: path.to_owned(),
        reason,
    };
    // SAFETY: loading runs the library's initialisers. The file is a copy
    // of a build whose SHA-256 matched a manifest signed by our release
    // keys, so it is the code we decided to trust.
    let library = unsafe { libloading::Library::new(path) }.map_err(|source| StubError::Load {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: the symbol is declared by the frozen ABI with exactly the
    // `EntryV1` signature.
    let entry: EntryV1 = unsafe { library.get::<EntryV1>(outrider_abi::ENTRY_SYMBOL_V1) }
        .map(|s| *s)
        .map_err(|e| bad(format!("no entry symbol outrider_agent_entry_v1: {e}")))?;
    // SAFETY: calling the entry is the ABI's step 1; it takes two integers.
    let api_ptr = unsafe { entry(ABI_MAJOR, ABI_MINOR) };
    if api_ptr.is_null() {
        return Err(bad(format!(
            "the library cannot serve ABI major {ABI_MAJOR}"
        )));
    }
    // SAFETY: non-null, and the ABI guarantees it points to a static table
    // that lives as long as the library. The `'static` lifetime is a white
    // lie bounded by `Generation`, which never uses it after unloading.
    let api: &'static AgentApiV1 = unsafe { &*api_ptr };
    api.check().map_err(|e| bad(e.to_string()))?;
    Ok((library, api))
}

/// Body of the generation thread: builds the host table and calls `run`.
fn run_generation(
    run: extern "C" fn(*const HostApiV1) -> i32,
    inputs: &HostInputs,
    ctx: &HostContext,
) -> i32 {
    let host = HostApiV1 {
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        struct_size: std::mem::size_of::<HostApiV1>() as u32,
        stop_fd: inputs.stop_fd,
        flags: 0,
        host_ctx: ctx as *const HostContext as *mut c_void,
        config: Bytes::from_slice(&inputs.config),
        state_in: Bytes::from_slice(&inputs.state_in),
        data_dir: Bytes::from_slice(&inputs.data_dir),
        stub_version: Bytes::from_slice(STUB_VERSION.as_bytes()),
        put_state: host_put_state,
        request_update_check: host_request_update_check,
        health: host_health,
        log: host_log,
    };
    // `run` catches its own panics (ABI rule); if one escaped anyway the
    // process aborts before we get here.
    run(&host)
}

/// Recovers the context from `host_ctx`.
///
/// # Safety
/// `ctx` must be the pointer `run_generation` put into the host table,
/// whose `HostContext` outlives the `run` call (it is held in an `Arc` by
/// the `Generation` that joins the thread before dropping it).
unsafe fn context<'a>(ctx: *mut c_void) -> Option<&'a HostContext> {
    // SAFETY: see the function contract.
    unsafe { (ctx as *const HostContext).as_ref() }
}

/// Copies a borrowed buffer into an owned `String`.
///
/// # Safety
/// `bytes` must satisfy [`Bytes::as_slice`]'s contract for this call.
unsafe fn text(bytes: Bytes) -> String {
    // SAFETY: forwarded contract.
    String::from_utf8_lossy(unsafe { bytes.as_slice() }).into_owned()
}

extern "C" fn host_put_state(ctx: *mut c_void, state: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the library passes back our own context and a buffer
        // valid for this call, as the ABI requires.
        let (Some(ctx), blob) = (
            unsafe { context(ctx) },
            unsafe { state.as_slice() }.to_vec(),
        ) else {
            return;
        };
        ctx.with(|r| r.state = Some(blob));
    }));
}

extern "C" fn host_request_update_check(ctx: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: our own context pointer, see `context`.
        if let Some(ctx) = unsafe { context(ctx) } {
            ctx.with(|r| r.update_requested = true);
        }
    }));
}

extern "C" fn host_health(ctx: *mut c_void, status: u32, message: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: our own context pointer and a buffer valid for this call.
        let (Some(ctx), message) = (unsafe { context(ctx) }, unsafe { text(message) }) else {
            return;
        };
        info!(status, %message, "agent health");
        ctx.with(|r| r.health = Some((status, message)));
    }));
}

extern "C" fn host_log(_ctx: *mut c_void, level: u32, message: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a buffer valid for this call, as the ABI requires.
        let message = unsafe { text(message) };
        match level {
            outrider_abi::level::ERROR => error!(target: "agent", "{message}"),
            outrider_abi::level::WARN => warn!(target: "agent", "{message}"),
            outrider_abi::level::INFO => info!(target: "agent", "{message}"),
            outrider_abi::level::DEBUG => debug!(target: "agent", "{message}"),
            _ => trace!(target: "agent", "{message}"),
        }
    }));
}

/// Keeps a version string safe for a file name.
fn sanitize(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_copy_names_are_safe() {
        assert_eq!(sanitize("0.1.0+abc"), "0.1.0+abc");
        assert_eq!(sanitize("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitize("sha256:abc"), "sha256_abc");
    }
}
