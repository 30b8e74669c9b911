//! `liboutrider_testlib`: a purpose-built agent library for testing the
//! stub's hot swap, rollback and crash handling.
//!
//! It exports `outrider_agent_entry_v1` exactly like the real library (a
//! static `AgentApiV1`, null for another major, `catch_unwind` around every
//! export, no signal handlers, no atexit hooks), but what `run` does is chosen
//! **per file**: the test harness appends a trailer to a copy of the `.so`,
//!
//! ```text
//! \n#OUTRIDER-TESTLIB:<behaviour>:<tag>\n
//! ```
//!
//! as the very last bytes of the file. ELF loaders ignore trailing bytes, and
//! every variant has its own SHA-256, so each one is a distinct "build". `run`
//! finds the file it was loaded from (`dladdr` on one of its own functions),
//! reads the last `TRAILER_WINDOW` bytes and parses the trailer; a file
//! without one behaves as `healthy` with the tag `default`.
//!
//! Behaviours (every one first logs `testlib <tag> started with state <n>`,
//! where `n` is the decimal integer in `state_in`, or 0):
//! - `healthy`: reports `health::OK`, appends `<unix_ms> <tag>\n` to
//!   `<data_dir>/testlib-heartbeat.log` every 20 ms, and once `stop_fd` is
//!   readable hands back the state `n + 1` and returns `status::OK`.
//! - `silent`: like `healthy` but never reports health.
//! - `leak-thread`: like `healthy`, but first spawns a detached thread named
//!   `testlib-leak` that sleeps forever, keeping this code mapped.
//! - `panic`: panics in `run` (caught: `status::PANICKED`).
//! - `fail-start`: returns `status::BAD_CONFIG` at once.
//! - `abort`: reports nothing, sleeps 300 ms, aborts the process.
//! - `stuck`: reports `health::OK`, then ignores `stop_fd` forever.
//! - `degraded`: like `healthy`, but reports `health::DEGRADED` (as the real
//!   library does while the server is unreachable) until the file
//!   `<data_dir>/testlib-server-up` exists, then `health::OK`.
//! - `legacy`: like `healthy`, but its table says ABI minor 0: a library
//!   built before ABI 1.1, which never calls `take_update_events`.
//!
//! Update events: at start every behaviour logs `testlib <tag> host events
//! <json>` (the host JSON's `events` list); the running ones (all but
//! `legacy`) call `take_update_events` every tick and log each batch as
//! `testlib <tag> took events <json>`, also appending it as one line to
//! `<data_dir>/testlib-events.log`.
//!
//! The stub's `stop_fd` is only ever polled: never read, closed or modified.
#![allow(unsafe_code)]

use std::ffi::{CStr, OsStr, c_void};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outrider_abi::{
    ABI_MAJOR, ABI_MINOR, AgentApiV1, Bytes, EventSink, HostApiV1, health, level, status,
};

/// Marks the start of the trailer; the trailer ends with `\n` at end of file.
const TRAILER_MARK: &[u8] = b"\n#OUTRIDER-TESTLIB:";
/// How many bytes at the end of the file may hold the trailer.
const TRAILER_WINDOW: u64 = 256;
/// Heartbeat period, and the `poll` timeout on `stop_fd`.
const TICK_MS: i32 = 20;
/// Heartbeat log, relative to the host's data directory.
const HEARTBEAT_FILE: &str = "testlib-heartbeat.log";
/// Update event batches taken, one JSON array a line, relative to data_dir.
const EVENTS_FILE: &str = "testlib-events.log";
/// Its presence ends the simulated outage of `degraded`.
const SERVER_UP_FILE: &str = "testlib-server-up";
/// Tag used when the file carries no trailer.
const DEFAULT_TAG: &str = "default";

const AGENT_VERSION: &str = concat!("testlib-", env!("CARGO_PKG_VERSION"));

static AGENT_API: AgentApiV1 = AgentApiV1 {
    abi_major: ABI_MAJOR,
    abi_minor: ABI_MINOR,
    struct_size: std::mem::size_of::<AgentApiV1>() as u32,
    state_format: 1,
    min_state_format: 1,
    agent_version: Bytes::from_slice(AGENT_VERSION.as_bytes()),
    run: run_v1,
    self_test: self_test_v1,
};

/// The table of a library built before ABI 1.1 (behaviour `legacy`).
static LEGACY_API: AgentApiV1 = AgentApiV1 {
    abi_minor: 0,
    ..AGENT_API
};

