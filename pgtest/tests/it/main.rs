//! The cluster's removal, seen from outside the process that holds it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `outrider-pgtest`; returns it and the socket directory it printed.
fn hold_cluster() -> (Child, PathBuf) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outrider-pgtest"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let dir = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("host="))
        .unwrap_or_else(|| panic!("no host= in {line:?}"));
    let dir = PathBuf::from(dir);
    assert!(dir.join(".s.PGSQL.5432").exists(), "{line}");
    (child, dir)
}

/// Polls until `dir` is gone; panics after a deadline.
fn wait_gone(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir.exists() {
        assert!(Instant::now() < deadline, "{} left behind", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The postmaster's pid, from the first line of `postmaster.pid`.
fn postmaster_pid(dir: &std::path::Path) -> String {
    let pidfile = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
    pidfile.lines().next().unwrap().to_owned()
}

/// Whether process `pid` still runs (a zombie waiting for its parent to
/// reap it does not).
fn process_runs(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    state.is_some_and(|s| s != 'Z' && s != 'X')
}

/// Polls until process `pid` no longer runs; panics after a deadline.
fn wait_stopped(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_runs(pid) {
        assert!(Instant::now() < deadline, "postmaster {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_process_leaves_no_cluster_behind() {
    let (mut child, dir) = hold_cluster();
    let postmaster = postmaster_pid(&dir);
    assert!(process_runs(&postmaster));
    // SIGKILL: no destructor runs; the watchdog alone cleans up.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_gone(&dir);
    wait_stopped(&postmaster);
}

#[test]
fn a_process_that_ends_normally_leaves_no_cluster_behind() {
    let (mut child, dir) = hold_cluster();
    let postmaster = postmaster_pid(&dir);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    // Dropping the cluster waited for the watchdog: gone already.
    assert!(!dir.exists(), "{} left behind", dir.display());
    wait_stopped(&postmaster);
}

/// A paused cluster refuses connections and keeps its data; resumed, it
/// serves the same database again (what clients riding out a restart of
/// PostgreSQL see).
#[tokio::test]
async fn a_paused_cluster_keeps_its_data_and_serves_it_again_when_resumed() {
    let cluster = outrider_pgtest::Cluster::start().unwrap();
    let db = cluster.database().await.unwrap();
    let query = |sql: &'static str| {
        let config = db.config.clone();
        async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            let rows = client.simple_query(sql).await;
            drop(client);
            let _ = driver.await;
            rows
        }
    };
    query("CREATE TABLE kept (v INT); INSERT INTO kept VALUES (42);")
        .await
        .unwrap();
    cluster.pause().unwrap();
    assert!(
        query("SELECT 1").await.is_err(),
        "a paused cluster answered"
    );
    cluster.resume().unwrap();
    let rows = query("SELECT v FROM kept").await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("42"));
}
