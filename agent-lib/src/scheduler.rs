//! The check scheduler: one task per configured check.
//!
//! Invariants:
//! - A check first runs after a random jitter in `[0, interval)` (so a fleet
//!   does not run everything at the same second), then at a fixed rate with
//!   no drift; ticks missed while a run is still going are skipped, so a check
//!   never overlaps itself.
//! - At most [`MAX_CONCURRENT_RUNS`] plugins run at once across all checks.
//! - Applying a configuration diffs it against the running set: unchanged
//!   checks keep their schedule, changed ones restart, removed ones stop
//!   (killing a running plugin's process group).
//! - Every task is owned by the scheduler's `JoinSet` and awaited in
//!   [`Scheduler::shutdown`]; nothing is detached.
//! - Checks keep running while the agent is disconnected; results go to the
//!   outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outrider_protocol::{AgentConfig, CheckSpec};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backoff::random_below;
use crate::host::HostHooks;
use crate::outbox::SharedOutbox;
use crate::runner::{RunLimits, run_plugin};

/// Most plugin processes running at the same time.
pub const MAX_CONCURRENT_RUNS: usize = 16;

/// What [`Scheduler::apply`] changed, for logging and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    /// Checks refused by validation, with the reason.
    pub invalid: Vec<String>,
}

#[derive(Debug)]
struct Job {
    spec: CheckSpec,
    cancel: CancellationToken,
}

/// When a check is next due, as carried across a hot swap.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextRun {
    /// [`schedule_hash`] of the check when this was recorded; a changed
    /// schedule starts afresh.
    pub schedule_hash: String,
    /// Wall-clock due time, Unix milliseconds.
    pub at_unix_ms: i64,
}

/// Stable hash (FNV-1a 64) of what decides a check's rhythm: its interval
/// and command. Stable across builds, unlike `std`'s hasher, because two
/// different library builds compare it.
pub fn schedule_hash(spec: &CheckSpec) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!("{}\0{}", spec.interval_secs, spec.command.join("\0"));
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Due times shared between the jobs and the scheduler.
type NextRuns = Arc<std::sync::Mutex<HashMap<String, NextRun>>>;

/// Owns the per-check tasks.
#[derive(Debug)]
pub struct Scheduler {
    jobs: HashMap<String, Job>,
    /// Due times recorded by the jobs; seeded from the previous generation.
    next_runs: NextRuns,
    tasks: JoinSet<()>,
    permits: Arc<Semaphore>,
    outbox: Arc<SharedOutbox>,
    hooks: Arc<dyn HostHooks>,
    cancel: CancellationToken,
    config: Option<AgentConfig>,
}

