//! The process side: one task per collector, executing the policy's actions.
//!
//! Invariants:
//! - [`Supervisor::reconcile`] makes the running set match a list of
//!   definitions: new ones start, changed ones get their new definition
//!   (a collectd config is rendered and validated first), removed ones are
//!   stopped with their whole process group before `reconcile` returns.
//! - A `command` collector runs only if its program passes the host's
//!   [`LocalPolicy`] (`agent.toml` `[policy] allowed_commands`), as a
//!   check's must; a refused one is a rejected config.
//! - A new config is rendered to `collectd.conf.new` in the collector's
//!   directory (`<data_dir>/collectors/<name>/`), fsynced, validated there
//!   (`validate.rs`), and only then renamed over `collectd.conf` (and the
//!   directory fsynced); the running collectd is then restarted on it
//!   (collectd has no reload). A config that fails validation is deleted,
//!   never replaces the one in use, and makes the collector CRITICAL with the
//!   validator's output; the process on the previous config keeps running.
//! - Each task owns its process; the decisions (restart delay, verdict)
//!   are the pure [`CollectorHealth`]'s. Whenever the verdict changes it is
//!   reported as a result of `outrider.collector.<name>`.
//! - Every task is a child of the supervisor's cancellation token and is
//!   awaited, on removal or in [`Supervisor::shutdown`] /
//!   [`Supervisor::hand_over`]; nothing is detached. Stopping kills each
//!   group (SIGTERM, grace, SIGKILL). The agent gives the supervisor a
//!   token of its own, not a child of its stop token (`agent.rs`): a task
//!   must learn of a stop only once the agent has decided whether its
//!   process is handed over (a task that saw the stop first stopped its
//!   collector: found by `bench/listeners_swap.sh`, once in about 1,000
//!   swaps).
//! - The [`CollectorHealth`] of each collector sits behind a std mutex held
//!   only for one step, never across an await, so the listener can feed
//!   "data seen" from any task through a [`DataSignal`].
//! - Config files are written, fsynced and renamed on the blocking pool:
//!   the agent's runtime has one thread and an fsync may take a while.
//!   Trimming the logs (a copy of at most a cap) stays inline.
//! - A removed collector's directory (its logs, at most four capped files)
//!   is left in place for diagnosis.
//! - Hot swaps: [`Supervisor::hand_over`] (instead of `shutdown`, when the
//!   stub says a library that adopts runs next) stops the tasks but leaves
//!   each process running, and returns a [`HandedCollector`] per collector
//!   for the state blob: its definition, pid, start time and fingerprint
//!   (SHA-256 of its command line and its config file). The next
//!   generation's [`Supervisor::adopt`] starts a task per record; the task
//!   renders the definition with this build's code and adopts the process
//!   (`process.rs` proves it is the same one) only if the fingerprint is
//!   unchanged and, for collectd, the rendered config equals the file in
//!   use, without validating again. Otherwise the handed process is
//!   stopped (if it is provably the same one) and the definition applied
//!   as usual. No record is left behind: a definition this build cannot
//!   read is stopped too.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::policy::{Action, CollectorHealth, Event, RestartPolicy, Verdict};
use super::process::{CollectorProcess, Handed, LOG_CAP_BYTES, LogFiles};
use super::render::{CONFIG_FILE, collectd_config};
use super::spec::{CollectorKind, CollectorName, CollectorSpec};
use super::validate::{Collectd, DEFAULT_COLLECTD, Validation};
use super::{COLLECTORS_DIR, Report};
use crate::backoff::random_below;
use crate::config::policy::LocalPolicy;
use crate::host::HostHooks;

/// Time between SIGTERM and SIGKILL when a collector is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often each collector's verdict is re-evaluated and its logs trimmed.
pub const TICK: Duration = Duration::from_secs(1);

