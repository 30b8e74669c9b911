//! The cross-node bus's round trip ("run now" for an agent on another
//! node) with 5 nodes on one PostgreSQL: the benchmark harness behind
//! docs/benchmarks.md, "Cross-node bus". A local run-now is an in-process
//! call, so the round trip measured here is what a remote one adds.
//!
//! Starts a private cluster (`outrider-pgtest`), 5 nodes' buses in this
//! process (each its own `LISTEN` connection, as separate processes would
//! have), each answering every request at once, then:
//! 1. idle: one request at a time, node 0 to nodes 1–4 in turn;
//! 2. load: 40 callers (8 per node) each sending to another node, back
//!    to back.
//!
//! Every sample is kept; prints p50 / p95 / p99 / max and the NOTIFYs
//! sent per target node per second. Stops by itself.
//!
//! `nice -n 19 cargo run --release -p outrider-server --example bus_latency -- [idle samples] [load seconds]`

use std::time::{Duration, Instant};

use outrider_server::backend::bus::{BusConfig, Incoming, Kind, now_ms};
use outrider_server::backend::postgres::bus::{ListenConfig, PgBus};
use outrider_server::backend::presence::{NodeId, PresenceStore};
use outrider_server::backend::{PgBackend, PgTls};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const NODES: usize = 5;
const CALLERS_PER_NODE: usize = 8;

fn report(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    println!(
        "{name}: n={} p50={:.1} ms p95={:.1} ms p99={:.1} ms max={:.1} ms",
        ms.len(),
        q(0.50),
        q(0.95),
        q(0.99),
        ms[ms.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let idle_samples: usize = args.get(1).map_or(400, |a| a.parse().unwrap());
    let load_secs: u64 = args.get(2).map_or(10, |a| a.parse().unwrap());
    let cluster = outrider_pgtest::Cluster::start().unwrap();
    let db = cluster.database().await.unwrap();
    let backend = PgBackend::with_config(db.config.clone(), PgTls::Disable, 16)
        .await
        .unwrap();
    let listen = ListenConfig {
        config: db.config.clone(),
        tls: PgTls::Disable,
    };
    let ids: Vec<NodeId> = (0..NODES)
        .map(|i| format!("n{i}").parse().unwrap())
        .collect();
    let shutdown = CancellationToken::new();
    let mut buses = Vec::new();
    let mut tasks = Vec::new();
    let mut responders = JoinSet::new();
    for id in &ids {
        backend.heartbeat(id, &[], now_ms()).await.unwrap();
        let (bus, mut rx, t) = PgBus::start(
            backend.clone(),
            listen.clone(),
            id.clone(),
            BusConfig::default(),
            shutdown.clone(),
        );
        let replier = bus.clone();
        responders.spawn(async move {
            while let Some(m) = rx.recv().await {
                if let Incoming::Request(r) = m {
                    let _ = replier.reply(&r, Ok(&r.payload)).await;
                }
            }
        });
        buses.push(bus);
        tasks.push(t);
    }
    // The presence heartbeat, as each node's would run.
    let beat = {
        let (backend, ids, stop) = (backend.clone(), ids.clone(), shutdown.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for id in &ids {
                    backend.heartbeat(id, &[], now_ms()).await.unwrap();
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        })
    };
    let kind: Kind = "run_now".parse().unwrap();
    let timeout = Duration::from_secs(10);

    let mut idle = Vec::new();
    for i in 0..idle_samples {
        let target = &ids[1 + i % (NODES - 1)];
        let t = Instant::now();
        buses[0]
            .request(target, &kind, b"x", timeout)
            .await
            .unwrap();
        idle.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("idle, one at a time", idle);

    let before: Vec<u64> = buses.iter().map(|b| b.stats().notifies).collect();
    let started = Instant::now();
    let end = started + Duration::from_secs(load_secs);
    let mut callers = JoinSet::new();
    for (n, bus) in buses.iter().enumerate() {
        for c in 0..CALLERS_PER_NODE {
            let (bus, ids, kind) = (bus.clone(), ids.clone(), kind.clone());
            callers.spawn(async move {
                let mut ms = Vec::new();
                let mut i = c;
                while Instant::now() < end {
                    i += 1;
                    let target = &ids[(n + 1 + i % (NODES - 1)) % NODES];
                    let t = Instant::now();
                    bus.request(target, &kind, b"x", timeout).await.unwrap();
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                ms
            });
        }
    }
    let mut load = Vec::new();
    while let Some(r) = callers.join_next().await {
        load.extend(r.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let calls = load.len();
    report(&format!("load, {} callers", NODES * CALLERS_PER_NODE), load);
    let notifies: u64 = buses
        .iter()
        .zip(before)
        .map(|(b, before)| b.stats().notifies - before)
        .sum();
    println!(
        "load: {:.0} calls/s; NOTIFYs {:.1}/s in all, {:.1}/s per target node (bound: 10 per sender)",
        calls as f64 / secs,
        notifies as f64 / secs,
        notifies as f64 / secs / NODES as f64
    );
    shutdown.cancel();
    for t in tasks {
        t.join().await;
    }
    while responders.join_next().await.is_some() {}
    beat.await.unwrap();
}
