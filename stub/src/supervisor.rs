//! The stub's main loop: one running generation, update checks, hot swap,
//! probation and rollback (DESIGN.md §4).
//!
//! Every decision (pass or fail probation, roll back where, swap or not) is
//! made by the pure state machine in [`policy`]; this module is the shell
//! that feeds it events (what the generation reported, what an update check
//! offered, the time from a [`Clock`]; the update side behind
//! [`Updates`]; loading, starting, stopping and unloading the library
//! behind [`Loader`]) and executes its actions. The tests below run this
//! shell with a fake clock, updater and loader.
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

pub mod policy;

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::StubConfig;
use crate::generation::{DlopenLoader, Loader, RunningGeneration, StopFailure};
use crate::layout::Layout;
use crate::lock::InstanceLock;
use crate::reexec::{Handover, exec_self};
use crate::signals::{Signal, Signals};
use crate::state::{BuildRef, NewEvent, Pending, StubState};
use crate::update::{Build, Updates};
use crate::{StubError, error::chain, stub_update};
use policy::{Action, Event, Health, Limits, Now, Phase};

/// Main loop tick: how fast signals, health and exits are noticed.
const TICK: Duration = Duration::from_millis(50);
/// How long after a generation passed probation, or after an update
/// check, the pages only that work touched are given back
/// ([`crate::memory::release_idle_pages`]): long enough for the new
/// generation to connect and take its configuration.
const RELEASE_SETTLE: Duration = Duration::from_secs(30);
/// First and longest delay between attempts when nothing can run.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The time source of the shell; the decisions only see [`Now`] values.
pub trait Clock: std::fmt::Debug {
    fn now(&self) -> Now;
}

/// Monotonic time since the supervisor started, plus the wall clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now {
            mono_ms: self.origin.elapsed().as_millis() as u64,
            unix_ms,
        }
    }
}

/// Everything the main loop owns.
#[derive(Debug)]
pub struct Supervisor<'a> {
    layout: &'a Layout,
    signals: &'a Signals,
    lock: &'a InstanceLock,
    config: StubConfig,
    updater: Box<dyn Updates>,
    loader: Box<dyn Loader>,
    state: StubState,
    clock: Box<dyn Clock>,
    phase: Phase,
    generation: Option<Box<dyn RunningGeneration>>,
    next_number: u64,
    /// Threads of the process without any generation.
    baseline_threads: usize,
    /// The latest state blob handed over, for the next generation.
    last_state: Vec<u8>,
    /// Monotonic ms of the next update check.
    next_check_ms: u64,
    /// The latest refusal queued (digits removed), so a refusal that
    /// repeats at every check is reported once; cleared by a good check.
    last_refusal: Option<String>,
    /// The newest event id offered to the running generation.
    events_offered_through: u64,
    /// A stop signal arrived while waiting inside an action.
    stop_requested: bool,
    /// Consecutive failed attempts, for the retry backoff.
    retries: u32,
    /// The service's path of the stub binary (the canonical path, also
    /// while a trial binary runs from beside it); `None` if unreadable,
    /// which turns self-update off.
    exe_path: Option<std::path::PathBuf>,
    /// SHA-256 of the running binary (hashed once at start); `None` if
    /// unreadable, which turns self-update off.
    exe_sha256: Option<outrider_signing::Sha256>,
    /// Monotonic ms at which idle pages are next given back, if due.
    release_at_ms: Option<u64>,
}

