//! `outrider-loadgen`: the server benchmark (docs/benchmarks.md,
//! "Server: 10,000 simulated agents on one machine").
//!
//! Starts a release `outrider-server` on loopback with a fresh data
//! directory, defines one check, and runs N simulated agents
//! ([`agent`]) through these phases, each bounded in time:
//!
//! 1. **connect**: all N register (real handshake, own key each);
//! 2. **steady**: one batch per agent per interval (default 10 s) with a few
//!    perfdata values; ingest rate and server RSS are sampled;
//! 3. **run-now**: sequential `POST /api/v1/agents/{fp}/run` calls to
//!    random agents while the steady load goes on; every round trip recorded;
//! 4. **burst**: every agent sends its next batch as soon as the previous
//!    one is acked: the sustained ingest ceiling;
//! 5. **storm**: every agent drops its TCP connection (no goodbye) and
//!    reconnects as the real agent does (a random delay below 500 ms, then
//!    jittered backoff doubling to 30 s on failure; `--reconnect-immediately`
//!    for no delay at all); time until all N are back;
//! 6. **nudge**: a release is published to the agents' channel with the
//!    real CLI; the server nudges every agent over its nudge window and each
//!    fetches the manifest and the build's blob ([`nudge`]), while run-now
//!    calls are timed as in phase 3;
//! 7. **stop**: goodbye, server SIGTERM, then the server's SQLite store is
//!    read to count results lost (acked but absent) and points duplicated.
//!
//! With `--attack`, the denial-of-service harness runs instead
//! ([`attack`], docs/security.md); with `--scripted`, the agents obey
//! commands on standard input instead of the phases ([`scripted`],
//! bench/dashboard.sh).
//!
//! Loopback only; the agents bind 127.0.0.2, 127.0.0.3, … so they do not
//! exhaust one address's ephemeral ports. The harness raises its own
//! `RLIMIT_NOFILE` (inherited by the server it starts) and stops by itself:
//! every phase has a deadline and the whole run a hard cap.

mod agent;
mod attack;
mod cluster;
mod nudge;
mod scripted;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use agent::{Counters, Phase, Settings};
use server::ServerProcess;

/// Most agents the harness simulates (127.0.0.2 … 127.0.0.201 at 1,000 each).
const MAX_AGENTS: usize = 200_000;
const ENROLLMENT_TOKEN: &str = "loadgen-enrollment";
const CHECK: &str = "bench";