/// Where and how collectors run.
#[derive(Clone, Debug)]
pub struct SupervisorSettings {
    /// Parent of the collectors' own directories.
    pub dir: PathBuf,
    /// The collectd program ([`DEFAULT_COLLECTD`], found on `PATH`).
    pub collectd: PathBuf,
    /// The host name collectd reports under.
    pub hostname: String,
    /// What the host allows to run: a `command` collector's program must
    /// pass it, as a check's must (`config/policy.rs`).
    pub local_policy: LocalPolicy,
    /// The restart rules.
    pub restart: RestartPolicy,
    pub kill_grace: Duration,
    pub tick: Duration,
    /// Cap of each log file, bytes.
    pub log_cap_bytes: u64,
}

impl SupervisorSettings {
    /// The defaults, with collectors under `<data_dir>/collectors/`,
    /// running only commands `local_policy` allows.
    pub fn new(data_dir: &Path, local_policy: LocalPolicy) -> SupervisorSettings {
        SupervisorSettings {
            dir: data_dir.join(COLLECTORS_DIR),
            collectd: PathBuf::from(DEFAULT_COLLECTD),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            local_policy,
            restart: RestartPolicy::default(),
            kill_grace: KILL_GRACE,
            tick: TICK,
            log_cap_bytes: LOG_CAP_BYTES,
        }
    }
}

/// What [`Supervisor::reconcile`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub started: Vec<String>,
    pub updated: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    /// Names defined more than once (the first definition wins).
    pub duplicates: Vec<String>,
}

/// What a generation hands the next about one collector (state blob).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HandedCollector {
    /// The definition in use, in its wire form (`spec.rs`). Kept as JSON so
    /// that a build that cannot read it refuses this collector, not the
    /// whole state blob.
    pub spec: serde_json::Value,
    /// The process left running, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<HandedProcess>,
}

/// A collector process left running across a hot swap.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedProcess {
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22, to tell it from a reused pid.
    pub start_time: u64,
    /// [`fingerprint`] of what it runs.
    pub fingerprint: String,
    /// The last result reported for it said "running", so the adopter
    /// need not report that again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reported_running: bool,
}

/// SHA-256 (hex) of a command line and the bytes of its config file (empty
/// when it has none): what a process runs, so a new generation can tell
/// whether its own rendering of the same definition would run the same.
pub fn fingerprint(command: &[String], config: &[u8]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for arg in command {
        hash.update((arg.len() as u64).to_le_bytes());
        hash.update(arg.as_bytes());
    }
    hash.update([0xff]);
    hash.update(config);
    hex::encode(hash.finalize())
}

/// What the tasks share.
struct Shared {
    settings: SupervisorSettings,
    collectd: Collectd,
    report: Arc<dyn Report>,
    hooks: Arc<dyn HostHooks>,
    /// Set before cancelling for a hot swap: tasks leave processes running.
    handing_over: std::sync::atomic::AtomicBool,
}

struct Handle {
    spec: watch::Sender<CollectorSpec>,
    health: Arc<Mutex<CollectorHealth>>,
    /// The running process's pid, 0 when none.
    pid: Arc<AtomicU32>,
    cancel: CancellationToken,
    task: JoinHandle<Option<HandedCollector>>,
}

/// Owns the collector tasks; see the module docs.
pub struct Supervisor {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    collectors: BTreeMap<CollectorName, Handle>,
    signal: DataSignal,
    /// Processes handed over and not yet claimed by a task.
    adoptable: BTreeMap<CollectorName, HandedProcess>,
}

/// The "data seen" input of the collectors' health, for whoever receives
/// their data (the Graphite listener): cheap to clone, usable from any task.
#[derive(Clone, Debug, Default)]
pub struct DataSignal {
    healths: Arc<Mutex<BTreeMap<String, Arc<Mutex<CollectorHealth>>>>>,
}

