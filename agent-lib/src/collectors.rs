//! Collectors: long-running metric programs (collectd, or any command) the
//! agent configures and keeps alive.
//!
//! - [`spec`] — a collector definition, valid by construction;
//! - [`render`] — collectd's config from a definition, pointed at the
//!   agent's own loopback Graphite listener (its naming scheme is there);
//! - [`validate`] — asking collectd whether a config is usable;
//! - [`policy`] — the pure decisions: restart delays, crash-looping,
//!   silence, the verdict reported;
//! - [`process`] — one collector process, its group and its log files;
//! - [`assigned`] — the server's set: which definitions this host lets
//!   run, the last set kept on disk, handing it to the supervisor;
//! - [`supervisor`] — the tasks that tie these together on the agent's
//!   runtime, and the place results come from.
//!
//! Results: each collector reports as check `outrider.collector.<name>`
//! (like `outrider.dns` and `outrider.spool`) whenever its verdict changes:
//! OK running, WARNING down (restarting) or silent (no data for three
//! intervals), CRITICAL crash-looping or config rejected (with collectd's
//! own output as long output).
//!
//! On disk, under the agent's data dir: `collectors/<name>/` holds
//! `collectd.conf` (the config in use), `collectd.conf.new` only while a
//! new one is being validated, `stdout.log`/`stderr.log` and their `.1`
//! copies (see `collectors/process.rs` for the caps), and collectd's
//! `BaseDir` and pid file.

pub mod assigned;
pub mod policy;
pub mod process;
pub mod render;
pub mod spec;
pub mod supervisor;
pub mod validate;

pub use spec::{CollectorName, CollectorSpec};
pub use supervisor::{
    DataSignal, HandedCollector, HandedProcess, ReconcileSummary, Supervisor, SupervisorSettings,
};

use crate::outbox::SharedOutbox;
use crate::runner::RunOutcome;

/// Prefix of the checks collectors report under.
pub const COLLECTOR_CHECK_PREFIX: &str = outrider_protocol::COLLECTOR_CHECK_PREFIX;
/// The collectors' directory inside the agent's data dir.
pub const COLLECTORS_DIR: &str = "collectors";

/// Where collector results go: the outbox in the agent, a recorder in tests.
pub trait Report: Send + Sync + 'static {
    /// Queues `outcome` as a result of check `check`.
    fn report(&self, check: &str, outcome: RunOutcome);
}

impl Report for SharedOutbox {
    fn report(&self, check: &str, outcome: RunOutcome) {
        self.push(check, outcome);
    }
}
