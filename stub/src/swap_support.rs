//! What the hot-swap test (`swap_tests.rs`) and the hot-swap benchmark
//! (`examples/swap_bench.rs`, which includes this file by path) both need
//! around the real generation code: free loopback ports, the collectd
//! children of this process, bounded waits, a StatsD stream at a fixed
//! rate, the spooled sums of a counter and the state blob that hands the
//! first generation a collectd collector.
//!
//! No `crate::` path appears here: the file is compiled into the stub's
//! tests and into the example alike.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for anything the agent or collectd does.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A loopback port free for UDP and TCP alike (StatsD and Graphite).
pub fn free_port() -> u16 {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => port,
        Err(_) => free_port(),
    }
}

/// Live children of this process whose command line mentions `needle`:
/// (pid, start time in clock ticks since boot).
pub fn children_with(needle: &str) -> Vec<(u32, u64)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
            std::fs::read(format!("/proc/{pid}/cmdline")),
        ) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_ascii_whitespace().collect();
        let (Some(state), Some(ppid), Some(start)) =
            (fields.first(), fields.get(1), fields.get(19))
        else {
            continue;
        };
        if *state != "Z"
            && ppid.parse::<u32>() == Ok(me)
            && String::from_utf8_lossy(&cmdline).contains(needle)
            && let Ok(start) = start.parse()
        {
            found.push((pid, start));
        }
    }
    found
}

/// Polls `probe` until it answers, for at most [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `<name>:1|c` to `to` at `rate` datagrams a second (in 1 ms
/// batches, counted in `sent`) until `stop`; the thread returns the rate
/// achieved.
pub fn statsd_sender(
    to: SocketAddr,
    name: &'static str,
    rate: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram = format!("{name}:1|c");
        let began = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let due = (began.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent.load(Ordering::SeqCst) < due {
                socket.send_to(datagram.as_bytes(), to).unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent.load(Ordering::SeqCst) as f64 / began.elapsed().as_secs_f64()
    })
}

/// The sum of the `name` samples in the metric spool under `data_dir`,
/// read with the library's own spool reader.
pub fn spooled_sum(data_dir: &Path, name: &str) -> f64 {
    use outrider_agent::spool::{Kind, Payload, Spool, SpoolLimits};
    struct Quiet;
    impl outrider_agent::HostHooks for Quiet {
        fn log(&self, _: outrider_agent::Level, _: &str) {}
        fn health(&self, _: outrider_agent::Health, _: &str) {}
        fn request_update_check(&self) {}
    }
    let dir = data_dir.join("spool").join("metrics");
    let spool = Spool::open(&dir, Kind::Samples, SpoolLimits::default(), Arc::new(Quiet)).unwrap();
    let mut sum = 0.0;
    spool.read_from(None, |payload, _| {
        if let Payload::Samples(batch) = payload {
            sum += batch
                .samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .sum::<f64>();
        }
        true
    });
    sum
}

/// A state blob handing the first generation one collectd collector
/// `name` with `plugins` (as a previous generation would), so it starts
/// without a server.
pub fn seed_state(name: &str, plugins: &[&str], graphite_port: u16) -> Vec<u8> {
    let plugins: Vec<_> = plugins
        .iter()
        .map(|p| serde_json::json!({ "plugin": p }))
        .collect();
    serde_json::json!({
        "version": 1,
        "next_seq": 1,
        "collectors": [{"spec": {
            "name": name,
            "kind": "collectd",
            "interval_secs": 1,
            "plugins": plugins,
            "graphite_port": graphite_port,
        }}],
    })
    .to_string()
    .into_bytes()
}