impl DataSignal {
    /// Records that data from collector `name` arrived at `now`; false when
    /// no such collector is supervised (the data is someone else's).
    pub fn seen(&self, name: &str, now: Instant) -> bool {
        let health = lock(&self.healths).get(name).cloned();
        match health {
            Some(health) => {
                lock(&health).step(now, Event::DataSeen);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("collectors", &self.collectors.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    /// A supervisor with no collectors; its tasks stop when `cancel` fires.
    pub fn new(
        settings: SupervisorSettings,
        report: Arc<dyn Report>,
        hooks: Arc<dyn HostHooks>,
        cancel: CancellationToken,
    ) -> Supervisor {
        let collectd = Collectd::new(settings.collectd.clone());
        Supervisor {
            shared: Arc::new(Shared {
                settings,
                collectd,
                report,
                hooks,
                handing_over: std::sync::atomic::AtomicBool::new(false),
            }),
            cancel,
            collectors: BTreeMap::new(),
            signal: DataSignal::default(),
            adoptable: BTreeMap::new(),
        }
    }

    /// Takes up what the previous generation handed over (module docs):
    /// starts each collector whose definition this build reads, adopting
    /// its process when nothing it runs changed; stops every other handed
    /// process. Must be called inside the agent's runtime, before the first
    /// [`Supervisor::reconcile`].
    pub async fn adopt(&mut self, handed: Vec<HandedCollector>) -> ReconcileSummary {
        let mut specs = Vec::new();
        for record in handed {
            match serde_json::from_value::<CollectorSpec>(record.spec) {
                Ok(spec) => {
                    if let Some(process) = record.process {
                        self.adoptable.insert(spec.name().clone(), process);
                    }
                    specs.push(spec);
                }
                Err(e) => {
                    self.shared.hooks.warn(&format!(
                        "a collector handed over has a definition this build cannot read ({e}); \
                         stopping its process"
                    ));
                    if let Some(process) = record.process {
                        stop_handed(&self.shared, &process).await;
                    }
                }
            }
        }
        let summary = self.reconcile(specs).await;
        // Duplicates the reconcile did not start: nobody claims them.
        for (_, process) in std::mem::take(&mut self.adoptable) {
            stop_handed(&self.shared, &process).await;
        }
        summary
    }

    /// Stops the tasks but leaves every collector process running, for the
    /// next generation's [`Supervisor::adopt`] (module docs).
    pub async fn hand_over(mut self) -> Vec<HandedCollector> {
        self.shared
            .handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cancel.cancel();
        let mut handed = Vec::new();
        for (name, handle) in std::mem::take(&mut self.collectors) {
            match handle.task.await {
                Ok(Some(record)) => handed.push(record),
                Ok(None) => {}
                Err(e) => self.shared.hooks.error(&format!(
                    "collector {name}: its supervising task failed: {e}"
                )),
            }
        }
        handed
    }

    /// Makes the running collectors match `specs` (see the module docs);
    /// must be called inside the agent's runtime.
    pub async fn reconcile(&mut self, specs: Vec<CollectorSpec>) -> ReconcileSummary {
        let mut summary = ReconcileSummary::default();
        let mut wanted: BTreeMap<CollectorName, CollectorSpec> = BTreeMap::new();
        for spec in specs {
            if wanted.contains_key(spec.name()) {
                summary.duplicates.push(spec.name().to_string());
            } else {
                wanted.insert(spec.name().clone(), spec);
            }
        }
        let removed: Vec<CollectorName> = self
            .collectors
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        // Signal every removed collector first, so their kill graces overlap.
        let mut stopping = Vec::new();
        for name in removed {
            if let Some(handle) = self.collectors.remove(&name) {
                lock(&self.signal.healths).remove(name.as_str());
                handle.cancel.cancel();
                stopping.push((name, handle.task));
            }
        }
        for (name, task) in stopping {
            self.join(&name, task).await;
            summary.stopped.push(name.to_string());
        }
        for (name, spec) in wanted {
            match self.collectors.get(&name) {
                Some(handle) if *handle.spec.borrow() == spec => {
                    summary.unchanged.push(name.to_string());
                }
                Some(handle) => {
                    handle.spec.send_replace(spec);
                    summary.updated.push(name.to_string());
                }
                None => {
                    summary.started.push(name.to_string());
                    self.start(spec);
                }
            }
        }
        summary
    }

    fn start(&mut self, spec: CollectorSpec) {
        let name = spec.name().clone();
        let health = Arc::new(Mutex::new(CollectorHealth::new(
            self.shared.settings.restart,
            spec.interval(),
        )));
        lock(&self.signal.healths).insert(name.to_string(), health.clone());
        let pid = Arc::new(AtomicU32::new(0));
        let cancel = self.cancel.child_token();
        let (tx, rx) = watch::channel(spec);
        let mut task = Task::new(
            self.shared.clone(),
            name.clone(),
            health.clone(),
            pid.clone(),
            cancel.clone(),
        );
        task.adoptable = self.adoptable.remove(&name);
        let task = tokio::spawn(task.run(rx));
        self.collectors.insert(
            name,
            Handle {
                spec: tx,
                health,
                pid,
                cancel,
                task,
            },
        );
    }

    async fn join(&self, name: &CollectorName, task: JoinHandle<Option<HandedCollector>>) {
        if let Err(e) = task.await {
            self.shared.hooks.error(&format!(
                "collector {name}: its supervising task failed: {e}"
            ));
        }
    }

    /// Records that data from collector `name` reached a listener at `now`;
    /// false when no such collector runs. See [`Supervisor::data_signal`]
    /// for a handle the listener can keep.
    pub fn data_seen(&self, name: &str, now: Instant) -> bool {
        self.signal.seen(name, now)
    }

    /// A handle feeding "data seen" into every collector supervised now or
    /// later.
    pub fn data_signal(&self) -> DataSignal {
        self.signal.clone()
    }

    /// The pid (and process-group id) of collector `name`'s running process.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let (_, handle) = self.collectors.iter().find(|(n, _)| n.as_str() == name)?;
        Some(handle.pid.load(Ordering::SeqCst)).filter(|&pid| pid != 0)
    }

    /// How collector `name` is doing at `now`.
    pub fn verdict(&self, name: &str, now: Instant) -> Option<Verdict> {
        let (_, handle) = self.collectors.iter().find(|(n, _)| n.as_str() == name)?;
        Some(lock(&handle.health).verdict(now))
    }

    /// Stops every collector (each whole group) and waits for their tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for (name, handle) in std::mem::take(&mut self.collectors) {
            self.join(&name, handle.task).await;
        }
    }
}

/// What preparing a definition gave.
enum Prepared {
    /// Run this command.
    Run(Vec<String>),
    /// Not usable; why (the validator's output).
    Rejected(String),
    Cancelled,
}

/// The task supervising one collector: it executes the policy's actions.
struct Task {
    shared: Arc<Shared>,
    name: CollectorName,
    dir: PathBuf,
    logs: LogFiles,
    health: Arc<Mutex<CollectorHealth>>,
    /// Published pid of `process`, 0 when none.
    pid: Arc<AtomicU32>,
    cancel: CancellationToken,
    /// The command of the definition last accepted.
    command: Option<Vec<String>>,
    /// The definition last accepted (what runs).
    accepted: Option<CollectorSpec>,
    /// [`fingerprint`] of what the process runs.
    fingerprint: String,
    /// A process handed over for this collector, to adopt at the first
    /// definition.
    adoptable: Option<HandedProcess>,
    process: Option<CollectorProcess>,
    /// When to start the process, if it is to be started.
    next_start: Option<Instant>,
    /// The verdict last reported.
    reported: Option<Verdict>,
}

impl Task {
    fn new(
        shared: Arc<Shared>,
        name: CollectorName,
        health: Arc<Mutex<CollectorHealth>>,
        pid: Arc<AtomicU32>,
        cancel: CancellationToken,
    ) -> Task {
        let dir = shared.settings.dir.join(name.as_str());
        Task {
            logs: LogFiles::in_dir(&dir),
            dir,
            shared,
            name,
            health,
            pid,
            cancel,
            command: None,
            accepted: None,
            fingerprint: String::new(),
            adoptable: None,
            process: None,
            next_start: None,
            reported: None,
        }
    }

