//! The stub's main loop: one running generation, update checks, hot swap,
//! probation and rollback (DESIGN.md §4).
//!
//! Swap, step by step (a crash at any step leaves a verified build to run):
//! 1. the new build is verified and installed under `versions/` (update);
//! 2. `pending` is written to `state.json` — a crash from here on is blamed
//!    on the new build at the next start;
//! 3. the new copy is loaded while the old generation still runs;
//! 4. the old generation is stopped (deadline) and hands over its state;
//! 5. no thread of the old one may be left, else re-exec into the new build;
//! 6. the new generation starts with that state, on probation;
//! 7. the old copy is unloaded; if it stays mapped, re-exec once the new
//!    build passed probation;
//! 8. probation passes when the library reports health OK in time: the new
//!    build becomes `current`, the old one `previous`.
//!
//! Rollback (start failure, panic, exit, health timeout, or a crash found
//! through `pending` at start): the build is marked bad for the manifest
//! that offered it, the previous build is started with the state blob, and
//! an event is queued for the next healthy generation to report. If the
//! previous build fails too, the newest build that ever passed probation
//! runs; the stub never loops between bad builds.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::StubConfig;
use crate::generation::{Generation, Loaded, StopFailure, Stopped, thread_count};
use crate::layout::Layout;
use crate::lock::InstanceLock;
use crate::reexec::{Handover, exec_self};
use crate::signals::{Signal, Signals};
use crate::state::{BuildRef, Pending, StubState};
use crate::update::{Build, Updater};
use crate::{StubError, error::chain};

/// Main loop tick: how fast signals, health and exits are noticed.
const TICK: Duration = Duration::from_millis(50);
/// First and longest delay between attempts when nothing can run.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Everything the main loop owns.
#[derive(Debug)]
pub struct Supervisor<'a> {
    layout: &'a Layout,
    signals: &'a Signals,
    lock: &'a InstanceLock,
    config: StubConfig,
    updater: Updater,
    state: StubState,
    generation: Option<Generation>,
    /// The build on probation, while one is.
    probation: Option<Pending>,
    next_number: u64,
    /// Threads of the process without any generation.
    baseline_threads: usize,
    /// The latest state blob handed over, for a generation that fails
    /// before handing over its own.
    last_state: Vec<u8>,
    next_check: Instant,
    /// An old copy stayed mapped: re-exec once the new build is healthy.
    reexec_when_healthy: bool,
    /// Consecutive failed attempts, for the retry backoff.
    retries: u32,
    /// Path of the running stub binary, read at start (after a self-update
    /// replaced the file, `/proc/self/exe` names the old inode); `None` if
    /// unreadable, which turns self-update off.
    exe_path: Option<std::path::PathBuf>,
    /// SHA-256 of the running binary, computed the first time a manifest
    /// offers a stub (hashing it on every start would be wasted work).
    exe_sha256: Option<outrider_signing::Sha256>,
}

