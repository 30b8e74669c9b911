//! The frozen C ABI between the stub (`outrider-agent`) and the agent library
//! (`liboutrider_agent`).
//!
//! The stub is installed once and never changes; the library is replaced by
//! every update. This crate is the only contract between the two, so it obeys
//! one rule above all others:
//!
//! **Append-only, forever.** A field, a function pointer or a constant that has
//! shipped is never removed, reordered, renamed in meaning or retyped. New
//! fields are appended to the end of a struct and announced by a higher
//! `abi_minor`; the reader consults `struct_size` before touching any field
//! past the ones of the minor version it was built against. An incompatible
//! change is a new `abi_major`, a new entry symbol (`outrider_agent_entry_v2`)
//! and new structs — and every library keeps exporting the v1 entry as well.
//!
//! Only C types cross the boundary: fixed-width integers, `{ptr, len}` byte
//! buffers that are borrowed for the duration of one call, and `extern "C"`
//! function pointers. No Rust enum, `bool`, `String`, `Vec`, `Box`, `Result` or
//! trait object crosses it, and neither side frees memory the other allocated.
//!
//! Entry protocol:
//! 1. The stub resolves [`ENTRY_SYMBOL_V1`] and calls it with its own
//!    `(ABI_MAJOR, ABI_MINOR)`. The library returns a pointer to a static
//!    [`AgentApiV1`], or null when it cannot serve that host major.
//! 2. The stub checks [`AgentApiV1::check`] (major match, size covers v1).
//! 3. The stub builds a [`HostApiV1`] and calls `run(&host)` on a dedicated
//!    generation thread. The library checks [`HostApiV1::check`] first.
//! 4. `run` returns only after `stop_fd` became readable *and* every thread
//!    the library started is joined and every fd it opened is closed.
//!
//! The library installs no signal handlers and no `atexit` hooks; every export
//! catches unwinding panics, because a panic that crosses `extern "C"` aborts
//! the whole process — stub included.
#![no_std]
// This crate *is* the FFI surface: raw pointers and `unsafe impl Sync` for
// the statics that hold them are its purpose. Each use has a SAFETY note.
#![allow(unsafe_code)]

use core::ffi::c_void;

/// Major version of this ABI. Stub and library must agree exactly.
pub const ABI_MAJOR: u32 = 1;
/// Minor version: the number of append-only extensions this crate knows.
///
/// - 1.0: the original tables.
/// - 1.1: [`HostApiV1::take_update_events`] (the stub's update outcomes
///   reach the running library, see [`update_events`]).
/// - 1.2: [`HostApiV1::borrow_socket`] (listening sockets owned by the stub
///   and lent to each generation, so nothing sent during a hot swap is
///   lost) and [`HostApiV1::stop_intent`] (whether another generation of
///   this process follows the stop, so long-lived children can be handed
///   over instead of killed).
pub const ABI_MINOR: u32 = 2;

/// The one symbol every agent library exports, NUL-terminated for `dlsym`.
pub const ENTRY_SYMBOL_V1: &[u8] = b"outrider_agent_entry_v1\0";

/// Signature of [`ENTRY_SYMBOL_V1`]: `(host_major, host_minor) -> *const AgentApiV1`.
///
/// Returns null when the library cannot serve `host_major`.
pub type EntryV1 = unsafe extern "C" fn(host_major: u32, host_minor: u32) -> *const AgentApiV1;

/// Return codes of [`AgentApiV1::run`] and [`AgentApiV1::self_test`].
pub mod status {
    /// Clean stop after `stop_fd` became readable.
    pub const OK: i32 = 0;
    /// The host struct was rejected (wrong major, too small, bad pointers).
    pub const BAD_HOST: i32 = 1;
    /// The configuration handed in `HostApiV1::config` was unusable.
    pub const BAD_CONFIG: i32 = 2;
    /// The agent failed at runtime and stopped.
    pub const FAILED: i32 = 3;
    /// A panic was caught at the boundary.
    pub const PANICKED: i32 = 4;
}

/// Health values passed to [`HostApiV1::health`].
pub mod health {
    /// Connected to the server and scheduling checks: probation passed.
    pub const OK: u32 = 0;
    /// Running but degraded (e.g. cannot reach the server yet).
    pub const DEGRADED: u32 = 1;
    /// Failed; the stub should consider a rollback.
    pub const FAILED: u32 = 2;
}

/// Log levels passed to [`HostApiV1::log`]; numerically ordered by severity.
pub mod level {
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const DEBUG: u32 = 4;
    pub const TRACE: u32 = 5;
}

