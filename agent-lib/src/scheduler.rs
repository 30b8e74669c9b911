//! The check scheduler: one task per configured check.
//!
//! Invariants:
//! - A check first runs after a random jitter in `[0, interval)` (so a fleet
//!   does not run everything at the same second), then at due times
//!   `first + k × interval`: no drift, however long runs take.
//! - A check never overlaps itself: when a run is still going at the next
//!   due time, that start is skipped (counted in [`Scheduler::skipped_runs`]
//!   and logged) and the check waits for the next due time after the run.
//! - At most [`MAX_CONCURRENT_RUNS`] plugin processes run at once across all
//!   checks (a semaphore in the [`Executor`]); each check waits on its own
//!   task, so a slow or hung plugin delays nobody else (its run ends at its
//!   timeout, killing its process group).
//! - Applying a configuration diffs it against the running set: unchanged
//!   checks keep their schedule, changed ones restart, removed ones stop
//!   (killing a running plugin's process group).
//! - Every task is owned by the scheduler's `JoinSet` and awaited in
//!   [`Scheduler::shutdown`]; nothing is detached.
//! - Checks keep running while the agent is disconnected; results go to the
//!   outbox (and so to the spool).
//! - Next due times are recorded as wall-clock Unix ms with a hash of each
//!   check's schedule, so a hot swap carries every check's rhythm.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outrider_protocol::{AgentConfig, CheckSpec};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::random_below;
use crate::config::policy::LocalPolicy;
use crate::executor::Executor;
pub use crate::executor::MAX_CONCURRENT_RUNS;
use crate::host::HostHooks;
use crate::outbox::SharedOutbox;
use crate::runner::{RunOutcome, unix_ms};

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
    executor: Arc<Executor>,
    skipped: Arc<AtomicU64>,
    outbox: Arc<SharedOutbox>,
    hooks: Arc<dyn HostHooks>,
    cancel: CancellationToken,
    config: Option<AgentConfig>,
}