    /// Supervises until cancelled (or the supervisor is gone), then stops
    /// the process with its group, or hands it over (module docs).
    async fn run(mut self, mut specs: watch::Receiver<CollectorSpec>) -> Option<HandedCollector> {
        let mut tick = tokio::time::interval(self.shared.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut new_spec = true;
        loop {
            if new_spec {
                new_spec = false;
                let spec = specs.borrow_and_update().clone();
                let adopted = match self.adoptable.take() {
                    Some(handed) => self.adopt(&spec, handed).await,
                    None => false,
                };
                if !adopted && !self.apply(&spec).await {
                    break;
                }
            }
            self.start_if_due();
            self.report_if_changed();
            let wake = self.next_start.unwrap_or_else(Instant::now);
            let waiting = self.next_start.is_some() && self.process.is_none();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                changed = specs.changed() => match changed {
                    Ok(()) => new_spec = true,
                    // The supervisor dropped us without cancelling: stop too.
                    Err(_) => break,
                },
                how = exited(&mut self.process) => {
                    self.process = None;
                    self.pid.store(0, Ordering::SeqCst);
                    self.shared.hooks.warn(&format!("collector {} {how}", self.name));
                    self.exited_on_its_own(how);
                }
                () = tokio::time::sleep_until(wake), if waiting => {}
                _ = tick.tick() => self.trim_logs(),
            }
        }
        if self.shared.handing_over.load(Ordering::SeqCst) {
            return self.hand_over();
        }
        self.stop_process("stopped").await;
        None
    }

