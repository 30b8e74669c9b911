//! The plugin runner against real shell scripts.

use std::time::{Duration, Instant};

use outrider_agent::runner::{OUTPUT_CAP, RunLimits, RunOutcome, run_plugin};
use outrider_protocol::CheckState;
use tokio_util::sync::CancellationToken;

use crate::support::{assert_gone, read_pid, script, sh};

async fn run(command: Vec<String>, limits: RunLimits) -> RunOutcome {
    run_plugin(&command, limits, &CancellationToken::new())
        .await
        .expect("not cancelled")
}

fn secs(n: u64) -> RunLimits {
    RunLimits::new(Duration::from_secs(n))
}

#[tokio::test]
async fn exit_codes_map_to_states_with_output_and_perfdata() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (0, CheckState::Ok),
        (1, CheckState::Warning),
        (2, CheckState::Critical),
        (3, CheckState::Unknown),
    ];
    for (code, state) in cases {
        let body = format!(
            "echo 'LOAD {code} | load1=0.5;1;2;0 load5=0.25'\necho 'long line'\necho 'more | x=1s'\nexit {code}"
        );
        let p = script(dir.path(), &format!("exit{code}.sh"), &body);
        let out = run(sh(&p), secs(5)).await;
        assert_eq!(out.state, state);
        assert_eq!(out.summary, format!("LOAD {code}"));
        assert_eq!(out.long_output, "long line\nmore ");
        let labels: Vec<_> = out
            .perfdata
            .iter()
            .map(|p| (p.label.as_str(), p.value))
            .collect();
        assert_eq!(labels, [("load1", 0.5), ("load5", 0.25), ("x", 1.0)]);
        assert_eq!(out.perfdata[0].warn.as_deref(), Some("1"));
        assert!(out.started_at_ms > 1_600_000_000_000);
    }
}

#[tokio::test]
async fn odd_exits_are_unknown_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let four = script(dir.path(), "four.sh", "echo 'weird'\nexit 4");
    let out = run(sh(&four), secs(5)).await;
    assert_eq!(out.state, CheckState::Unknown);
    assert_eq!(out.summary, "plugin exited with code 4: weird");

    let killed = script(dir.path(), "killed.sh", "kill -9 $$");
    let out = run(sh(&killed), secs(5)).await;
    assert_eq!(out.state, CheckState::Unknown);
    assert_eq!(out.summary, "plugin was killed by signal 9");

    let silent = script(dir.path(), "silent.sh", "exit 0");
    assert_eq!(
        run(sh(&silent), secs(5)).await.summary,
        "(no output returned from plugin)"
    );

    let stderr_only = script(
        dir.path(),
        "stderr.sh",
        "echo 'cannot open /dev/foo' >&2\nexit 2",
    );
    let out = run(sh(&stderr_only), secs(5)).await;
    assert_eq!(
        (out.state, out.summary.as_str()),
        (CheckState::Critical, "cannot open /dev/foo")
    );
}

#[tokio::test]
async fn spawn_errors_are_unknown_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing_plugin");
    let out = run(vec![missing.to_str().unwrap().into()], secs(5)).await;
    assert_eq!(out.state, CheckState::Unknown);
    assert!(
        out.summary.starts_with("could not start plugin"),
        "{}",
        out.summary
    );
    assert!(
        out.summary.contains("missing_plugin") && out.summary.contains("No such file"),
        "{}",
        out.summary
    );

    let not_exec = dir.path().join("not_exec.sh");
    std::fs::write(&not_exec, "#!/bin/sh\necho hi\n").unwrap();
    let out = run(vec![not_exec.to_str().unwrap().into()], secs(5)).await;
    assert_eq!(out.state, CheckState::Unknown);
    assert!(
        out.summary.starts_with("could not start plugin"),
        "{}",
        out.summary
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let p = script(
        dir.path(),
        "hang.sh",
        &format!(
            "echo 'partial'\nsleep 600 &\necho $! > {}\nwait",
            pidfile.display()
        ),
    );
    let started = Instant::now();
    let out = run(sh(&p), RunLimits::new(Duration::from_millis(500))).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.state, CheckState::Unknown);
    assert_eq!(out.summary, "plugin timed out after 0.5s");
    assert_eq!(out.long_output, "partial");
    assert_gone(read_pid(&pidfile)).await;
}

#[tokio::test]
async fn plugins_ignoring_sigterm_get_sigkill_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let body = format!(
        "trap '' TERM\nsleep 600 &\necho $! > {}\nwait\nwait",
        pidfile.display()
    );
    let p = script(dir.path(), "stubborn.sh", &body);
    let limits = RunLimits {
        timeout: Duration::from_millis(300),
        kill_grace: Duration::from_millis(300),
    };
    let started = Instant::now();
    let out = run(sh(&p), limits).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.summary, "plugin timed out after 0.3s");
    assert_gone(read_pid(&pidfile)).await;
}

#[tokio::test]
async fn a_grandchild_holding_stdout_does_not_hang_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let body = format!(
        "sleep 600 &\necho $! > {}\necho 'OK - parent done | t=1'\nexit 0",
        pidfile.display()
    );
    let p = script(dir.path(), "bg.sh", &body);
    let started = Instant::now();
    let out = run(sh(&p), secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.state, CheckState::Ok);
    assert_eq!(out.summary, "OK - parent done");
    assert_eq!(out.perfdata.len(), 1);
    // It held our pipe, so it was killed with the group.
    assert_gone(read_pid(&pidfile)).await;
}

#[tokio::test]
async fn output_is_capped_and_the_rest_drained() {
    let dir = tempfile::tempdir().unwrap();
    let p = script(
        dir.path(),
        "chatty.sh",
        "echo 'OK - chatty'\nyes 0123456789 | head -c 300000\nexit 0",
    );
    let out = run(sh(&p), secs(10)).await;
    assert_eq!(out.state, CheckState::Ok);
    assert_eq!(out.summary, "OK - chatty");
    assert!(
        out.long_output.len() <= OUTPUT_CAP + 200,
        "{}",
        out.long_output.len()
    );
    assert!(
        out.long_output.ends_with("-byte limit discarded]"),
        "{}",
        &out.long_output[out.long_output.len() - 80..]
    );
}

#[tokio::test]
async fn cancelling_a_run_kills_it_and_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let p = script(
        dir.path(),
        "long.sh",
        &format!("sleep 600 &\necho $! > {}\nwait", pidfile.display()),
    );
    let cancel = CancellationToken::new();
    let command = sh(&p);
    let run = run_plugin(&command, RunLimits::new(Duration::from_secs(60)), &cancel);
    let pidfile2 = pidfile.clone();
    let trigger = async {
        while !pidfile2.exists()
            || std::fs::read_to_string(&pidfile2)
                .unwrap()
                .trim()
                .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
    };
    let (out, ()) =
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(run, trigger) })
            .await
            .unwrap();
    assert_eq!(out, None);
    assert_gone(read_pid(&pidfile)).await;
}
