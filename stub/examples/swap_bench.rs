//! Benchmark harness (not a test): N hot swaps of the real agent library
//! through the stub's real generation code, in this process as the stub
//! runs them, with a real collectd collector and a StatsD stream at a fixed
//! rate on the stub-lent socket. Run by `bench/listeners_swap.sh`, which
//! builds the release library and this harness; numbers go into
//! docs/benchmarks.md by hand.
//!
//! Usage: `swap_bench LIBRARY WORK_DIR [SWAPS] [RATE]`
//! (defaults 200 swaps, 10,000 datagrams/s). Everything listens on
//! 127.0.0.1; the server URL points at a closed port (the agent retries);
//! every wait is bounded; collectd is stopped at the end.
//!
//! Measured: collectd's pid and start time before and after every swap
//! (restarts = changes); datagrams sent vs the sum of the `bench.count`
//! counter samples in the agent's metric spool (read with the library's
//! own spool reader) and vs the listener's own datagram count; the time
//! from the stop signal to the new generation's start; VmRSS and Pss of
//! this process (the stub's stand-in: the library runs inside it) after
//! the warm-up swap and after the last one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outrider_agent_stub::Layout;
use outrider_agent_stub::StubConfig;
use outrider_agent_stub::generation::{Generation, Loaded};
use outrider_agent_stub::update::Build;

#[path = "../src/swap_support.rs"]
mod swap_support;
use swap_support::{children_with, free_port, seed_state, spooled_sum, statsd_sender, wait_for};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: swap_bench LIBRARY WORK_DIR [SWAPS] [RATE]");
        std::process::exit(2);
    }
    let library = PathBuf::from(&args[1]);
    let work = PathBuf::from(&args[2]);
    let swaps: u64 = args.get(3).map_or(200, |s| s.parse().unwrap());
    let rate: u64 = args.get(4).map_or(10_000, |s| s.parse().unwrap());
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    let layout = Layout::under_prefix(&work);
    layout.prepare().unwrap();
    // The agent's and the stub's log lines, in `<work>/log/`.
    outrider_agent_stub::logging::init(
        outrider_agent_stub::logging::Filter::parse("info").unwrap(),
        &layout.log_dir,
    );
    std::fs::create_dir_all(&layout.config_dir).unwrap();
    let (dead, statsd_port, graphite_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        &layout.agent_toml,
        format!(
            "server_url = \"http://127.0.0.1:{dead}\"\n[listeners]\n\
             statsd = \"127.0.0.1:{statsd_port}\"\ngraphite = \"127.0.0.1:{graphite_port}\"\n\
             flush_secs = 1\n"
        ),
    )
    .unwrap();
    let config = StubConfig::load(&layout.agent_toml).unwrap();
    let statsd = SocketAddr::from(([127, 0, 0, 1], statsd_port));
    let build = build_of(&library);
    let start = |number: u64, state: Vec<u8>| -> Generation {
        Loaded::load(&layout, &build, number)
            .unwrap()
            .start(&layout, &config, state, &[])
            .unwrap()
    };
    let conf = layout
        .data_dir
        .join("collectors")
        .join("bench")
        .join("collectd.conf");
    let needle = format!("-f\0-C\0{}\0", conf.display());

    let mut generation = start(
        1,
        seed_state("bench", &["cpu", "load", "memory"], graphite_port),
    );
    wait_for("the first generation to report health", || {
        generation.health().map(|_| ())
    });
    let collectd = wait_for("collectd", || children_with(&needle).first().copied());
    println!("collectd pid={} start_time={}", collectd.0, collectd.1);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = statsd_sender(statsd, "bench.count", rate, stop.clone(), sent.clone());

    let mut handovers_ms = Vec::new();
    let mut restarts = 0u64;
    let mut last = collectd;
    let mut rss_warm = None;
    let mut still_mapped = 0u64;
    let began = Instant::now();
    for number in 2..=swaps + 2 {
        // One warm-up swap (number 2), then `swaps` measured ones.
        generation.allow_hand_over();
        let t0 = Instant::now();
        let stopped = generation.stop(Duration::from_secs(30)).unwrap();
        assert_eq!(stopped.status, outrider_abi::status::OK, "swap {number}");
        let state = stopped.state.clone();
        if stopped.unload().still_mapped {
            still_mapped += 1;
        }
        generation = start(number, state);
        handovers_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        wait_for("the generation to report health", || {
            generation.health().map(|_| ())
        });
        let now = wait_for("collectd after the swap", || {
            children_with(&needle).first().copied()
        });
        if now != last {
            restarts += 1;
            last = now;
        }
        if number == 2 {
            handovers_ms.clear();
            restarts = 0;
            std::thread::sleep(Duration::from_secs(2));
            rss_warm = Some(memory());
        }
    }
    let swapping = began.elapsed();
    // Let the last datagrams arrive, then stop sending and stop for good.
    std::thread::sleep(Duration::from_secs(2));
    let rss_end = memory();
    stop.store(true, Ordering::SeqCst);
    let achieved = sender.join().unwrap();
    let total = sent.load(Ordering::SeqCst);
    let stopped = generation.stop(Duration::from_secs(30)).unwrap();
    let _ = stopped.unload();

    let received = spooled_sum(&layout.data_dir, "bench.count");
    let counted = spooled_sum(&layout.data_dir, "outrider.listener.statsd.datagrams");
    handovers_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| handovers_ms[((handovers_ms.len() - 1) as f64 * p).round() as usize];
    println!("swaps={swaps} in {:.1}s", swapping.as_secs_f64());
    println!(
        "collectd restarts={restarts} (pid/start_time first={:?} last={:?})",
        collectd, last
    );
    println!(
        "datagrams sent={total} spooled_sum={received} listener_count={counted} lost={} rate_achieved={achieved:.0}/s",
        total as f64 - received
    );
    println!(
        "stop->new start ms p50={:.1} p99={:.1} max={:.1} n={}",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        handovers_ms.len()
    );
    let (rss0, pss0) = rss_warm.unwrap();
    let (rss1, pss1) = rss_end;
    println!("VmRSS KiB after warm-up={rss0} after swaps={rss1}; Pss KiB {pss0} -> {pss1}");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let copies: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("/run/agent."))
        .collect();
    println!(
        "library copies still mapped after unload: {still_mapped}; mapped at the end: {}",
        copies.len()
    );
    let gone = children_with(&needle).first().copied().is_none();
    println!("collectd stopped at the final stop: {gone}");
}

fn build_of(path: &Path) -> Build {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    Build {
        sha256: outrider_signing::Sha256::from_bytes(sha2::Sha256::digest(&bytes).into()),
        version: "bench".into(),
        path: path.to_owned(),
        manifest_sha256: None,
        fresh: false,
    }
}

/// VmRSS and Pss of this process, KiB.
fn memory() -> (u64, u64) {
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}