    /// Leaves the process running and describes it for the next generation.
    fn hand_over(&mut self) -> Option<HandedCollector> {
        let spec = serde_json::to_value(self.accepted.as_ref()?).ok()?;
        let process = match self.process.take().map(CollectorProcess::hand_over) {
            Some(Ok(handed)) => Some(HandedProcess {
                pid: handed.pid,
                start_time: handed.start_time,
                fingerprint: std::mem::take(&mut self.fingerprint),
                reported_running: self.reported == Some(Verdict::Running),
            }),
            Some(Err(e)) => {
                // Gone meanwhile: the next generation starts it anew.
                self.shared.hooks.warn(&format!(
                    "collector {}: cannot hand its process over ({e})",
                    self.name
                ));
                None
            }
            None => None,
        };
        self.pid.store(0, Ordering::SeqCst);
        Some(HandedCollector { spec, process })
    }

    /// Takes up the handed process when what it runs is what `spec` runs
    /// with this build; otherwise stops it. True when adopted.
    async fn adopt(&mut self, spec: &CollectorSpec, handed: HandedProcess) -> bool {
        lock(&self.health).set_interval(spec.interval());
        let command = match spec.kind() {
            CollectorKind::Command(c) => Some(c.argv.clone()).filter(|argv| {
                self.shared
                    .settings
                    .local_policy
                    .check_command(argv, &crate::config::policy::real_path)
                    .is_ok()
            }),
            CollectorKind::Collectd(settings) => {
                let text = collectd_config(
                    spec.name(),
                    settings,
                    spec.graphite_port(),
                    &self.shared.settings.hostname,
                    &self.dir,
                );
                let config = self.dir.join(CONFIG_FILE);
                let in_use = std::fs::read(&config).unwrap_or_default();
                (in_use == text.as_bytes()).then(|| self.shared.collectd.run_command(&config))
            }
        };
        let on_disk = std::fs::read(self.dir.join(CONFIG_FILE)).unwrap_or_default();
        let same = command
            .as_ref()
            .map(|c| fingerprint(c, &on_disk))
            .filter(|f| *f == handed.fingerprint);
        let (Some(command), Some(fingerprint)) = (command, same) else {
            self.shared.hooks.info(&format!(
                "collector {}: its definition or this build's rendering changed; restarting it",
                self.name
            ));
            stop_handed(&self.shared, &handed).await;
            return false;
        };
        let leader = Handed {
            pid: handed.pid,
            start_time: handed.start_time,
        };
        match CollectorProcess::adopt(leader) {
            Ok(process) => {
                self.step(Event::ConfigAccepted);
                self.step(Event::Started);
                self.pid.store(process.pid(), Ordering::SeqCst);
                self.process = Some(process);
                self.command = Some(command);
                self.accepted = Some(spec.clone());
                self.fingerprint = fingerprint;
                if handed.reported_running {
                    // Already said; a swap is no news to the server.
                    self.reported = Some(Verdict::Running);
                }
                self.shared.hooks.info(&format!(
                    "collector {}: adopted its running process {}",
                    self.name, handed.pid
                ));
                true
            }
            Err(e) => {
                self.shared.hooks.warn(&format!(
                    "collector {}: not adopted ({e}); starting it anew",
                    self.name
                ));
                false
            }
        }
    }

