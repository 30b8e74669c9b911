//! Loads trailer variants of the built `liboutrider_testlib.so` in-process
//! with `libloading`, runs them through a hand-built `HostApiV1` on their own
//! thread (as the stub does) and checks each behaviour. `abort` and `stuck`
//! are left to the stub's end-to-end tests: they would kill or hang this one.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use outrider_abi::{
    ABI_MAJOR, ABI_MINOR, AgentApiV1, Bytes, ENTRY_SYMBOL_V1, EntryV1, EventSink, HostApiV1,
    health, status,
};

#[derive(Debug, Default)]
struct Recorder {
    logs: Mutex<Vec<String>>,
    health: Mutex<Vec<(u32, String)>>,
    state: Mutex<Option<Vec<u8>>>,
}

fn rec(ctx: *mut c_void) -> &'static Recorder {
    // SAFETY: every host table points `host_ctx` at a Recorder that outlives
    // the `run` call (it lives on the test's stack frame around the call).
    unsafe { &*(ctx as *const Recorder) }
}

fn text(b: Bytes) -> String {
    // SAFETY: the library passes buffers valid for the duration of the callback.
    String::from_utf8_lossy(unsafe { b.as_slice() }).into_owned()
}

extern "C" fn put_state(ctx: *mut c_void, b: Bytes) {
    // SAFETY: as in `text`.
    *rec(ctx).state.lock().unwrap() = Some(unsafe { b.as_slice() }.to_vec());
}
extern "C" fn update(_: *mut c_void) {}
extern "C" fn health_cb(ctx: *mut c_void, status: u32, m: Bytes) {
    rec(ctx).health.lock().unwrap().push((status, text(m)));
}
extern "C" fn no_events(_: *mut c_void, _: *mut c_void, _: EventSink) {}
extern "C" fn no_socket(_: *mut c_void, _: u32, _: Bytes) -> i32 {
    -libc::EINVAL
}
extern "C" fn final_stop(_: *mut c_void) -> u32 {
    outrider_abi::stop_intent::FINAL
}

extern "C" fn log_cb(ctx: *mut c_void, _: u32, m: Bytes) {
    rec(ctx).logs.lock().unwrap().push(text(m));
}

/// The cdylib cargo built for this test run. Cargo puts it beside the test
/// binary in `target/<profile>/deps/` (it uplifts it to `target/<profile>/`
/// only for `cargo build`).
fn built_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.with_file_name("liboutrider_testlib.so");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A distinct copy of the library with the trailer appended (or none).
fn variant(dir: &Path, trailer: Option<(&str, &str)>) -> PathBuf {
    let name = trailer.map_or("plain".to_owned(), |(b, t)| format!("{b}.{t}"));
    let path = dir.join(format!("libtestlib.{name}.so"));
    std::fs::copy(built_library(), &path).unwrap();
    if let Some((behaviour, tag)) = trailer {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(file, "\n#OUTRIDER-TESTLIB:{behaviour}:{tag}\n").unwrap();
    }
    path
}

struct Outcome {
    code: i32,
    recorder: Recorder,
    heartbeats: Vec<String>,
    library: libloading::Library,
}

/// Loads `path`, runs it with `state_in`, waits until `ready` holds (then
/// stops it through the pipe) or until `run` returns on its own.
fn run_library(path: &Path, state_in: &[u8], ready: impl Fn(&Recorder, &Path) -> bool) -> Outcome {
    let data = tempfile::tempdir().unwrap();
    // SAFETY: the test library runs no initialisers besides Rust's std ones.
    let library = unsafe { libloading::Library::new(path) }.unwrap();
    // SAFETY: the symbol has the `EntryV1` signature (the ABI contract).
    let entry = unsafe { library.get::<EntryV1>(ENTRY_SYMBOL_V1) }.unwrap();
    // SAFETY: `entry` is the library's entry point; the call has no preconditions.
    assert!(unsafe { entry(ABI_MAJOR + 1, 0) }.is_null());
    // SAFETY: as above; a non-null result points at a static in the library,
    // which stays loaded as long as `library`, which outlives `api`.
    let api: &AgentApiV1 = unsafe { &*entry(ABI_MAJOR, ABI_MINOR) };
    api.check().unwrap();

    let recorder = Recorder::default();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let host = HostApiV1 {
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        struct_size: std::mem::size_of::<HostApiV1>() as u32,
        stop_fd: reader.as_raw_fd(),
        flags: 0,
        host_ctx: &recorder as *const Recorder as *mut c_void,
        config: Bytes::from_slice(b"{}"),
        state_in: Bytes::from_slice(state_in),
        data_dir: Bytes::from_slice(data.path().as_os_str().as_bytes()),
        stub_version: Bytes::from_slice(b"test"),
        put_state,
        request_update_check: update,
        health: health_cb,
        log: log_cb,
        take_update_events: no_events,
        borrow_socket: no_socket,
        stop_intent: final_stop,
    };
    assert_eq!((api.self_test)(&host), status::OK);
    let code = std::thread::scope(|s| {
        let running = s.spawn(|| (api.run)(&host));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running.is_finished() && !ready(&recorder, data.path()) {
            assert!(Instant::now() < deadline, "not ready: {:?}", recorder);
            std::thread::sleep(Duration::from_millis(10));
        }
        writer.write_all(b"x").unwrap();
        running.join().unwrap()
    });
    // The stub's fd is ours to close: the library must not have closed it.
    assert!(std::fs::metadata(format!("/proc/self/fd/{}", reader.as_raw_fd())).is_ok());
    Outcome {
        code,
        recorder,
        heartbeats: heartbeat_tags(data.path()),
        library,
    }
}

