//! Generations: one loaded copy of the agent library running `run()` on its
//! own thread (DESIGN.md §3–4), through three stages:
//! [`Loaded`] (mapped, ABI checked, not running) → [`Generation`] (running)
//! → [`Stopped`] (`run` returned, thread joined, still mapped) → unloaded.
//!
//! Discipline that makes unloading real:
//! - every generation loads its own copy `run/agent.<version>.<gen>.so`
//!   (dlopen of a path already loaded silently returns the old code);
//! - verified means loaded: the copy is written to a new file, hashed
//!   through a descriptor of that very file, and `dlopen`ed as
//!   `/proc/self/fd/<n>` of that descriptor ([`verified_copy`]), so what
//!   runs is exactly what matched the signed hash — replacing the path in
//!   between changes nothing. The descriptor stays open while the library
//!   is loaded (and forever if it stays mapped): glibc recognises loaded
//!   objects by name, so the number must not be reused for another copy;
//! - all calls into the library happen on the generation thread; when
//!   `run()` returns the thread exits, so its TLS destructors run while the
//!   library is still mapped; the stub joins it and only then unloads, and
//!   then checks `/proc/self/maps` that the copy is really gone.
//!
//! The host callbacks the library calls are `extern "C"` functions here;
//! each catches panics, because unwinding across `extern "C"` aborts.
//!
//! The supervisor drives these stages through the [`Loader`],
//! [`LoadedCopy`] and [`RunningGeneration`] traits, so its shell can run in
//! unit tests without real libraries; [`DlopenLoader`] is the real one.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use outrider_abi::{
    ABI_MAJOR, ABI_MINOR, AgentApiV1, Bytes, EntryV1, EventSink, HostApiV1, stop_intent,
};
use tracing::{debug, error, info, trace, warn};

use crate::StubError;
use crate::config::StubConfig;
use crate::layout::Layout;
use crate::signals::{pipe, poke};
use crate::state::UpdateEvent;
use crate::update::Build;

/// Version of this stub, handed to the library.
const STUB_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the library reported through the host callbacks.
#[derive(Debug, Default)]
struct Reports {
    health: Option<(u32, String)>,
    state: Option<Vec<u8>>,
    update_requested: bool,
    /// Events waiting for `take_update_events` (ABI 1.1 libraries only).
    events: Vec<UpdateEvent>,
    /// The newest event id a sink returned from: handed over.
    taken_through: Option<u64>,
    /// The sockets this generation borrowed (ABI 1.2, `sockets.rs`).
    borrowed: Vec<crate::sockets::SocketKey>,
    /// A generation whose library adopts children follows this one
    /// (`stop_intent::HAND_OVER`); otherwise `FINAL`.
    hand_over: bool,
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

/// Loads builds for the supervisor: the first stage of a generation.
pub trait Loader: std::fmt::Debug {
    /// Loads a copy of `build` as generation `number`; see [`Loaded::load`]
    /// for when it fails (nothing stays mapped or on disk then).
    fn load(
        &self,
        layout: &Layout,
        build: &Build,
        number: u64,
    ) -> Result<Box<dyn LoadedCopy>, StubError>;

    /// Threads of this process. Step 5 of the swap compares it with the
    /// count without any generation: a thread the old library left would
    /// run unmapped code after unloading.
    fn thread_count(&self) -> usize;
}

/// A loaded copy, not running (before start, or after stop).
pub trait LoadedCopy: std::fmt::Debug {
    /// The build this copy is of.
    fn build(&self) -> &Build;

    /// Starts the copy; see [`Loaded::start`] for when it fails.
    fn start(
        self: Box<Self>,
        layout: &Layout,
        config: &StubConfig,
        state_in: Vec<u8>,
        events: &[UpdateEvent],
    ) -> Result<Box<dyn RunningGeneration>, StubError>;

    /// Unloads the copy; see [`Stopped::unload`].
    fn unload(self: Box<Self>) -> Unloaded;