impl Scheduler {
    /// An empty scheduler; jobs are stopped when `cancel` fires or on
    /// [`Scheduler::shutdown`].
    pub fn new(
        outbox: Arc<SharedOutbox>,
        hooks: Arc<dyn HostHooks>,
        cancel: CancellationToken,
    ) -> Scheduler {
        Scheduler {
            jobs: HashMap::new(),
            next_runs: NextRuns::default(),
            tasks: JoinSet::new(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_RUNS)),
            outbox,
            hooks,
            cancel,
            config: None,
        }
    }

    /// Makes the running set match `config` (see the module docs). Invalid
    /// checks are skipped and reported; the rest still apply.
    pub fn apply(&mut self, config: &AgentConfig) -> ApplySummary {
        let mut summary = ApplySummary::default();
        let mut wanted = HashMap::new();
        for spec in &config.checks {
            match spec.validate() {
                Ok(()) if wanted.contains_key(&spec.name) => {
                    summary.invalid.push(format!(
                        "check {:?} is configured twice; the first wins",
                        spec.name
                    ));
                }
                Ok(()) => {
                    wanted.insert(spec.name.clone(), spec.clone());
                }
                Err(e) => summary.invalid.push(e.to_string()),
            }
        }
        let current: Vec<String> = self.jobs.keys().cloned().collect();
        for name in current {
            match wanted.get(&name) {
                Some(spec) if *spec == self.jobs[&name].spec => {
                    wanted.remove(&name);
                    summary.unchanged.push(name);
                }
                Some(_) => {
                    self.stop_job(&name);
                    summary.restarted.push(name);
                }
                None => {
                    self.stop_job(&name);
                    summary.stopped.push(name);
                }
            }
        }
        for (name, spec) in wanted {
            if !summary.restarted.contains(&name) {
                summary.started.push(name.clone());
            }
            self.start_job(spec);
        }
        // Reap tasks that already finished so the set does not grow.
        while self.tasks.try_join_next().is_some() {}
        for v in [
            &mut summary.started,
            &mut summary.restarted,
            &mut summary.stopped,
            &mut summary.unchanged,
        ] {
            v.sort();
        }
        self.config = Some(config.clone());
        summary
    }

    /// Seeds due times handed over by the previous generation; call before
    /// the first [`Scheduler::apply`].
    pub fn carry_next_runs(&mut self, carried: &std::collections::BTreeMap<String, NextRun>) {
        let mut runs = self.next_runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.extend(carried.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// When each scheduled check is next due, for the state blob.
    pub fn next_runs(&self) -> std::collections::BTreeMap<String, NextRun> {
        let runs = self.next_runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.iter()
            .filter(|(name, _)| self.jobs.contains_key(*name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The configuration last applied.
    pub fn config(&self) -> Option<&AgentConfig> {
        self.config.as_ref()
    }

    /// Names of the checks currently scheduled.
    pub fn check_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.jobs.keys().cloned().collect();
        names.sort();
        names
    }

    fn stop_job(&mut self, name: &str) {
        if let Some(job) = self.jobs.remove(name) {
            job.cancel.cancel();
        }
    }

    fn start_job(&mut self, spec: CheckSpec) {
        let cancel = self.cancel.child_token();
        let task = run_job(
            spec.clone(),
            self.next_runs.clone(),
            self.permits.clone(),
            self.outbox.clone(),
            self.hooks.clone(),
            cancel.clone(),
        );
        self.tasks.spawn(task);
        self.jobs.insert(spec.name.clone(), Job { spec, cancel });
    }

    /// Stops every job (killing running plugins) and waits for all tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined
                && e.is_panic()
            {
                self.hooks.error(&format!("a check task panicked: {e}"));
            }
        }
    }
}

/// One check's loop: first run at the due time handed over (same schedule)
/// or after a random jitter, then fixed-rate runs until cancelled; each tick
/// records the next due time.
async fn run_job(
    spec: CheckSpec,
    next_runs: NextRuns,
    permits: Arc<Semaphore>,
    outbox: Arc<SharedOutbox>,
    hooks: Arc<dyn HostHooks>,
    cancel: CancellationToken,
) {
    let period = Duration::from_secs(u64::from(spec.interval_secs));
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    let hash = schedule_hash(&spec);
    let carried = {
        let runs = next_runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(&spec.name)
            .filter(|r| r.schedule_hash == hash)
            .map(|r| r.at_unix_ms)
    };
    // Due in the past (the swap took longer than the rest of the interval):
    // run now; never wait longer than one period.
    let first_delay_ms = match carried {
        Some(at) => u64::try_from(at - unix_ms()).unwrap_or(0).min(period_ms),
        None => random_below(period_ms),
    };
    let first = Instant::now() + Duration::from_millis(first_delay_ms);
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let limits = RunLimits::new(Duration::from_secs(u64::from(spec.timeout_secs)));
    loop {
        let due = tokio::select! {
            _ = cancel.cancelled() => return,
            due = ticks.tick() => due,
        };
        let next_at = unix_ms()
            + i64::try_from(
                (due + period)
                    .saturating_duration_since(Instant::now())
                    .as_millis(),
            )
            .unwrap_or(0);
        next_runs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            spec.name.clone(),
            NextRun {
                schedule_hash: hash.clone(),
                at_unix_ms: next_at,
            },
        );
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // The semaphore is never closed; treat it as a stop anyway.
                Err(_) => return,
            },
        };
        let Some(outcome) = run_plugin(&spec.command, limits, &cancel).await else {
            return;
        };
        drop(permit);
        if let Some(seq) = outbox.push(&spec.name, outcome) {
            hooks.warn(&format!(
                "outbox full: dropped the oldest un-acked result (seq {seq})"
            ));
        }
    }
}