    fn step(&self, event: Event) -> Action {
        lock(&self.health).step(Instant::now(), event)
    }

    /// Records an unplanned exit (or failed start) and schedules the restart.
    fn exited_on_its_own(&mut self, how: String) {
        let random = random_below(u64::MAX);
        self.next_start = match self.step(Event::Exited { how, random }) {
            Action::RestartAfter(delay) => Some(Instant::now() + delay),
            Action::Nothing => None,
        };
    }

    /// Takes a new definition: a usable one replaces the running process,
    /// a refused one is recorded while the process keeps running. False
    /// when cancelled meanwhile.
    async fn apply(&mut self, spec: &CollectorSpec) -> bool {
        lock(&self.health).set_interval(spec.interval());
        match prepare(&self.shared, spec, &self.dir, &self.cancel).await {
            Prepared::Run(command) => {
                self.step(Event::ConfigAccepted);
                self.stop_process("stopped for its new definition").await;
                self.command = Some(command);
                self.accepted = Some(spec.clone());
                self.next_start = Some(Instant::now());
            }
            Prepared::Rejected(output) => {
                self.shared.hooks.warn(&format!(
                    "collector {}: the new configuration is refused: {output}",
                    self.name
                ));
                self.step(Event::ConfigRejected {
                    output,
                    kept_previous: self.command.is_some(),
                });
            }
            Prepared::Cancelled => return false,
        }
        true
    }

    /// Starts the process when it is due.
    fn start_if_due(&mut self) {
        let due = self.next_start.is_some_and(|at| at <= Instant::now());
        let Some(command) = self
            .command
            .as_ref()
            .filter(|_| due && self.process.is_none())
        else {
            return;
        };
        self.next_start = None;
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            self.shared.hooks.warn(&format!(
                "collector {}: cannot create {}: {e}",
                self.name,
                self.dir.display()
            ));
        }
        self.trim_logs();
        let config = std::fs::read(self.dir.join(CONFIG_FILE)).unwrap_or_default();
        let fingerprint = fingerprint(command, &config);
        match CollectorProcess::spawn(command, &self.dir, &self.logs) {
            Ok(process) => {
                self.fingerprint = fingerprint;
                self.pid.store(process.pid(), Ordering::SeqCst);
                self.step(Event::Started);
                self.process = Some(process);
            }
            Err(e) => {
                let how = format!("could not be started ({}): {e}", command[0]);
                self.exited_on_its_own(how);
            }
        }
    }

    /// Reports the verdict as `outrider.collector.<name>` when it changed.
    fn report_if_changed(&mut self) {
        let verdict = lock(&self.health).verdict(Instant::now());
        if self.reported.as_ref() != Some(&verdict) {
            let outcome = verdict.outcome(self.name.as_str());
            self.shared.report.report(&self.name.check_name(), outcome);
            self.reported = Some(verdict);
        }
    }