    /// The ABI minor of the library's table (0 when unknown).
    fn abi_minor(&self) -> u32 {
        0
    }
}

/// A running generation, as the supervisor sees it; the methods are
/// [`Generation`]'s.
pub trait RunningGeneration: std::fmt::Debug {
    /// See [`Generation::build`].
    fn build(&self) -> &Build;
    /// See [`Generation::is_finished`].
    fn is_finished(&self) -> bool;
    /// See [`Generation::health`].
    fn health(&self) -> Option<u32>;
    /// See [`Generation::offer_events`].
    fn offer_events(&self, events: &[UpdateEvent]);
    /// See [`Generation::events_handed_through`].
    fn events_handed_through(&self) -> Option<u64>;
    /// See [`Generation::take_update_request`].
    fn take_update_request(&self) -> bool;
    /// See [`Generation::allow_hand_over`].
    fn allow_hand_over(&self) {}
    /// See [`Generation::stop`].
    fn stop(self: Box<Self>, deadline: Duration) -> Result<Stopped, StopFailure>;
}

/// The real loader: `dlopen` of a per-generation copy.
#[derive(Debug, Default)]
pub struct DlopenLoader;

impl Loader for DlopenLoader {
    fn load(
        &self,
        layout: &Layout,
        build: &Build,
        number: u64,
    ) -> Result<Box<dyn LoadedCopy>, StubError> {
        Ok(Box::new(Loaded::load(layout, build, number)?))
    }

    fn thread_count(&self) -> usize {
        thread_count()
    }
}

/// A library copy that is mapped and whose ABI table was accepted.
#[derive(Debug)]
pub struct Loaded {
    library: libloading::Library,
    api: &'static AgentApiV1,
    run_copy: PathBuf,
    /// The verified copy, loaded through `/proc/self/fd/<n>`; see the
    /// module docs for why it stays open.
    copy: std::fs::File,
    build: Build,
    number: u64,
}

impl Loaded {
    /// Copies `build` to `run/agent.<version>.<number>.so`, checks the
    /// copy's hash, loads exactly that file and checks its ABI table.
    ///
    /// Fails when the copy fails or does not hash to `build.sha256`
    /// ([`StubError::CopyMismatch`]), the load fails, the entry symbol is missing,
    /// or the library refuses our ABI (or we refuse its). Nothing stays
    /// mapped or on disk after a failure.
    pub fn load(layout: &Layout, build: &Build, number: u64) -> Result<Loaded, StubError> {
        let run_copy = layout
            .run_dir
            .join(format!("agent.{}.{number}.so", sanitize(&build.version)));
        let copy = verified_copy(&build.path, &run_copy, &build.sha256)?;
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", copy.as_raw_fd()));
        match load(&by_fd, &run_copy) {
            Ok((library, api)) => Ok(Loaded {
                library,
                api,
                run_copy,
                copy,
                build: build.clone(),
                number,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&run_copy);
                Err(e)
            }
        }
    }

    /// Starts `run()` on a new thread with `state_in` and the host JSON
    /// (`agent_toml`, directories, the build, and the update events).
    ///
    /// Events go one way only: a library of ABI 1.1 or later takes them
    /// through `take_update_events`; an older one gets the texts of those it
    /// knows how to report in the host JSON's `events` list.
    pub fn start(
        self,
        layout: &Layout,
        config: &StubConfig,
        state_in: Vec<u8>,
        events: &[UpdateEvent],
    ) -> Result<Generation, StubError> {
        let bad = |reason: String| StubError::BadLibrary {
            path: self.run_copy.clone(),
            reason,
        };
        let (stop_read, stop_write) =
            pipe().map_err(|e| bad(format!("cannot create stop pipe: {e}")))?;
        let takes_events = self.api.abi_minor >= 1;
        if self.api.abi_minor < 2 {
            // A library before ABI 1.2 binds its own listeners: free the
            // ports the stub held for a newer one (`sockets.rs`).
            crate::sockets::close_all();
        }
        let legacy: Vec<String> = match takes_events {
            true => Vec::new(),
            false => events
                .iter()
                .filter(|e| e.is_legacy_reported())
                .map(UpdateEvent::legacy_text)
                .collect(),
        };
        let host_config = serde_json::json!({
            "agent_toml": config.agent_toml,
            "config_dir": layout.config_dir,
            "log_dir": layout.log_dir,
            "build": { "sha256": self.build.sha256.to_string(), "version": self.build.version },
            "events": legacy,
        });
        let inputs = HostInputs {
            config: host_config.to_string().into_bytes(),
            state_in,
            data_dir: layout.data_dir.to_string_lossy().into_owned().into_bytes(),
            stop_fd: stop_read.as_raw_fd(),
        };
        let context = Arc::new(HostContext::default());
        if takes_events {
            context.with(|r| r.events = events.to_vec());
        }
        let legacy_through = match takes_events {
            true => None,
            false => events.last().map(|e| e.id),
        };
        let ctx_for_thread = context.clone();
        let run_fn = self.api.run;
        let thread = std::thread::Builder::new()
            .name(format!("agent-gen-{}", self.number))
            .spawn(move || run_generation(run_fn, &inputs, &ctx_for_thread))
            .map_err(|e| bad(format!("cannot start the generation thread: {e}")))?;
        info!(generation = self.number, path = %self.run_copy.display(), version = %self.build.version, "generation started");
        Ok(Generation {
            thread: Some(thread),
            stop_write,
            _stop_read: stop_read,
            context,
            loaded: Some(self),
            takes_events,
            legacy_through,
        })
    }
}

impl LoadedCopy for Loaded {
    fn build(&self) -> &Build {
        &self.build
    }

