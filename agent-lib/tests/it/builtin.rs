//! Built-in checks against the real machine: plausible values, thresholds
//! at the extremes flip the state, bad arguments are UNKNOWN naming them.

use std::sync::Arc;

use outrider_agent::builtin::{BUILTINS, BuiltinState, run_builtin};
use outrider_agent::runner::RunOutcome;
use outrider_protocol::CheckState;

async fn run(name: &str, args: &[&str]) -> RunOutcome {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_builtin(
        &format!("t-{name}"),
        name,
        &args,
        &Arc::new(BuiltinState::default()),
    )
    .await
}

fn perf(out: &RunOutcome, label: &str) -> f64 {
    out.perfdata
        .iter()
        .find(|p| p.label == label)
        .unwrap_or_else(|| panic!("no {label} in {:?}", out.perfdata))
        .value
}

#[tokio::test]
async fn every_builtin_reports_a_plausible_result() {
    for name in BUILTINS {
        let out = run(name, &[]).await;
        assert_ne!(out.state, CheckState::Unknown, "{name}: {}", out.summary);
        assert!(!out.perfdata.is_empty(), "{name}: no perfdata");
        assert!(
            out.summary.starts_with(&name.to_uppercase()),
            "{name}: {}",
            out.summary
        );
    }
    let cpu = run("cpu", &[]).await;
    assert!((0.0..=100.0).contains(&perf(&cpu, "cpu_busy")));
    assert!(perf(&cpu, "cpus") >= 1.0);
    let mem = run("memory", &[]).await;
    let used = mem.perfdata.iter().find(|p| p.label == "used").unwrap();
    assert!(
        used.value > 1e6 && used.value <= used.max.unwrap(),
        "{used:?}"
    );
    assert_eq!(mem.perfdata[0].warn.as_deref(), Some("90"));
    assert_eq!(mem.perfdata[0].crit.as_deref(), Some("95"));
    let disk = run("disk", &["--path", "/"]).await;
    assert!((0.0..=100.0).contains(&perf(&disk, "used_pct")));
    let procs = run("processes", &[]).await;
    assert!(perf(&procs, "processes") >= 1.0);
    let up = run("uptime", &[]).await;
    assert!(perf(&up, "uptime") > 0.0);
    let load = run("load", &[]).await;
    assert!(perf(&load, "load1") >= 0.0);
    let net = run("network", &[]).await;
    assert!(
        net.perfdata
            .iter()
            .any(|p| p.label == "lo_rx" && p.uom == "c")
    );
}

#[tokio::test]
async fn thresholds_at_the_extremes_flip_the_state() {
    // "@0:100" alerts for any percentage; "0:" never alerts for a count.
    let crit = run("memory", &["--crit", "@0:100"]).await;
    assert_eq!(crit.state, CheckState::Critical, "{}", crit.summary);
    let warn = run("disk", &["--warn", "@0:100", "--crit", "~:"]).await;
    assert_eq!(warn.state, CheckState::Warning, "{}", warn.summary);
    let ok = run("cpu", &["--warn", "~:", "--crit", "~:"]).await;
    assert_eq!(ok.state, CheckState::Ok);
    let none = run("processes", &["--name", "no-such-process-xyz"]).await;
    assert_eq!(none.state, CheckState::Critical, "{}", none.summary);
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let found = run("processes", &["--name", me.trim()]).await;
    assert_eq!(found.state, CheckState::Ok, "{}", found.summary);
    let load = run("load", &["--warn", "@0:1000000", "--crit", "~:"]).await;
    assert_eq!(load.state, CheckState::Warning, "{}", load.summary);
    let up = run("uptime", &["--crit", "@0:"]).await;
    assert_eq!(up.state, CheckState::Critical);
    let lo = run("network", &["--interface", "lo"]).await;
    assert_eq!(lo.state, CheckState::Ok);
    let missing = run("network", &["--interface", "nope0"]).await;
    assert_eq!(missing.state, CheckState::Critical);
    assert!(missing.summary.contains("nope0"));
}

#[tokio::test]
async fn rates_come_from_the_previous_run_of_the_same_check() {
    let state = Arc::new(BuiltinState::default());
    let args = vec!["--interface".to_string(), "lo".to_string()];
    let first = run_builtin("net", "network", &args, &state).await;
    assert!(!first.perfdata.iter().any(|p| p.label == "lo_rx_per_sec"));
    let second = run_builtin("net", "network", &args, &state).await;
    assert!(second.perfdata.iter().any(|p| p.label == "lo_rx_per_sec"));
}

#[tokio::test]
async fn bad_arguments_are_unknown_and_named() {
    let cases: [(&str, &[&str], &str); 5] = [
        ("cpu", &["--wrn", "5"], "\"--wrn\""),
        ("memory", &["--warn"], "--warn needs a value"),
        ("disk", &["--crit", "9x"], "argument --crit"),
        ("load", &["--warn", "1,2"], "argument --warn"),
        ("nope", &[], "unknown built-in check"),
    ];
    for (name, args, needle) in cases {
        let out = run(name, args).await;
        assert_eq!(out.state, CheckState::Unknown, "{name}");
        assert!(out.summary.contains(needle), "{name}: {}", out.summary);
    }
    for path in ["relative/dir", "/no/such/dir"] {
        let out = run("disk", &["--path", path]).await;
        assert_eq!(out.state, CheckState::Unknown);
        assert!(
            out.summary.contains("--path") && out.summary.contains(path),
            "{}",
            out.summary
        );
    }
}
