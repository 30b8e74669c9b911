//! The measurements behind each built-in check.
//!
//! Defaults (Nagios ranges; `--warn`/`--crit` replace them):
//! cpu busy % 90/95; memory used % 90/95; swap used % 80/90; disk used %
//! 80/90 of `--path` (default `/`, `C:\` on Windows); load 2×/4× the CPU
//! count for each of load1,5,15 (`--warn 8,6,4` sets the three); processes
//! none, or `--crit 1:` with `--name`; uptime warns below 300 s (a recent
//! reboot); network none (ranges apply to the busiest interface's bytes/s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outrider_protocol::CheckState;
use sysinfo::{Networks, ProcessRefreshKind, ProcessesToUpdate, System};

use super::{
    Args, BuiltinState, Measured, Thresholds, headline, human_bytes, lock, percent, plain_perf,
    round2, worst,
};

/// How long the first CPU run samples (later runs use the time since the
/// previous run of the same check).
const CPU_FIRST_WINDOW: Duration = Duration::from_millis(250);
const LOAD_WARN_PER_CPU: f64 = 2.0;
const LOAD_CRIT_PER_CPU: f64 = 4.0;
#[cfg(windows)]
const DEFAULT_DISK_PATH: &str = "C:\\";
#[cfg(not(windows))]
const DEFAULT_DISK_PATH: &str = "/";

fn sys_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("cannot read {what}: {e}")
}

/// CPU busy percentage since this check's previous run (or over
/// [`CPU_FIRST_WINDOW`] the first time).
pub(super) async fn cpu(
    check: &str,
    args: &[String],
    state: &Arc<BuiltinState>,
) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit"])?;
    let t = args.thresholds(Some("90"), Some("95"))?;
    // Sampling reads /proc: on the blocking pool.
    let refreshed = |sys: Option<System>| {
        state.measure(check, move || {
            let mut sys = match sys {
                Some(sys) => sys,
                None => System::new().map_err(|e| sys_err("CPU times", e))?,
            };
            sys.refresh_cpu_usage();
            Ok::<_, String>(sys)
        })
    };
    let previous = lock(&state.cpu).remove(check);
    let previous = match previous {
        Some(sys) => sys,
        None => {
            // A first sample, then the window the busy share is taken over.
            let first = refreshed(None).await??;
            tokio::time::sleep(CPU_FIRST_WINDOW.max(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL)).await;
            first
        }
    };
    let sys = refreshed(Some(previous)).await??;
    lock(&state.cpu).insert(check.to_owned(), sys);
    cpu_result(check, &t, state)
}

fn cpu_result(check: &str, t: &Thresholds, state: &BuiltinState) -> Result<Measured, String> {
    let map = lock(&state.cpu);
    let sys = map.get(check).ok_or("the CPU sample vanished")?;
    let busy = round2(f64::from(sys.global_cpu_usage()));
    let cpus = sys.cpus().len();
    let s = t.state(busy);
    Ok(Measured {
        state: s,
        summary: format!("{} - {busy:.1}% busy over {cpus} CPUs", headline("CPU", s)),
        perfdata: vec![
            t.perf("cpu_busy", busy, "%", Some(0.0), Some(100.0)),
            plain_perf("cpus", cpus as f64, "", None, None),
        ],
    })
}

/// Memory used (total − available) in percent.
pub(super) fn memory(args: &[String]) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit"])?;
    let t = args.thresholds(Some("90"), Some("95"))?;
    let mut sys = System::new().map_err(|e| sys_err("memory", e))?;
    sys.refresh_memory();
    let total = sys.total_memory() as f64;
    if total == 0.0 {
        return Err("the OS reports no memory".into());
    }
    let used = total - sys.available_memory() as f64;
    Ok(used_of_total("MEMORY", &t, used, total))
}

/// Swap used in percent; no swap at all is OK.
pub(super) fn swap(args: &[String]) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit"])?;
    let t = args.thresholds(Some("80"), Some("90"))?;
    let mut sys = System::new().map_err(|e| sys_err("swap", e))?;
    sys.refresh_memory();
    let total = sys.total_swap() as f64;
    let used = sys.used_swap() as f64;
    if total == 0.0 {
        return Ok(Measured {
            state: CheckState::Ok,
            summary: "SWAP OK - no swap configured".into(),
            perfdata: vec![plain_perf("used", 0.0, "B", Some(0.0), Some(0.0))],
        });
    }
    Ok(used_of_total("SWAP", &t, used, total))
}