impl Scheduler {
    /// An empty scheduler finding plugins under `data_dir` and running only
    /// what `policy` allows; jobs are stopped
    /// when `cancel` fires or on [`Scheduler::shutdown`].
    pub fn new(
        outbox: Arc<SharedOutbox>,
        hooks: Arc<dyn HostHooks>,
        cancel: CancellationToken,
        data_dir: &Path,
        policy: LocalPolicy,
    ) -> Scheduler {
        Scheduler {
            jobs: HashMap::new(),
            next_runs: NextRuns::default(),
            tasks: JoinSet::new(),
            executor: Arc::new(Executor::new(data_dir, policy)),
            skipped: Arc::default(),
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
        self.executor.set_config(&config.plugins, &config.checks);
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

    /// The spec of scheduled check `name` (for "run check X now").
    pub fn check(&self, name: &str) -> Option<&CheckSpec> {
        self.jobs.get(name).map(|j| &j.spec)
    }

    /// The executor the jobs use; share it to run a check outside its
    /// schedule (same plugin table, built-in state and process limit).
    pub fn executor(&self) -> Arc<Executor> {
        self.executor.clone()
    }

    /// Runs `spec` once now, without touching any schedule, and returns the
    /// outcome (not spooled). `None` when `cancel` fired.
    pub async fn run_once(
        &self,
        spec: &CheckSpec,
        cancel: &CancellationToken,
    ) -> Option<RunOutcome> {
        self.executor.run(spec, cancel).await
    }

    /// Starts skipped so far because the check was still running.
    pub fn skipped_runs(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn stop_job(&mut self, name: &str) {
        if let Some(job) = self.jobs.remove(name) {
            job.cancel.cancel();
        }
    }

    fn start_job(&mut self, spec: CheckSpec) {
        let cancel = self.cancel.child_token();
        let job = JobTask {
            spec: spec.clone(),
            next_runs: self.next_runs.clone(),
            executor: self.executor.clone(),
            skipped: self.skipped.clone(),
            outbox: self.outbox.clone(),
            hooks: self.hooks.clone(),
            cancel: cancel.clone(),
        };
        self.tasks.spawn(job.run());
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

/// What one check's task owns.
struct JobTask {
    spec: CheckSpec,
    next_runs: NextRuns,
    executor: Arc<Executor>,
    skipped: Arc<AtomicU64>,
    outbox: Arc<SharedOutbox>,
    hooks: Arc<dyn HostHooks>,
    cancel: CancellationToken,
}

impl JobTask {
    /// The check's loop: first run at the due time handed over (same
    /// schedule) or after a random jitter, then one run per due time until
    /// cancelled, skipping due times that pass while a run is still going.
    async fn run(self) {
        let spec = &self.spec;
        let period = Duration::from_secs(u64::from(spec.interval_secs));
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        let hash = schedule_hash(spec);
        let carried = {
            let runs = self.next_runs.lock().unwrap_or_else(|p| p.into_inner());
            runs.get(&spec.name)
                .filter(|r| r.schedule_hash == hash)
                .map(|r| r.at_unix_ms)
        };
        // Due in the past (the swap took longer than the rest of the
        // interval): run now; never wait longer than one period.
        let first_delay_ms = match carried {
            // Saturating: `at` comes from a state blob and may be anything.
            Some(at) => u64::try_from(at.saturating_sub(unix_ms()))
                .unwrap_or(0)
                .min(period_ms),
            None => random_below(period_ms),
        };
        let mut due = Instant::now() + Duration::from_millis(first_delay_ms);
        loop {
            self.record_due(&hash, due);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                () = tokio::time::sleep_until(due) => {}
            }
            due += period;
            self.record_due(&hash, due);
            // Boxed: a run's future holds the plugin's pipe buffers (two
            // 8 KiB chunks, agent-lib/src/runner.rs) and the process
            // bookkeeping, ~18 KB. Inline, every check's task would carry
            // that for its whole life, also while it sleeps between runs
            // (365 KB of live heap for 20 checks, measured with massif;
            // docs/benchmarks.md, "Lean agent"); boxed, it exists only
            // while the plugin runs.
            let run = Box::pin(self.executor.run(spec, &self.cancel));
            let Some(outcome) = run.await else {
                return;
            };
            self.outbox.push(&spec.name, outcome);
            let (next, missed) = next_due(due, Instant::now(), period);
            if missed > 0 {
                self.skipped.fetch_add(missed, Ordering::Relaxed);
                self.hooks.warn(&format!(
                    "check {:?} was still running at its due time: skipped {missed} start(s); \
                     its runs take longer than its {}s interval",
                    spec.name, spec.interval_secs
                ));
            }
            due = next;
        }
    }

    /// Records `due` as the check's next due time (wall clock).
    fn record_due(&self, hash: &str, due: Instant) {
        let ahead = due.saturating_duration_since(Instant::now());
        let at_unix_ms = unix_ms() + i64::try_from(ahead.as_millis()).unwrap_or(0);
        self.next_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                self.spec.name.clone(),
                NextRun {
                    schedule_hash: hash.to_owned(),
                    at_unix_ms,
                },
            );
    }
}

/// The next due time once a run ended at `now`, and how many due times
/// passed while it ran (skipped starts). Due times stay on the grid
/// `due + k × period`, so skipping never causes drift.
fn next_due(due: Instant, now: Instant, period: Duration) -> (Instant, u64) {
    if now <= due || period.is_zero() {
        return (due, 0);
    }
    let late = now - due;
    let missed = u64::try_from(late.as_nanos() / period.as_nanos()).unwrap_or(u64::MAX) + 1;
    let next = due + period * u32::try_from(missed).unwrap_or(u32::MAX);
    (next, missed)
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

    fn scheduler() -> (Scheduler, Arc<SharedOutbox>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(
            &dir.path().join("spool"),
            None,
            crate::spool::SpoolLimits::default(),
            Arc::new(Quiet),
        )
        .unwrap();
        let outbox = Arc::new(SharedOutbox::new(outbox));
        (
            Scheduler::new(
                outbox.clone(),
                Arc::new(Quiet),
                CancellationToken::new(),
                dir.path(),
                crate::config::policy::LocalPolicy::new(
                    crate::config::policy::AdhocScripts::Refused,
                    &["builtin:", "plugin:", "/bin", "/usr/bin", "/tmp"],
                )
                .unwrap(),
            ),
            outbox,
            dir,
        )
    }

    /// Waits (bounded) until the outbox holds `n` results.
    async fn wait_results(outbox: &SharedOutbox, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while outbox.lock().len() < n {
                outbox.pushed.notified().await;
            }
        })
        .await
        .expect("results within 10 s");
    }

    /// The task a check keeps for its whole life is its loop state, not a
    /// run's buffers: those are boxed and live only while a plugin runs.
    /// Inline they made each task ~18 KB (bound: a few hundred bytes of
    /// loop state plus the handles the task owns).
    #[tokio::test]
    async fn an_idle_check_task_is_small() {
        let (sched, _outbox, _dir) = scheduler();
        let job = JobTask {
            spec: spec("c", &["/bin/true"], 30),
            next_runs: sched.next_runs.clone(),
            executor: sched.executor.clone(),
            skipped: sched.skipped.clone(),
            outbox: sched.outbox.clone(),
            hooks: sched.hooks.clone(),
            cancel: CancellationToken::new(),
        };
        let task = job.run();
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a check's task is {size} bytes");
        // And the run it boxes is the big part, so the box is what saves it.
        let executor = sched.executor.clone();
        let run_spec = spec("c", &["/bin/true"], 30);
        let cancel = CancellationToken::new();
        let run = executor.run(&run_spec, &cancel);
        let run_size = std::mem::size_of_val(&run);
        assert!(run_size > 8192, "a run's future is only {run_size} bytes");
    }

    #[test]
    fn due_times_stay_on_the_grid_and_count_skips() {
        let t0 = Instant::now();
        let p = Duration::from_secs(10);
        assert_eq!(next_due(t0, t0 - Duration::from_secs(3), p), (t0, 0));
        assert_eq!(next_due(t0, t0, p), (t0, 0));
        assert_eq!(next_due(t0, t0 + Duration::from_millis(1), p), (t0 + p, 1));
        assert_eq!(
            next_due(t0, t0 + Duration::from_secs(25), p),
            (t0 + 3 * p, 3)
        );
    }

    #[tokio::test]
    async fn a_check_still_running_is_skipped_not_overlapped() {
        let (mut s, outbox, _dir) = scheduler();
        s.apply(&AgentConfig {
            version: 1,
            checks: vec![spec("slow", &["/bin/sh", "-c", "sleep 2.2; echo OK"], 1)],
            ..AgentConfig::default()
        });
        wait_results(&outbox, 1).await;
        // The 2.2 s run covered at least two due times of its 1 s interval.
        assert!(s.skipped_runs() >= 2, "skipped {}", s.skipped_runs());
        s.shutdown().await;
        assert_eq!(outbox.lock().len(), 1, "never two runs at once");
    }

    #[tokio::test]
    async fn a_configured_check_can_run_once_without_its_schedule() {
        let (mut s, outbox, _dir) = scheduler();
        s.apply(&AgentConfig {
            version: 1,
            checks: vec![spec("up", &["builtin:uptime"], 3600)],
            ..AgentConfig::default()
        });
        // The job records its first due time as soon as its task runs.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !s.next_runs().contains_key("up") {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let due_before = s.next_runs()["up"].clone();
        let spec = s.check("up").cloned().expect("configured");
        assert!(s.check("nope").is_none());
        let out = s.run_once(&spec, &CancellationToken::new()).await.unwrap();
        assert!(out.summary.starts_with("UPTIME"), "{}", out.summary);
        assert_eq!(s.next_runs()["up"], due_before, "the schedule did not move");
        assert!(outbox.lock().is_empty(), "a one-off run is not spooled");
        s.shutdown().await;
    }

    #[tokio::test]
    async fn apply_diffs_against_running_set() {
        let (mut s, _, _dir) = scheduler();
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
        let (mut s, outbox, _dir) = scheduler();
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
        let (mut s, outbox, _dir) = scheduler();
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
        let (mut s, outbox, _dir) = scheduler();
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

    #[tokio::test]
    async fn an_absurd_handed_over_due_time_runs_now_instead_of_panicking() {
        let check = spec("echo", &["/bin/sh", "-c", "echo 'OK hi'"], 3600);
        let carried = std::collections::BTreeMap::from([(
            "echo".to_owned(),
            NextRun {
                schedule_hash: schedule_hash(&check),
                at_unix_ms: i64::MIN,
            },
        )]);
        let (mut s, outbox, _dir) = scheduler();
        s.carry_next_runs(&carried);
        s.apply(&AgentConfig {
            version: 1,
            checks: vec![check],
            ..AgentConfig::default()
        });
        wait_results(&outbox, 1).await;
        s.shutdown().await;
    }
}
