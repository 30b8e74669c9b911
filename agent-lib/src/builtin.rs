//! Checks built into the agent: `builtin:<name>` as `command[0]`.
//!
//! cpu, memory, swap, disk, load, network, processes and uptime, measured
//! with `sysinfo` (Linux, macOS, Windows, BSDs) so they need no external
//! program. Each returns a Nagios-compatible result: a state from Nagios
//! threshold [`Range`]s (defaults per check, overridable with `--warn` and
//! `--crit`), a one-line summary, and perfdata carrying warn/crit/min/max.
//!
//! Arguments are `--option value` pairs; an unknown option, a missing value
//! or a bad range makes the result UNKNOWN with a message naming the
//! argument. Sampling touches `/proc` (or the OS equivalent) synchronously,
//! so it runs on the runtime's blocking pool and only refreshes what the
//! check needs; nothing is kept between runs except what a rate needs (the
//! CPU times and network counters of the previous run, per check).
//!
//! A measurement the OS never answers (`statvfs` of a hung network mount)
//! times out as UNKNOWN, but its blocking thread cannot be cancelled. So
//! each check has at most one measurement in flight ([`BuiltinState`]): a
//! later run while it is still stuck is UNKNOWN at once instead of pinning
//! another pool thread, and a hung mount costs one thread, not one per run.

mod probes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use outrider_protocol::{CheckState, PerfData};

use crate::nagios::Range;
use crate::runner::RunOutcome;

/// Names accepted after `builtin:`.
pub const BUILTINS: &[&str] = &[
    "cpu",
    "memory",
    "swap",
    "disk",
    "load",
    "network",
    "processes",
    "uptime",
];

/// What built-in checks keep between runs, keyed by check name.
#[derive(Default)]
pub struct BuiltinState {
    cpu: Mutex<HashMap<String, sysinfo::System>>,
    network: Mutex<HashMap<String, (sysinfo::Networks, std::time::Instant)>>,
    /// Checks whose blocking measurement has not returned yet.
    in_flight: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for BuiltinState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinState").finish_non_exhaustive()
    }
}

impl BuiltinState {
    /// Forgets the samples of checks not in `keep` (after a config change).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        lock(&self.cpu).retain(|k, _| keep(k));
        lock(&self.network).retain(|k, _| keep(k));
    }

    /// Runs `measure` for `check` on the blocking pool; fails at once while
    /// the check's previous measurement is still running (see the module
    /// docs). The claim is released when `measure` returns, not when the
    /// caller stops waiting.
    async fn measure<T: Send + 'static>(
        self: &Arc<Self>,
        check: &str,
        measure: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        if !lock(&self.in_flight).insert(check.to_owned()) {
            return Err(
                "the previous measurement has not returned yet: the OS is not answering".into(),
            );
        }
        let claim = InFlight {
            state: self.clone(),
            check: check.to_owned(),
        };
        tokio::task::spawn_blocking(move || {
            let _claim = claim;
            measure()
        })
        .await
        .map_err(|e| format!("the probe failed: {e}"))
    }
}

/// A check's claim on its one measurement in flight; released on drop.
struct InFlight {
    state: Arc<BuiltinState>,
    check: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.state.in_flight).remove(&self.check);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs built-in check `name` with `args` for configured check `check`.
/// Never fails: problems are UNKNOWN results saying what went wrong.
pub async fn run_builtin(
    check: &str,
    name: &str,
    args: &[String],
    state: &Arc<BuiltinState>,
) -> RunOutcome {
    let started = std::time::Instant::now();
    let started_at_ms = crate::runner::unix_ms();
    let measured = match name {
        "cpu" => probes::cpu(check, args, state).await,
        "memory" => blocking(check, args, probes::memory, state).await,
        "swap" => blocking(check, args, probes::swap, state).await,
        "disk" => blocking(check, args, probes::disk, state).await,
        "load" => blocking(check, args, probes::load, state).await,
        "network" => probes::network(check, args, state).await,
        "processes" => blocking(check, args, probes::processes, state).await,
        "uptime" => blocking(check, args, probes::uptime, state).await,
        other => Err(format!(
            "unknown built-in check {other:?}; built-ins are {}",
            BUILTINS.join(", ")
        )),
    };
    let (state, summary, perfdata) = match measured {
        Ok(m) => (m.state, m.summary, m.perfdata),
        Err(e) => (CheckState::Unknown, format!("builtin:{name}: {e}"), vec![]),
    };
    RunOutcome {
        state,
        summary,
        long_output: String::new(),
        perfdata,
        unknown_perfdata: Vec::new(),
        started_at_ms,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        update_event: None,
    }
}

/// Runs a synchronous probe on the blocking pool.
async fn blocking(
    check: &str,
    args: &[String],
    probe: fn(&[String]) -> Result<Measured, String>,
    state: &Arc<BuiltinState>,
) -> Result<Measured, String> {
    let args = args.to_vec();
    state.measure(check, move || probe(&args)).await?
}

/// A finished measurement.
#[derive(Debug)]
struct Measured {
    state: CheckState,
    summary: String,
    perfdata: Vec<PerfData>,
}