/// The library's one exported symbol: the v1 API table, or null when the
/// host speaks another ABI major.
#[unsafe(no_mangle)]
pub extern "C" fn outrider_agent_entry_v1(host_major: u32, _host_minor: u32) -> *const AgentApiV1 {
    let api = catch_unwind(|| {
        let legacy = matches!(own_trailer(), Ok(Some((name, _))) if name == "legacy");
        match (host_major == ABI_MAJOR, legacy) {
            (false, _) => std::ptr::null(),
            (true, false) => &raw const AGENT_API,
            (true, true) => &raw const LEGACY_API,
        }
    });
    api.unwrap_or(std::ptr::null())
}

extern "C" fn run_v1(raw: *const HostApiV1) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the stub passes null or a table valid for the whole call.
        match unsafe { Host::from_raw(raw) } {
            Some(host) => run(&host),
            None => status::BAD_HOST,
        }
    }))
    .unwrap_or(status::PANICKED)
}

extern "C" fn self_test_v1(_raw: *const HostApiV1) -> i32 {
    catch_unwind(|| status::OK).unwrap_or(status::PANICKED)
}

/// What `run` does, named by the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Healthy,
    Silent,
    LeakThread,
    /// Healthy, but pins itself in memory (`dlopen` of its own file with
    /// `RTLD_NODELETE`), so `dlclose` can never unmap it.
    Pin,
    Panic,
    FailStart,
    Abort,
    Stuck,
    Degraded,
    Legacy,
}

impl Behaviour {
    fn parse(name: &str) -> Option<Behaviour> {
        Some(match name {
            "healthy" => Behaviour::Healthy,
            "silent" => Behaviour::Silent,
            "leak-thread" => Behaviour::LeakThread,
            "pin" => Behaviour::Pin,
            "panic" => Behaviour::Panic,
            "fail-start" => Behaviour::FailStart,
            "abort" => Behaviour::Abort,
            "stuck" => Behaviour::Stuck,
            "degraded" => Behaviour::Degraded,
            "legacy" => Behaviour::Legacy,
            _ => return None,
        })
    }
}

/// Owned copy of what this library needs from a `HostApiV1`.
struct Host {
    ctx: *mut c_void,
    put_state_fn: extern "C" fn(*mut c_void, Bytes),
    health_fn: extern "C" fn(*mut c_void, u32, Bytes),
    log_fn: extern "C" fn(*mut c_void, u32, Bytes),
    /// ABI 1.1, when the host's table has it.
    take_events_fn: Option<extern "C" fn(*mut c_void, *mut c_void, EventSink)>,
    stop_fd: i32,
    state_in: Vec<u8>,
    data_dir: PathBuf,
    /// The host JSON's `events` list, as JSON text.
    host_events: String,
}

impl Host {
    /// Copies the borrowed inputs out of `raw`; `None` when it is unusable.
    ///
    /// # Safety
    /// `raw` is null or points to a `HostApiV1` whose buffers are valid for
    /// the duration of this call.
    unsafe fn from_raw(raw: *const HostApiV1) -> Option<Host> {
        if raw.is_null() {
            return None;
        }
        // SAFETY: non-null and valid per this function's contract.
        let api = unsafe { &*raw };
        if api.check().is_err() || api.stop_fd < 0 {
            return None;
        }
        // SAFETY: the buffers are valid for this call; we copy them at once.
        let (state_in, data_dir, config) = unsafe {
            (
                api.state_in.as_slice().to_vec(),
                PathBuf::from(OsStr::from_bytes(api.data_dir.as_slice())),
                api.config.as_slice().to_vec(),
            )
        };
        let host_events = serde_json::from_slice::<serde_json::Value>(&config).map_or_else(
            |e| format!("unreadable host JSON: {e}"),
            |v| v["events"].to_string(),
        );
        Some(Host {
            ctx: api.host_ctx,
            put_state_fn: api.put_state,
            health_fn: api.health,
            log_fn: api.log,
            take_events_fn: api.has_v1_1().then_some(api.take_update_events),
            stop_fd: api.stop_fd,
            state_in,
            data_dir,
            host_events,
        })
    }

    fn log(&self, level: u32, message: &str) {
        (self.log_fn)(self.ctx, level, Bytes::from_slice(message.as_bytes()));
    }

    fn health_ok(&self, message: &str) {
        (self.health_fn)(self.ctx, health::OK, Bytes::from_slice(message.as_bytes()));
    }

    fn put_state(&self, state: &[u8]) {
        (self.put_state_fn)(self.ctx, Bytes::from_slice(state));
    }