    fn start(
        self: Box<Self>,
        layout: &Layout,
        config: &StubConfig,
        state_in: Vec<u8>,
        events: &[UpdateEvent],
    ) -> Result<Box<dyn RunningGeneration>, StubError> {
        let generation = Loaded::start(*self, layout, config, state_in, events)?;
        Ok(Box::new(generation))
    }

    fn unload(self: Box<Self>) -> Unloaded {
        unload(self.library, &self.run_copy, self.copy)
    }

    fn abi_minor(&self) -> u32 {
        self.api.abi_minor
    }
}

/// A running generation.
#[derive(Debug)]
pub struct Generation {
    thread: Option<JoinHandle<i32>>,
    stop_write: OwnedFd,
    /// Kept open until the thread is joined: the library polls it.
    _stop_read: OwnedFd,
    context: Arc<HostContext>,
    loaded: Option<Loaded>,
    /// The library takes events through `take_update_events` (ABI ≥ 1.1).
    takes_events: bool,
    /// For an older library: the newest event id it got in its host JSON.
    legacy_through: Option<u64>,
}

/// How a generation's `run()` ended, with the library still mapped.
#[derive(Debug)]
pub struct Stopped {
    /// The return value of `run()` (see `outrider_abi::status`).
    pub status: i32,
    /// The state blob handed over via `put_state` (empty if none).
    pub state: Vec<u8>,
    /// The last health report, if any.
    pub health: Option<(u32, String)>,
    loaded: Box<dyn LoadedCopy>,
}

/// What unloading showed.
#[derive(Debug)]
pub struct Unloaded {
    /// The copy is still in `/proc/self/maps` after `dlclose`.
    pub still_mapped: bool,
}

/// Why [`Generation::stop`] gave up.
#[derive(Debug)]
pub enum StopFailure {
    /// `run()` did not return in time; the library is leaked on purpose
    /// (its code is still running) and the caller must re-exec.
    Timeout,
    /// The generation thread panicked outside the library's guard.
    Panicked,
}

impl Generation {
    /// The build this generation runs.
    pub fn build(&self) -> &Build {
        &self
            .loaded
            .as_ref()
            .expect("a running generation holds its library")
            .build
    }

    /// Whether `run()` has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Whether the library reported health OK at least once.
    pub fn is_healthy(&self) -> bool {
        self.context
            .with(|r| matches!(r.health, Some((outrider_abi::health::OK, _))))
    }

    /// The latest health value the library reported (`outrider_abi::health`).
    pub fn health(&self) -> Option<u32> {
        self.context
            .with(|r| r.health.as_ref().map(|(status, _)| *status))
    }

    /// Offers the queued update events (all of them: those already taken
    /// are filtered out) to a library that takes them; an older library got
    /// its events at start and gets new ones with its next generation.
    pub fn offer_events(&self, events: &[UpdateEvent]) {
        if self.takes_events {
            self.context.with(|r| {
                let taken = r.taken_through.unwrap_or(0);
                r.events = events.iter().filter(|e| e.id > taken).cloned().collect();
            });
        }
    }

    /// The newest event id the library has certainly received: what a sink
    /// returned from, or — for an older library, which reports its host
    /// JSON's events once connected — what it got at start, once healthy.
    pub fn events_handed_through(&self) -> Option<u64> {
        match self.takes_events {
            true => self.context.with(|r| r.taken_through),
            false => self
                .legacy_through
                .filter(|_| self.health() == Some(outrider_abi::health::OK)),
        }
    }

