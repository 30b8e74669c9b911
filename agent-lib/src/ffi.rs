//! The C ABI boundary: the exported entry symbol and the `run`/`self_test`
//! functions, plus [`Host`], the safe handle around the stub's `HostApiV1`.
//!
//! All `unsafe` of the crate's ABI side lives here. Invariants:
//! - Every export catches panics (`status::PANICKED`): unwinding across
//!   `extern "C"` would abort the stub too.
//! - [`Host`] copies every borrowed input (config, state_in, data_dir) at the
//!   start of the call and `dup`s `stop_fd`, so nothing borrowed from the stub
//!   is touched after `run` returns; the callbacks and `host_ctx` are used
//!   only while `run` executes (every clone of the `Host` is dropped with the
//!   runtime before `run` returns).
//! - The stub's `stop_fd` is never read, closed or modified (our dup shares
//!   its open file description, so we do not change its flags either).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use outrider_abi::{ABI_MAJOR, ABI_MINOR, AgentApiV1, Bytes, EventSink, HostApiV1, status};
use tokio_util::sync::CancellationToken;

use crate::agent::run_with_stop_fd;
use crate::config::AgentSettings;
use crate::host::{Health, HostHooks, Level, SocketKind};
use crate::state::{MIN_STATE_FORMAT, STATE_FORMAT};

const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

static AGENT_API: AgentApiV1 = AgentApiV1 {
    abi_major: ABI_MAJOR,
    abi_minor: ABI_MINOR,
    struct_size: std::mem::size_of::<AgentApiV1>() as u32,
    state_format: STATE_FORMAT,
    min_state_format: MIN_STATE_FORMAT,
    agent_version: Bytes::from_slice(AGENT_VERSION.as_bytes()),
    run: run_v1,
    self_test: self_test_v1,
};

/// The library's one exported symbol: the v1 API table, or null when the
/// host speaks another ABI major.
#[unsafe(no_mangle)]
pub extern "C" fn outrider_agent_entry_v1(host_major: u32, _host_minor: u32) -> *const AgentApiV1 {
    if host_major == ABI_MAJOR {
        &AGENT_API
    } else {
        std::ptr::null()
    }
}

/// Safe, owned view of a `HostApiV1`; usable from any thread while `run` runs.
#[derive(Debug)]
pub struct Host {
    ctx: *mut c_void,
    put_state_fn: extern "C" fn(*mut c_void, Bytes),
    request_update_check_fn: extern "C" fn(*mut c_void),
    health_fn: extern "C" fn(*mut c_void, u32, Bytes),
    log_fn: extern "C" fn(*mut c_void, u32, Bytes),
    /// ABI 1.1; `None` when the stub's table ends before it (a 1.0 stub).
    take_update_events_fn: Option<extern "C" fn(*mut c_void, *mut c_void, EventSink)>,
    /// ABI 1.2; `None` before (a 1.0 or 1.1 stub): the listeners bind their
    /// own sockets then.
    borrow_socket_fn: Option<extern "C" fn(*mut c_void, u32, Bytes) -> i32>,
    /// ABI 1.2; `None` before: every stop is then treated as final.
    stop_intent_fn: Option<extern "C" fn(*mut c_void) -> u32>,
    stop_fd: i32,
    /// Copy of `HostApiV1.config`.
    pub config: Vec<u8>,
    /// Copy of `HostApiV1.state_in`.
    pub state_in: Vec<u8>,
    /// Copy of `HostApiV1.data_dir`.
    pub data_dir: String,
    /// Copy of `HostApiV1.stub_version` (lossy UTF-8; empty: unknown).
    pub stub_version: String,
}

// SAFETY: the ABI (HostApiV1 docs) guarantees the callbacks are thread-safe
// and `host_ctx` stays valid until `run` returns; `Host` never outlives that
// call (see the module docs). The remaining fields are owned data.
unsafe impl Send for Host {}
// SAFETY: as above; `&Host` only calls the thread-safe callbacks.
unsafe impl Sync for Host {}