#[derive(Debug, Parser)]
#[command(
    name = "outrider-loadgen",
    about = "Simulated agents against a real outrider-server on loopback"
)]
struct Args {
    /// The server binary (use a release build).
    #[arg(long, default_value = "target/release/outrider-server")]
    server_bin: PathBuf,
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Seconds between two batches of one agent in the steady phase.
    #[arg(long, default_value_t = 10)]
    interval_secs: u64,
    /// Perfdata values per result.
    #[arg(long, default_value_t = 3)]
    perfdata: usize,
    /// Length of the steady phase.
    #[arg(long, default_value_t = 60)]
    steady_secs: u64,
    /// Run-now calls (sequential, during steady load).
    #[arg(long, default_value_t = 500)]
    rpc_calls: usize,
    /// Length of the burst phase.
    #[arg(long, default_value_t = 30)]
    burst_secs: u64,
    /// Results per batch in the burst phase.
    #[arg(long, default_value_t = 10)]
    burst_results: usize,
    /// Seconds allowed for all agents to connect (initially and after the storm).
    #[arg(long, default_value_t = 180)]
    connect_deadline_secs: u64,
    /// Keep the server's data directory here instead of a temporary one.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
    /// Reconnect at once after a drop instead of with the real agent's
    /// jittered backoff (random below 500 ms, doubling to 30 s).
    #[arg(long)]
    reconnect_immediately: bool,
    /// The CLI binary, which signs and publishes the nudge phase's release.
    #[arg(long, default_value = "target/release/outrider")]
    cli_bin: PathBuf,
    /// The server's nudge window (`--nudge-window-secs`) for the nudge phase.
    #[arg(long, default_value_t = 60)]
    nudge_window_secs: u64,
    /// Worker threads of the harness runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Checks per agent: each steady batch holds one result of each
    /// (`bench`, `bench-1`, …).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    checks: u16,
    /// One more flag for the server (repeat for several), e.g.
    /// `--server-arg=--no-alerting` or
    /// `--server-arg=--max-connections-per-ip=32`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Stop after the steady phase (connect, steady, stop): for comparing
    /// server CPU and memory under the steady load alone (bench/alerting.sh).
    /// Prints a `STEADY` line instead of `SUMMARY`, without the store count.
    #[arg(long)]
    steady_only: bool,
    /// Run the denial-of-service harness (TLS server, agents reporting
    /// while attacked) instead of the benchmark phases.
    #[arg(long)]
    attack: bool,
    /// `--attack`: slowloris connections held at once.
    #[arg(long, default_value_t = 1_000)]
    slowloris: usize,
    /// `--attack`: tasks flooding TLS handshakes.
    #[arg(long, default_value_t = 16)]
    flooders: usize,
    /// `--attack`: tasks sending 1 MiB frames before their hello.
    #[arg(long, default_value_t = 8)]
    oversized: usize,
    /// `--attack`: attacker source addresses (127.1.0.1, 127.1.0.2, …).
    #[arg(long, default_value_t = 20)]
    attacker_ips: usize,
    /// `--attack`: length of the attack.
    #[arg(long, default_value_t = 60)]
    attack_secs: u64,
    /// `--attack`: run-now timing without attack first, this long.
    #[arg(long, default_value_t = 15)]
    baseline_secs: u64,
    /// Connect the agents, then obey commands on standard input (see
    /// `scripted.rs`) instead of running the phases; needs `--keep-dir`.
    #[arg(long, conflicts_with_all = ["attack", "steady_only"])]
    scripted: bool,
    /// `--scripted`: the longest time commands are obeyed before the
    /// loadgen stops by itself.
    #[arg(long, default_value_t = 3_600)]
    scripted_secs: u64,
    /// Simulated agents per loopback source address (127.0.0.2, …).
    #[arg(long, default_value_t = agent::AGENTS_PER_SOURCE_IP)]
    agents_per_ip: usize,
    /// Run the multi-node benchmark instead ([`cluster`]): this many server
    /// nodes on the `--database` PostgreSQL (0: one node on SQLite).
    #[arg(long, default_value_t = 0, conflicts_with_all = ["attack", "scripted", "steady_only"])]
    nodes: usize,
    /// `--nodes`: the PostgreSQL database the nodes share (URL or libpq
    /// `key=value`; an empty database, used up by the run).
    #[arg(long)]
    database: Option<String>,
    /// `--nodes`: how long the killed node's agents may take to be acked
    /// on another node.
    #[arg(long, default_value_t = 120)]
    kill_deadline_secs: u64,
    /// `--nodes`: spread the agents' first connection over this long
    /// (all at once by default).
    #[arg(long, default_value_t = 0)]
    connect_ramp_secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.agents == 0 || args.agents > MAX_AGENTS || args.agents_per_ip == 0 {
        eprintln!("--agents must be between 1 and {MAX_AGENTS}, --agents-per-ip at least 1");
        return ExitCode::from(64);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.agents.div_ceil(args.agents_per_ip) > agent::MAX_SOURCE_IPS {
        eprintln!(
            "--agents / --agents-per-ip must stay within {} source addresses",
            agent::MAX_SOURCE_IPS
        );
        return ExitCode::from(64);
    }
    // Hard cap: whatever happens, the harness ends.
    let cap = if args.scripted {
        Duration::from_secs(args.connect_deadline_secs + args.scripted_secs + 180)
    } else if args.attack {
        Duration::from_secs(
            args.connect_deadline_secs + args.baseline_secs + args.attack_secs + 240,
        )
    } else if args.nodes > 0 {
        Duration::from_secs(
            args.connect_deadline_secs
                + args.connect_ramp_secs
                + args.steady_secs
                + args.burst_secs
                + args.rpc_calls as u64 / 10
                + args.kill_deadline_secs
                + 600,
        )
    } else {
        Duration::from_secs(
            2 * args.connect_deadline_secs
                + args.steady_secs
                + args.burst_secs
                + args.nudge_window_secs
                + 360,
        )
    };
    let main = async {
        if args.scripted {
            scripted::run(args).await
        } else if args.attack {
            attack::run(args).await
        } else if args.nodes > 0 {
            cluster::run(args).await
        } else {
            run(args).await
        }
    };
    match runtime.block_on(async { tokio::time::timeout(cap, main).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("loadgen failed: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("loadgen hit its hard time cap of {cap:?}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
fn raise_fd_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    anyhow::ensure!(rc == 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    anyhow::ensure!(rc == 0, "setrlimit: {}", std::io::Error::last_os_error());
    Ok(limit.rlim_cur)
}

fn log(start: Instant, msg: &str) {
    println!("[{:7.1}s] {msg}", start.elapsed().as_secs_f64());
}

async fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let fds = raise_fd_limit()?;
    anyhow::ensure!(
        fds as usize > args.agents + 1_000,
        "RLIMIT_NOFILE hard limit {fds} is too low for {} agents (the harness and the server each need one fd per agent)",
        args.agents
    );
    let temp;
    let data_dir = match &args.keep_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut server_args = vec![
        "--nudge-window-secs".to_owned(),
        args.nudge_window_secs.to_string(),
    ];
    server_args.extend(args.server_args.iter().cloned());
    let server = ServerProcess::start(&args.server_bin, &data_dir, ENROLLMENT_TOKEN, &server_args)?;
    log(
        start,
        &format!(
            "server pid {} on {}, fd limit {fds}",
            server.pid(),
            server.addr
        ),
    );
    let checks = server.define_checks(CHECK, args.checks).await?;
    let baseline = server.memory()?;

    let settings = Arc::new(Settings {
        server: server.addr,
        enrollment_token: ENROLLMENT_TOKEN.into(),
        checks,
        interval: Duration::from_secs(args.interval_secs.max(1)),
        perfdata_per_result: args.perfdata,
        results_per_burst_batch: args.burst_results.max(1),
        agent_backoff: !args.reconnect_immediately,
        agents: args.agents,
        nudges: Arc::new(nudge::Nudges::default()),
        agents_per_ip: args.agents_per_ip,
        tls: None,
        drops: Arc::default(),
        nodes: None,
        connect_ramp: Duration::ZERO,
        token_once: false,
    });
    let (counters, phase_tx, mut agents) = spawn_agents(&settings, args.agents);
    let connect_deadline = Duration::from_secs(args.connect_deadline_secs);

    // 1. connect
    let connected_in = wait_connected(&counters, args.agents, connect_deadline, start).await;
    log(
        start,
        &format!(
            "connect: {} of {} in {:.1} s",
            counters.connected.load(Ordering::Relaxed),
            args.agents,
            connected_in.as_secs_f64()
        ),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = server.memory()?;
    log(
        start,
        &format!(
            "server RSS idle with all agents: {} KiB, {} threads (baseline {} KiB)",
            idle.rss_kib, idle.threads, baseline.rss_kib
        ),
    );

    // 2. steady
    let cpu_before = (server.cpu_secs()?, server::own_cpu_secs()?);
    let steady = measure_rate(&counters, Duration::from_secs(args.steady_secs)).await;
    let steady_mem = server.memory()?;
    let server_cpu = (server.cpu_secs()? - cpu_before.0) / args.steady_secs as f64 * 100.0;
    let harness_cpu = (server::own_cpu_secs()? - cpu_before.1) / args.steady_secs as f64 * 100.0;
    log(
        start,
        &format!(
            "steady: {:.0} samples/s, {:.0} batches/s over {} s; RSS {} KiB, {} threads; \
             server CPU {server_cpu:.1} % of one core, harness {harness_cpu:.1} %",
            steady.0, steady.1, args.steady_secs, steady_mem.rss_kib, steady_mem.threads
        ),
    );
    if args.steady_only {
        stop_agents(&phase_tx, &mut agents, start).await;
        let end_mem = server.memory()?;
        server.stop().context("stopping the server")?;
        println!(
            "\nSTEADY agents={} checks={} server_args={:?} connect_s={:.1} rss_idle_kib={} rss_steady_kib={} hwm_kib={} steady_results_per_s={:.0} server_cpu_pct={server_cpu:.1} harness_cpu_pct={harness_cpu:.1} failures={}",
            args.agents,
            args.checks,
            args.server_args.join(" "),
            connected_in.as_secs_f64(),
            idle.rss_kib,
            steady_mem.rss_kib,
            end_mem.hwm_kib,
            steady.1 * f64::from(args.checks),
            counters.failures.load(Ordering::Relaxed),
        );
        return Ok(());
    }

    // 3. run-now under steady load, then the read side: a Prometheus
    // scrape of every agent's latest values and one series query.
    let rtts = run_now(&server, args.agents, args.rpc_calls, None).await;
    log(start, &format!("run-now: {}", rtts.summary()));
    let t0 = Instant::now();
    let (status, body) = server.request("GET", "/metrics", None).await?;
    let scrape_ms = t0.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status == 200, "GET /metrics: {status}");
    let fp0 = outrider_protocol::fingerprint_of(&agent::key(0).verifying_key());
    let t0 = Instant::now();
    let (status, points) = server
        .request(
            "GET",
            &format!("/api/v1/series/query?agent={fp0}&check={CHECK}&metric=m0"),
            None,
        )
        .await?;
    let query_ms = t0.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status == 200, "series query: {status} {points}");
    log(
        start,
        &format!(
            "GET /metrics: {scrape_ms:.0} ms, {} lines, {} bytes; series query (1 h raw): {query_ms:.1} ms",
            body.lines().count(),
            body.len()
        ),
    );

    // 4. burst
    phase_tx.send_replace(Phase::Burst);
    let burst = measure_rate(&counters, Duration::from_secs(args.burst_secs)).await;
    let burst_mem = server.memory()?;
    phase_tx.send_replace(Phase::Steady);
    log(
        start,
        &format!(
            "burst: {:.0} samples/s, {:.0} batches/s over {} s; RSS {} KiB, {} threads",
            burst.0, burst.1, args.burst_secs, burst_mem.rss_kib, burst_mem.threads
        ),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 5. storm
    let before = counters.handshakes.load(Ordering::Relaxed);
    let storm_start = Instant::now();
    phase_tx.send_replace(Phase::Storm(1));
    let storm = loop {
        let done = counters.handshakes.load(Ordering::Relaxed) - before;
        if done >= args.agents as u64 && counters.connected.load(Ordering::Relaxed) >= args.agents {
            break Some(storm_start.elapsed());
        }
        if storm_start.elapsed() > connect_deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let storm_mem = server.memory()?;
    match storm {
        Some(d) => log(
            start,
            &format!(
                "storm: all {} back in {:.2} s; RSS {} KiB, {} threads",
                args.agents,
                d.as_secs_f64(),
                storm_mem.rss_kib,
                storm_mem.threads
            ),
        ),
        None => log(
            start,
            &format!(
                "storm: only {} of {} back within {connect_deadline:?}",
                counters.connected.load(Ordering::Relaxed),
                args.agents
            ),
        ),
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 6. nudge: publish, then time run-now until every agent fetched the
    // release (or the window plus 60 s passed).
    let nudges = &settings.nudges;
    nudge::publish(&args.cli_bin, &server, &data_dir, nudges)?;
    let window_end = Instant::now() + Duration::from_secs(args.nudge_window_secs + 60);
    let nudge_rtts = run_now(&server, args.agents, usize::MAX, Some((window_end, nudges))).await;
    let nudge_mem = server.memory()?;
    let arrivals = {
        let mut a = nudges
            .arrivals_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        a.sort_by(f64::total_cmp);
        a
    };
    let at = |q: f64| {
        arrivals
            .get(((arrivals.len() as f64 * q) as usize).min(arrivals.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let nudge_summary = format!(
        "{} of {} nudged (arrival after publish ms p50={:.0} p99={:.0} max={:.0}); manifest ok/failed {}/{}; blob ok/failed {}/{}; run-now meanwhile: {}; RSS {} KiB",
        nudges.received.load(Ordering::Relaxed),
        args.agents,
        at(0.5),
        at(0.99),
        arrivals.last().copied().unwrap_or(f64::NAN),
        nudges.manifest_ok.load(Ordering::Relaxed),
        nudges.manifest_failed.load(Ordering::Relaxed),
        nudges.blob_ok.load(Ordering::Relaxed),
        nudges.blob_failed.load(Ordering::Relaxed),
        nudge_rtts.summary(),
        nudge_mem.rss_kib,
    );
    log(start, &format!("nudge: {nudge_summary}"));
    for e in nudges
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        log(start, &format!("  nudge failure: {e}"));
    }

    // 7. stop and count at the store
    let tallies = stop_agents(&phase_tx, &mut agents, start).await;
    let end_mem = server.memory()?;
    server.stop().context("stopping the server")?;
    let acked: Vec<(String, u64)> = tallies
        .iter()
        .map(|t| (t.fingerprint.clone(), t.acked_seq))
        .collect();
    let stored = server::read_store(&data_dir, &acked)?;
    let (lost, results) = (stored.lost, stored.results);
    let unacked: u64 = tallies.iter().map(|t| t.sent_seq - t.acked_seq).sum();
    let expected_points = results * args.perfdata as u64;
    log(
        start,
        &format!(
            "store: {results} results, {} points (expected {expected_points}); lost (acked but absent): {lost}; sent but never acked: {unacked}; failures/retries: {}",
            stored.points,
            counters.failures.load(Ordering::Relaxed)
        ),
    );
    for (reason, n) in counters.top_failures(8) {
        log(start, &format!("  failure x{n}: {reason}"));
    }
    log(
        start,
        &format!(
            "server VmHWM (peak RSS) over the run: {} KiB",
            end_mem.hwm_kib
        ),
    );
    println!(
        "\nNUDGE {nudge_summary}\nSUMMARY agents={} scrape_ms={scrape_ms:.0} connect_s={:.1} rss_idle_kib={} rss_steady_kib={} rss_burst_kib={} rss_storm_kib={} hwm_kib={} steady_samples_per_s={:.0} burst_samples_per_s={:.0} storm_s={} rpc={} lost={} points={}/{} failures={}",
        args.agents,
        connected_in.as_secs_f64(),
        idle.rss_kib,
        steady_mem.rss_kib,
        burst_mem.rss_kib,
        storm_mem.rss_kib,
        end_mem.hwm_kib,
        steady.0,
        burst.0,
        storm.map_or("missed".to_owned(), |d| format!("{:.2}", d.as_secs_f64())),
        rtts.summary(),
        lost,
        stored.points,
        expected_points,
        counters.failures.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Waits until `n` agents are connected or the deadline passes.
async fn wait_connected(
    counters: &Counters,
    n: usize,
    deadline: Duration,
    start: Instant,
) -> Duration {
    let t0 = Instant::now();
    let mut last_log = Instant::now();
    while counters.connected.load(Ordering::Relaxed) < n && t0.elapsed() < deadline {
        if last_log.elapsed() > Duration::from_secs(5) {
            log(
                start,
                &format!("  {} connected", counters.connected.load(Ordering::Relaxed)),
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// Acked samples and batches per second over `window`.
async fn measure_rate(counters: &Counters, window: Duration) -> (f64, f64) {
    let s0 = counters.acked_samples.load(Ordering::Relaxed);
    let b0 = counters.acked_batches.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    (
        (counters.acked_samples.load(Ordering::Relaxed) - s0) as f64 / secs,
        (counters.acked_batches.load(Ordering::Relaxed) - b0) as f64 / secs,
    )
}

/// Tells every agent to stop (goodbye) and collects their tallies; the
/// ones still running after 60 s are aborted and missing from the result.
/// Starts `count` simulated agents with `settings`, all in the steady
/// phase: their shared counters, the sender that switches their phase, and
/// their tasks (for [`stop_agents`]).
fn spawn_agents(
    settings: &Arc<agent::Settings>,
    count: usize,
) -> (
    Arc<Counters>,
    watch::Sender<Phase>,
    tokio::task::JoinSet<agent::Tally>,
) {
    let counters = Arc::new(Counters::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Steady);
    let mut agents = tokio::task::JoinSet::new();
    for index in 0..count {
        agents.spawn(agent::run(
            index,
            settings.clone(),
            counters.clone(),
            phase_rx.clone(),
        ));
    }
    (counters, phase_tx, agents)
}

async fn stop_agents(
    phase_tx: &watch::Sender<Phase>,
    agents: &mut tokio::task::JoinSet<agent::Tally>,
    start: Instant,
) -> Vec<agent::Tally> {
    phase_tx.send_replace(Phase::Stop);
    let mut tallies = Vec::with_capacity(agents.len());
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(t) = agents.join_next().await {
            if let Ok(t) = t {
                tallies.push(t);
            }
        }
    })
    .await;
    if drained.is_err() {
        agents.abort_all();
        log(start, "some agents did not stop within 60 s; aborted");
    }
    tallies
}

/// Round-trip times of run-now calls, ms.
#[derive(Debug, Default)]
struct Rtts {
    ms: Vec<f64>,
    errors: usize,
    /// How long each failed call took to fail, ms.
    err_ms: Vec<f64>,
    /// Failed calls by answer: the status and the error's first words
    /// (agent names and digits left out), or the transport error.
    err_kinds: std::collections::BTreeMap<String, usize>,
}

impl Rtts {
    /// The `p` quantile (0..=1) in ms; NaN without samples.
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    fn summary(&self) -> String {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return format!("n=0 errors={}", self.errors);
        }
        let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        format!(
            "n={} p50={:.1}ms p99={:.1}ms max={:.1}ms errors={}",
            v.len(),
            pct(0.5),
            pct(0.99),
            v[v.len() - 1],
            self.errors
        )
    }
}

impl Rtts {
    /// One run-now call to agent `index`: its round trip when answered
    /// 200, else one more error (the first three printed). A failed
    /// request is a measured error, not the end of the run: the phases
    /// after it still count the store.
    async fn call(&mut self, server: &ServerProcess, index: usize) {
        let fp = outrider_protocol::fingerprint_of(&agent::key(index).verifying_key());
        let t0 = Instant::now();
        let answer = server
            .request(
                "POST",
                &format!("/api/v1/agents/{fp}/run"),
                Some(&format!(r#"{{"check":"{CHECK}"}}"#)),
            )
            .await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let why = match answer {
            Ok((200, _)) => return self.ms.push(ms),
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => format!("{e:#}"),
        };
        self.errors += 1;
        self.err_ms.push(ms);
        *self.err_kinds.entry(error_kind(&why)).or_default() += 1;
        if self.errors <= 3 {
            eprintln!("run-now {fp}: {why}");
        }
    }
}

/// The kind of a failed call's answer (`why`): its status and the
/// message's words up to the first that names an agent (hex or digits),
/// so that the same refusal for different agents counts as one kind.
fn error_kind(why: &str) -> String {
    let text: String = why
        .chars()
        .filter(|c| *c != '"' && *c != '{' && *c != '}')
        .collect();
    text.split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()) || w.len() == 3)
        .take(8)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which agent each run-now call goes to: xorshift, a fixed and so
/// reproducible spread over the agents.
#[derive(Debug)]
struct Picker(u64);

impl Default for Picker {
    fn default() -> Self {
        Picker(0x9e37_79b9_7f4a_7c15)
    }
}

impl Picker {
    fn next(&mut self, agents: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % agents as u64) as usize
    }
}

/// `calls` sequential run-now round trips to pseudo-random agents; with
/// `until`, stops early at its deadline or once every agent fetched the
/// nudged blob.
async fn run_now(
    server: &ServerProcess,
    agents: usize,
    calls: usize,
    until: Option<(Instant, &nudge::Nudges)>,
) -> Rtts {
    let mut rtts = Rtts::default();
    let mut picker = Picker::default();
    for _ in 0..calls {
        if let Some((deadline, nudges)) = until {
            let settled = nudges.blob_ok.load(Ordering::Relaxed)
                + nudges.blob_failed.load(Ordering::Relaxed)
                + nudges.manifest_failed.load(Ordering::Relaxed);
            if Instant::now() >= deadline || settled >= agents as u64 {
                break;
            }
        }
        rtts.call(server, picker.next(agents)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rtts
}