/// The update events the stub hands to the library through
/// [`HostApiV1::take_update_events`] (ABI 1.1), so that every outcome of the
/// stub's update work reaches the server through the running library.
///
/// The buffer passed to the sink is a UTF-8 JSON array of objects:
///
/// ```json
/// [{"id": 7, "kind": "refused", "at_unix_ms": 1764820000000,
///   "build_sha256": "ab12…", "version": "1.4.0",
///   "reason": "hash mismatch: expected ab12…, got 9f3c…"}]
/// ```
///
/// | field | meaning |
/// |---|---|
/// | `id` | unsigned, assigned by the stub, strictly increasing over the life of the install (persisted), so a reader can drop what it has already seen |
/// | `kind` | one of the `KIND_*` constants below; a reader passes unknown kinds through unchanged |
/// | `at_unix_ms` | when it happened, wall clock |
/// | `build_sha256`, `version` | the build (or stub) the event is about, when there is one |
/// | `to_sha256`, `to_version` | for `rolled_back`: the build now running |
/// | `reason` | the exact error or cause, empty when there is none |
///
/// Unknown fields are ignored by readers; fields are only ever added.
pub mod update_events {
    /// A verified build was written under `versions/` and is about to start.
    pub const KIND_INSTALLED: &str = "installed";
    /// A manifest, build, delta or stub was refused; `reason` says exactly why.
    pub const KIND_REFUSED: &str = "refused";
    /// A build on probation proved healthy and is now current.
    pub const KIND_PROBATION_PASSED: &str = "probation_passed";
    /// A build failed probation (crash, panic, start failure, health `FAILED`).
    pub const KIND_PROBATION_FAILED: &str = "probation_failed";
    /// The stub went back to an earlier build.
    pub const KIND_ROLLED_BACK: &str = "rolled_back";
    /// The stub replaced itself with a verified, self-tested new stub.
    pub const KIND_STUB_UPDATED: &str = "stub_updated";
    /// A new stub was refused or reverted; `reason` says why.
    pub const KIND_STUB_REFUSED: &str = "stub_refused";
}

/// Socket kinds passed to [`HostApiV1::borrow_socket`] (ABI 1.2).
pub mod socket_kind {
    /// A UDP socket bound to the address (a StatsD listener).
    pub const UDP: u32 = 1;
    /// A TCP socket bound to the address and listening (a Graphite listener).
    pub const TCP: u32 = 2;
}

/// Values returned by [`HostApiV1::stop_intent`] (ABI 1.2).
pub mod stop_intent {
    /// The process ends (or nothing is known): the library stops everything
    /// it started, child processes included.
    pub const FINAL: u32 = 0;
    /// A generation of this same process follows whose library is of ABI
    /// 1.2 or later, and so adopts what is handed to it: the library may
    /// leave its child processes running and describe them in its state
    /// blob. A library of ABI ≥ 1.2 promises to adopt (or stop) every
    /// child process described in the state blob it is given. The stub
    /// says `HAND_OVER` only when it has already loaded that next library
    /// (a hot swap); before an older library, a rollback it has not chosen
    /// yet, or an exec of a new stub, it says [`FINAL`].
    pub const HAND_OVER: u32 = 1;
}

/// Signature of the sink the library passes to
/// [`HostApiV1::take_update_events`]: called synchronously with the events
/// JSON (see [`update_events`]), borrowed for the call.
pub type EventSink = extern "C" fn(sink_ctx: *mut c_void, events_json: Bytes);

/// A borrowed byte buffer: valid only for the duration of the call it is
/// passed to (or, for statics, for as long as the library is loaded).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl Bytes {
    /// An empty buffer (`ptr` null, `len` 0).
    pub const EMPTY: Bytes = Bytes {
        ptr: core::ptr::null(),
        len: 0,
    };

    /// Borrows a slice as a [`Bytes`]; the caller keeps the slice alive.
    pub const fn from_slice(slice: &[u8]) -> Bytes {
        Bytes {
            ptr: slice.as_ptr(),
            len: slice.len(),
        }
    }

    /// Views the buffer as a slice.
    ///
    /// # Safety
    /// `ptr` must be null with `len == 0`, or point to `len` initialised bytes
    /// that stay valid and unmodified for the lifetime `'a` chosen by the caller.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller, see above.
            unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// What the library offers, returned by the entry symbol. Lives in a static