/// Why a host table was refused, mapped to a status code by the caller.
#[derive(Debug)]
enum HostError {
    /// Null pointer, wrong major, truncated struct or bad stop fd.
    BadHost,
    /// A string field is not UTF-8 (logged through the host).
    BadConfig(Box<Host>, String),
}

impl Host {
    /// Copies what is needed out of `raw`.
    ///
    /// # Safety
    /// `raw` is null or points to a `HostApiV1` whose buffers are valid for
    /// the duration of this call (the ABI's promise for `run`/`self_test`).
    unsafe fn from_raw(raw: *const HostApiV1) -> Result<Host, HostError> {
        if raw.is_null() {
            return Err(HostError::BadHost);
        }
        // SAFETY: non-null and valid per this function's contract.
        let api = unsafe { &*raw };
        api.check().map_err(|_| HostError::BadHost)?;
        if api.stop_fd < 0 {
            return Err(HostError::BadHost);
        }
        // SAFETY: the buffers are valid for this call; we copy them at once.
        let (config, state_in, data_dir, stub_version) = unsafe {
            (
                api.config.as_slice().to_vec(),
                api.state_in.as_slice().to_vec(),
                api.data_dir.as_slice().to_vec(),
                String::from_utf8_lossy(api.stub_version.as_slice()).into_owned(),
            )
        };
        let mut host = Host {
            ctx: api.host_ctx,
            put_state_fn: api.put_state,
            request_update_check_fn: api.request_update_check,
            health_fn: api.health,
            log_fn: api.log,
            // Read only when the host's table covers it: a 1.0 stub's
            // struct ends before this field.
            take_update_events_fn: api.has_v1_1().then_some(api.take_update_events),
            borrow_socket_fn: api.has_v1_2().then_some(api.borrow_socket),
            stop_intent_fn: api.has_v1_2().then_some(api.stop_intent),
            stop_fd: api.stop_fd,
            config,
            state_in,
            data_dir: String::new(),
            stub_version,
        };
        match String::from_utf8(data_dir) {
            Ok(dir) => host.data_dir = dir,
            Err(_) => {
                return Err(HostError::BadConfig(
                    Box::new(host),
                    "data_dir is not UTF-8".into(),
                ));
            }
        }
        Ok(host)
    }

    /// Our own duplicate of the stub's stop pipe, closed when dropped.
    fn dup_stop_fd(&self) -> std::io::Result<OwnedFd> {
        // SAFETY: the stub keeps `stop_fd` open until `run` returns, and the
        // borrow ends within this call (try_clone_to_owned dups it, CLOEXEC).
        unsafe { BorrowedFd::borrow_raw(self.stop_fd) }.try_clone_to_owned()
    }

    /// Hands the state blob to the stub, which copies it before returning.
    pub fn put_state(&self, state: &[u8]) {
        (self.put_state_fn)(self.ctx, Bytes::from_slice(state));
    }
}

impl HostHooks for Host {
    fn log(&self, level: Level, message: &str) {
        (self.log_fn)(
            self.ctx,
            level.to_abi(),
            Bytes::from_slice(message.as_bytes()),
        );
    }

    fn health(&self, health: Health, message: &str) {
        (self.health_fn)(
            self.ctx,
            health.to_abi(),
            Bytes::from_slice(message.as_bytes()),
        );
    }

    fn request_update_check(&self) {
        (self.request_update_check_fn)(self.ctx);
    }

    fn take_update_events(&self) -> Option<Vec<u8>> {
        let take = self.take_update_events_fn?;
        let mut taken: Option<Vec<u8>> = None;
        take(
            self.ctx,
            &mut taken as *mut Option<Vec<u8>> as *mut c_void,
            copy_events,
        );
        taken
    }

    fn borrow_socket(
        &self,
        kind: SocketKind,
        addr: std::net::SocketAddr,
    ) -> Option<std::io::Result<OwnedFd>> {
        let borrow = self.borrow_socket_fn?;
        let text = addr.to_string();
        let fd = borrow(self.ctx, kind.to_abi(), Bytes::from_slice(text.as_bytes()));
        Some(if fd >= 0 {
            // SAFETY: the ABI hands us a new descriptor that we own.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        } else {
            Err(std::io::Error::from_raw_os_error(-fd))
        })
    }

