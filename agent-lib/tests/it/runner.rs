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
    assert_eq!(out.summary, "plugin was killed by signal SIGKILL (9)");

    let term = script(dir.path(), "term.sh", "echo 'going'\nkill -TERM $$");
    let out = run(sh(&term), secs(5)).await;
    assert_eq!(
        out.summary,
        "plugin was killed by signal SIGTERM (15): going"
    );

    let high = script(dir.path(), "high.sh", "exit 255");
    let out = run(sh(&high), secs(5)).await;
    assert_eq!(
        (out.state, out.summary.as_str()),
        (CheckState::Unknown, "plugin exited with code 255")
    );

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
    // Nagios Core 4's wording, so the operator knows where the text came from.
    assert_eq!(
        (out.state, out.summary.as_str()),
        (
            CheckState::Critical,
            "(No output on stdout) stderr: cannot open /dev/foo"
        )
    );

    for (code, meaning) in [(126, "not executable"), (127, "command not found")] {
        let p = script(
            dir.path(),
            &format!("shell{code}.sh"),
            &format!("exit {code}"),
        );
        let out = run(sh(&p), secs(5)).await;
        assert_eq!(out.state, CheckState::Unknown);
        assert!(
            out.summary
                .starts_with(&format!("plugin exited with code {code} ({meaning}")),
            "{}",
            out.summary
        );
    }
}

/// Runs `command`, again while the exec fails with ETXTBSY: a sibling test's
/// fork may briefly hold the write end of a file this test just wrote.
async fn run_direct(command: Vec<String>) -> RunOutcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(command.clone(), secs(5)).await;
        if !out.summary.contains("Text file busy") || Instant::now() > deadline {
            return out;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_plugin_without_an_interpreter_line_runs_as_a_sh_script() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("check_plain");
    std::fs::write(
        &path,
        "echo \"PLAIN WARNING - $0 $1 | rta=U;100;500 pl=0%\"\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let out = run_direct(vec![path.clone(), "arg1".into()]).await;
    assert_eq!(out.state, CheckState::Warning, "{}", out.summary);
    assert_eq!(out.summary, format!("PLAIN WARNING - {path} arg1"));
    assert_eq!(out.perfdata.len(), 1);
    assert_eq!(out.unknown_perfdata.len(), 1);
    assert_eq!(out.unknown_perfdata[0].label, "rta");
    assert_eq!(out.unknown_perfdata[0].crit.as_deref(), Some("500"));

    // A file that is not executable at all is still refused, as by execvp.
    let data = dir.path().join("not_executable");
    std::fs::write(&data, "echo hi\n").unwrap();
    let out = run_direct(vec![data.to_str().unwrap().into()]).await;
    assert_eq!(out.state, CheckState::Unknown);
    assert!(out.summary.contains("Permission denied"), "{}", out.summary);
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
    assert_eq!(
        out.summary,
        "plugin timed out after 0.5s and was killed with its process group"
    );
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
    assert_eq!(
        out.summary,
        "plugin timed out after 0.3s and was killed with its process group"
    );
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

#[tokio::test]
async fn a_shebang_picks_the_interpreter_and_crlf_output_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crlf_plugin");
    std::fs::write(
        &path,
        "#!/bin/sh\nprintf 'OK - crlf | a=1;2;3\\r\\nline 1\\r\\nline 2 | b=2s\\r\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Run directly: the kernel reads the shebang.
    let out = run(vec![path.to_string_lossy().into_owned()], secs(5)).await;
    assert_eq!(out.state, CheckState::Ok);
    assert_eq!(out.summary, "OK - crlf");
    assert_eq!(out.long_output, "line 1\nline 2 ");
    let labels: Vec<_> = out
        .perfdata
        .iter()
        .map(|p| (p.label.as_str(), p.uom.as_str()))
        .collect();
    assert_eq!(labels, [("a", ""), ("b", "s")]);
}

#[tokio::test]
async fn a_hung_plugin_does_not_delay_other_checks_of_the_executor() {
    use outrider_agent::executor::{Executor, MAX_CONCURRENT_RUNS};
    use outrider_protocol::CheckSpec;

    let dir = tempfile::tempdir().unwrap();
    let policy = outrider_agent::policy::LocalPolicy::new(
        outrider_agent::policy::AdhocScripts::Refused,
        &["/bin", "/usr/bin"],
    )
    .unwrap();
    let executor = std::sync::Arc::new(Executor::new(dir.path(), policy));
    let hang = script(dir.path(), "hang.sh", "sleep 600");
    let quick = script(dir.path(), "quick.sh", "echo 'OK quick'");
    let spec = |name: &str, command| CheckSpec {
        name: name.into(),
        command,
        interval_secs: 1,
        timeout_secs: 60,
    };
    let cancel = CancellationToken::new();
    let hung = {
        let (executor, cancel, spec) = (executor.clone(), cancel.clone(), spec("hang", sh(&hang)));
        tokio::spawn(async move { executor.run(&spec, &cancel).await })
    };
    while executor.free_permits() == MAX_CONCURRENT_RUNS {
        tokio::task::yield_now().await;
    }
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        executor.run(&spec("q", sh(&quick)), &cancel),
    )
    .await
    .expect("not blocked by the hung plugin")
    .unwrap();
    assert_eq!(out.summary, "OK quick");
    cancel.cancel();
    assert_eq!(hung.await.unwrap(), None);
    assert_eq!(executor.free_permits(), MAX_CONCURRENT_RUNS);
}