    fn health(&self, value: u32, message: &str) {
        (self.health_fn)(self.ctx, value, Bytes::from_slice(message.as_bytes()));
    }

    /// The host's pending update events (ABI 1.1), if it handed any.
    fn take_events(&self) -> Option<String> {
        let take = self.take_events_fn?;
        let mut taken: Option<String> = None;
        take(
            self.ctx,
            &mut taken as *mut Option<String> as *mut c_void,
            copy_events,
        );
        taken
    }
}

/// The sink passed to `take_update_events`: copies the JSON into the
/// `Option<String>` behind `sink_ctx`.
extern "C" fn copy_events(sink_ctx: *mut c_void, events: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `sink_ctx` is the `&mut Option<String>` of `take_events`,
        // for this synchronous call; the buffer is valid for the call.
        if let Some(slot) = unsafe { (sink_ctx as *mut Option<String>).as_mut() } {
            *slot = Some(String::from_utf8_lossy(unsafe { events.as_slice() }).into_owned());
        }
    }));
}

fn run(host: &Host) -> i32 {
    let (name, tag) = match own_trailer() {
        Ok(Some(trailer)) => trailer,
        Ok(None) => ("healthy".to_owned(), DEFAULT_TAG.to_owned()),
        Err(e) => {
            host.log(level::ERROR, &format!("testlib: {e}"));
            return status::FAILED;
        }
    };
    let Some(behaviour) = Behaviour::parse(&name) else {
        host.log(
            level::ERROR,
            &format!("testlib {tag}: unknown behaviour {name:?}"),
        );
        return status::FAILED;
    };
    let state: u64 = std::str::from_utf8(&host.state_in)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    host.log(
        level::INFO,
        &format!("testlib {tag} started with state {state}"),
    );
    host.log(
        level::INFO,
        &format!("testlib {tag} host events {}", host.host_events),
    );
    match behaviour {
        Behaviour::Panic => panic!("testlib {tag} panics in run"),
        Behaviour::FailStart => {
            host.log(level::ERROR, &format!("testlib {tag} refuses to start"));
            status::BAD_CONFIG
        }
        Behaviour::Abort => {
            std::thread::sleep(Duration::from_millis(300));
            std::process::abort()
        }
        Behaviour::Stuck => {
            host.health_ok(&format!("testlib {tag} healthy"));
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Behaviour::Healthy
        | Behaviour::Silent
        | Behaviour::LeakThread
        | Behaviour::Pin
        | Behaviour::Degraded
        | Behaviour::Legacy => {
            if behaviour == Behaviour::Pin
                && let Err(e) = pin_self()
            {
                host.log(level::ERROR, &format!("testlib {tag}: pin: {e}"));
                return status::FAILED;
            }
            if behaviour == Behaviour::LeakThread {
                let spawned = std::thread::Builder::new()
                    .name("testlib-leak".into())
                    .spawn(|| {
                        loop {
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    });
                // Dropping the handle detaches the thread: the leak is the point.
                if let Err(e) = spawned {
                    host.log(level::ERROR, &format!("testlib {tag}: spawn: {e}"));
                    return status::FAILED;
                }
            }
            if !matches!(behaviour, Behaviour::Silent | Behaviour::Degraded) {
                host.health_ok(&format!("testlib {tag} healthy"));
            }
            match heartbeat_until_stop(host, &tag, behaviour) {
                Ok(()) => {
                    host.put_state((state + 1).to_string().as_bytes());
                    status::OK
                }
                Err(e) => {
                    host.log(
                        level::ERROR,
                        &format!("testlib {tag}: polling stop_fd {}: {e}", host.stop_fd),
                    );
                    status::FAILED
                }
            }
        }
    }
}

/// Appends a heartbeat every [`TICK_MS`] until `stop_fd` is readable;
/// takes the host's update events (and, for `degraded`, reports health)
/// on every tick.
fn heartbeat_until_stop(host: &Host, tag: &str, behaviour: Behaviour) -> io::Result<()> {
    let log_path = host.data_dir.join(HEARTBEAT_FILE);
    let mut warned = false;
    let mut outage = behaviour == Behaviour::Degraded;
    if outage {
        host.health(
            health::DEGRADED,
            &format!("testlib {tag}: server unreachable"),
        );
    }
    loop {
        if outage && host.data_dir.join(SERVER_UP_FILE).exists() {
            host.health_ok(&format!("testlib {tag} connected again"));
            outage = false;
        }
        if behaviour != Behaviour::Legacy
            && let Some(events) = host.take_events()
        {
            host.log(level::INFO, &format!("testlib {tag} took events {events}"));
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(host.data_dir.join(EVENTS_FILE))?;
            file.write_all(format!("{events}\n").as_bytes())?;
        }
        if let Err(e) = append_heartbeat(&log_path, tag)
            && !warned
        {
            // Keep running: the missing evidence is the tests' to notice.
            host.log(
                level::WARN,
                &format!("testlib {tag}: heartbeat {}: {e}", log_path.display()),
            );
            warned = true;
        }
        if stop_requested(host.stop_fd, TICK_MS)? {
            return Ok(());
        }
    }
}

/// Opens, appends one `<unix_ms> <tag>\n` line with a single write, closes.
fn append_heartbeat(path: &Path, tag: &str) -> io::Result<()> {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let line = format!("{unix_ms} {tag}\n");
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(line.as_bytes())
}

/// Waits up to `timeout_ms` for `fd` to become readable (or hung up).
fn stop_requested(fd: i32, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call; poll
    // only inspects the fd, it never reads from or closes it.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if pfd.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::other("stop_fd is not an open fd"));
    }
    Ok(ready > 0 && pfd.revents != 0)
}

/// The (behaviour, tag) trailer of the file this library was loaded from.
fn own_trailer() -> Result<Option<(String, String)>, String> {
    let path = own_path()?;
    let tail = read_tail(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(parse_trailer(&tail))
}

/// Path of the file this library was loaded from, as the loader knows it.
/// Takes an extra reference on this library that `dlclose` never drops.
fn pin_self() -> Result<(), String> {
    let path = own_path()?;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen of the file this code was loaded from, which is mapped
    // already; RTLD_NODELETE marks it never to be unmapped. The handle is
    // leaked on purpose.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NODELETE) };
    if handle.is_null() {
        return Err(format!("dlopen of {} failed", path.display()));
    }
    Ok(())
}

fn own_path() -> Result<PathBuf, String> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: `run_v1` is a function of this library, so dladdr resolves it
    // to our own mapping; it only writes `info`, which is valid for writes.
    let found = unsafe { libc::dladdr(run_v1 as *const c_void, info.as_mut_ptr()) };
    // SAFETY: all-zero bytes are a valid Dl_info (null pointers), and dladdr
    // filled it in on success.
    let info = unsafe { info.assume_init() };
    if found == 0 || info.dli_fname.is_null() {
        return Err("dladdr found no file for this library".into());
    }
    // SAFETY: `dli_fname` is a NUL-terminated string owned by the loader,
    // valid while this library stays loaded (at least for this call).
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Ok(PathBuf::from(OsStr::from_bytes(name.to_bytes())))
}

/// The last [`TRAILER_WINDOW`] bytes of `path` (all of it if shorter).
fn read_tail(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TRAILER_WINDOW)))?;
    let mut tail = Vec::with_capacity(TRAILER_WINDOW as usize);
    file.read_to_end(&mut tail)?;
    Ok(tail)
}