    fn hands_over(&self) -> bool {
        self.stop_intent_fn
            .is_some_and(|intent| intent(self.ctx) == outrider_abi::stop_intent::HAND_OVER)
    }
}

/// The sink handed to `take_update_events`: copies the borrowed buffer into
/// the `Option<Vec<u8>>` behind `sink_ctx`.
extern "C" fn copy_events(sink_ctx: *mut c_void, events_json: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `sink_ctx` is the `&mut Option<Vec<u8>>` that
        // `take_update_events` passed for this synchronous call, and the
        // stub's buffer is valid for the call (the ABI's rule for `Bytes`).
        let (Some(slot), events) = (
            unsafe { (sink_ctx as *mut Option<Vec<u8>>).as_mut() },
            unsafe { events_json.as_slice() },
        ) else {
            return;
        };
        *slot = Some(events.to_vec());
    }));
}

/// Copies the host table, logging why when it is unusable.
fn host_or_status(raw: *const HostApiV1) -> Result<Host, i32> {
    // SAFETY: the stub passes null or a table valid for the whole call.
    match unsafe { Host::from_raw(raw) } {
        Ok(host) => Ok(host),
        Err(HostError::BadHost) => Err(status::BAD_HOST),
        Err(HostError::BadConfig(host, why)) => {
            host.log(Level::Error, &why);
            Err(status::BAD_CONFIG)
        }
    }
}

extern "C" fn run_v1(raw: *const HostApiV1) -> i32 {
    let host = match catch_unwind(|| host_or_status(raw)) {
        Ok(Ok(host)) => Arc::new(host),
        Ok(Err(code)) => return code,
        Err(_) => return status::PANICKED,
    };
    match catch_unwind(AssertUnwindSafe(|| run_host(&host))) {
        Ok(code) => code,
        Err(_) => {
            // Hand the previous state back so a rollback loses nothing.
            host.put_state(&host.state_in);
            status::PANICKED
        }
    }
}

fn run_host(host: &Arc<Host>) -> i32 {
    let settings = match AgentSettings::from_host(&host.config, &host.data_dir, &host.state_in) {
        Ok(mut s) => {
            s.stub_version = Some(host.stub_version.clone()).filter(|v| !v.is_empty());
            s
        }
        Err(e) => {
            host.log(Level::Error, &e.to_string());
            return status::BAD_CONFIG;
        }
    };
    let stop_fd = match host.dup_stop_fd() {
        Ok(fd) => fd,
        Err(e) => {
            host.log(
                Level::Error,
                &format!("cannot duplicate stop_fd {}: {e}", host.stop_fd),
            );
            return status::BAD_HOST;
        }
    };
    let hooks: Arc<dyn HostHooks> = host.clone();
    match run_with_stop_fd(settings, CancellationToken::new(), Some(stop_fd), hooks) {
        Ok(blob) => {
            host.put_state(&blob.encode());
            status::OK
        }
        Err(e) => {
            host.log(Level::Error, &format!("agent failed: {e}"));
            host.put_state(&host.state_in);
            if e.is_config() {
                status::BAD_CONFIG
            } else {
                status::FAILED
            }
        }
    }
}

extern "C" fn self_test_v1(raw: *const HostApiV1) -> i32 {
    let host = match catch_unwind(|| host_or_status(raw)) {
        Ok(Ok(host)) => host,
        Ok(Err(code)) => return code,
        Err(_) => return status::PANICKED,
    };
    catch_unwind(AssertUnwindSafe(|| self_test(&host))).unwrap_or(status::PANICKED)
}

