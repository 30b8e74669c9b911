//! `--scripted`: the simulated agents held under the control of another
//! harness (bench/dashboard.sh), which writes one command a line to the
//! loadgen's standard input and reads the answers from its standard output.
//!
//! The loadgen starts the server (its dashboard on a free port of its
//! own), connects every agent, prints
//! `READY api=<addr> dashboard=<addr> data_dir=<dir> server_pid=<pid>`, and
//! then obeys, until `stop`, the end of its input, or `--scripted-secs`:
//!
//! | command | effect | answer |
//! |---|---|---|
//! | `steady` | one batch per agent per interval | `OK steady` |
//! | `burst` | every agent sends its next batch once the last is acked | `OK burst` |
//! | `drop INDEX SECS` | agent INDEX drops its TCP connection (no goodbye) and stays away SECS | `DROPPED INDEX FP UNIX_MS` once the socket is closed |
//! | `count TAG` | nothing | `COUNT TAG unix_ms=… acked_samples=… acked_batches=… server_cpu_s=… harness_cpu_s=… connected=… rss_kib=…` |
//! | `stop` | goodbye from every agent, server SIGTERM | `STOPPED …` |
//!
//! Rates are differences of two `COUNT` answers: acked samples are results
//! (acknowledged by the server) times `--perfdata`.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::agent::{Phase, Settings};
use crate::server::{self, ServerProcess};
use crate::{Args, CHECK, ENROLLMENT_TOKEN, log};

pub async fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let fds = crate::raise_fd_limit()?;
    anyhow::ensure!(
        fds as usize > args.agents + 1_000,
        "RLIMIT_NOFILE hard limit {fds} is too low for {} agents",
        args.agents
    );
    let dir = args
        .keep_dir
        .clone()
        .context("--scripted needs --keep-dir: the harness reads the server's data directory")?;
    std::fs::create_dir_all(&dir)?;
    // A free port for the dashboard (the server reports only the API's).
    let dashboard = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut server_args = vec![
        "--dashboard-listen".to_owned(),
        dashboard.to_string(),
        "--nudge-window-secs".to_owned(),
        args.nudge_window_secs.to_string(),
    ];
    server_args.extend(args.server_args.iter().cloned());
    let server = ServerProcess::start(&args.server_bin, &dir, ENROLLMENT_TOKEN, &server_args)?;
    let checks = server.define_checks(CHECK, args.checks).await?;
    let settings = Arc::new(Settings {
        server: server.addr,
        enrollment_token: ENROLLMENT_TOKEN.into(),
        checks,
        interval: Duration::from_secs(args.interval_secs.max(1)),
        perfdata_per_result: args.perfdata,
        results_per_burst_batch: args.burst_results.max(1),
        agent_backoff: !args.reconnect_immediately,
        agents: args.agents,
        nudges: Arc::default(),
        agents_per_ip: args.agents_per_ip,
        tls: None,
        drops: Arc::default(),
        nodes: None,
        connect_ramp: Duration::ZERO,
        token_once: false,
    });
    let (counters, phase_tx, mut agents) = crate::spawn_agents(&settings, args.agents);
    let connected_in = crate::wait_connected(
        &counters,
        args.agents,
        Duration::from_secs(args.connect_deadline_secs),
        start,
    )
    .await;
    log(
        start,
        &format!(
            "connect: {} of {} in {:.1} s",
            counters.connected.load(Ordering::Relaxed),
            args.agents,
            connected_in.as_secs_f64()
        ),
    );
    println!(
        "READY api={} dashboard={dashboard} data_dir={} server_pid={}",
        server.addr,
        dir.display(),
        server.pid()
    );

    // Standard input is read by a thread of its own (the runtime has no
    // stdin support compiled in); it ends with the input or the process.
    let (tx, mut commands) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.scripted_secs);
    loop {
        let line = tokio::select! {
            line = commands.recv() => line,
            _ = tokio::time::sleep_until(deadline) => {
                log(start, "--scripted-secs reached; stopping");
                None
            }
        };
        let Some(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["steady"] => {
                phase_tx.send_replace(Phase::Steady);
                println!("OK steady");
            }
            ["burst"] => {
                phase_tx.send_replace(Phase::Burst);
                println!("OK burst");
            }
            ["drop", index, secs] => match (index.parse::<usize>(), secs.parse::<u64>()) {
                (Ok(index), Ok(secs)) if index < args.agents => {
                    settings.drops.order(index, Duration::from_secs(secs));
                }
                _ => println!("ERROR {line:?}: drop takes an agent index and seconds"),
            },
            ["count", tag] => {
                let mem = server.memory()?;
                println!(
                    "COUNT {tag} unix_ms={} acked_samples={} acked_batches={} server_cpu_s={:.2} harness_cpu_s={:.2} connected={} rss_kib={}",
                    outrider_protocol::unix_now_ms(),
                    counters.acked_samples.load(Ordering::Relaxed),
                    counters.acked_batches.load(Ordering::Relaxed),
                    server.cpu_secs()?,
                    server::own_cpu_secs()?,
                    counters.connected.load(Ordering::Relaxed),
                    mem.rss_kib,
                );
            }
            ["stop"] => break,
            [] => {}
            _ => println!("ERROR {line:?}: not a command (steady, burst, drop, count, stop)"),
        }
    }
    crate::stop_agents(&phase_tx, &mut agents, start).await;
    let end = server.memory()?;
    server.stop().context("stopping the server")?;
    println!(
        "STOPPED failures={} hwm_kib={}",
        counters.failures.load(Ordering::Relaxed),
        end.hwm_kib
    );
    for (reason, n) in counters.top_failures(8) {
        log(start, &format!("  failure x{n}: {reason}"));
    }
    Ok(())
}