    /// Takes a pending `request_update_check` from the library.
    pub fn take_update_request(&self) -> bool {
        self.context
            .with(|r| std::mem::take(&mut r.update_requested))
    }

    /// Tells the library, before [`Generation::stop`], that a library of
    /// ABI ≥ 1.2 runs next in this process (`stop_intent::HAND_OVER`), so it
    /// may leave its child processes running for that one to adopt.
    /// Without this call every stop is `FINAL`.
    pub fn allow_hand_over(&self) {
        self.context.with(|r| r.hand_over = true);
    }

    /// Signals the library to stop and waits up to `deadline` for `run()` to
    /// return, then joins the thread, and closes the lent sockets it did not
    /// borrow (`sockets.rs`). The library stays mapped until
    /// [`Stopped::unload`].
    pub fn stop(mut self, deadline: Duration) -> Result<Stopped, StopFailure> {
        if let Err(e) = poke(&self.stop_write) {
            warn!("cannot signal the stop pipe: {e}");
        }
        let started = Instant::now();
        while !self.is_finished() {
            if started.elapsed() > deadline {
                // Leak the library on purpose: unmapping running code would crash.
                std::mem::forget(self.loaded.take());
                std::mem::forget(self.thread.take());
                return Err(StopFailure::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(status)) => status,
            Some(Err(_)) | None => {
                std::mem::forget(self.loaded.take());
                return Err(StopFailure::Panicked);
            }
        };
        let (state, health, borrowed) = self.context.with(|r| {
            (
                r.state.take().unwrap_or_default(),
                r.health.take(),
                std::mem::take(&mut r.borrowed),
            )
        });
        crate::sockets::keep_only(&borrowed);
        let loaded = self
            .loaded
            .take()
            .expect("a running generation holds its library");
        Ok(Stopped::new(status, state, health, Box::new(loaded)))
    }
}

impl RunningGeneration for Generation {
    fn build(&self) -> &Build {
        Generation::build(self)
    }

    fn is_finished(&self) -> bool {
        Generation::is_finished(self)
    }

    fn health(&self) -> Option<u32> {
        Generation::health(self)
    }

    fn offer_events(&self, events: &[UpdateEvent]) {
        Generation::offer_events(self, events)
    }

    fn events_handed_through(&self) -> Option<u64> {
        Generation::events_handed_through(self)
    }

    fn take_update_request(&self) -> bool {
        Generation::take_update_request(self)
    }

    fn allow_hand_over(&self) {
        Generation::allow_hand_over(self);
    }

    fn stop(self: Box<Self>, deadline: Duration) -> Result<Stopped, StopFailure> {
        Generation::stop(*self, deadline)
    }
}

impl Stopped {
    /// How a generation of `loaded` ended (a [`RunningGeneration::stop`]
    /// result).
    pub fn new(
        status: i32,
        state: Vec<u8>,
        health: Option<(u32, String)>,
        loaded: Box<dyn LoadedCopy>,
    ) -> Stopped {
        Stopped {
            status,
            state,
            health,
            loaded,
        }
    }

    /// The build that ran.
    pub fn build(&self) -> &Build {
        self.loaded.build()
    }