/// Checks, without network or leftover threads, that this build can run here.
fn self_test(host: &Host) -> i32 {
    if let Err(e) = AgentSettings::from_host(&host.config, &host.data_dir, &host.state_in) {
        host.log(Level::Error, &format!("self-test: {e}"));
        return status::BAD_CONFIG;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build();
    match runtime {
        Ok(rt) => drop(rt),
        Err(e) => {
            host.log(
                Level::Error,
                &format!("self-test: cannot build the runtime: {e}"),
            );
            return status::FAILED;
        }
    }
    if let Err(e) = crate::sys::pidfd_open(std::process::id()) {
        host.log(
            Level::Warn,
            &format!("self-test: no pidfd support ({e}); plugin exits will be polled"),
        );
    }
    status::OK
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::Mutex;

    use outrider_abi::{ENTRY_SYMBOL_V1, health};

    use super::*;
    use crate::state::StateBlob;

    #[derive(Default)]
    struct Recorder {
        logs: Mutex<Vec<String>>,
        health: Mutex<Vec<u32>>,
        state: Mutex<Option<Vec<u8>>>,
    }

    fn rec(ctx: *mut c_void) -> &'static Recorder {
        // SAFETY: every test passes a pointer to a Recorder that outlives the call.
        unsafe { &*(ctx as *const Recorder) }
    }
    extern "C" fn put_state(ctx: *mut c_void, b: Bytes) {
        // SAFETY: the library passes a buffer valid for this call.
        *rec(ctx).state.lock().unwrap() = Some(unsafe { b.as_slice() }.to_vec());
    }
    extern "C" fn update(_: *mut c_void) {}
    extern "C" fn health_cb(ctx: *mut c_void, status: u32, _: Bytes) {
        rec(ctx).health.lock().unwrap().push(status);
    }
    extern "C" fn events_cb(_: *mut c_void, sink_ctx: *mut c_void, sink: EventSink) {
        sink(
            sink_ctx,
            Bytes::from_slice(br#"[{"id":1,"kind":"refused"}]"#),
        );
    }
    extern "C" fn socket_cb(_: *mut c_void, kind: u32, addr: Bytes) -> i32 {
        // SAFETY: a buffer valid for this call.
        let addr = String::from_utf8_lossy(unsafe { addr.as_slice() }).into_owned();
        match kind {
            outrider_abi::socket_kind::UDP => std::net::UdpSocket::bind(addr)
                .map(|s| std::os::fd::IntoRawFd::into_raw_fd(OwnedFd::from(s)))
                .unwrap_or_else(|e| -e.raw_os_error().unwrap_or(libc::EIO)),
            _ => -libc::EINVAL,
        }
    }
    extern "C" fn intent_cb(_: *mut c_void) -> u32 {
        outrider_abi::stop_intent::HAND_OVER
    }
    extern "C" fn log_cb(ctx: *mut c_void, _: u32, m: Bytes) {
        // SAFETY: as above.
        let text = String::from_utf8_lossy(unsafe { m.as_slice() }).into_owned();
        rec(ctx).logs.lock().unwrap().push(text);
    }

    /// A host whose data directory is `data_dir` (borrowed, like every
    /// buffer of the host API, for as long as the calls last).
    fn host_api(recorder: &Recorder, config: &[u8], stop_fd: i32, data_dir: &Path) -> HostApiV1 {
        HostApiV1 {
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            struct_size: std::mem::size_of::<HostApiV1>() as u32,
            stop_fd,
            flags: 0,
            host_ctx: recorder as *const Recorder as *mut c_void,
            config: Bytes::from_slice(config),
            state_in: Bytes::EMPTY,
            data_dir: Bytes::from_slice(data_dir.as_os_str().as_bytes()),
            stub_version: Bytes::from_slice(b"test"),
            put_state,
            request_update_check: update,
            health: health_cb,
            log: log_cb,
            take_update_events: events_cb,
            borrow_socket: socket_cb,
            stop_intent: intent_cb,
        }
    }

    fn config_json(config_dir: &std::path::Path, agent_toml: &str) -> Vec<u8> {
        serde_json::json!({"agent_toml": agent_toml, "config_dir": config_dir, "log_dir": config_dir})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn entry_serves_only_our_major() {
        assert_eq!(ENTRY_SYMBOL_V1, b"outrider_agent_entry_v1\0");
        assert!(outrider_agent_entry_v1(ABI_MAJOR + 1, 0).is_null());
        // SAFETY: non-null pointers returned by the entry point at a static.
        let api = unsafe { &*outrider_agent_entry_v1(ABI_MAJOR, ABI_MINOR) };
        api.check().unwrap();
        // SAFETY: agent_version points at static bytes.
        assert_eq!(
            unsafe { api.agent_version.as_slice() },
            AGENT_VERSION.as_bytes()
        );
        assert_eq!((api.state_format, api.min_state_format), (1, 1));
    }

    #[test]
    fn update_events_are_taken_only_from_a_1_1_host() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::default();
        let mut api = host_api(&r, b"{}", 0, dir.path());
        // SAFETY: `api` and its buffers live through this call.
        let host = unsafe { Host::from_raw(&api) }.unwrap();
        // The stub's version is copied for the Hello.
        assert_eq!(host.stub_version, "test");
        assert_eq!(
            host.take_update_events().as_deref(),
            Some(&br#"[{"id":1,"kind":"refused"}]"#[..])
        );
        // A 1.0 stub's table ends before the field: it is never called.
        api.struct_size = std::mem::offset_of!(HostApiV1, take_update_events) as u32;
        // SAFETY: as above.
        let old = unsafe { Host::from_raw(&api) }.unwrap();
        assert_eq!(old.take_update_events(), None);
    }

    #[test]
    fn sockets_are_borrowed_and_stops_handed_over_only_from_a_1_2_host() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::default();
        let mut api = host_api(&r, b"{}", 0, dir.path());
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        // SAFETY: `api` and its buffers live through this call.
        let host = unsafe { Host::from_raw(&api) }.unwrap();
        let fd = host.borrow_socket(SocketKind::Udp, addr).unwrap().unwrap();
        assert!(std::net::UdpSocket::from(fd).local_addr().unwrap().port() != 0);
        let refused = host.borrow_socket(SocketKind::Tcp, addr).unwrap();
        assert_eq!(refused.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert!(host.hands_over());
        // A 1.1 stub's table ends before both: bind our own, stop for good.
        api.struct_size = std::mem::offset_of!(HostApiV1, borrow_socket) as u32;
        // SAFETY: as above.
        let old = unsafe { Host::from_raw(&api) }.unwrap();
        assert!(old.borrow_socket(SocketKind::Udp, addr).is_none());
        assert!(!old.hands_over());
        assert!(old.take_update_events().is_some());
    }

    /// The sum of the `name` samples in the metric spool under `data_dir`.
    fn spooled_sum(data_dir: &Path, name: &str) -> f64 {
        use crate::spool::{Kind, Payload, Spool, SpoolLimits};
        struct Quiet;
        impl HostHooks for Quiet {
            fn log(&self, _: Level, _: &str) {}
            fn health(&self, _: Health, _: &str) {}
            fn request_update_check(&self) {}
        }
        let dir = data_dir.join("spool").join("metrics");
        let spool = Spool::open(&dir, Kind::Samples, SpoolLimits::default(), Arc::new(Quiet));
        let mut sum = 0.0;
        spool.unwrap().read_from(None, |payload, _| {
            if let Payload::Samples(batch) = payload {
                let values = batch.samples.iter().filter(|s| s.name == name);
                sum += values.map(|s| s.value).sum::<f64>();
            }
            true
        });
        sum
    }

    /// A library of ABI 1.2 in a stub of ABI 1.1 (the documented fallback):
    /// it binds its own listener, and every stop is final, so collectors
    /// are stopped rather than handed to a next generation that may not
    /// adopt them.
    #[test]
    fn in_a_1_1_stub_listeners_bind_their_own_socket_and_collectors_are_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let free = || {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (dead, statsd) = (free().port(), free());
        let config = config_json(
            dir.path(),
            &format!(
                "server_url = \"http://127.0.0.1:{dead}\"\n[listeners]\nstatsd = \"{statsd}\"\n\
                 graphite = \"off\"\n[policy]\nallowed_commands = [\"/bin\", \"/usr/bin\"]\n"
            ),
        );
        let seed = serde_json::json!({"version": 1, "next_seq": 1, "collectors": [{"spec": {
            "name": "sleeper", "kind": "command", "argv": ["/bin/sleep", "1000"]}}]})
        .to_string();
        let (reader, mut writer) = std::io::pipe().unwrap();
        let r = Recorder::default();
        let mut api = host_api(&r, &config, reader.as_raw_fd(), dir.path());
        api.state_in = Bytes::from_slice(seed.as_bytes());
        api.struct_size = std::mem::offset_of!(HostApiV1, borrow_socket) as u32;
        let logged = |needle: &str| r.logs.lock().unwrap().iter().any(|l| l.contains(needle));
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}: {:?}", r.logs);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let sent = 500;
        std::thread::scope(|s| {
            let running = s.spawn(|| run_v1(&api));
            wait("listening", &|| logged("bound by this generation"));
            wait("the collector running", &|| logged("sleeper"));
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for n in 0..sent {
                sender.send_to(b"fallback.count:1|c", statsd).unwrap();
                if n % 50 == 49 {
                    // A steady stream rather than one burst.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            writer.write_all(b"x").unwrap();
            assert_eq!(running.join().unwrap(), status::OK);
        });
        // Read at the stop, flushed into the spool: nothing lost.
        assert_eq!(spooled_sum(dir.path(), "fallback.count"), f64::from(sent));
        let blob = r.state.lock().unwrap().clone().unwrap();
        let blob = StateBlob::decode(&blob).unwrap().unwrap();
        assert!(blob.collectors.is_empty(), "{:?}", blob.collectors);
        assert!(logged("collector sleeper: stopped"), "{:?}", r.logs);
        // The port is free again: the generation's own socket is closed.
        std::net::UdpSocket::bind(statsd).unwrap();
    }

    #[test]
    fn bad_hosts_are_refused() {
        assert_eq!(run_v1(std::ptr::null()), status::BAD_HOST);
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::default();
        let mut api = host_api(&r, b"{}", 0, dir.path());
        api.abi_major = 9;
        assert_eq!(run_v1(&api), status::BAD_HOST);
        let api = host_api(&r, b"{}", -1, dir.path());
        assert_eq!(self_test_v1(&api), status::BAD_HOST);
    }

    #[test]
    fn bad_agent_toml_is_bad_config_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::default();
        let config = config_json(
            dir.path(),
            "server_url = \"http://127.0.0.1:1\"\nbogus = 1\n",
        );
        let api = host_api(&r, &config, 0, dir.path());
        assert_eq!(run_v1(&api), status::BAD_CONFIG);
        assert_eq!(self_test_v1(&api), status::BAD_CONFIG);
        assert!(
            r.logs.lock().unwrap().iter().any(|l| l.contains("bogus")),
            "{:?}",
            r.logs
        );
    }

    #[test]
    fn run_stops_on_stop_fd_and_hands_over_state() {
        let dir = tempfile::tempdir().unwrap();
        // A port nobody listens on: the agent keeps retrying until stopped.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = config_json(
            dir.path(),
            &format!("server_url = \"http://127.0.0.1:{port}\"\n"),
        );
        let (reader, mut writer) = std::io::pipe().unwrap();
        let r = Recorder::default();
        let api = host_api(&r, &config, reader.as_raw_fd(), dir.path());
        assert_eq!(self_test_v1(&api), status::OK);
        std::thread::scope(|s| {
            let running = s.spawn(|| run_v1(&api));
            // Stop once the agent has reported it cannot connect.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !r.health.lock().unwrap().contains(&health::DEGRADED) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no degraded health: {:?}",
                    r.logs
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            writer.write_all(b"x").unwrap();
            assert_eq!(running.join().unwrap(), status::OK);
        });
        let blob = r
            .state
            .lock()
            .unwrap()
            .clone()
            .expect("put_state was called");
        assert!(StateBlob::decode(&blob).unwrap().is_some());
        // The stub's fd is still open (we closed only our dup).
        assert!(
            reader.as_raw_fd() >= 0
                && std::fs::metadata(format!("/proc/self/fd/{}", reader.as_raw_fd())).is_ok()
        );
        assert!(dir.path().join("identity.key").exists());
    }
}