/// Wall-clock now, Unix milliseconds.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use outrider_protocol::CheckState;

    use super::*;
    use crate::host::{Health, Level};
    use crate::outbox::Outbox;

    #[derive(Debug)]
    struct Quiet;
    impl HostHooks for Quiet {
        fn log(&self, _: Level, _: &str) {}
        fn health(&self, _: Health, _: &str) {}
        fn request_update_check(&self) {}
    }

    fn spec(name: &str, command: &[&str], interval_secs: u32) -> CheckSpec {
        CheckSpec {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            interval_secs,
            timeout_secs: 5,
        }
    }

    fn scheduler() -> (Scheduler, Arc<SharedOutbox>) {
        let outbox = Arc::new(SharedOutbox::new(Outbox::new(None, 100)));
        (
            Scheduler::new(outbox.clone(), Arc::new(Quiet), CancellationToken::new()),
            outbox,
        )
    }

    #[tokio::test]
    async fn apply_diffs_against_running_set() {
        let (mut s, _) = scheduler();
        let hour = 3600;
        let a = spec("a", &["/bin/true"], hour);
        let b = spec("b", &["/bin/true"], hour);
        let first = s.apply(&AgentConfig {
            version: 1,
            checks: vec![a.clone(), b.clone()],
            ..AgentConfig::default()
        });
        assert_eq!(first.started, ["a", "b"]);
        let b2 = spec("b", &["/bin/false"], hour);
        let c = spec("c", &["/bin/true"], hour);
        let bad = spec("Bad Name", &["/bin/true"], hour);
        let second = s.apply(&AgentConfig {
            version: 2,
            checks: vec![b2, c, bad],
            ..AgentConfig::default()
        });
        assert_eq!(
            second,
            ApplySummary {
                started: vec!["c".into()],
                restarted: vec!["b".into()],
                stopped: vec!["a".into()],
                unchanged: vec![],
                invalid: second.invalid.clone(),
            }
        );
        assert_eq!(second.invalid.len(), 1);
        assert_eq!(s.check_names(), ["b", "c"]);
        let third = s.apply(&AgentConfig {
            version: 3,
            checks: vec![spec("c", &["/bin/true"], hour)],
            ..AgentConfig::default()
        });
        assert_eq!(third.unchanged, ["c"]);
        assert_eq!(third.stopped, ["b"]);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn a_scheduled_check_produces_results() {
        let (mut s, outbox) = scheduler();
        s.apply(&AgentConfig {
            version: 1,
            checks: vec![spec("echo", &["/bin/sh", "-c", "echo 'OK hi|x=1'"], 1)],
            ..AgentConfig::default()
        });
        // First run is within one interval (1 s) of the apply.
        tokio::time::timeout(Duration::from_secs(5), async {
            while outbox.lock().is_empty() {
                outbox.pushed.notified().await;
            }
        })
        .await
        .expect("a result within 5 s");
        s.shutdown().await;
        let mut o = outbox.lock();
        o.welcome(0);
        let batch = o.next_batch(10);
        assert_eq!(batch[0].check, "echo");
        assert_eq!(batch[0].state, CheckState::Ok);
        assert_eq!(batch[0].summary, "OK hi");
    }

    #[tokio::test]
    async fn shutdown_kills_a_running_plugin_promptly() {
        let (mut s, outbox) = scheduler();
        s.apply(&AgentConfig {
            version: 1,
            checks: vec![spec("slow", &["/bin/sleep", "600"], 1)],
            ..AgentConfig::default()
        });
        // Let it start (jitter < 1 s), then stop.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let started = std::time::Instant::now();
        s.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(outbox.lock().is_empty(), "a cancelled run reports nothing");
    }

    #[tokio::test]
    async fn a_handed_over_due_time_is_kept_and_a_changed_schedule_starts_afresh() {
        let check = spec("echo", &["/bin/sh", "-c", "echo 'OK hi'"], 60);
        let due = unix_ms() + 400;
        let carried = std::collections::BTreeMap::from([(
            "echo".to_owned(),
            NextRun {
                schedule_hash: schedule_hash(&check),
                at_unix_ms: due,
            },
        )]);
        let (mut s, outbox) = scheduler();
        s.carry_next_runs(&carried);
        s.apply(&AgentConfig {
            version: 1,
            checks: vec![check.clone()],
            ..AgentConfig::default()
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while outbox.lock().is_empty() {
                outbox.pushed.notified().await;
            }
        })
        .await
        .expect("the carried due time, not a random point in 60 s");
        let started = {
            let mut o = outbox.lock();
            o.welcome(0);
            o.next_batch(10)[0].started_at_ms
        };
        assert!((started - due).abs() < 250, "ran at {started}, due {due}");
        // The next due time is recorded for the next handover.
        let next = s.next_runs()["echo"].at_unix_ms;
        assert!((next - (started + 60_000)).abs() < 250, "next {next}");
        s.shutdown().await;

        // Same name, other command: the carried time does not apply.
        let changed = spec("echo", &["/bin/sh", "-c", "echo 'OK other'"], 60);
        assert_ne!(schedule_hash(&changed), schedule_hash(&check));
        assert_eq!(
            schedule_hash(&check),
            schedule_hash(&check.clone()),
            "stable"
        );
    }
}