/// Parses `\n#OUTRIDER-TESTLIB:<behaviour>:<tag>\n` at the very end of `tail`.
fn parse_trailer(tail: &[u8]) -> Option<(String, String)> {
    let body = tail.strip_suffix(b"\n")?;
    let start = body
        .windows(TRAILER_MARK.len())
        .rposition(|w| w == TRAILER_MARK)?;
    let text = std::str::from_utf8(&body[start + TRAILER_MARK.len()..]).ok()?;
    if text.contains('\n') {
        return None;
    }
    let (behaviour, tag) = text.split_once(':')?;
    Some((behaviour.to_owned(), tag.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_is_parsed_from_the_end_only() {
        let mut file = b"\x7fELF\0\0junk\n#OUTRIDER-TESTLIB:old:x\nmore".to_vec();
        assert_eq!(parse_trailer(&file), None);
        file.extend_from_slice(b"\n#OUTRIDER-TESTLIB:leak-thread:v2:a b\n");
        assert_eq!(
            parse_trailer(&file),
            Some(("leak-thread".to_owned(), "v2:a b".to_owned()))
        );
        assert_eq!(parse_trailer(b"\n#OUTRIDER-TESTLIB:healthy\n"), None);
        assert_eq!(parse_trailer(b"\n#OUTRIDER-TESTLIB:healthy:v1"), None);
        assert_eq!(parse_trailer(b""), None);
    }

    #[test]
    fn behaviour_names_round_trip() {
        assert_eq!(Behaviour::parse("fail-start"), Some(Behaviour::FailStart));
        assert_eq!(Behaviour::parse("Healthy"), None);
    }
}