    /// Unloads the library, removes its copy and checks that it left
    /// `/proc/self/maps`.
    pub fn unload(self) -> Unloaded {
        self.loaded.unload()
    }
}

fn unload(library: libloading::Library, run_copy: &Path, copy: std::fs::File) -> Unloaded {
    if let Err(e) = library.close() {
        warn!("unloading the agent library failed: {e}");
    }
    let still_mapped = is_mapped(run_copy);
    if still_mapped {
        // glibc still knows the object as `/proc/self/fd/<n>`: a later copy
        // given the same number would be taken for it. Never free the number.
        std::mem::forget(copy);
    }
    let _ = std::fs::remove_file(run_copy);
    Unloaded { still_mapped }
}

/// Copies `src` to the new file `dest` (never through an existing file or
/// link) and hashes the copy through the returned read-only descriptor of
/// `dest`'s inode; fails unless it hashes to `expected`, removing `dest`.
/// Load the copy through `/proc/self/fd/<n>` of the result: the path
/// `dest` may be replaced at any time without changing what that opens.
pub fn verified_copy(
    src: &Path,
    dest: &Path,
    expected: &outrider_signing::Sha256,
) -> Result<std::fs::File, StubError> {
    use sha2::Digest;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o500)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .map_err(StubError::io("creating the run copy", dest))?;
        let mut from = std::fs::File::open(src).map_err(StubError::io("reading build", src))?;
        std::io::copy(&mut from, &mut out).map_err(StubError::io("copying build to", dest))?;
        // A read-only descriptor of the same inode, whatever `dest` names now.
        let mut copy = std::fs::File::open(format!("/proc/self/fd/{}", out.as_raw_fd()))
            .map_err(StubError::io("reopening the run copy", dest))?;
        drop(out);
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = copy
                .read(&mut buf)
                .map_err(StubError::io("hashing the run copy", dest))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = outrider_signing::Sha256::from_bytes(hasher.finalize().into());
        if actual != *expected {
            return Err(StubError::CopyMismatch {
                path: dest.to_owned(),
                expected: *expected,
                actual,
            });
        }
        Ok(copy)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Whether `path` appears in `/proc/self/maps`.
pub fn is_mapped(path: &Path) -> bool {
    let needle = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/maps")
        .is_ok_and(|maps| maps.lines().any(|l| l.ends_with(needle.as_ref())))
}

/// Number of threads of this process (`/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Loads the library at `path` (named `shown` in errors) and returns its
/// checked ABI table.
fn load(
    path: &Path,
    shown: &Path,
) -> Result<(libloading::Library, &'static AgentApiV1), StubError> {
    let bad = |reason: String| StubError::BadLibrary {
        path: shown.to_owned(),
        reason,
    };
    // SAFETY: loading runs the library's initialisers. `path` is the
    // descriptor of a copy whose SHA-256, read through that descriptor,
    // matched a manifest signed by our release keys ([`verified_copy`]), so
    // it is the code we decided to trust.
    let library = unsafe { libloading::Library::new(path) }.map_err(|source| StubError::Load {
        path: shown.to_owned(),
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
    // lie bounded by `Loaded`, which never uses it after unloading.
    let api: &'static AgentApiV1 = unsafe { &*api_ptr };
    api.check().map_err(|e| bad(e.to_string()))?;
    // SAFETY: `agent_version` points to static bytes valid while loaded.
    let version = String::from_utf8_lossy(unsafe { api.agent_version.as_slice() }).into_owned();
    debug!(%version, abi_minor = api.abi_minor, "agent library ABI accepted");
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
        take_update_events: host_take_update_events,
        borrow_socket: host_borrow_socket,
        stop_intent: host_stop_intent,
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

/// ABI 1.1: hands the pending update events to the library's sink as one
/// JSON array (`outrider_abi::update_events`), then forgets them: they are
/// the library's once the sink returned. No call when nothing is pending.
extern "C" fn host_take_update_events(ctx: *mut c_void, sink_ctx: *mut c_void, sink: EventSink) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: our own context pointer, see `context`.
        let Some(ctx) = (unsafe { context(ctx) }) else {
            return;
        };
        // Serialise under the lock, call the sink without it.
        let Some((json, last)) = ctx.with(|r| {
            let last = r.events.last()?.id;
            serde_json::to_vec(&r.events).ok().map(|json| (json, last))
        }) else {
            return;
        };
        sink(sink_ctx, Bytes::from_slice(&json));
        ctx.with(|r| {
            r.events.retain(|e| e.id > last);
            r.taken_through = Some(last);
        });
    }));
}

/// ABI 1.2: lends a stub-owned loopback socket (`sockets.rs`) and records
/// that this generation borrowed it.
extern "C" fn host_borrow_socket(ctx: *mut c_void, kind: u32, addr: Bytes) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: our own context pointer and a buffer valid for this call.
        let (Some(ctx), addr) = (unsafe { context(ctx) }, unsafe { addr.as_slice() }) else {
            return -libc::EINVAL;
        };
        let (fd, key) = crate::sockets::borrow_raw(kind, addr);
        match key {
            Some(key) => {
                debug!(kind, addr = %key.1, fd, "socket lent to the library");
                ctx.with(|r| {
                    if !r.borrowed.contains(&key) {
                        r.borrowed.push(key);
                    }
                });
            }
            None => {
                warn!(kind, addr = %String::from_utf8_lossy(addr), errno = -fd, "socket not lent")
            }
        }
        fd
    }))
    .unwrap_or(-libc::EIO)
}