fn heartbeat_tags(data_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(data_dir.join("testlib-heartbeat.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').expect("`<ms> <tag>`").1.to_owned())
        .collect()
}

fn beating(min: usize) -> impl Fn(&Recorder, &Path) -> bool {
    move |_, dir| heartbeat_tags(dir).len() >= min
}

fn state(r: &Recorder) -> Option<String> {
    let state = r.state.lock().unwrap().clone();
    state.map(|s| String::from_utf8(s).unwrap())
}

fn leak_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "testlib-leak")
        })
        .count()
}

#[test]
fn healthy_reports_health_beats_and_hands_back_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_library(
        &variant(dir.path(), Some(("healthy", "v1"))),
        b"",
        beating(3),
    );
    assert_eq!(out.code, status::OK);
    assert_eq!(
        *out.recorder.health.lock().unwrap(),
        [(health::OK, "testlib v1 healthy".to_owned())]
    );
    assert_eq!(state(&out.recorder).as_deref(), Some("1"));
    assert!(out.heartbeats.len() >= 3 && out.heartbeats.iter().all(|t| t == "v1"));
    assert_eq!(
        *out.recorder.logs.lock().unwrap(),
        [
            "testlib v1 started with state 0",
            // This host passes no host JSON, so no `events` list either.
            "testlib v1 host events null"
        ]
    );

    // A second, distinct build continues from the handed-over state.
    let out = run_library(
        &variant(dir.path(), Some(("healthy", "v2"))),
        b"41",
        beating(1),
    );
    assert_eq!(state(&out.recorder).as_deref(), Some("42"));
    assert_eq!(out.heartbeats[0], "v2");
}

#[test]
fn without_trailer_the_library_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_library(&variant(dir.path(), None), b"7", beating(1));
    assert_eq!(out.code, status::OK);
    assert_eq!(out.recorder.health.lock().unwrap()[0].0, health::OK);
    assert_eq!(state(&out.recorder).as_deref(), Some("8"));
    assert_eq!(out.heartbeats[0], "default");
}

#[test]
fn panic_is_caught_at_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_library(&variant(dir.path(), Some(("panic", "p"))), b"", |_, _| {
        false
    });
    assert_eq!(out.code, status::PANICKED);
    assert!(out.recorder.health.lock().unwrap().is_empty());
}

#[test]
fn fail_start_returns_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_library(
        &variant(dir.path(), Some(("fail-start", "f"))),
        b"",
        |_, _| false,
    );
    assert_eq!(out.code, status::BAD_CONFIG);
    assert!(out.heartbeats.is_empty());
    assert_eq!(state(&out.recorder), None);
}

#[test]
fn silent_never_reports_health_but_stops() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_library(&variant(dir.path(), Some(("silent", "s"))), b"", beating(5));
    assert_eq!(out.code, status::OK);
    assert!(out.recorder.health.lock().unwrap().is_empty());
    assert_eq!(state(&out.recorder).as_deref(), Some("1"));
}

#[test]
fn leak_thread_returns_ok_and_leaves_a_thread() {
    let dir = tempfile::tempdir().unwrap();
    let before = leak_threads();
    let out = run_library(
        &variant(dir.path(), Some(("leak-thread", "l"))),
        b"",
        beating(2),
    );
    assert_eq!(out.code, status::OK);
    assert_eq!(state(&out.recorder).as_deref(), Some("1"));
    assert_eq!(leak_threads(), before + 1);
    // The leaked thread runs this library's code: it must stay mapped.
    std::mem::forget(out.library);
}

#[test]
fn unknown_behaviour_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_library(&variant(dir.path(), Some(("bogus", "b"))), b"", |_, _| {
        false
    });
    assert_eq!(out.code, status::FAILED);
    assert!(out.recorder.logs.lock().unwrap()[0].contains("bogus"));
}