/// The result of memory and swap: `used` bytes of `total` (> 0), the
/// thresholds applying to the percentage.
fn used_of_total(what: &str, t: &Thresholds, used: f64, total: f64) -> Measured {
    let pct = round2(percent(used, total));
    let s = t.state(pct);
    Measured {
        state: s,
        summary: format!(
            "{} - {pct:.1}% used ({} of {})",
            headline(what, s),
            human_bytes(used),
            human_bytes(total)
        ),
        perfdata: vec![
            t.perf("used_pct", pct, "%", Some(0.0), Some(100.0)),
            plain_perf("used", used, "B", Some(0.0), Some(total)),
        ],
    }
}

/// Space used on the filesystem holding `--path`, as `df` counts it: used =
/// total − free, percent = used / (used + available to users).
pub(super) fn disk(args: &[String]) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit", "--path"])?;
    let t = args.thresholds(Some("80"), Some("90"))?;
    let path = std::path::Path::new(args.text("--path").unwrap_or(DEFAULT_DISK_PATH));
    if !path.is_absolute() {
        return Err(format!(
            "argument --path: {} is not an absolute path",
            path.display()
        ));
    }
    let (total, free, avail) = space(path)?;
    let used = total - free;
    let pct = round2(percent(used, used + avail));
    let s = t.state(pct);
    Ok(Measured {
        state: s,
        summary: format!(
            "{} - {} {pct:.1}% used ({} of {}, {} available)",
            headline("DISK", s),
            path.display(),
            human_bytes(used),
            human_bytes(total),
            human_bytes(avail)
        ),
        perfdata: vec![
            t.perf("used_pct", pct, "%", Some(0.0), Some(100.0)),
            plain_perf("used", used, "B", Some(0.0), Some(total)),
        ],
    })
}

/// (total, free, available) bytes of the filesystem holding `path`.
#[cfg(unix)]
fn space(path: &std::path::Path) -> Result<(f64, f64, f64), String> {
    let (total, free, avail) = crate::sys::filesystem_space(path).map_err(|e| {
        format!(
            "argument --path: cannot read the filesystem of {}: {e}",
            path.display()
        )
    })?;
    Ok((total as f64, free as f64, avail as f64))
}

/// (total, free, available) bytes of the filesystem holding `path`: the
/// mounted volume with the longest mount point that is a prefix of it.
#[cfg(not(unix))]
fn space(path: &std::path::Path) -> Result<(f64, f64, f64), String> {
    let disks = sysinfo::Disks::new_with_refreshed_list().map_err(|e| sys_err("disks", e))?;
    let disk = disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .ok_or_else(|| {
            format!(
                "argument --path: no mounted filesystem holds {}",
                path.display()
            )
        })?;
    let avail = disk.available_space() as f64;
    Ok((disk.total_space() as f64, avail, avail))
}

/// Load averages against per-CPU-scaled thresholds.
pub(super) fn load(args: &[String]) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit"])?;
    let load = System::load_average().map_err(|e| sys_err("the load average", e))?;
    let mut sys = System::new().map_err(|e| sys_err("the CPU count", e))?;
    sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let cpus = sys.cpus().len().max(1) as f64;
    let triple = |key: &str, per_cpu: f64| -> Result<[String; 3], String> {
        match args.text(key) {
            None => Ok(std::array::from_fn(|_| format!("{}", per_cpu * cpus))),
            Some(text) => {
                let parts: Vec<&str> = text.split(',').collect();
                match parts[..] {
                    [one] => Ok(std::array::from_fn(|_| one.to_owned())),
                    [a, b, c] => Ok([a.to_owned(), b.to_owned(), c.to_owned()]),
                    _ => Err(format!(
                        "argument {key}: {text:?} must be one range or three separated by commas"
                    )),
                }
            }
        }
    };
    let warns = triple("--warn", LOAD_WARN_PER_CPU)?;
    let crits = triple("--crit", LOAD_CRIT_PER_CPU)?;
    let mut state = CheckState::Ok;
    let mut perfdata = Vec::new();
    for (i, (label, value)) in [
        ("load1", load.one),
        ("load5", load.five),
        ("load15", load.fifteen),
    ]
    .into_iter()
    .enumerate()
    {
        let t = Args(
            [("--warn", warns[i].clone()), ("--crit", crits[i].clone())]
                .into_iter()
                .collect(),
        )
        .thresholds(None, None)?;
        state = worst(state, t.state(value));
        perfdata.push(t.perf(label, round2(value), "", Some(0.0), None));
    }
    Ok(Measured {
        state,
        summary: format!(
            "{} - load average {:.2}, {:.2}, {:.2} on {cpus} CPUs",
            headline("LOAD", state),
            load.one,
            load.five,
            load.fifteen
        ),
        perfdata,
    })
}

