//! `liboutrider_agent`: the whole monitoring agent, loaded by the stub.
//!
//! The stub `dlopen`s this library, calls [`outrider_agent_entry_v1`] and runs
//! the returned table's `run` on a dedicated thread (see `outrider-abi` and
//! DESIGN §3). Tests and tools use the safe entry [`run_agent`] instead, which
//! is what `run` calls after converting the C table into a [`Host`].
//!
//! Module map:
//! - `ffi` — the C ABI exports and the safe [`Host`] handle (all ABI `unsafe`);
//! - `sys` — the raw libc calls of the plugin runner (pidfd, group kill);
//! - [`config`] — host JSON envelope and `agent.toml`, with the local
//!   [`policy`] and the connection's timing; a leaf like [`error`]: it imports
//!   no other module of this crate but `error`, and `error` imports none;
//! - [`identity`] — the ed25519 key on disk;
//! - [`connection`] — dialing, handshake, session loop and reconnects, using
//!   [`backoff`], [`tls`] (rustls client config) and [`dns`] (resolver and
//!   fallback chain);
//! - [`plugins`] — the content-addressed plugin cache and verified downloads;
//! - [`rpc`] — remote "run check now" / ad-hoc script runs;
//! - [`scheduler`] — per-check tasks; [`executor`] — one run of a check
//!   (path, `plugin:`, `builtin:`); [`builtin`] — checks inside the agent;
//!   [`runner`] — one supervised plugin run;
//!   [`nagios`] — plugin output parsing;
//! - [`collectors`] — collectd and other long-running collectors: config
//!   rendering and validation, supervision with backoff;
//! - [`outbox`] — result numbering and batches over the on-disk [`spool`];
//!   [`state`] — the blob for the next generation, assembled by `agent` from
//!   what each part hands over (the outbox does not know the blob).
//!
//! Process rules that matter for hot swap: the library installs no signal
//! handlers (hence `std::process` + pidfds, never `tokio::process` or
//! `tokio::signal`), starts no thread it does not join before `run` returns,
//! and closes every fd it opened.

mod agent;
pub mod backoff;
pub mod builtin;
pub mod collectors;
pub mod config;
pub mod connection;
pub mod dns;
pub mod error;
pub mod executor;
mod ffi;
pub mod host;
pub mod identity;
pub mod listeners;
pub mod nagios;
pub mod outbox;
pub use config::policy;
pub mod plugins;
pub mod rpc;
pub mod runner;
pub mod scheduler;
pub mod spool;
pub mod state;
mod sys;
pub mod tls;
pub mod update_events;

pub use agent::run_agent;
pub use config::{AgentSettings, AgentToml, ServerEndpoint, Transport};
pub use connection::ConnectionTiming;
pub use dns::{Resolve, ResolveFuture, SystemResolver};
pub use error::AgentError;
pub use ffi::{Host, outrider_agent_entry_v1};
pub use host::{Health, HostHooks, Level};
pub use state::StateBlob;
