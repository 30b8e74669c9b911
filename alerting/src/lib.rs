//! Alert decisions for Outrider: gates, flapping, inhibition, silences,
//! grouping. Pure: no tokio, no SQL, no clock, no I/O — events and time
//! (Unix milliseconds, passed in) go in, [`Action`]s come out as plain data.
//! The server executes them, as described under "How the server drives it".
//!
//! # Subjects and rules
//!
//! One state machine per [`Subject`]: `check(agent, name)`, `agent`
//! (presence), `update(agent)` (fleet-update health), `collector(agent,
//! name)`, and the synthetic `site(tag)`.
//!
//! - **Gates** (`gate.rs`): a check is a problem after N consecutive non-OK
//!   results (3) or non-OK for a duration (2 min), as its rules say; it
//!   recovers after M consecutive OK (2). An agent is down after `down_for`
//!   (2 min) without a session. A deregistered agent (clean Goodbye) never
//!   alerts; what receivers were told about it is resolved.
//! - **Flapping** (`flap.rs`): Nagios's weighted 21-state history, low 25 /
//!   high 30 %. Entering sends one notification and mutes; leaving sends
//!   where it settled.
//! - **Inhibition** (`inhibit.rs`): an agent without a session mutes its
//!   checks; ≥ 20 % and ≥ 3 agents of a tag lost within 60 s are one site
//!   incident with the agents muted; an agent lost while its resolver check
//!   (`outrider.dns`) fails is reported as "DNS broken"; no agent-down within
//!   `down_for + 60 s` of the server's start.
//! - **Silences** (`silence.rs`): matchers on agent, check and tags (equal or
//!   anchored regex), a window, author, comment, optional expire-on-resolve.
//! - **Grouping** (`group.rs`): Alertmanager's `group_wait` 30 s,
//!   `group_interval` 5 min, `repeat_interval` 4 h; one group per agent and
//!   one per site.
//!
//! # Invariants (property-tested in `tests/it/props.rs`)
//!
//! - A deregistered agent's problem is never notified.
//! - No resolve without a prior notification; no second firing for an
//!   incident without a resolve in between, except [`NotificationKind::Repeat`]
//!   after `repeat_interval`.
//! - A flapping subject sends exactly one notification on entering.
//! - Inhibition and silences never suppress the resolve of something that
//!   was notified (the fix for Alertmanager's orphaned incidents).
//! - The same events at the same times always give the same actions
//!   (ordered maps only, no randomness, no clock).
//!
//! # How the server drives it
//!
//! One [`Engine`] per server, behind a mutex held only for a call (every
//! call is synchronous and bounded; never hold it across an `.await`):
//!
//! 1. **Start.** Load the stored [`State`] (JSON of `Engine::state()`) and
//!    call [`Engine::restore`] with the configuration and the start time, or
//!    [`Engine::new`] the first time. Restoring counts every agent that was
//!    connected as lost since the start; the restart grace keeps them from
//!    being called down while they reconnect.
//! 2. **Events.** The ingest module hands every *committed* result to
//!    [`Engine::handle`] as [`Event::CheckResult`] (with the result's own
//!    time: spooled results are back-dated); presence gives
//!    [`Event::SessionOpened`] on a welcome (with the agent's tags),
//!    [`Event::SessionLost`] when a session ends without a Goodbye,
//!    [`Event::Deregistered`] on a Goodbye; fleet updates give
//!    [`Event::Update`]; the REST API and CLI give silences
//!    ([`Event::AddSilence`], [`Event::ExpireSilence`]) and turn their
//!    [`Error`] into a 400 with its message. Never feed it the lossy live
//!    event channel: a dropped event would be a missed or stuck alert.
//! 3. **Time.** A task calls [`Engine::tick`] with the server's clock about
//!    once a second, or sleeps until [`Engine::next_wake_ms`] (or the next
//!    event); both give the same notifications at the same times.
//! 4. **Actions.** For each [`Action::Notify`], enqueue one delivery per
//!    receiver of the group's route with the unique key
//!    `(Notification::incident_key(), seq, receiver)`, **in the same
//!    transaction** that stores the new `Engine::state()`: a crash then
//!    neither loses a notification (the state is not ahead of the queue)
//!    nor repeats one (the key is unique). Between notifications the state
//!    may be stored less often (every few seconds): what a crash loses then
//!    is gate and flap progress, which only delays a decision by a few
//!    results. A healthy subject is about 150 bytes of JSON, so a fleet of
//!    10,000 agents × 10 checks is a state of roughly 18 MB. `Muted`/`Unmuted` feed
//!    `outrider alerts` (also [`Engine::open`]); `SilenceAdded` and
//!    `SilenceExpired` update the silence list.
//!
//! The PagerDuty `dedup_key` is the subject's `Display` form; routing by tag
//! and severity to receivers is the server's, per group.

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod flap;
pub mod gate;
pub mod group;
pub mod inhibit;
pub mod model;
pub mod silence;
pub mod subject;

pub use config::Config;
pub use engine::{Engine, State};
pub use error::Error;
pub use model::{Action, Event, MuteReason, Notification, NotificationKind, Status, Subject};
