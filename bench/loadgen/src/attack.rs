//! `--attack`: the denial-of-service harness (docs/security.md, "Denial of
//! service").
//!
//! Starts a release `outrider-server` speaking TLS on loopback (its limits
//! at their defaults unless `--server-arg` says otherwise), connects N
//! simulated agents ([`crate::agent`], over TLS) that report one batch per
//! interval, times run-now calls without attack (baseline), then attacks
//! for `--attack-secs` from the attacker addresses 127.1.0.1, 127.1.0.2, …
//! while the agents keep reporting and run-now calls are timed:
//!
//! - **slowloris**: `--slowloris` connections, each completing TLS, sending
//!   a request line and then one header line per second, never finishing;
//!   reconnecting when closed;
//! - **handshake flood**: `--flooders` tasks completing TLS handshakes and
//!   dropping them, as fast as the server lets them;
//! - **oversized pre-auth frames**: `--oversized` tasks upgrading to the
//!   agent websocket and sending a 1 MiB frame instead of a hello.
//!
//! Then the agents stop, the server stops, and its store is read: every
//! result the server acknowledged must be stored. Bounded: loopback only,
//! every task stops at the end of the attack, the whole run has a hard cap.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::agent::Settings;
use crate::server::{self, ServerProcess, Tls};
use crate::{Args, CHECK, ENROLLMENT_TOKEN, Picker, Rtts, log, nudge, raise_fd_limit, stop_agents};

/// Size of the frame an oversized attacker sends before its hello.
const OVERSIZED_FRAME: usize = 1 << 20;

/// What the attackers saw.
#[derive(Debug, Default)]
struct AttackCounters {
    /// Slowloris connections that completed TLS and sent their request line.
    slow_opened: AtomicU64,
    /// Of those, open right now.
    slow_open: AtomicU64,
    /// Slowloris attempts refused (closed before or during TLS).
    slow_refused: AtomicU64,
    /// Slowloris connections the server closed, and the longest one held (ms).
    slow_closed: AtomicU64,
    slow_longest_ms: AtomicU64,
    /// Most slowloris connections open at once.
    slow_peak: AtomicU64,
    /// Flood handshakes completed, and refused or failed.
    flood_ok: AtomicU64,
    flood_refused: AtomicU64,
    /// Oversized frames sent, connections closed by the server after one,
    /// and connections still open 10 s after one (a failure of the limit).
    oversized_sent: AtomicU64,
    oversized_closed: AtomicU64,
    oversized_open: AtomicU64,
    oversized_refused: AtomicU64,
}

fn attacker_ip(i: usize, ips: usize) -> Ipv4Addr {
    let n = (i % ips.max(1)) as u32 + 1;
    Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8)
}