impl<'a> Supervisor<'a> {
    pub fn new(
        layout: &'a Layout,
        signals: &'a Signals,
        lock: &'a InstanceLock,
        config: StubConfig,
        updater: Updater,
        state: StubState,
    ) -> Supervisor<'a> {
        Supervisor {
            layout,
            signals,
            lock,
            config,
            updater,
            state,
            generation: None,
            probation: None,
            next_number: 1,
            baseline_threads: thread_count(),
            last_state: Vec::new(),
            next_check: Instant::now(),
            reexec_when_healthy: false,
            retries: 0,
            exe_path: std::fs::read_link("/proc/self/exe").ok(),
            exe_sha256: None,
        }
    }

    /// Runs until a stop signal. Returns `Ok` after a clean stop.
    pub fn run(mut self, handover: Option<Handover>) -> Result<(), StubError> {
        self.recover(handover)?;
        loop {
            match self.signals.wait(TICK) {
                Some(Signal::Stop) => return self.shutdown(),
                Some(Signal::Reload) => self.reload(),
                None => {}
            }
            self.watch_generation()?;
            if self
                .generation
                .as_ref()
                .is_some_and(Generation::take_update_request)
            {
                self.next_check = Instant::now();
            }
            if self.probation.is_none() && Instant::now() >= self.next_check {
                self.update_check()?;
            }
        }
    }

    /// Startup: a re-exec handover, a crash found through `pending`, or a
    /// plain start of the current build (fetching one on first run).
    fn recover(&mut self, handover: Option<Handover>) -> Result<(), StubError> {
        if let Some(h) = handover {
            info!(reason = %h.reason, build = %h.start.version, "continuing after a re-exec");
            self.next_number = h.generation;
            self.last_state = h.state.clone();
            let pending = h.probation.then(|| self.state.pending.clone()).flatten();
            if let Some(build) = self.installed(&h.start) {
                self.start(&build, h.state, pending)?;
                return Ok(());
            }
        } else if let Some(pending) = self.state.pending.take() {
            let reason = "the process crashed during probation".to_owned();
            error!(build = %pending.build.version, "{reason}; rolling back");
            self.state.mark_bad(
                pending.build.sha256,
                pending.manifest_sha256,
                reason.clone(),
            );
            self.state.push_event(format!(
                "rolled back from {} ({}): {reason}",
                pending.build.version, pending.build.sha256
            ));
            self.state.save(&self.layout.state_json)?;
        }
        for candidate in [self.state.current.clone(), self.state.last_good.clone()]
            .into_iter()
            .flatten()
        {
            if let Some(build) = self.installed(&candidate) {
                match self.start(&build, Vec::new(), None) {
                    Ok(()) => return Ok(()),
                    Err(e) => warn!(build = %candidate.version, "cannot start: {}", chain(&e)),
                }
            }
        }
        // First run (or nothing usable on disk): the first check installs one.
        self.next_check = Instant::now();
        Ok(())
    }

    /// One update check; swaps when it yields a build we do not run.
    fn update_check(&mut self) -> Result<(), StubError> {
        self.next_check = Instant::now() + self.config.jittered_update_interval();
        let running = self.generation.as_ref().map(|g| g.build().sha256);
        let build = match self.updater.fetch_latest(&mut self.state) {
            Ok(build) => build,
            Err(e) => {
                if let StubError::Update(outrider_update_client::UpdateError::Backoff {
                    retry_after_secs,
                    ..
                }) = &e
                {
                    let wait = Duration::from_secs(retry_after_secs.unwrap_or(60).clamp(1, 3600));
                    self.next_check = Instant::now() + wait;
                }
                if self.generation.is_none() {
                    // Nothing runs yet: retry sooner, with backoff.
                    let wait = self.retry_delay();
                    self.next_check = Instant::now() + wait;
                    warn!(
                        "no usable agent build yet, retrying in {wait:?}: {}",
                        chain(&e)
                    );
                } else {
                    warn!("update check failed: {}", chain(&e));
                }
                self.state.save(&self.layout.state_json)?;
                return Ok(());
            }
        };
        self.state.save(&self.layout.state_json)?;
        if self.probation.is_none() && self.generation.is_some() {
            self.maybe_update_stub()?;
        }
        if running == Some(build.sha256) {
            return Ok(());
        }
        if self
            .state
            .is_bad(&build.sha256, build.manifest_sha256.as_ref())
        {
            return Ok(());
        }
        match self.generation.is_some() {
            true => self.swap(build),
            false => {
                // The very first build starts on probation too (a crash
                // is then blamed on it), though nothing can be rolled back to.
                let pending = Pending {
                    build: build_ref(&build),
                    manifest_sha256: build.manifest_sha256,
                };
                self.start(&build, Vec::new(), Some(pending))
            }
        }
    }

    /// Steps 2–7 of the swap (see the module docs).
    fn swap(&mut self, new: Build) -> Result<(), StubError> {
        let pending = Pending {
            build: build_ref(&new),
            manifest_sha256: new.manifest_sha256,
        };
        info!(from = %self.running_version(), to = %new.version, "hot swap starting");
        // Step 2.
        self.state.pending = Some(pending.clone());
        self.state.save(&self.layout.state_json)?;
        crash_point("swap-pending-written");
        // Step 3.
        let loaded = match Loaded::load(self.layout, &new, self.take_number()) {
            Ok(l) => l,
            Err(e) => {
                self.fail_pending(&pending, format!("could not be loaded: {}", chain(&e)))?;
                return Ok(());
            }
        };
        crash_point("swap-new-loaded");
        // Step 4.
        let old = self
            .generation
            .take()
            .expect("swap runs only with a generation");
        let stopped = match old.stop(self.config.stop_timeout) {
            Ok(s) => s,
            Err(failure) => {
                return Err(self.reexec(
                    &pending.build,
                    true,
                    Vec::new(),
                    format!("old generation {failure:?}"),
                ));
            }
        };
        self.last_state = stopped.state.clone();
        crash_point("swap-old-stopped");
        // Step 5.
        if thread_count() > self.baseline_threads {
            let reason = format!(
                "old generation left {} thread(s)",
                thread_count() - self.baseline_threads
            );
            return Err(self.reexec(&pending.build, true, stopped.state, reason));
        }
        // Step 6.
        let state = stopped.state.clone();
        match loaded.start(self.layout, &self.config, state, &self.state.events) {
            Ok(generation) => {
                self.generation = Some(generation);
                self.probation = Some(pending);
            }
            Err(e) => {
                self.restart_stopped(stopped)?;
                self.fail_pending(&pending, format!("could not start: {}", chain(&e)))?;
                return Ok(());
            }
        }
        crash_point("swap-new-started");
        // Step 7.
        let old_version = stopped.build().version.clone();
        if stopped.unload().still_mapped {
            warn!(build = %old_version, "old library is still mapped after unloading; re-exec after probation");
            self.reexec_when_healthy = true;
        }
        crash_point("swap-old-unloaded");
        Ok(())
    }

    /// Restarts a generation that was stopped for a swap that then failed.
    fn restart_stopped(&mut self, stopped: Stopped) -> Result<(), StubError> {
        let build = stopped.build().clone();
        let state = stopped.state.clone();
        stopped.unload();
        self.start(&build, state, None)
    }

    /// Checks the running generation: probation verdict, unexpected exit.
    fn watch_generation(&mut self) -> Result<(), StubError> {
        let Some(generation) = &self.generation else {
            return Ok(());
        };
        if let Some(pending) = &self.probation {
            if generation.is_healthy() {
                let pending = pending.clone();
                return self.pass_probation(pending);
            }
            if generation.is_finished() {
                return self.rollback("exited during probation".into());
            }
            if generation.age() > self.config.probation
                && self.rollback_target().is_none()
                && self.state.last_good.is_none()
            {
                // Nothing to roll back to (a first install): a build that runs
                // but cannot report health yet — the server unreachable, say —
                // is still better than no agent. It keeps running.
                warn!(build = %pending.build.version, "no health OK within the probation window; nothing to roll back to, keeping it");
                let pending = pending.clone();
                return self.pass_probation(pending);
            }
            if generation.age() > self.config.probation {
                return self.rollback(format!("no health OK within {:?}", self.config.probation));
            }
            return Ok(());
        }
        if !self.state.events.is_empty() && generation.is_healthy() {
            // A healthy generation (connected, so the server gets them)
            // received the queued events with its host config.
            self.state.events.clear();
            self.state.save(&self.layout.state_json)?;
        }
        if generation.is_finished() {
            let generation = self.generation.take().expect("checked above");
            let build = generation.build().clone();
            let (status, state) = match generation.stop(self.config.stop_timeout) {
                Ok(stopped) => {
                    let out = (stopped.status, stopped.state.clone());
                    stopped.unload();
                    out
                }
                Err(_) => (outrider_abi::status::FAILED, Vec::new()),
            };
            let wait = self.retry_delay();
            error!(build = %build.version, status, "agent library stopped on its own; restarting it in {wait:?}");
            if self.signals.wait(wait) == Some(Signal::Stop) {
                return Ok(());
            }
            let state = if state.is_empty() {
                self.last_state.clone()
            } else {
                state
            };
            self.start(&build, state, None)?;
        }
        Ok(())
    }

    /// Step 8: the new build becomes current.
    fn pass_probation(&mut self, pending: Pending) -> Result<(), StubError> {
        info!(build = %pending.build.version, "probation passed");
        self.probation = None;
        if self.state.current.as_ref() != Some(&pending.build) {
            self.state.previous = self.state.current.take();
        }
        self.state.current = Some(pending.build.clone());
        self.state.last_good = Some(pending.build);
        self.state.pending = None;
        // The healthy generation got the queued events and reports them.
        self.state.events.clear();
        self.state.save(&self.layout.state_json)?;
        crash_point("probation-passed");
        self.retries = 0;
        if std::mem::take(&mut self.reexec_when_healthy) {
            let generation = self
                .generation
                .take()
                .expect("probation passed for a running generation");
            let build = build_ref(generation.build());
            let state = match generation.stop(self.config.stop_timeout) {
                Ok(s) => s.state,
                Err(_) => Vec::new(),
            };
            return Err(self.reexec(&build, false, state, "an old library stayed mapped".into()));
        }
        Ok(())
    }

    /// Rolls back from the build on probation.
    fn rollback(&mut self, reason: String) -> Result<(), StubError> {
        let pending = self
            .probation
            .take()
            .expect("rollback only during probation");
        error!(build = %pending.build.version, %reason, "build failed probation; rolling back");
        let generation = self
            .generation
            .take()
            .expect("rollback with a running generation");
        let state = match generation.stop(self.config.stop_timeout) {
            Ok(stopped) => {
                let state = if stopped.state.is_empty() {
                    self.last_state.clone()
                } else {
                    stopped.state.clone()
                };
                stopped.unload();
                state
            }
            Err(_) => {
                self.record_failure(&pending, reason.clone())?;
                let target = self.rollback_target().ok_or(StubError::NoBuild)?;
                return Err(self.reexec(
                    &target,
                    false,
                    self.last_state.clone(),
                    "bad build would not stop".into(),
                ));
            }
        };
        self.record_failure(&pending, reason)?;
        for target in [self.rollback_target(), self.state.last_good.clone()]
            .into_iter()
            .flatten()
        {
            if let Some(build) = self.installed(&target) {
                match self.start(&build, state.clone(), None) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        warn!(build = %target.version, "rollback target cannot start: {}", chain(&e))
                    }
                }
            }
        }
        error!("no build that ever passed probation can run; waiting for a new release");
        Ok(())
    }

    /// The build that ran before the swap (`current` is only replaced when
    /// probation passes).
    fn rollback_target(&self) -> Option<BuildRef> {
        self.state
            .current
            .clone()
            .or_else(|| self.state.previous.clone())
    }

    fn fail_pending(&mut self, pending: &Pending, reason: String) -> Result<(), StubError> {
        error!(build = %pending.build.version, %reason, "new build refused");
        self.record_failure(pending, reason)
    }

    fn record_failure(&mut self, pending: &Pending, reason: String) -> Result<(), StubError> {
        self.state.mark_bad(
            pending.build.sha256,
            pending.manifest_sha256,
            reason.clone(),
        );
        let from = &pending.build.version;
        let to = self
            .rollback_target()
            .map_or_else(|| "nothing".to_owned(), |b| b.version);
        self.state
            .push_event(format!("rolled back from {from} to {to}: {reason}"));
        self.state.pending = None;
        self.state.save(&self.layout.state_json)
    }

    /// Loads and starts `build`; `pending` puts it on probation.
    fn start(
        &mut self,
        build: &Build,
        state: Vec<u8>,
        pending: Option<Pending>,
    ) -> Result<(), StubError> {
        if let Some(p) = &pending {
            self.state.pending = Some(p.clone());
            self.state.save(&self.layout.state_json)?;
        }
        let loaded = Loaded::load(self.layout, build, self.take_number());
        let started =
            loaded.and_then(|l| l.start(self.layout, &self.config, state, &self.state.events));
        match started {
            Ok(generation) => {
                info!(sha256 = %build.sha256, version = %build.version, "agent library loaded and running");
                self.generation = Some(generation);
                self.probation = pending;
                Ok(())
            }
            Err(e) => {
                if let Some(p) = pending {
                    self.fail_pending(&p, format!("could not start: {}", chain(&e)))?;
                }
                Err(e)
            }
        }
    }

    fn shutdown(mut self) -> Result<(), StubError> {
        info!("stop requested, stopping the agent library");
        // A clean stop is not a crash: settle a probation in progress so the
        // next start does not blame the build (`pending` means "crashed").
        if let Some(pending) = self.probation.take() {
            if self.generation.as_ref().is_some_and(Generation::is_healthy) {
                self.reexec_when_healthy = false;
                self.pass_probation(pending)?;
            } else {
                info!(build = %pending.build.version, "stopped during probation; it will be tried again");
                self.state.pending = None;
                self.state.save(&self.layout.state_json)?;
            }
        }
        let Some(generation) = self.generation.take() else {
            return Ok(());
        };
        match generation.stop(self.config.stop_timeout) {
            Ok(stopped) => {
                let (status, bytes, health) =
                    (stopped.status, stopped.state.len(), stopped.health.clone());
                stopped.unload();
                info!(status, state_bytes = bytes, last_health = ?health, "agent library stopped and unloaded");
                Ok(())
            }
            Err(StopFailure::Timeout) => Err(StubError::StopTimeout {
                secs: self.config.stop_timeout.as_secs(),
            }),
            Err(StopFailure::Panicked) => Err(StubError::GenerationPanicked),
        }
    }

    /// Step 5 of the stub issue: when the manifest offers a stub binary other
    /// than the one running, download and verify it beside the current
    /// binary, swap it in atomically (self-replace: write beside, fsync,
    /// rename), and re-exec into it carrying the running generation's state.
    /// Any failure leaves the current binary in place and is logged.
    fn maybe_update_stub(&mut self) -> Result<(), StubError> {
        let Some(offer) = self.updater.stub_offer().cloned() else {
            return Ok(());
        };
        let Some(exe) = self.exe_path.clone() else {
            return Ok(());
        };
        if self.exe_sha256.is_none() {
            // /proc/self/exe is the running inode, even if the file was replaced.
            match crate::update::hash_file(std::path::Path::new("/proc/self/exe")) {
                Ok(sha) => self.exe_sha256 = Some(sha),
                Err(e) => {
                    warn!("cannot hash the running stub binary, skipping the stub update: {e}");
                    return Ok(());
                }
            }
        }
        if Some(offer.sha256) == self.exe_sha256 {
            return Ok(());
        }
        let exe = &exe;
        let dir = exe.parent().unwrap_or(std::path::Path::new("."));
        let staged = dir.join(".outrider-agent.new");
        let result = self.updater.fetch_stub(&offer, &staged).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
                .map_err(StubError::io("making executable", &staged))?;
            self_replace::self_replace(&staged)
                .map_err(StubError::io("replacing the stub binary", exe))
        });
        let _ = std::fs::remove_file(&staged);
        if let Err(e) = result {
            error!(
                "stub self-update to {} failed; keeping this stub: {}",
                offer.sha256,
                chain(&e)
            );
            return Ok(());
        }
        info!(sha256 = %offer.sha256, "stub binary replaced; re-executing into it");
        let exe = exe.clone();
        let generation = self.generation.take().expect("checked by the caller");
        let build = build_ref(generation.build());
        let state = match generation.stop(self.config.stop_timeout) {
            Ok(stopped) => {
                let state = stopped.state.clone();
                stopped.unload();
                state
            }
            Err(_) => self.last_state.clone(),
        };
        let handover = Handover {
            start: build,
            probation: false,
            generation: self.next_number,
            reason: "stub self-update".into(),
            state,
        };
        Err(exec_self(&exe, &handover, self.lock))
    }

    fn reload(&mut self) {
        match StubConfig::load(&self.layout.agent_toml) {
            Ok(config) => {
                info!(
                    "SIGHUP: configuration reloaded; the next generation gets it, updates use it now"
                );
                self.updater.reconfigure(&config);
                self.config = config;
                self.next_check = Instant::now();
            }
            Err(e) => error!("SIGHUP: keeping the old configuration: {}", chain(&e)),
        }
    }

    /// Re-execs with a handover; returns the error only if exec failed.
    fn reexec(
        &mut self,
        start: &BuildRef,
        probation: bool,
        state: Vec<u8>,
        reason: String,
    ) -> StubError {
        let handover = Handover {
            start: start.clone(),
            probation,
            generation: self.next_number,
            reason,
            state,
        };
        exec_self(std::path::Path::new("/proc/self/exe"), &handover, self.lock)
    }

    fn installed(&self, build: &BuildRef) -> Option<Build> {
        self.updater.installed(&build.sha256, Some(&build.version))
    }

    fn running_version(&self) -> String {
        self.generation
            .as_ref()
            .map_or_else(|| "nothing".to_owned(), |g| g.build().version.clone())
    }

    fn take_number(&mut self) -> u64 {
        let n = self.next_number;
        self.next_number += 1;
        n
    }

    /// Exponential backoff (1 s doubling to 60 s) with equal jitter, so a
    /// fleet that lost its server does not retry in step.
    fn retry_delay(&mut self) -> Duration {
        self.retries = self.retries.saturating_add(1);
        let ceiling = RETRY_MIN
            .saturating_mul(1 << self.retries.min(6))
            .min(RETRY_MAX);
        crate::config::jittered(ceiling, 0.5, 1.0)
    }
}

fn build_ref(build: &Build) -> BuildRef {
    BuildRef {
        sha256: build.sha256,
        version: build.version.clone(),
    }
}

/// Fault injection for the crash tests: aborts the whole process (like
/// `kill -9`, no cleanup) when `OUTRIDER_STUB_CRASH_AT` names this step,
/// as `step` (first time reached) or `step#N` (N-th time). Unset in
/// production; costs one environment lookup per step.
pub(crate) fn crash_point(step: &str) {
    static HITS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Ok(spec) = std::env::var("OUTRIDER_STUB_CRASH_AT") else {
        return;
    };
    let (name, nth) = match spec.split_once('#') {
        Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
        None => (spec, 1),
    };
    if name == step && HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == nth {
        error!(step, "OUTRIDER_STUB_CRASH_AT: aborting here");
        std::process::abort();
    }
}