/// inside the library and is valid for as long as the library is loaded.
#[repr(C)]
#[derive(Debug)]
pub struct AgentApiV1 {
    /// Must equal the host's [`ABI_MAJOR`].
    pub abi_major: u32,
    /// Features this library knows; fields past v1.0 are read only if covered.
    pub abi_minor: u32,
    /// `size_of::<AgentApiV1>()` as compiled into the library.
    pub struct_size: u32,
    /// Format version of the state blob this library writes via `put_state`.
    pub state_format: u32,
    /// Oldest state blob format this library can read from `state_in`.
    pub min_state_format: u32,
    /// UTF-8 version string of the library (e.g. `0.1.0+abc123`), static.
    pub agent_version: Bytes,
    /// Runs the whole agent on the calling thread; see the crate docs.
    pub run: extern "C" fn(host: *const HostApiV1) -> i32,
    /// Quick check that the build can run here (no network, no threads left).
    pub self_test: extern "C" fn(host: *const HostApiV1) -> i32,
}

// SAFETY: an `AgentApiV1` is immutable after construction and only holds
// function pointers and a pointer to static bytes, all valid while the
// library is mapped; sharing it between threads is therefore sound.
unsafe impl Sync for AgentApiV1 {}

/// Offset of the last field of ABI v1.0, so readers can check coverage.
const AGENT_V1_0_SIZE: usize = core::mem::size_of::<AgentApiV1>();

impl AgentApiV1 {
    /// Checks that this table can be used by a host of [`ABI_MAJOR`].
    ///
    /// Fails when the major differs or when `struct_size` does not cover the
    /// v1.0 fields (a truncated or foreign struct).
    pub fn check(&self) -> Result<(), AbiMismatch> {
        if self.abi_major != ABI_MAJOR {
            return Err(AbiMismatch::Major {
                ours: ABI_MAJOR,
                theirs: self.abi_major,
            });
        }
        if (self.struct_size as usize) < AGENT_V1_0_SIZE {
            return Err(AbiMismatch::TooSmall {
                needed: AGENT_V1_0_SIZE as u32,
                got: self.struct_size,
            });
        }
        Ok(())
    }
}

/// What the stub offers, passed to `run` and `self_test`. Owned by the stub;
/// every pointer in it is valid until the call it was passed to returns.
#[repr(C)]
#[derive(Debug)]
pub struct HostApiV1 {
    /// Must equal the library's [`ABI_MAJOR`].
    pub abi_major: u32,
    /// Features this host knows.
    pub abi_minor: u32,
    /// `size_of::<HostApiV1>()` as compiled into the stub.
    pub struct_size: u32,
    /// Read end of a pipe; readable (and never drained) once the library
    /// must stop. The stub owns and closes it.
    pub stop_fd: i32,
    /// Reserved bit flags; zero in v1.0.
    pub flags: u64,
    /// Opaque pointer handed back to every callback.
    pub host_ctx: *mut c_void,
    /// UTF-8 JSON object describing the host, see [`HostConfig` fields]:
    /// `{"agent_toml": "<text of agent.toml>", "config_dir": "...",
    /// "log_dir": "..."}`. Unknown keys are ignored by the library.
    ///
    /// [`HostConfig` fields]: HostApiV1::config
    pub config: Bytes,
    /// State blob handed over by the previous generation (empty on a cold start).
    pub state_in: Bytes,
    /// UTF-8 path of the data directory (spool, plugins, …).
    pub data_dir: Bytes,
    /// UTF-8 version string of the stub.
    pub stub_version: Bytes,
    /// Hands the state blob to the stub; call before `run` returns. The stub
    /// copies the bytes before returning.
    pub put_state: extern "C" fn(ctx: *mut c_void, state: Bytes),
    /// Asks the stub to poll the update manifest soon.
    pub request_update_check: extern "C" fn(ctx: *mut c_void),
    /// Reports health (see [`health`]) with a UTF-8 message.
    pub health: extern "C" fn(ctx: *mut c_void, status: u32, message: Bytes),
    /// Writes a UTF-8 log line at a [`level`] through the stub's logger.
    pub log: extern "C" fn(ctx: *mut c_void, level: u32, message: Bytes),
    // ---- ABI 1.1: read only when `struct_size` covers it (`has_v1_1`). ----
    /// Hands the stub's pending update events to the library: the stub calls
    /// `sink(sink_ctx, events_json)` at most once, synchronously, with a
    /// non-empty JSON array (see [`update_events`]), and treats those events
    /// as delivered once `sink` returns; with nothing pending it does not
    /// call `sink`. The library copies the buffer before returning from
    /// `sink`, queues the events in its outbox like check results (so they
    /// survive a disconnect), and polls this every few seconds.
    pub take_update_events: extern "C" fn(ctx: *mut c_void, sink_ctx: *mut c_void, sink: EventSink),
    // ---- ABI 1.2: read only when `struct_size` covers it (`has_v1_2`). ----
    /// Lends the library a listening socket the stub owns: `kind` is a
    /// [`socket_kind`], `addr` a UTF-8 socket address (`127.0.0.1:8125`,
    /// `[::1]:2003`). The stub binds the socket on the first request for
    /// that (kind, address) and keeps it for the life of the process, so
    /// what arrives between two generations waits in the socket's buffer.
    /// Returns a new descriptor (a `dup`, close-on-exec) that the library
    /// owns and closes before `run` returns, or a negative errno:
    /// `-EINVAL` for an unknown kind or an unreadable address, `-EACCES`
    /// for an address that is not loopback (the stub binds nothing else),
    /// or the error of `socket`/`bind`/`listen`. At the end of each
    /// generation the stub closes every socket that generation did not
    /// borrow (a socket lives until a generation runs without it), and it
    /// closes them all before starting a library of ABI < 1.2, which binds
    /// its own. A library with a host table older than 1.2 binds its own
    /// sockets too (what arrives between two generations is then lost).
    pub borrow_socket: extern "C" fn(ctx: *mut c_void, kind: u32, addr: Bytes) -> i32,
    /// Says what follows the stop: one of [`stop_intent`]. Meaningful once
    /// `stop_fd` is readable (the stub decides before signalling it).
    pub stop_intent: extern "C" fn(ctx: *mut c_void) -> u32,
}