    fn trim_logs(&self) {
        if let Err(e) = self.logs.trim(self.shared.settings.log_cap_bytes) {
            self.shared.hooks.warn(&format!(
                "collector {}: cannot trim its logs: {e}",
                self.name
            ));
        }
    }

    /// Stops the process, if any, with its whole group (a planned stop).
    async fn stop_process(&mut self, why: &str) {
        if let Some(process) = self.process.take() {
            let how = process.stop(self.shared.settings.kill_grace).await;
            self.pid.store(0, Ordering::SeqCst);
            self.step(Event::Stopped);
            self.shared
                .hooks
                .info(&format!("collector {}: {why} ({how})", self.name));
        }
    }
}

/// Stops a handed-over process that nobody adopts, if it is provably the
/// one handed over (a reused pid is left alone).
async fn stop_handed(shared: &Shared, handed: &HandedProcess) {
    let leader = Handed {
        pid: handed.pid,
        start_time: handed.start_time,
    };
    match CollectorProcess::adopt(leader) {
        Ok(process) => {
            let how = process.stop(shared.settings.kill_grace).await;
            shared.hooks.info(&format!(
                "handed-over collector process {} {how}",
                handed.pid
            ));
        }
        Err(e) => shared
            .hooks
            .info(&format!("handed-over collector process not stopped: {e}")),
    }
}

/// Resolves with how `process` ended; never while there is none.
async fn exited(process: &mut Option<CollectorProcess>) -> String {
    match process {
        Some(p) => p.exited().await,
        None => std::future::pending().await,
    }
}

/// The command to run for `spec`: for collectd, after rendering, writing
/// and validating its config and renaming it into place (module docs).
async fn prepare(
    shared: &Shared,
    spec: &CollectorSpec,
    dir: &Path,
    cancel: &CancellationToken,
) -> Prepared {
    let settings = match spec.kind() {
        CollectorKind::Command(c) => {
            return match shared
                .settings
                .local_policy
                .check_command(&c.argv, &crate::config::policy::real_path)
            {
                Ok(()) => Prepared::Run(c.argv.clone()),
                Err(refusal) => Prepared::Rejected(refusal.summary()),
            };
        }
        CollectorKind::Collectd(s) => s,
    };
    let text = collectd_config(
        spec.name(),
        settings,
        spec.graphite_port(),
        &shared.settings.hostname,
        dir,
    );
    let config = dir.join(CONFIG_FILE);
    let candidate = dir.join(format!("{CONFIG_FILE}.new"));
    let written = {
        let (dir, candidate) = (dir.to_owned(), candidate.clone());
        blocking(move || write_synced(&dir, &candidate, text.as_bytes())).await
    };
    if let Err(e) = written {
        return Prepared::Rejected(format!("cannot write {}: {e}", candidate.display()));
    }
    let missing = shared.settings.dir.join(".no-such-collectd.conf");
    let verdict = shared.collectd.validate(&candidate, &missing, cancel).await;
    let outcome = match verdict {
        Validation::Valid => {
            let (d, from, to) = (dir.to_owned(), candidate.clone(), config.clone());
            match blocking(move || rename_synced(&d, &from, &to)).await {
                Ok(()) => return Prepared::Run(shared.collectd.run_command(&config)),
                Err(e) => Prepared::Rejected(format!(
                    "cannot move the validated config into {}: {e}",
                    config.display()
                )),
            }
        }
        Validation::Invalid(output) => Prepared::Rejected(output),
        Validation::Cancelled => Prepared::Cancelled,
    };
    let _ = std::fs::remove_file(&candidate);
    outcome
}

/// Runs file work on the blocking pool (see the module docs).
async fn blocking(
    work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// Writes `bytes` to `path` (in `dir`, created if needed) and fsyncs it.
fn write_synced(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Renames `from` over `to` within `dir` and fsyncs `dir`, so a crash
/// leaves the old config or the new one.
fn rename_synced(dir: &Path, from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    std::fs::File::open(dir)?.sync_all()
}