/// ABI 1.2: whether another generation follows this one's stop.
extern "C" fn host_stop_intent(ctx: *mut c_void) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: our own context pointer, see `context`.
        match unsafe { context(ctx) }.map(|ctx| ctx.with(|r| r.hand_over)) {
            Some(true) => stop_intent::HAND_OVER,
            Some(false) | None => stop_intent::FINAL,
        }
    }))
    .unwrap_or(stop_intent::FINAL)
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

    fn sha(bytes: &[u8]) -> outrider_signing::Sha256 {
        use sha2::Digest;
        outrider_signing::Sha256::from_bytes(sha2::Sha256::digest(bytes).into())
    }

    /// What `dlopen("/proc/self/fd/<n>")` of the copy would open.
    fn loaded_bytes(copy: &std::fs::File) -> Vec<u8> {
        std::fs::read(format!("/proc/self/fd/{}", copy.as_raw_fd())).unwrap()
    }

    #[test]
    fn the_copy_that_is_loaded_is_the_one_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let (good, evil) = (b"good build".repeat(1000), b"evil build".repeat(1000));
        let src = dir.path().join("build.so");
        std::fs::write(&src, &good).unwrap();
        let dest = dir.path().join("agent.v1.1.so");
        let copy = verified_copy(&src, &dest, &sha(&good)).unwrap();
        // Replaced after verification: the descriptor still opens the copy.
        std::fs::write(dir.path().join("evil"), &evil).unwrap();
        std::fs::rename(dir.path().join("evil"), &dest).unwrap();
        assert_eq!(loaded_bytes(&copy), good);
        // The build changed after it was verified: nothing to load, no copy.
        std::fs::write(&src, &evil).unwrap();
        let dest2 = dir.path().join("agent.v1.2.so");
        let err = verified_copy(&src, &dest2, &sha(&good)).unwrap_err();
        assert!(matches!(err, StubError::CopyMismatch { .. }), "{err}");
        assert!(!dest2.exists());
        // A planted file or link at the copy's name is never written through.
        std::os::unix::fs::symlink(&src, &dest2).unwrap();
        let err = verified_copy(&src, &dest2, &sha(&evil)).unwrap_err();
        assert!(matches!(err, StubError::Io { .. }), "{err}");
    }

    #[test]
    fn racing_a_replacement_of_the_copy_never_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (good, evil) = (b"good build".repeat(4000), b"evil build".repeat(4000));
        let src = dir.path().join("build.so");
        std::fs::write(&src, &good).unwrap();
        let dest = dir.path().join("agent.v1.1.so");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The attacker: replaces the copy by rename whenever it appears.
        let attacker = {
            let (dir, dest, stop, evil) = (
                dir.path().to_owned(),
                dest.clone(),
                stop.clone(),
                evil.clone(),
            );
            std::thread::spawn(move || {
                let planted = dir.join("planted");
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if dest.exists() {
                        std::fs::write(&planted, &evil).unwrap();
                        if std::fs::rename(&planted, &dest).is_ok() {
                            swaps += 1;
                        }
                    }
                    std::thread::yield_now();
                }
                swaps
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut loads, mut replaced_while_held) = (0, 0);
        while (loads < 50 || replaced_while_held < 5) && Instant::now() < deadline {
            let _ = std::fs::remove_file(&dest);
            match verified_copy(&src, &dest, &sha(&good)) {
                Ok(copy) => {
                    loads += 1;
                    assert_eq!(loaded_bytes(&copy), good, "the replacement was loaded");
                    if std::fs::read(&dest).is_ok_and(|b| b == evil) {
                        replaced_while_held += 1;
                    }
                }
                // The attacker's file took the name first: refused, not used.
                Err(StubError::Io { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = attacker.join().unwrap();
        assert!(
            replaced_while_held >= 5 && swaps > 0,
            "the race was run: {loads} loads, {replaced_while_held} replaced while held"
        );
    }

    #[test]
    fn run_copy_names_are_safe() {
        assert_eq!(sanitize("0.1.0+abc"), "0.1.0+abc");
        assert_eq!(sanitize("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitize("sha256:abc"), "sha256_abc");
    }

    #[test]
    fn maps_and_threads_are_readable() {
        assert!(thread_count() >= 1);
        assert!(!is_mapped(Path::new("/nonexistent/agent.so")));
    }
}