// SAFETY: the stub builds a `HostApiV1` once per generation and never mutates
// it while the library runs; the callbacks it points to are thread-safe (they
// lock the stub's own state), so the library may call them from any thread.
unsafe impl Sync for HostApiV1 {}
// SAFETY: see `Sync` above; the struct holds no thread-affine data.
unsafe impl Send for HostApiV1 {}

/// Size of the v1.0 layout: everything before the first 1.1 field. A host
/// of ABI 1.0 passes exactly this.
const HOST_V1_0_SIZE: usize = core::mem::offset_of!(HostApiV1, take_update_events);
/// Size of the v1.1 layout: everything before the first 1.2 field.
const HOST_V1_1_SIZE: usize = core::mem::offset_of!(HostApiV1, borrow_socket);
/// Size of the v1.2 layout.
const HOST_V1_2_SIZE: usize = core::mem::size_of::<HostApiV1>();

impl HostApiV1 {
    /// Whether the host's table carries the ABI 1.1 fields
    /// ([`HostApiV1::take_update_events`]); a 1.0 stub's table ends before them
    /// and they must not be read.
    pub fn has_v1_1(&self) -> bool {
        self.struct_size as usize >= HOST_V1_1_SIZE
    }

    /// Whether the host's table carries the ABI 1.2 fields
    /// ([`HostApiV1::borrow_socket`], [`HostApiV1::stop_intent`]); a 1.0 or
    /// 1.1 stub's table ends before them and they must not be read.
    pub fn has_v1_2(&self) -> bool {
        self.struct_size as usize >= HOST_V1_2_SIZE
    }

    /// Checks that this table can be used by a library of [`ABI_MAJOR`].
    pub fn check(&self) -> Result<(), AbiMismatch> {
        if self.abi_major != ABI_MAJOR {
            return Err(AbiMismatch::Major {
                ours: ABI_MAJOR,
                theirs: self.abi_major,
            });
        }
        if (self.struct_size as usize) < HOST_V1_0_SIZE {
            return Err(AbiMismatch::TooSmall {
                needed: HOST_V1_0_SIZE as u32,
                got: self.struct_size,
            });
        }
        Ok(())
    }
}

/// Why one side refused the other's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiMismatch {
    /// The majors differ: the two sides speak different ABIs.
    Major { ours: u32, theirs: u32 },
    /// `struct_size` is smaller than the v1.0 layout.
    TooSmall { needed: u32, got: u32 },
}