/// Bytes in and out per interface: counters (`c`) and rates since this
/// check's previous run.
pub(super) async fn network(
    check: &str,
    args: &[String],
    state: &Arc<BuiltinState>,
) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit", "--interface"])?;
    let t = args.thresholds(None, None)?;
    let wanted = args.text("--interface").map(str::to_owned);
    let previous = lock(&state.network).remove(check);
    let (nets, since) = state
        .measure(check, move || match previous {
            Some((mut nets, at)) => {
                nets.refresh(true);
                Ok((nets, Some(at.elapsed())))
            }
            None => Networks::new_with_refreshed_list()
                .map(|n| (n, None))
                .map_err(|e| sys_err("network interfaces", e)),
        })
        .await??;
    let mut names: Vec<_> = nets
        .keys()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|n| wanted.as_deref().is_none_or(|w| w == n))
        .collect();
    names.sort();
    let result = if names.is_empty() {
        let missing = wanted.as_deref().unwrap_or("(any)");
        Ok(Measured {
            state: CheckState::Critical,
            summary: format!("NETWORK CRITICAL - interface {missing} not found"),
            perfdata: vec![],
        })
    } else {
        let mut perfdata = Vec::new();
        let mut busiest: f64 = 0.0;
        for (name, data) in nets.iter() {
            let name = name.to_string_lossy();
            if !names.iter().any(|n| *n == name) {
                continue;
            }
            perfdata.push(plain_perf(
                &format!("{name}_rx"),
                data.total_received() as f64,
                "c",
                None,
                None,
            ));
            perfdata.push(plain_perf(
                &format!("{name}_tx"),
                data.total_transmitted() as f64,
                "c",
                None,
                None,
            ));
            let errors = data.total_errors_on_received() + data.total_errors_on_transmitted();
            perfdata.push(plain_perf(
                &format!("{name}_errors"),
                errors as f64,
                "c",
                None,
                None,
            ));
            if let Some(since) = since.filter(|d| !d.is_zero()) {
                let secs = since.as_secs_f64();
                let rx = round2(data.received() as f64 / secs);
                let tx = round2(data.transmitted() as f64 / secs);
                busiest = busiest.max(rx + tx);
                perfdata.push(t.perf(&format!("{name}_rx_per_sec"), rx, "B", Some(0.0), None));
                perfdata.push(t.perf(&format!("{name}_tx_per_sec"), tx, "B", Some(0.0), None));
            }
        }
        let s = if since.is_some() {
            t.state(busiest)
        } else {
            CheckState::Ok
        };
        let rate = match since {
            Some(_) => format!(", busiest {}/s", human_bytes(busiest)),
            None => String::new(),
        };
        Ok(Measured {
            state: s,
            summary: format!(
                "{} - {} interfaces{rate}",
                headline("NETWORK", s),
                names.len()
            ),
            perfdata,
        })
    };
    lock(&state.network).insert(check.to_owned(), (nets, Instant::now()));
    result
}

/// Number of processes, or of those named `--name`.
pub(super) fn processes(args: &[String]) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit", "--name"])?;
    let name = args.text("--name");
    let t = args.thresholds(None, name.map(|_| "1:"))?;
    let mut sys = System::new().map_err(|e| sys_err("processes", e))?;
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    let count = sys
        .processes()
        .values()
        .filter(|p| name.is_none_or(|n| p.name() == n))
        .count() as f64;
    let s = t.state(count);
    let what = match name {
        Some(n) => format!("{count} processes named {n:?}"),
        None => format!("{count} processes"),
    };
    Ok(Measured {
        state: s,
        summary: format!("{} - {what}", headline("PROCESSES", s)),
        perfdata: vec![t.perf("processes", count, "", Some(0.0), None)],
    })
}

/// Seconds since boot; a recent reboot warns.
pub(super) fn uptime(args: &[String]) -> Result<Measured, String> {
    let args = Args::parse(args, &["--warn", "--crit"])?;
    let t = args.thresholds(Some("300:"), None)?;
    let secs = System::uptime().map_err(|e| sys_err("the uptime", e))? as f64;
    let s = t.state(secs);
    let days = (secs / 86_400.0).floor();
    let hours = ((secs % 86_400.0) / 3600.0).floor();
    let minutes = ((secs % 3600.0) / 60.0).floor();
    Ok(Measured {
        state: s,
        summary: format!(
            "{} - up {days} days, {hours} hours, {minutes} minutes",
            headline("UPTIME", s)
        ),
        perfdata: vec![t.perf("uptime", secs, "s", Some(0.0), None)],
    })
}