/// Sleeps `d` unless `stop` comes first; false when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn slowloris(
    source: Ipv4Addr,
    server: std::net::SocketAddr,
    tls: Tls,
    stop: CancellationToken,
    c: Arc<AttackCounters>,
) {
    while !stop.is_cancelled() {
        let dial = tokio::time::timeout(
            Duration::from_secs(10),
            server::dial(Some(source), server, Some(&tls)),
        );
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = dial => r,
        };
        let Ok(Ok(stream)) = stream else {
            c.slow_refused.fetch_add(1, Ordering::Relaxed);
            if !pause(&stop, Duration::from_millis(200)).await {
                return;
            }
            continue;
        };
        let (mut rd, mut wr) = tokio::io::split(stream);
        if wr
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            c.slow_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        c.slow_opened.fetch_add(1, Ordering::Relaxed);
        let open = c.slow_open.fetch_add(1, Ordering::Relaxed) + 1;
        c.slow_peak.fetch_max(open, Ordering::Relaxed);
        let held = Instant::now();
        let mut buf = [0u8; 512];
        let stopped = loop {
            tokio::select! {
                _ = stop.cancelled() => break true,
                // The server closing (or answering anything) ends the hold.
                _ = rd.read(&mut buf) => break false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if wr.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break false;
                    }
                }
            }
        };
        c.slow_open.fetch_sub(1, Ordering::Relaxed);
        if stopped {
            return;
        }
        c.slow_closed.fetch_add(1, Ordering::Relaxed);
        c.slow_longest_ms
            .fetch_max(held.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

async fn flood(
    first: usize,
    ips: usize,
    server: std::net::SocketAddr,
    tls: Tls,
    stop: CancellationToken,
    c: Arc<AttackCounters>,
) {
    let mut i = first;
    while !stop.is_cancelled() {
        i += 1;
        let dial = tokio::time::timeout(
            Duration::from_secs(10),
            server::dial(Some(attacker_ip(i, ips)), server, Some(&tls)),
        );
        let done = tokio::select! {
            _ = stop.cancelled() => return,
            r = dial => r,
        };
        match done {
            Ok(Ok(stream)) => {
                c.flood_ok.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
            _ => {
                c.flood_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn oversized(
    source: Ipv4Addr,
    server: std::net::SocketAddr,
    tls: Tls,
    stop: CancellationToken,
    c: Arc<AttackCounters>,
) {
    let frame = "x".repeat(OVERSIZED_FRAME);
    while !stop.is_cancelled() {
        let attempt = async {
            let stream = server::dial(Some(source), server, Some(&tls)).await?;
            let url = format!("ws://{server}{}", outrider_protocol::AGENT_WS_PATH);
            let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), stream).await?;
            // The challenge.
            let _ = ws.next().await;
            anyhow::Ok(ws)
        };
        let ws = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(10), attempt) => r,
        };
        let Ok(Ok(mut ws)) = ws else {
            c.oversized_refused.fetch_add(1, Ordering::Relaxed);
            if !pause(&stop, Duration::from_millis(200)).await {
                return;
            }
            continue;
        };
        c.oversized_sent.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            ws.send(Message::text(frame.clone())),
        )
        .await;
        let ends = async {
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Close(_) = frame {
                    break;
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), ends).await {
            Ok(()) => c.oversized_closed.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.oversized_open.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Sequential run-now calls to pseudo-random agents until `until`.
async fn run_now_until(server: &ServerProcess, agents: usize, until: Instant) -> Rtts {
    let mut rtts = Rtts::default();
    let mut picker = Picker::default();
    while Instant::now() < until {
        rtts.call(server, picker.next(agents)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rtts
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let fds = raise_fd_limit()?;
    let needed = 2 * (args.agents + args.slowloris + args.flooders + args.oversized) + 1_000;
    anyhow::ensure!(
        fds as usize > needed,
        "RLIMIT_NOFILE hard limit {fds} is too low (need about {needed})"
    );
    let temp = tempfile::tempdir()?;
    let data_dir = temp.path().to_owned();
    let tls = Tls::generate(&data_dir)?;
    let mut flags = vec![
        "--tls-cert".to_owned(),
        tls.cert_path.display().to_string(),
        "--tls-key".to_owned(),
        tls.key_path.display().to_string(),
    ];
    flags.extend(args.server_args.iter().cloned());
    let mut server = ServerProcess::start(&args.server_bin, &data_dir, ENROLLMENT_TOKEN, &flags)?;
    server.tls = Some(tls.clone());
    log(
        start,
        &format!(
            "server pid {} on https://{} (flags {:?})",
            server.pid(),
            server.addr,
            args.server_args
        ),
    );
    let checks = server.define_checks(CHECK, 1).await?;

    let settings = Arc::new(Settings {
        server: server.addr,
        enrollment_token: ENROLLMENT_TOKEN.into(),
        checks,
        interval: Duration::from_secs(args.interval_secs.max(1)),
        perfdata_per_result: args.perfdata,
        results_per_burst_batch: 1,
        agent_backoff: !args.reconnect_immediately,
        agents: args.agents,
        nudges: Arc::new(nudge::Nudges::default()),
        agents_per_ip: args.agents_per_ip,
        tls: Some(tls.clone()),
        drops: Arc::default(),
        nodes: None,
        connect_ramp: Duration::ZERO,
        token_once: false,
    });
    let (counters, phase_tx, mut agents) = crate::spawn_agents(&settings, args.agents);
    let connect_deadline = Duration::from_secs(args.connect_deadline_secs);
    let connected_in = crate::wait_connected(&counters, args.agents, connect_deadline, start).await;
    log(
        start,
        &format!(
            "connect: {} of {} agents in {:.1} s (from {} source address(es))",
            counters.connected.load(Ordering::Relaxed),
            args.agents,
            connected_in.as_secs_f64(),
            args.agents.div_ceil(args.agents_per_ip.max(1)),
        ),
    );

    // Baseline: run-now without attack.
    let baseline = run_now_until(
        &server,
        args.agents,
        Instant::now() + Duration::from_secs(args.baseline_secs),
    )
    .await;
    log(start, &format!("baseline run-now: {}", baseline.summary()));

    // The attack.
    let stop = CancellationToken::new();
    let c = Arc::new(AttackCounters::default());
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..args.slowloris {
        attackers.spawn(slowloris(
            attacker_ip(i, args.attacker_ips),
            server.addr,
            tls.clone(),
            stop.clone(),
            c.clone(),
        ));
    }
    for i in 0..args.flooders {
        attackers.spawn(flood(
            i,
            args.attacker_ips,
            server.addr,
            tls.clone(),
            stop.clone(),
            c.clone(),
        ));
    }
    for i in 0..args.oversized {
        attackers.spawn(oversized(
            attacker_ip(i, args.attacker_ips),
            server.addr,
            tls.clone(),
            stop.clone(),
            c.clone(),
        ));
    }
    let acked_before = counters.acked_batches.load(Ordering::Relaxed);
    let attack_start = Instant::now();
    let attack_end = attack_start + Duration::from_secs(args.attack_secs);
    // Let the slowloris connections pile up before timing.
    tokio::time::sleep(Duration::from_secs(args.attack_secs.min(5))).await;
    let during = run_now_until(&server, args.agents, attack_end).await;
    let attack_secs = attack_start.elapsed().as_secs_f64();
    let batches = counters.acked_batches.load(Ordering::Relaxed) - acked_before;
    let mem = server.memory()?;
    let (_, metrics) = server.request("GET", "/metrics", None).await?;
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(15), async {
        while attackers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        attackers.abort_all();
    }
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    log(
        start,
        &format!(
            "attack over {attack_secs:.0} s: slowloris opened {} (peak {} open at once, longest held {} ms, {} closed by the server, {} refused); \
             flood: {} handshakes completed, {} refused; oversized: {} sent, {} closed, {} left open, {} refused",
            n(&c.slow_opened),
            n(&c.slow_peak),
            n(&c.slow_longest_ms),
            n(&c.slow_closed),
            n(&c.slow_refused),
            n(&c.flood_ok),
            n(&c.flood_refused),
            n(&c.oversized_sent),
            n(&c.oversized_closed),
            n(&c.oversized_open),
            n(&c.oversized_refused),
        ),
    );
    log(
        start,
        &format!(
            "during the attack: run-now {}; agents acked {batches} batches ({:.0}/s), {} of {} connected at the end; server RSS {} KiB",
            during.summary(),
            batches as f64 / attack_secs,
            counters.connected.load(Ordering::Relaxed),
            args.agents,
            mem.rss_kib,
        ),
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("outrider_connections_refused_total{"))
    {
        log(start, &format!("  server {line}"));
    }

    let tallies = stop_agents(&phase_tx, &mut agents, start).await;
    server.stop().context("stopping the server")?;
    let acked: Vec<(String, u64)> = tallies
        .iter()
        .map(|t| (t.fingerprint.clone(), t.acked_seq))
        .collect();
    let acked_total: u64 = acked.iter().map(|a| a.1).sum();
    let stored = server::read_store(&data_dir, &acked)?;
    log(
        start,
        &format!(
            "store: {} results acked by the server, {} of them stored, lost {}; failures/retries {}",
            acked_total,
            acked_total - stored.lost,
            stored.lost,
            counters.failures.load(Ordering::Relaxed)
        ),
    );
    for (reason, n) in counters.top_failures(6) {
        log(start, &format!("  agent failure x{n}: {reason}"));
    }
    let p99 = during.percentile(0.99);
    println!(
        "\nSUMMARY attack agents={} slowloris={} flooders={} oversized={} attacker_ips={} acked={acked_total} stored={} lost={} baseline_rpc=[{}] attack_rpc=[{}] slow_peak={} slow_longest_ms={} flood_ok={} flood_refused={} oversized_closed={}/{} verdict={}",
        args.agents,
        args.slowloris,
        args.flooders,
        args.oversized,
        args.attacker_ips,
        acked_total - stored.lost,
        stored.lost,
        baseline.summary(),
        during.summary(),
        n(&c.slow_peak),
        n(&c.slow_longest_ms),
        n(&c.flood_ok),
        n(&c.flood_refused),
        n(&c.oversized_closed),
        n(&c.oversized_sent),
        if stored.lost == 0 && p99 <= 100.0 && during.errors == 0 {
            "pass"
        } else {
            "FAIL"
        },
    );
    Ok(())
}