impl core::fmt::Display for AbiMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AbiMismatch::Major { ours, theirs } => {
                write!(
                    f,
                    "ABI major mismatch: we speak {ours}, the other side speaks {theirs}"
                )
            }
            AbiMismatch::TooSmall { needed, got } => {
                write!(
                    f,
                    "ABI struct too small: need at least {needed} bytes, got {got}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn run_nothing(_: *const HostApiV1) -> i32 {
        status::OK
    }

    fn api(major: u32, size: u32) -> AgentApiV1 {
        AgentApiV1 {
            abi_major: major,
            abi_minor: 0,
            struct_size: size,
            state_format: 1,
            min_state_format: 1,
            agent_version: Bytes::from_slice(b"test"),
            run: run_nothing,
            self_test: run_nothing,
        }
    }

    #[test]
    fn agent_api_accepts_same_major_and_larger_size() {
        assert_eq!(api(ABI_MAJOR, AGENT_V1_0_SIZE as u32).check(), Ok(()));
        // A newer library with appended fields is still usable.
        assert_eq!(api(ABI_MAJOR, AGENT_V1_0_SIZE as u32 + 16).check(), Ok(()));
    }

    #[test]
    fn agent_api_rejects_other_major_and_truncated_struct() {
        assert_eq!(
            api(2, AGENT_V1_0_SIZE as u32).check(),
            Err(AbiMismatch::Major { ours: 1, theirs: 2 })
        );
        assert!(matches!(
            api(ABI_MAJOR, 8).check(),
            Err(AbiMismatch::TooSmall { got: 8, .. })
        ));
    }

    #[test]
    fn layout_is_frozen() {
        // These sizes are part of the ABI; changing them breaks installed stubs.
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(core::mem::size_of::<Bytes>(), 16);
            assert_eq!(core::mem::size_of::<AgentApiV1>(), 56);
            // 1.0 ended at 128 bytes; 1.1 appended one function pointer,
            // 1.2 two more.
            assert_eq!(HOST_V1_0_SIZE, 128);
            assert_eq!(HOST_V1_1_SIZE, 136);
            assert_eq!(core::mem::size_of::<HostApiV1>(), 152);
        }
    }

    extern "C" fn put_nothing(_: *mut c_void, _: Bytes) {}
    extern "C" fn nudge_nothing(_: *mut c_void) {}
    extern "C" fn report_nothing(_: *mut c_void, _: u32, _: Bytes) {}
    extern "C" fn no_events(_: *mut c_void, _: *mut c_void, _: EventSink) {}
    extern "C" fn no_socket(_: *mut c_void, _: u32, _: Bytes) -> i32 {
        -22
    }
    extern "C" fn final_stop(_: *mut c_void) -> u32 {
        stop_intent::FINAL
    }

    fn host(size: u32) -> HostApiV1 {
        HostApiV1 {
            abi_major: ABI_MAJOR,
            abi_minor: 0,
            struct_size: size,
            stop_fd: 0,
            flags: 0,
            host_ctx: core::ptr::null_mut(),
            config: Bytes::EMPTY,
            state_in: Bytes::EMPTY,
            data_dir: Bytes::EMPTY,
            stub_version: Bytes::EMPTY,
            put_state: put_nothing,
            request_update_check: nudge_nothing,
            health: report_nothing,
            log: report_nothing,
            take_update_events: no_events,
            borrow_socket: no_socket,
            stop_intent: final_stop,
        }
    }

    #[test]
    fn a_v1_0_host_is_accepted_without_its_1_1_fields() {
        // What a stub built before ABI 1.1 passes: usable, but the appended
        // field lies past its table and must not be read.
        let old = host(HOST_V1_0_SIZE as u32);
        assert_eq!(old.check(), Ok(()));
        assert!(!old.has_v1_1());
        let new = host(HOST_V1_1_SIZE as u32);
        assert_eq!(new.check(), Ok(()));
        assert!(new.has_v1_1());
        assert!(!new.has_v1_2());
        assert!(matches!(
            host(HOST_V1_0_SIZE as u32 - 8).check(),
            Err(AbiMismatch::TooSmall { .. })
        ));
    }

    #[test]
    fn a_v1_1_host_is_accepted_without_its_1_2_fields() {
        // What a stub of ABI 1.1 passes: no socket lending, no stop intent.
        let old = host(HOST_V1_1_SIZE as u32);
        assert_eq!(old.check(), Ok(()));
        assert!(old.has_v1_1() && !old.has_v1_2());
        let new = host(HOST_V1_2_SIZE as u32);
        assert!(new.has_v1_1() && new.has_v1_2());
    }

    #[test]
    fn empty_bytes_is_empty_slice() {
        // SAFETY: EMPTY is null with len 0, which `as_slice` maps to `&[]`.
        assert!(unsafe { Bytes::EMPTY.as_slice() }.is_empty());
    }
}