/// `--option value` pairs, checked against the options a check accepts.
#[derive(Debug)]
struct Args(HashMap<&'static str, String>);

impl Args {
    /// Parses `args`; fails naming an unknown option or a missing value.
    fn parse(args: &[String], allowed: &[&'static str]) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(&key) = allowed.iter().find(|&&a| a == arg) else {
                return Err(format!(
                    "unknown argument {arg:?}; this check takes {}",
                    allowed.join(", ")
                ));
            };
            let Some(value) = it.next() else {
                return Err(format!("argument {key} needs a value"));
            };
            map.insert(key, value.clone());
        }
        Ok(Args(map))
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `--warn`/`--crit` ranges, each defaulting to the given text.
    fn thresholds(&self, warn: Option<&str>, crit: Option<&str>) -> Result<Thresholds, String> {
        let one = |key: &str, default: Option<&str>| -> Result<Option<(Range, String)>, String> {
            match self.text(key).or(default) {
                None => Ok(None),
                Some(text) => Range::parse(text)
                    .map(|r| Some((r, text.to_owned())))
                    .map_err(|e| format!("argument {key}: {e}")),
            }
        };
        Ok(Thresholds {
            warn: one("--warn", warn)?,
            crit: one("--crit", crit)?,
        })
    }
}

/// A warning and a critical range with their texts (for perfdata).
#[derive(Clone, Debug, Default)]
struct Thresholds {
    warn: Option<(Range, String)>,
    crit: Option<(Range, String)>,
}

impl Thresholds {
    fn state(&self, value: f64) -> CheckState {
        let alerts = |t: &Option<(Range, String)>| t.as_ref().is_some_and(|(r, _)| r.alerts(value));
        if alerts(&self.crit) {
            CheckState::Critical
        } else if alerts(&self.warn) {
            CheckState::Warning
        } else {
            CheckState::Ok
        }
    }

    /// Perfdata item `label=value uom;warn;crit;min;max` with these thresholds.
    fn perf(
        &self,
        label: &str,
        value: f64,
        uom: &str,
        min: Option<f64>,
        max: Option<f64>,
    ) -> PerfData {
        PerfData {
            warn: self.warn.as_ref().map(|(_, t)| t.clone()),
            crit: self.crit.as_ref().map(|(_, t)| t.clone()),
            ..plain_perf(label, value, uom, min, max)
        }
    }
}

/// Perfdata item without thresholds.
fn plain_perf(label: &str, value: f64, uom: &str, min: Option<f64>, max: Option<f64>) -> PerfData {
    PerfData {
        label: label.to_owned(),
        value,
        uom: uom.to_owned(),
        warn: None,
        crit: None,
        min,
        max,
    }
}

/// The worst of two states, UNKNOWN ranking below CRITICAL (as Nagios does
/// when combining).
fn worst(a: CheckState, b: CheckState) -> CheckState {
    let rank = |s| match s {
        CheckState::Ok => 0,
        CheckState::Warning => 1,
        CheckState::Unknown => 2,
        CheckState::Critical => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// `"CPU OK"`-style prefix.
fn headline(what: &str, state: CheckState) -> String {
    let word = match state {
        CheckState::Ok => "OK",
        CheckState::Warning => "WARNING",
        CheckState::Critical => "CRITICAL",
        CheckState::Unknown => "UNKNOWN",
    };
    format!("{what} {word}")
}

/// Bytes in binary units with one decimal.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `part / whole` in percent, 0 for an empty whole.
fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// Rounds to two decimals so perfdata stays readable.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_name_what_is_wrong() {
        let err = Args::parse(&args(&["--wrn", "5"]), &["--warn"]).unwrap_err();
        assert!(err.contains("\"--wrn\""), "{err}");
        let err = Args::parse(&args(&["--warn"]), &["--warn"]).unwrap_err();
        assert!(err.contains("--warn needs a value"), "{err}");
        let a = Args::parse(&args(&["--warn", "x"]), &["--warn", "--crit"]).unwrap();
        let err = a.thresholds(None, Some("5")).unwrap_err();
        assert!(err.starts_with("argument --warn:"), "{err}");
    }

    #[test]
    fn thresholds_pick_the_worst_state_and_fill_perfdata() {
        let a = Args::parse(&args(&["--crit", "@0:10"]), &["--warn", "--crit"]).unwrap();
        let t = a.thresholds(Some("80"), Some("90")).unwrap();
        assert_eq!(t.state(5.0), CheckState::Critical);
        assert_eq!(t.state(50.0), CheckState::Ok);
        assert_eq!(t.state(85.0), CheckState::Warning);
        let p = t.perf("x", 1.0, "%", Some(0.0), Some(100.0));
        assert_eq!(
            (p.warn.as_deref(), p.crit.as_deref()),
            (Some("80"), Some("@0:10"))
        );
        assert_eq!(
            worst(CheckState::Unknown, CheckState::Critical),
            CheckState::Critical
        );
        assert_eq!(
            worst(CheckState::Warning, CheckState::Ok),
            CheckState::Warning
        );
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512.0), "512.0 B");
        assert_eq!(human_bytes(3.5 * 1024.0 * 1024.0 * 1024.0), "3.5 GiB");
    }

    #[tokio::test]
    async fn a_stuck_measurement_blocks_only_its_own_check_and_only_once() {
        let state = Arc::new(BuiltinState::default());
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let first = {
            let state = state.clone();
            tokio::spawn(async move { state.measure("disk", move || stuck.recv()).await })
        };
        // Wait until the first measurement holds its claim.
        while !lock(&state.in_flight).contains("disk") {
            tokio::task::yield_now().await;
        }
        let again = state.measure("disk", || ()).await.unwrap_err();
        assert!(again.contains("not returned yet"), "{again}");
        assert_eq!(state.measure("other", || 7).await, Ok(7));
        // Giving up on the first (a timeout) does not release the claim...
        first.abort();
        let _ = first.await;
        assert!(state.measure("disk", || ()).await.is_err());
        // ...its return does.
        release.send(()).unwrap();
        while lock(&state.in_flight).contains("disk") {
            tokio::task::yield_now().await;
        }
        assert_eq!(state.measure("disk", || 1).await, Ok(1));
    }
}
