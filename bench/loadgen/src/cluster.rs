//! `--nodes N --database CONNINFO`: the multi-node benchmark
//! (docs/benchmarks.md, "Several nodes on PostgreSQL: 10,000 agents").
//!
//! Starts N `outrider-server` processes on one PostgreSQL database, each
//! with its own data directory and `--node-id n0`, `n1`, … (alerting on,
//! as on the single node; `--server-arg=--no-alerting` turns it off), and
//! runs the simulated agents ([`crate::agent`])
//! over them: agent `i` prefers node `i % N` and moves on as the real agent
//! does ([`crate::agent::Nodes`]). Phases, each bounded in time:
//!
//! 1. **connect**: all agents register, spread over the nodes;
//! 2. **steady**: one batch per agent per interval; total ingest
//!    samples/s, RSS and CPU of every node;
//! 3. **run-now**: calls alternating between the node holding the agent
//!    (local) and another node (relayed over the bus, server/src/relay.rs),
//!    under the steady load; p50/p95/p99 of each and the p95 difference;
//! 4. **burst**: every agent sends its next batch as soon as the previous
//!    one is acked (`--burst-secs`): the ingest ceiling on PostgreSQL;
//! 5. **kill**: SIGKILL to the node holding the most agents; the time until
//!    every one of its agents has a session on another node, and until each
//!    has a batch acked there; meanwhile run-now calls to those agents
//!    through a surviving node, counting the ones that fail and how fast;
//! 6. **stop**: goodbye, the surviving nodes SIGTERM, then results acked
//!    but absent are counted: in PostgreSQL's `results` table when the
//!    database has one, else (results still in each node's SQLite file) in
//!    the union of the nodes' files, which the summary line says.
//!
//! Prints one `CLUSTER` line of key=value figures (bench/cluster.sh takes
//! medians of them).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::agent::{NO_NODE, Nodes, Phase, Settings};
use crate::server::{Memory, ServerProcess};
use crate::{
    Args, CHECK, ENROLLMENT_TOKEN, Picker, Rtts, log, measure_rate, raise_fd_limit, spawn_agents,
    stop_agents, wait_connected,
};

/// The least time run-now calls go to the killed node's agents after the
/// kill.
const KILL_CALLS_FOR: Duration = Duration::from_secs(10);