impl<'a> Supervisor<'a> {
    pub fn new(
        layout: &'a Layout,
        signals: &'a Signals,
        lock: &'a InstanceLock,
        config: StubConfig,
        updater: Box<dyn Updates>,
        state: StubState,
        exe_sha256: Option<outrider_signing::Sha256>,
    ) -> Supervisor<'a> {
        let exe_path = state
            .stub_trial
            .as_ref()
            .map(|t| t.canonical.clone())
            .or_else(|| std::fs::read_link("/proc/self/exe").ok());
        Supervisor {
            layout,
            signals,
            lock,
            config,
            updater,
            loader: Box::new(DlopenLoader),
            state,
            clock: Box::new(SystemClock::new()),
            phase: Phase::Idle,
            generation: None,
            next_number: 1,
            baseline_threads: DlopenLoader.thread_count(),
            last_state: Vec::new(),
            next_check_ms: 0,
            events_offered_through: 0,
            last_refusal: None,
            stop_requested: false,
            retries: 0,
            exe_path,
            exe_sha256,
            release_at_ms: None,
        }
    }

    /// Replaces the loader ([`DlopenLoader`] by default); the thread count
    /// without a generation is taken from it.
    pub fn with_loader(mut self, loader: Box<dyn Loader>) -> Supervisor<'a> {
        self.baseline_threads = loader.thread_count();
        self.loader = loader;
        self
    }

    /// Replaces the clock ([`SystemClock`] by default).
    pub fn with_clock(mut self, clock: Box<dyn Clock>) -> Supervisor<'a> {
        self.clock = clock;
        self
    }

    /// Runs until a stop signal. Returns `Ok` after a clean stop.
    pub fn run(mut self, handover: Option<Handover>) -> Result<(), StubError> {
        let resume = handover.map(|h| {
            info!(reason = %h.reason, build = %h.start.version, "continuing after a re-exec");
            self.next_number = h.generation;
            self.last_state = h.state;
            (h.start, h.probation)
        });
        self.apply(Event::Boot { resume })?;
        loop {
            if self.stop_requested {
                return self.shutdown();
            }
            match self.signals.wait(TICK) {
                Some(Signal::Stop) => return self.shutdown(),
                Some(Signal::Reload) => self.reload(),
                None => {}
            }
            self.observe()?;
            self.maybe_promote_stub()?;
            self.hand_over_events()?;
            if !matches!(self.phase, Phase::Probation(_))
                && self.clock.now().mono_ms >= self.next_check_ms
            {
                self.update_check()?;
            }
            self.maybe_release_idle_pages();
        }
    }

    /// Asks for idle pages to be given back [`RELEASE_SETTLE`] after `now`,
    /// unless that is already due sooner.
    fn schedule_release(&mut self, now_ms: u64) {
        let settle = RELEASE_SETTLE.as_millis() as u64;
        self.release_at_ms
            .get_or_insert(now_ms.saturating_add(settle));
    }

    /// Gives back the pages start-up, a swap or an update check used and
    /// the idle agent does not, once they are due and a generation runs
    /// steadily (not on probation: that may still end in a swap back).
    fn maybe_release_idle_pages(&mut self) {
        let now = self.clock.now().mono_ms;
        let due = self.release_at_ms.is_some_and(|at| now >= at);
        if !due || !matches!(self.phase, Phase::Steady { .. }) || self.generation.is_none() {
            return;
        }
        self.release_at_ms = None;
        match crate::memory::release_idle_pages() {
            Ok(r) => tracing::debug!(
                file_kib = r.file_kib,
                mappings = r.mappings,
                heap_trimmed = r.heap_trimmed,
                "idle pages given back"
            ),
            Err(e) => tracing::debug!("cannot give back idle pages: {e}"),
        }
    }

    /// Feeds what the running generation reports (if any) to the policy.
    fn observe(&mut self) -> Result<(), StubError> {
        let Some(generation) = &self.generation else {
            return Ok(());
        };
        let event = Event::Observed {
            health: Health::from_abi(generation.health()),
            finished: generation.is_finished(),
        };
        if generation.take_update_request() {
            self.next_check_ms = 0;
        }
        self.apply(event)
    }

    /// Feeds `event` to the policy and executes the actions, feeding back
    /// the events they produce, until nothing is left to do.
    fn apply(&mut self, event: Event) -> Result<(), StubError> {
        let mut queue = std::collections::VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let limits = self.limits();
            let was_on_probation = matches!(self.phase, Phase::Probation(_));
            let first_new = self.state.next_event_id;
            let now = self.clock.now();
            let actions = policy::step(&mut self.phase, &mut self.state, &limits, now, event);
            self.log_events_from(first_new);
            let passed = was_on_probation && matches!(self.phase, Phase::Steady { .. });
            if passed {
                self.retries = 0;
                self.schedule_release(now.mono_ms);
            }
            for (i, action) in actions.iter().enumerate() {
                queue.extend(self.execute(action, &actions[i + 1..])?);
                if passed && *action == Action::Save {
                    crash_point("probation-passed");
                }
            }
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            probation_ms: self.config.probation.as_millis() as u64,
            degraded_limit_ms: policy::DEFAULT_DEGRADED_LIMIT_MS,
        }
    }

    /// Executes one action; `rest` are the actions after it in the batch.
    fn execute(&mut self, action: &Action, rest: &[Action]) -> Result<Vec<Event>, StubError> {
        match action {
            Action::Save => {
                self.state.save(&self.layout.state_json)?;
                Ok(Vec::new())
            }
            Action::Start {
                candidates,
                probation,
            } => Ok(vec![self.start_first(candidates, probation.as_ref())]),
            Action::Swap { to } => self.swap(to),
            Action::StopGeneration => {
                if self.stop_generation().is_err() {
                    // The bad build will not stop: re-exec past it into the
                    // rollback target.
                    let target = rest.iter().find_map(|a| match a {
                        Action::Start { candidates, .. } => candidates.first().cloned(),
                        _ => None,
                    });
                    let target = target.ok_or(StubError::NoBuild)?;
                    return Err(self.reexec(
                        &target,
                        false,
                        self.last_state.clone(),
                        "bad build would not stop".into(),
                    ));
                }
                Ok(Vec::new())
            }
            Action::Restart { build } => {
                let _ = self.stop_generation();
                let wait = self.retry_delay();
                error!(build = %build.version, "agent library stopped on its own; restarting it in {wait:?}");
                if self.signals.wait(wait) == Some(Signal::Stop) {
                    self.stop_requested = true;
                    return Ok(Vec::new());
                }
                Ok(vec![self.start_first(std::slice::from_ref(build), None)])
            }
            Action::Reexec { build, reason } => {
                let _ = self.stop_generation();
                Err(self.reexec(build, false, self.last_state.clone(), reason.clone()))
            }
            Action::CheckNow => {
                self.next_check_ms = 0;
                Ok(Vec::new())
            }
        }
    }

    /// Starts the first candidate that is installed intact and starts.
    fn start_first(&mut self, candidates: &[BuildRef], probation: Option<&Pending>) -> Event {
        let mut reason = "it is not installed (or was modified on disk)".to_owned();
        for candidate in candidates {
            let Some(build) = self.installed(candidate) else {
                warn!(build = %candidate.version, "cannot start: {reason}");
                continue;
            };
            let number = self.take_number();
            let loaded = self.loader.load(self.layout, &build, number);
            let started = loaded.and_then(|l| {
                l.start(
                    self.layout,
                    &self.config,
                    self.last_state.clone(),
                    &self.state.update_events,
                )
            });
            match started {
                Ok(generation) => {
                    info!(sha256 = %build.sha256, version = %build.version, "agent library loaded and running");
                    self.generation = Some(generation);
                    self.events_offered_through =
                        self.state.update_events.last().map_or(0, |e| e.id);
                    return Event::Started {
                        build: candidate.clone(),
                        probation: probation.cloned(),
                    };
                }
                Err(e) => {
                    reason = chain(&e);
                    warn!(build = %candidate.version, "cannot start: {reason}");
                }
            }
        }
        match probation {
            Some(pending) => Event::StartFailed {
                pending: pending.clone(),
                reason,
            },
            None => {
                error!("no build that ever passed probation can run; waiting for a new release");
                Event::NothingStarted
            }
        }
    }

    /// Stops and unloads the running generation, keeping its state blob.
    fn stop_generation(&mut self) -> Result<(), StopFailure> {
        let Some(generation) = self.generation.take() else {
            return Ok(());
        };
        let stopped = generation.stop(self.config.stop_timeout)?;
        if !stopped.state.is_empty() {
            self.last_state = stopped.state.clone();
        }
        stopped.unload();
        Ok(())
    }

    /// One update check; the policy decides what to do with its build.
    fn update_check(&mut self) -> Result<(), StubError> {
        let now = self.clock.now().mono_ms;
        self.next_check_ms = now + self.config.jittered_update_interval().as_millis() as u64;
        self.schedule_release(now);
        let build = match self.updater.fetch_latest(&mut self.state) {
            Ok(build) => build,
            Err(e) => {
                if let StubError::Update(outrider_update_client::UpdateError::Backoff {
                    retry_after_secs,
                    ..
                }) = &e
                {
                    let wait = retry_after_secs.unwrap_or(60).clamp(1, 3600);
                    self.next_check_ms = now + wait * 1000;
                }
                self.record_refusal(&e);
                if self.generation.is_none() {
                    // Nothing runs yet: retry sooner, with backoff.
                    let wait = self.retry_delay();
                    self.next_check_ms = now + wait.as_millis() as u64;
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
        self.last_refusal = None;
        if build.fresh {
            let first = self.state.next_event_id;
            self.state.push_event(
                self.clock.now().unix_ms,
                NewEvent {
                    kind: outrider_abi::update_events::KIND_INSTALLED,
                    build: Some(build_ref(&build)),
                    ..NewEvent::default()
                },
            );
            self.log_events_from(first);
        }
        self.state.save(&self.layout.state_json)?;
        if matches!(self.phase, Phase::Steady { .. }) && self.generation.is_some() {
            self.maybe_update_stub(build.manifest_sha256)?;
        }
        self.apply(Event::Offered {
            build: build_ref(&build),
            manifest_sha256: build.manifest_sha256,
        })
    }

    /// Queues a `refused` event for an update check that failed for a
    /// reason other than the network (a hash mismatch, a bad signature, an
    /// expired manifest …), with the exact error. The same refusal still
    /// queued is not queued twice.
    fn record_refusal(&mut self, e: &StubError) {
        use outrider_update_client::UpdateError;
        let build = match e {
            StubError::RootRollback { .. } => None,
            StubError::Update(update)
                if !update.is_transient() && !matches!(update, UpdateError::NoManifest { .. }) =>
            {
                match update {
                    UpdateError::HashMismatch { expected, .. } => Some(BuildRef {
                        sha256: *expected,
                        version: format!("sha256:{}", &expected.to_string()[..12]),
                    }),
                    _ => None,
                }
            }
            _ => return,
        };
        let reason = chain(e);
        let kind = outrider_abi::update_events::KIND_REFUSED;
        // The same refusal again (times and sizes aside) is not news.
        let key: String = reason.chars().filter(|c| !c.is_ascii_digit()).collect();
        if self.last_refusal.as_ref() == Some(&key) {
            return;
        }
        self.last_refusal = Some(key);
        let first = self.state.next_event_id;
        self.state.push_event(
            self.clock.now().unix_ms,
            NewEvent {
                kind,
                build,
                reason,
                ..NewEvent::default()
            },
        );
        self.log_events_from(first);
    }

    /// Steps 3–7 of the swap (see the module docs); step 2 was the policy's.
    fn swap(&mut self, to: &Pending) -> Result<Vec<Event>, StubError> {
        info!(from = %self.running_version(), to = %to.build.version, "hot swap starting");
        crash_point("swap-pending-written");
        let failed = |reason: String| {
            vec![Event::StartFailed {
                pending: to.clone(),
                reason,
            }]
        };
        let Some(new) = self.installed(&to.build) else {
            return Ok(failed("it is not installed".into()));
        };
        // Step 3.
        let number = self.take_number();
        let loaded = match self.loader.load(self.layout, &new, number) {
            Ok(l) => l,
            Err(e) => return Ok(failed(format!("could not be loaded: {}", chain(&e)))),
        };
        crash_point("swap-new-loaded");
        // Step 4.
        let old = self
            .generation
            .take()
            .expect("the policy swaps only with a generation running");
        if loaded.abi_minor() >= 2 {
            // The new library adopts collector processes (ABI 1.2): the old
            // one may leave them running instead of stopping them.
            old.allow_hand_over();
        }
        let stopped = match old.stop(self.config.stop_timeout) {
            Ok(s) => s,
            Err(failure) => {
                return Err(self.reexec(
                    &to.build,
                    true,
                    Vec::new(),
                    format!("old generation {failure:?}"),
                ));
            }
        };
        if !stopped.state.is_empty() {
            self.last_state = stopped.state.clone();
        }
        crash_point("swap-old-stopped");
        // Step 5.
        let threads = self.loader.thread_count();
        if threads > self.baseline_threads {
            let reason = format!(
                "old generation left {} thread(s)",
                threads - self.baseline_threads
            );
            return Err(self.reexec(&to.build, true, stopped.state, reason));
        }
        // Step 6.
        let old_build = build_ref(stopped.build());
        match loaded.start(
            self.layout,
            &self.config,
            self.last_state.clone(),
            &self.state.update_events,
        ) {
            Ok(generation) => {
                self.generation = Some(generation);
                self.events_offered_through = self.state.update_events.last().map_or(0, |e| e.id);
            }
            Err(e) => {
                // The old build goes on; the new one is refused.
                stopped.unload();
                let restarted = self.start_first(std::slice::from_ref(&old_build), None);
                let mut events = vec![restarted];
                events.extend(failed(format!("could not start: {}", chain(&e))));
                return Ok(events);
            }
        }
        crash_point("swap-new-started");
        let mut events = vec![Event::Started {
            build: to.build.clone(),
            probation: Some(to.clone()),
        }];
        // Step 7.
        if stopped.unload().still_mapped {
            warn!(build = %old_build.version, "old library is still mapped after unloading; re-exec after probation");
            events.push(Event::OldStayedMapped);
        }
        crash_point("swap-old-unloaded");
        Ok(events)
    }

    /// Forgets the events the running library has received and offers it
    /// the ones queued since.
    fn hand_over_events(&mut self) -> Result<(), StubError> {
        let Some(generation) = &self.generation else {
            return Ok(());
        };
        if let Some(id) = generation.events_handed_through()
            && self.state.drop_events_through(id)
        {
            self.state.save(&self.layout.state_json)?;
        }
        let newest = self.state.update_events.last().map_or(0, |e| e.id);
        if newest > self.events_offered_through {
            generation.offer_events(&self.state.update_events);
            self.events_offered_through = newest;
        }
        Ok(())
    }

    /// Logs the events queued from id `first` on (every outcome is in the
    /// stub's own log too, with its exact reason).
    fn log_events_from(&self, first: u64) {
        use outrider_abi::update_events as k;
        for e in self.state.update_events.iter().filter(|e| e.id >= first) {
            let version = e.version.as_deref().unwrap_or("-");
            match e.kind.as_str() {
                k::KIND_INSTALLED | k::KIND_PROBATION_PASSED | k::KIND_STUB_UPDATED => {
                    info!(kind = %e.kind, id = e.id, build = %version, reason = %e.reason, "update event")
                }
                _ => {
                    error!(kind = %e.kind, id = e.id, build = %version, to = e.to_version.as_deref().unwrap_or("-"), "update event: {}", e.legacy_text())
                }
            }
        }
    }

    fn shutdown(mut self) -> Result<(), StubError> {
        info!("stop requested, stopping the agent library");
        let health = Health::from_abi(self.generation.as_ref().and_then(|g| g.health()));
        if matches!(self.phase, Phase::Probation(_)) && health != Health::Ok {
            info!("stopped during probation; the build will be tried again");
        }
        let limits = self.limits();
        let now = self.clock.now();
        let actions = policy::step(
            &mut self.phase,
            &mut self.state,
            &limits,
            now,
            Event::Stopping { health },
        );
        if actions.contains(&Action::Save) {
            self.state.save(&self.layout.state_json)?;
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

    /// Steps 1–3 of a stub self-update (`stub_update.rs`): when the
    /// manifest offers a stub other than the one running and not refused
    /// under this manifest, download and verify it beside the canonical
    /// binary, self-test it, record the trial and exec into it with the
    /// running generation's state. Any refusal keeps this stub and queues
    /// `stub_refused` with the exact reason.
    fn maybe_update_stub(
        &mut self,
        manifest_sha256: Option<outrider_signing::Sha256>,
    ) -> Result<(), StubError> {
        let Some(offer) = self.updater.stub_offer() else {
            return Ok(());
        };
        let (Some(exe), Some(running)) = (self.exe_path.clone(), self.exe_sha256) else {
            return Ok(());
        };
        if offer.sha256 == running
            || self.state.stub_trial.is_some()
            || self
                .state
                .is_stub_bad(&offer.sha256, manifest_sha256.as_ref())
        {
            return Ok(());
        }
        let staged = exe.with_file_name(stub_update::NEW_FILE);
        let fetched = self.updater.fetch_stub(&offer, &staged).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
                .and_then(|()| std::fs::File::open(&staged)?.sync_all())
                .map_err(StubError::io("making executable", &staged))
        });
        let refused = |this: &mut Self, reason: String, bad: bool| {
            let _ = std::fs::remove_file(&staged);
            error!(
                "stub self-update to {} failed; keeping this stub: {reason}",
                offer.sha256
            );
            let build = BuildRef {
                sha256: offer.sha256,
                version: format!("sha256:{}", &offer.sha256.to_string()[..12]),
            };
            let kind = outrider_abi::update_events::KIND_STUB_REFUSED;
            if bad {
                this.state
                    .mark_stub_bad(offer.sha256, manifest_sha256, reason.clone());
            } else if this
                .state
                .update_events
                .iter()
                .any(|e| e.kind == kind && e.reason == reason)
            {
                return this.state.save(&this.layout.state_json);
            }
            let first = this.state.next_event_id;
            this.state.push_event(
                this.clock.now().unix_ms,
                NewEvent {
                    kind,
                    build: Some(build),
                    reason,
                    ..NewEvent::default()
                },
            );
            this.log_events_from(first);
            this.state.save(&this.layout.state_json)
        };
        if let Err(e) = fetched {
            // A download problem may be fixed on the server: not marked bad.
            return refused(self, chain(&e), false);
        }
        let version = match stub_update::self_test(&staged, stub_update::SELF_TEST_TIMEOUT) {
            Ok(version) => version,
            Err(reason) => return refused(self, reason, true),
        };
        self.state.stub_trial = Some(stub_update::StubTrial {
            sha256: offer.sha256,
            manifest_sha256,
            version: version.clone(),
            starts: 1,
            canonical: exe.clone(),
        });
        self.state.save(&self.layout.state_json)?;
        info!(sha256 = %offer.sha256, %version, "new stub passed its self-test; re-executing into it on trial");
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
            reason: "stub self-update (trial)".into(),
            state,
        };
        let err = exec_self(&staged, &handover, self.lock);
        // Could not exec: the trial is over before it began.
        let trial = self.state.stub_trial.clone().expect("set above");
        stub_update::refuse(
            &mut self.state,
            &trial,
            format!("exec failed: {}", chain(&err)),
            self.clock.now().unix_ms,
        );
        let _ = std::fs::remove_file(&staged);
        self.state.save(&self.layout.state_json)?;
        Err(err)
    }

    /// Step 5 of a stub self-update: this process is the trial binary and
    /// its generation is healthy, so it takes the canonical path.
    fn maybe_promote_stub(&mut self) -> Result<(), StubError> {
        let Some(trial) = self.state.stub_trial.clone() else {
            return Ok(());
        };
        let healthy = self
            .generation
            .as_ref()
            .is_some_and(|g| Health::from_abi(g.health()) == Health::Ok);
        if self.exe_sha256 != Some(trial.sha256)
            || !healthy
            || !matches!(self.phase, Phase::Steady { .. })
        {
            return Ok(());
        }
        let first = self.state.next_event_id;
        let now = self.clock.now().unix_ms;
        match stub_update::promote(&mut self.state, now) {
            Ok(canonical) => self.exe_path = Some(canonical),
            Err(e) => {
                stub_update::refuse(
                    &mut self.state,
                    &trial,
                    format!("cannot take the canonical path: {}", chain(&e)),
                    now,
                );
            }
        }
        self.log_events_from(first);
        self.state.save(&self.layout.state_json)
    }

    fn reload(&mut self) {
        match StubConfig::load(&self.layout.agent_toml) {
            Ok(config) => {
                info!(
                    "SIGHUP: configuration reloaded; the next generation gets it, updates use it now"
                );
                self.updater.reconfigure(&config);
                self.config = config;
                self.next_check_ms = 0;
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

#[cfg(test)]
mod tests {
    //! The shell, run with a fake loader, updater and clock: the real
    //! actions (state.json written, generations loaded, stopped, unloaded
    //! in the swap's order, state handed over), without real binaries.

    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::path::Path;
    use std::rc::Rc;

    use outrider_abi::update_events as kinds;
    use outrider_signing::Sha256;

    use super::*;
    use crate::generation::{LoadedCopy, Stopped, Unloaded};
    use crate::state::UpdateEvent;

    /// What the fake libraries do and did, shared with the test.
    #[derive(Debug, Default)]
    struct World {
        /// Versions whose start fails.
        start_fails: Vec<String>,
        /// The health each version reports while running.
        health: HashMap<String, u32>,
        /// What happened, in order.
        log: Vec<String>,
    }

    type Shared = Rc<RefCell<World>>;

    #[derive(Debug)]
    struct FakeLoader(Shared);

    impl Loader for FakeLoader {
        fn load(
            &self,
            _layout: &Layout,
            build: &Build,
            _number: u64,
        ) -> Result<Box<dyn LoadedCopy>, StubError> {
            self.0
                .borrow_mut()
                .log
                .push(format!("load {}", build.version));
            Ok(Box::new(FakeCopy {
                build: build.clone(),
                world: self.0.clone(),
            }))
        }

        fn thread_count(&self) -> usize {
            1
        }
    }

    #[derive(Debug)]
    struct FakeCopy {
        build: Build,
        world: Shared,
    }

    impl LoadedCopy for FakeCopy {
        fn build(&self) -> &Build {
            &self.build
        }

        fn start(
            self: Box<Self>,
            _layout: &Layout,
            _config: &StubConfig,
            state_in: Vec<u8>,
            _events: &[UpdateEvent],
        ) -> Result<Box<dyn RunningGeneration>, StubError> {
            let version = &self.build.version;
            let mut world = self.world.borrow_mut();
            if world.start_fails.contains(version) {
                world.log.push(format!("start-fails {version}"));
                return Err(StubError::BadLibrary {
                    path: self.build.path.clone(),
                    reason: "refused to start (fake)".into(),
                });
            }
            let state_in = String::from_utf8(state_in).expect("the fakes hand over text");
            world.log.push(format!("start {version} with [{state_in}]"));
            drop(world);
            Ok(Box::new(FakeGeneration(*self)))
        }

        fn unload(self: Box<Self>) -> Unloaded {
            let line = format!("unload {}", self.build.version);
            self.world.borrow_mut().log.push(line);
            Unloaded {
                still_mapped: false,
            }
        }
    }

    #[derive(Debug)]
    struct FakeGeneration(FakeCopy);

    impl RunningGeneration for FakeGeneration {
        fn build(&self) -> &Build {
            &self.0.build
        }

        fn is_finished(&self) -> bool {
            false
        }

        fn health(&self) -> Option<u32> {
            self.0
                .world
                .borrow()
                .health
                .get(&self.0.build.version)
                .copied()
        }

        fn offer_events(&self, _events: &[UpdateEvent]) {}

        fn events_handed_through(&self) -> Option<u64> {
            None
        }

        fn take_update_request(&self) -> bool {
            false
        }

        fn stop(self: Box<Self>, _deadline: Duration) -> Result<Stopped, StopFailure> {
            let version = self.0.build.version.clone();
            self.0
                .world
                .borrow_mut()
                .log
                .push(format!("stop {version}"));
            let state = format!("state of {version}").into_bytes();
            Ok(Stopped::new(0, state, None, Box::new(self.0)))
        }
    }

    /// Builds installed on disk, and what an update check offers.
    #[derive(Debug)]
    struct FakeUpdates {
        installed: Vec<Build>,
        offer: Option<Build>,
    }

    impl Updates for FakeUpdates {
        fn fetch_latest(&mut self, _state: &mut StubState) -> Result<Build, StubError> {
            self.offer.clone().ok_or(StubError::NoBuild)
        }

        fn installed(&self, sha256: &Sha256, _version: Option<&str>) -> Option<Build> {
            self.installed.iter().find(|b| b.sha256 == *sha256).cloned()
        }

        fn stub_offer(&self) -> Option<outrider_signing::Artifact> {
            None
        }

        fn fetch_stub(
            &self,
            _artifact: &outrider_signing::Artifact,
            _dest: &Path,
        ) -> Result<(), StubError> {
            Err(StubError::NoBuild)
        }

        fn reconfigure(&mut self, _config: &StubConfig) {}
    }

    #[derive(Debug)]
    struct FakeClock(Rc<Cell<u64>>);

    impl Clock for FakeClock {
        fn now(&self) -> Now {
            let mono_ms = self.0.get();
            Now {
                mono_ms,
                unix_ms: 1_700_000_000_000 + mono_ms,
            }
        }
    }

    /// Everything a supervisor borrows, in a temporary directory.
    struct Harness {
        _dir: tempfile::TempDir,
        layout: Layout,
        signals: Signals,
        lock: InstanceLock,
        config: StubConfig,
        world: Shared,
        clock: Rc<Cell<u64>>,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under_prefix(dir.path());
        layout.prepare().unwrap();
        let toml = dir.path().join("test-agent.toml");
        std::fs::write(&toml, "server_url = \"http://127.0.0.1:1/\"\n").unwrap();
        Harness {
            config: StubConfig::load(&toml).unwrap(),
            lock: InstanceLock::acquire(&layout.data_dir).unwrap(),
            signals: Signals::unregistered(),
            layout,
            _dir: dir,
            world: Shared::default(),
            clock: Rc::new(Cell::new(0)),
        }
    }

    fn supervisor(h: &Harness, state: StubState, offer: Option<u8>) -> Supervisor<'_> {
        let updates = FakeUpdates {
            installed: vec![build(1), build(2)],
            offer: offer.map(build),
        };
        Supervisor::new(
            &h.layout,
            &h.signals,
            &h.lock,
            h.config.clone(),
            Box::new(updates),
            state,
            None,
        )
        .with_loader(Box::new(FakeLoader(h.world.clone())))
        .with_clock(Box::new(FakeClock(h.clock.clone())))
    }

    fn build(n: u8) -> Build {
        Build {
            sha256: outrider_signing::sha256(&[n]),
            version: format!("v{n}"),
            path: format!("/nonexistent/v{n}.so").into(),
            manifest_sha256: Some(manifest()),
            fresh: false,
        }
    }

    fn manifest() -> Sha256 {
        outrider_signing::sha256(b"manifest")
    }

    /// `v1` passed probation earlier and is the one to run.
    fn running_v1() -> StubState {
        StubState {
            current: Some(build_ref(&build(1))),
            last_good: Some(build_ref(&build(1))),
            ..StubState::default()
        }
    }

    fn on_disk(h: &Harness) -> StubState {
        StubState::load(&h.layout.state_json).unwrap()
    }

    fn event_kinds(state: &StubState) -> Vec<&str> {
        state
            .update_events
            .iter()
            .map(|e| e.kind.as_str())
            .collect()
    }

    fn log(h: &Harness) -> Vec<String> {
        h.world.borrow().log.clone()
    }

    #[test]
    fn swap_that_passes_probation_makes_the_new_build_current() {
        let h = harness();
        let mut sup = supervisor(&h, running_v1(), Some(2));
        sup.apply(Event::Boot { resume: None }).unwrap();
        assert_eq!(sup.running_version(), "v1");

        sup.update_check().unwrap();
        assert_eq!(sup.running_version(), "v2");
        assert!(matches!(sup.phase, Phase::Probation(_)));
        // Step 2: a crash from here on is blamed on v2.
        let pending = on_disk(&h)
            .pending
            .expect("pending written before the swap");
        assert_eq!(pending.build, build_ref(&build(2)));
        assert_eq!(pending.manifest_sha256, Some(manifest()));

        h.clock.set(1_000);
        sup.observe().unwrap();
        assert!(matches!(sup.phase, Phase::Probation(_)), "no health yet");
        h.world
            .borrow_mut()
            .health
            .insert("v2".into(), outrider_abi::health::OK);
        sup.observe().unwrap();
        assert!(matches!(sup.phase, Phase::Steady { .. }));

        let state = on_disk(&h);
        assert_eq!(state.current, Some(build_ref(&build(2))));
        assert_eq!(state.previous, Some(build_ref(&build(1))));
        assert_eq!(state.pending, None);
        assert!(state.bad.is_empty());
        assert_eq!(event_kinds(&state), [kinds::KIND_PROBATION_PASSED]);
        // Steps 3–7 in order, the old generation's state handed over.
        assert_eq!(
            log(&h),
            [
                "load v1",
                "start v1 with []",
                "load v2",
                "stop v1",
                "start v2 with [state of v1]",
                "unload v1",
            ]
        );

        sup.shutdown().unwrap();
        assert_eq!(log(&h)[6..], ["stop v2", "unload v2"]);
    }

    #[test]
    fn build_that_cannot_start_is_refused_and_the_previous_one_restarted() {
        let h = harness();
        h.world.borrow_mut().start_fails.push("v2".into());
        let mut sup = supervisor(&h, running_v1(), Some(2));
        sup.apply(Event::Boot { resume: None }).unwrap();

        sup.update_check().unwrap();
        assert_eq!(sup.running_version(), "v1");
        assert!(matches!(sup.phase, Phase::Steady { .. }));
        assert_eq!(
            log(&h),
            [
                "load v1",
                "start v1 with []",
                "load v2",
                "stop v1",
                "start-fails v2",
                "unload v1",
                "load v1",
                "start v1 with [state of v1]",
            ]
        );
        let state = on_disk(&h);
        assert_eq!(state.current, Some(build_ref(&build(1))));
        assert_eq!(state.pending, None);
        assert!(state.is_bad(&build(2).sha256, Some(&manifest())));
        assert_eq!(
            event_kinds(&state),
            [kinds::KIND_PROBATION_FAILED, kinds::KIND_ROLLED_BACK]
        );
        assert!(
            state.update_events[0]
                .reason
                .contains("refused to start (fake)"),
            "{:?}",
            state.update_events[0]
        );

        // The same manifest offering it again changes nothing.
        sup.update_check().unwrap();
        assert_eq!(log(&h).len(), 8);
    }

    #[test]
    fn pending_found_at_start_is_a_crash_of_that_build() {
        let h = harness();
        let state = StubState {
            pending: Some(Pending {
                build: build_ref(&build(2)),
                manifest_sha256: Some(manifest()),
            }),
            ..running_v1()
        };
        let mut sup = supervisor(&h, state, None);
        sup.apply(Event::Boot { resume: None }).unwrap();

        assert_eq!(sup.running_version(), "v1");
        assert!(matches!(sup.phase, Phase::Steady { .. }));
        assert_eq!(log(&h), ["load v1", "start v1 with []"]);
        let state = on_disk(&h);
        assert_eq!(state.pending, None);
        assert_eq!(state.current, Some(build_ref(&build(1))));
        assert!(state.is_bad(&build(2).sha256, Some(&manifest())));
        assert_eq!(
            event_kinds(&state),
            [kinds::KIND_PROBATION_FAILED, kinds::KIND_ROLLED_BACK]
        );
        assert_eq!(
            state.update_events[0].reason,
            "the process crashed during probation"
        );
        assert_eq!(
            state.update_events[1].to_version.as_deref(),
            Some("v1"),
            "rolled back to the build that ran before"
        );
    }
}