/// Where the acked results were looked for in the stop phase.
enum StoreCount {
    /// `results` in PostgreSQL: lost (acked but absent) over all agents.
    Postgres { results: u64, lost: u64 },
    /// The nodes' SQLite files together: lost, and seqs stored on more
    /// than one node.
    NodeFiles {
        results: u64,
        lost: u64,
        on_two: u64,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let n = args.nodes;
    anyhow::ensure!(n >= 2, "--nodes needs at least 2");
    let database = args
        .database
        .clone()
        .context("--nodes needs --database (a PostgreSQL URL or conninfo)")?;
    let fds = raise_fd_limit()?;
    anyhow::ensure!(
        fds as usize > args.agents + 1_000,
        "RLIMIT_NOFILE hard limit {fds} is too low for {} agents",
        args.agents
    );
    let temp;
    let root: PathBuf = match &args.keep_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut dirs = Vec::with_capacity(n);
    let mut servers: Vec<Option<ServerProcess>> = Vec::with_capacity(n);
    for k in 0..n {
        let dir = root.join(format!("n{k}"));
        std::fs::create_dir_all(&dir)?;
        let mut extra = vec![
            "--database".to_owned(),
            database.clone(),
            "--node-id".to_owned(),
            format!("n{k}"),
        ];
        extra.extend(args.server_args.iter().cloned());
        let server = ServerProcess::start(&args.server_bin, &dir, ENROLLMENT_TOKEN, &extra)
            .with_context(|| format!("starting node n{k}"))?;
        log(
            start,
            &format!("node n{k}: pid {} on {}", server.pid(), server.addr),
        );
        dirs.push(dir);
        servers.push(Some(server));
    }
    let checks = node(0, &servers)?.define_checks(CHECK, args.checks).await?;
    let addrs = servers
        .iter()
        .map(|s| s.as_ref().map(|s| s.addr))
        .collect::<Option<Vec<_>>>()
        .context("a node is missing")?;
    let nodes = Arc::new(Nodes::new(addrs.clone(), args.agents));
    let settings = Arc::new(Settings {
        server: addrs[0],
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
        nodes: Some(nodes.clone()),
        connect_ramp: Duration::from_secs(args.connect_ramp_secs),
        token_once: true,
    });
    let (counters, phase_tx, mut agents) = spawn_agents(&settings, args.agents);
    let connect_deadline = Duration::from_secs(args.connect_deadline_secs + args.connect_ramp_secs);

    // 1. connect
    let connected_in = wait_connected(&counters, args.agents, connect_deadline, start).await;
    log(
        start,
        &format!(
            "connect: {} of {} in {:.1} s; per node {:?}",
            counters.connected.load(Ordering::Relaxed),
            args.agents,
            connected_in.as_secs_f64(),
            per_node(&nodes, n)
        ),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 2. steady
    let cpu_before: Vec<f64> = servers
        .iter()
        .map(|s| s.as_ref().map_or(Ok(0.0), |s| s.cpu_secs()))
        .collect::<anyhow::Result<_>>()?;
    let steady = measure_rate(&counters, Duration::from_secs(args.steady_secs)).await;
    let mut steady_mem: Vec<Memory> = Vec::with_capacity(n);
    let mut steady_cpu: Vec<f64> = Vec::with_capacity(n);
    for (k, before) in cpu_before.iter().enumerate() {
        let s = node(k, &servers)?;
        steady_mem.push(s.memory()?);
        steady_cpu.push((s.cpu_secs()? - before) / args.steady_secs as f64 * 100.0);
    }
    let rss_list = join(steady_mem.iter().map(|m| m.rss_kib));
    log(
        start,
        &format!(
            "steady: {:.0} samples/s, {:.0} batches/s over {} s; RSS KiB per node {rss_list}; CPU % of one core per node {}",
            steady.0,
            steady.1,
            args.steady_secs,
            join(steady_cpu.iter().map(|c| format!("{c:.1}")))
        ),
    );

    // 3. run-now, local and relayed in turn, under the steady load.
    let (mut local, mut relayed) = (Rtts::default(), Rtts::default());
    let mut picker = Picker::default();
    let rpc_deadline = Instant::now() + Duration::from_secs(args.rpc_calls as u64 / 10 + 120);
    let mut done = 0;
    while done < args.rpc_calls && Instant::now() < rpc_deadline {
        let index = picker.next(args.agents);
        let holder = nodes.at[index].load(Ordering::Relaxed);
        if holder == NO_NODE {
            continue;
        }
        let other = (holder + 1 + done / 2 % (n - 1)) % n;
        if done % 2 == 0 {
            local.call(node(holder, &servers)?, index).await;
        } else {
            relayed.call(node(other, &servers)?, index).await;
        }
        done += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let added_p95 = relayed.percentile(0.95) - local.percentile(0.95);
    log(
        start,
        &format!(
            "run-now local: {}; relayed: {}; p95 added {added_p95:.1} ms",
            summary95(&local),
            summary95(&relayed)
        ),
    );

    // 4. burst: every agent sends its next batch as soon as the previous
    // one is acked: the ingest ceiling of the nodes on PostgreSQL.
    phase_tx.send_replace(Phase::Burst);
    let burst = measure_rate(&counters, Duration::from_secs(args.burst_secs)).await;
    let mut burst_rss = Vec::with_capacity(n);
    for k in 0..n {
        burst_rss.push(node(k, &servers)?.memory()?.rss_kib);
    }
    phase_tx.send_replace(Phase::Steady);
    log(
        start,
        &format!(
            "burst: {:.0} samples/s, {:.0} batches/s over {} s; RSS KiB per node {}",
            burst.0,
            burst.1,
            args.burst_secs,
            join(burst_rss.iter())
        ),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 5. kill the node holding the most agents.
    let counts = per_node(&nodes, n);
    let victim = (0..n).max_by_key(|&k| counts[k]).unwrap_or(0);
    let moving: Vec<usize> = (0..args.agents)
        .filter(|&i| nodes.at[i].load(Ordering::Relaxed) == victim)
        .collect();
    // The node before the victim: its agents move to the one after it
    // (with 3 nodes or more), so the calls stay relayed after the move.
    let caller = (victim + n - 1) % n;
    let killed_at = nodes.epoch.elapsed();
    let t_kill = Instant::now();
    servers[victim]
        .take()
        .context("the victim is not running")?
        .kill()?;
    log(
        start,
        &format!(
            "kill: node n{victim} (SIGKILL) held {} agents; run-now to them through n{caller} meanwhile",
            moving.len()
        ),
    );
    let kill_deadline = Duration::from_secs(args.kill_deadline_secs);
    let settled = AtomicBool::new(false);
    let watch = async {
        let (mut reconnected, mut reacked) = (None, None);
        let mut last_log = Instant::now();
        while t_kill.elapsed() < kill_deadline {
            let back = moving
                .iter()
                .filter(|&&i| {
                    let at = nodes.at[i].load(Ordering::Relaxed);
                    at != NO_NODE && at != victim
                })
                .count();
            let acked = moving
                .iter()
                .filter(|&&i| {
                    nodes
                        .last_ack(i)
                        .is_some_and(|(k, when)| k != victim && when > killed_at)
                })
                .count();
            if back == moving.len() && reconnected.is_none() {
                reconnected = Some(t_kill.elapsed());
            }
            if acked == moving.len() {
                reacked = Some(t_kill.elapsed());
                break;
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                log(
                    start,
                    &format!(
                        "  {back} of {} on another node, {acked} acked there",
                        moving.len()
                    ),
                );
                last_log = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settled.store(true, Ordering::Relaxed);
        (reconnected, reacked)
    };
    let calls = async {
        let mut rtts = Rtts::default();
        // (call started after the kill, s; ok) of every call.
        let mut timeline = Vec::new();
        let mut k = 0;
        // Until every agent moved, and at least KILL_CALLS_FOR: the calls
        // after the move show whether run-now works again.
        while (!settled.load(Ordering::Relaxed) || t_kill.elapsed() < KILL_CALLS_FOR)
            && !moving.is_empty()
        {
            let index = moving[k % moving.len()];
            k += 1;
            let at = t_kill.elapsed();
            let errors = rtts.errors;
            rtts.call(node(caller, &servers)?, index).await;
            timeline.push((at, rtts.errors == errors));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok((rtts, timeline))
    };
    let ((reconnected, reacked), calls) = tokio::join!(watch, calls);
    let (kill_rtts, timeline) = calls?;
    let last_failure = timeline
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(at, _)| at.as_secs_f64())
        .fold(f64::NAN, f64::max);
    let mut fail_ms = kill_rtts.err_ms.clone();
    fail_ms.sort_by(f64::total_cmp);
    let fail_at = |q: f64| {
        fail_ms
            .get(((fail_ms.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let secs =
        |d: Option<Duration>| d.map_or("missed".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
    log(
        start,
        &format!(
            "kill: {} agents on another node in {} s, acked there in {} s (deadline {kill_deadline:?}); per node now {:?}; \
             run-now meanwhile (at least {KILL_CALLS_FOR:?}): {} ok ({}), {} failed (fail time p50={:.1}ms max={:.1}ms, last failure issued {last_failure:.2} s after the kill)",
            moving.len(),
            secs(reconnected),
            secs(reacked),
            per_node(&nodes, n),
            kill_rtts.ms.len(),
            summary95(&kill_rtts),
            kill_rtts.errors,
            fail_at(0.5),
            fail_at(1.0),
        ),
    );
    for (kind, count) in &kill_rtts.err_kinds {
        log(start, &format!("  run-now failed x{count}: {kind}"));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut after_mem = Vec::new();
    for (k, s) in servers.iter().enumerate() {
        if let Some(s) = s {
            after_mem.push(format!("n{k}={}", s.memory()?.rss_kib));
        }
    }
    log(
        start,
        &format!("RSS KiB after the move: {}", after_mem.join(" ")),
    );

    // 6. stop and count
    let tallies = stop_agents(&phase_tx, &mut agents, start).await;
    let mut hwm = Vec::new();
    for (k, s) in servers.into_iter().enumerate() {
        if let Some(s) = s {
            hwm.push(format!("n{k}={}", s.memory()?.hwm_kib));
            s.stop().with_context(|| format!("stopping node n{k}"))?;
        }
    }
    let acked: Vec<(String, u64)> = tallies
        .iter()
        .map(|t| (t.fingerprint.clone(), t.acked_seq))
        .collect();
    let unacked: u64 = tallies.iter().map(|t| t.sent_seq - t.acked_seq).sum();
    let count = count_store(&database, &dirs, &acked).await?;
    let (store, results, lost, on_two) = match count {
        StoreCount::Postgres { results, lost } => ("postgres", results, lost, 0),
        StoreCount::NodeFiles {
            results,
            lost,
            on_two,
        } => ("node-sqlite", results, lost, on_two),
    };
    log(
        start,
        &format!(
            "store ({store}): {results} results; lost (acked but absent): {lost}; stored on two nodes: {on_two}; \
             sent but never acked: {unacked}; failures/retries: {}; VmHWM KiB {}",
            counters.failures.load(Ordering::Relaxed),
            hwm.join(" ")
        ),
    );
    if store == "node-sqlite" {
        log(
            start,
            "  note: the database has no `results` table (results are still kept in each node's SQLite file): \
             counted over the nodes' files together, not in PostgreSQL",
        );
    }
    for (reason, n) in counters.top_failures(8) {
        log(start, &format!("  failure x{n}: {reason}"));
    }
    println!(
        "\nCLUSTER nodes={n} agents={} connect_ramp_s={} connect_s={:.1} steady_samples_per_s={:.0} rss_kib={rss_list} rss_max_kib={} \
         burst_samples_per_s={:.0} rss_burst_kib={} \
         local_p50_ms={:.1} local_p95_ms={:.1} local_p99_ms={:.1} relayed_p50_ms={:.1} relayed_p95_ms={:.1} relayed_p99_ms={:.1} \
         added_p95_ms={added_p95:.1} rpc_n={}/{} rpc_errors={} killed_agents={} reconnect_s={} reacked_s={} \
         kill_rpc_ok={} kill_rpc_failed={} kill_rpc_fail_p50_ms={:.1} kill_rpc_fail_max_ms={:.1} \
         store={store} results={results} lost={lost} on_two_nodes={on_two} unacked={unacked} failures={}",
        args.agents,
        args.connect_ramp_secs,
        connected_in.as_secs_f64(),
        steady.0,
        steady_mem.iter().map(|m| m.rss_kib).max().unwrap_or(0),
        burst.0,
        join(burst_rss.iter()),
        local.percentile(0.5),
        local.percentile(0.95),
        local.percentile(0.99),
        relayed.percentile(0.5),
        relayed.percentile(0.95),
        relayed.percentile(0.99),
        local.ms.len(),
        relayed.ms.len(),
        local.errors + relayed.errors,
        moving.len(),
        secs(reconnected),
        secs(reacked),
        kill_rtts.ms.len(),
        kill_rtts.errors,
        fail_at(0.5),
        fail_at(1.0),
        counters.failures.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Node `k` if it runs.
fn node(k: usize, servers: &[Option<ServerProcess>]) -> anyhow::Result<&ServerProcess> {
    servers[k]
        .as_ref()
        .with_context(|| format!("node n{k} is not running"))
}

/// Agents with a session on each node.
fn per_node(nodes: &Nodes, n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for at in &nodes.at {
        let k = at.load(Ordering::Relaxed);
        if k < n {
            counts[k] += 1;
        }
    }
    counts
}

fn join<T: ToString>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join("/")
}

fn summary95(r: &Rtts) -> String {
    format!(
        "n={} p50={:.1}ms p95={:.1}ms p99={:.1}ms errors={}",
        r.ms.len(),
        r.percentile(0.5),
        r.percentile(0.95),
        r.percentile(0.99),
        r.errors
    )
}

/// Counts results acked (`acked`: fingerprint, highest acked seq) but not
/// stored: in PostgreSQL's `results` when the database has that table, else
/// in the nodes' SQLite files (`dirs`) together.
async fn count_store(
    database: &str,
    dirs: &[PathBuf],
    acked: &[(String, u64)],
) -> anyhow::Result<StoreCount> {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .context("connecting to the database to count results")?;
    let conn = tokio::spawn(connection);
    let has_results: bool = client
        .query_one("SELECT to_regclass('results') IS NOT NULL", &[])
        .await?
        .get(0);
    let count = if has_results {
        let results: i64 = client
            .query_one("SELECT COUNT(*) FROM results", &[])
            .await?
            .get(0);
        let stmt = client
            .prepare("SELECT COUNT(*) FROM results WHERE fingerprint = $1 AND seq BETWEEN 1 AND $2")
            .await?;
        let mut lost = 0;
        for (fp, up_to) in acked {
            let present: i64 = client
                .query_one(&stmt, &[fp, &(*up_to as i64)])
                .await?
                .get(0);
            lost += up_to.saturating_sub(present as u64);
        }
        StoreCount::Postgres {
            results: results as u64,
            lost,
        }
    } else {
        let mut seen: HashMap<String, HashSet<u64>> = HashMap::new();
        let (mut results, mut on_two) = (0, 0);
        for dir in dirs {
            // Read-write: the killed node's file may need its WAL recovered.
            let db = rusqlite::Connection::open(dir.join("outrider.db"))?;
            let mut stmt = db.prepare("SELECT fingerprint, seq FROM results WHERE seq > 0")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (fp, seq) = row?;
                results += 1;
                if !seen.entry(fp).or_default().insert(seq as u64) {
                    on_two += 1;
                }
            }
        }
        let mut lost = 0;
        for (fp, up_to) in acked {
            let present = seen
                .get(fp)
                .map_or(0, |s| s.iter().filter(|&&q| q >= 1 && q <= *up_to).count());
            lost += up_to.saturating_sub(present as u64);
        }
        StoreCount::NodeFiles {
            results,
            lost,
            on_two,
        }
    };
    drop(client);
    let _ = conn.await;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent;

    #[test]
    fn failed_calls_group_by_status_and_message_without_agent_names() {
        let a = crate::error_kind(
            r#"409 {"error":"agent 8a31ac50f4b02e820c6e left node n0 before answering"}"#,
        );
        let b = crate::error_kind(
            r#"409 {"error":"agent 1234567890abcdef0000 left node n0 before answering"}"#,
        );
        assert_eq!(a, b);
        assert!(a.starts_with("409 error:agent left node"), "{a}");
        assert_ne!(
            a,
            crate::error_kind("400 {\"error\":\"agent ff has no check\"}")
        );
    }

    #[test]
    fn agents_walk_the_nodes_from_the_remembered_one() {
        // Agent 4 of 3 nodes prefers n1; a dead n1 sends it to n2, then n0,
        // then (after the backoff) n1 again.
        let dialed: Vec<usize> = (0..4).map(|f| agent::node_to_dial(4 % 3, f, 3)).collect();
        assert_eq!(dialed, vec![1, 2, 0, 1]);
        // Welcomed at n2, it opens the next round there.
        assert_eq!(agent::node_to_dial(2, 0, 3), 2);
        assert_eq!(agent::node_to_dial(2, 1, 3), 0);
        assert_eq!(agent::node_to_dial(0, 5, 1), 0);
    }

    #[test]
    fn sessions_are_counted_per_node_and_acks_keep_node_and_time() {
        let nodes = Nodes::new(vec!["127.0.0.1:1".parse().unwrap(); 3], 4);
        assert_eq!(nodes.last_ack(0), None);
        nodes.at[0].store(0, Ordering::Relaxed);
        nodes.at[1].store(2, Ordering::Relaxed);
        nodes.at[3].store(2, Ordering::Relaxed);
        assert_eq!(per_node(&nodes, 3), vec![1, 0, 2]);
        let before = nodes.epoch.elapsed();
        nodes.record_ack(3, 2);
        let (node, when) = nodes.last_ack(3).unwrap();
        assert_eq!(node, 2);
        assert!(when + Duration::from_millis(1) >= before && when <= nodes.epoch.elapsed());
        assert_eq!(nodes.last_ack(1), None);
    }
}
