//! What the agent needs from whoever runs it: logging, health reports and the
//! update-check nudge.
//!
//! The stub provides these through `HostApiV1` callbacks (see `ffi.rs`); tests
//! provide a recording implementation. Implementations must be callable from
//! any thread and must not block for long: the agent calls them from its
//! runtime thread.

use std::fmt;

/// Log severity, ordered like the ABI's `level` constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    /// The ABI's `level::*` value.
    pub fn to_abi(self) -> u32 {
        use outrider_abi::level;
        match self {
            Level::Error => level::ERROR,
            Level::Warn => level::WARN,
            Level::Info => level::INFO,
            Level::Debug => level::DEBUG,
            Level::Trace => level::TRACE,
        }
    }
}

/// Health as reported to the stub, which uses `Ok` to end probation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Connected to the server and scheduling checks.
    Ok,
    /// Running, but something is wrong (e.g. the server is unreachable).
    Degraded,
    /// Failed; the stub should consider a rollback.
    Failed,
}

impl Health {
    /// The ABI's `health::*` value.
    pub fn to_abi(self) -> u32 {
        use outrider_abi::health;
        match self {
            Health::Ok => health::OK,
            Health::Degraded => health::DEGRADED,
            Health::Failed => health::FAILED,
        }
    }
}

/// The host side of the agent: the stub in production, a recorder in tests.
pub trait HostHooks: Send + Sync + 'static {
    /// Writes one log line.
    fn log(&self, level: Level, message: &str);
    /// Reports the agent's health.
    fn health(&self, health: Health, message: &str);
    /// Asks the host to poll for updates soon.
    fn request_update_check(&self);
    /// Takes the host's pending update events: the JSON array described in
    /// `outrider_abi::update_events`, or `None` when there are none (or the
    /// host is a stub of ABI 1.0, which cannot hand any over this way). The
    /// host forgets what it returned: the caller must queue it.
    fn take_update_events(&self) -> Option<Vec<u8>> {
        None
    }
    /// Borrows a listening socket the host owns (ABI 1.2,
    /// `HostApiV1::borrow_socket`): a descriptor this generation owns and
    /// closes when it ends, an error naming why the host refused, or `None`
    /// when the host cannot lend sockets (a stub before ABI 1.2, or no stub
    /// at all); the caller then binds its own.
    fn borrow_socket(
        &self,
        _kind: SocketKind,
        _addr: std::net::SocketAddr,
    ) -> Option<std::io::Result<std::os::fd::OwnedFd>> {
        None
    }
    /// Whether another generation of this process follows the stop that is
    /// under way (ABI 1.2, `HostApiV1::stop_intent`), so child processes may
    /// be handed over instead of stopped. False when the host cannot say.
    fn hands_over(&self) -> bool {
        false
    }
}

/// The kind of socket [`HostHooks::borrow_socket`] lends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// UDP, bound (StatsD).
    Udp,
    /// TCP, bound and listening (Graphite).
    Tcp,
}

impl SocketKind {
    /// The ABI's `socket_kind` value.
    pub fn to_abi(self) -> u32 {
        match self {
            SocketKind::Udp => outrider_abi::socket_kind::UDP,
            SocketKind::Tcp => outrider_abi::socket_kind::TCP,
        }
    }
}

impl fmt::Debug for dyn HostHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostHooks")
    }
}

/// Shorthands so call sites read like a logger.
impl dyn HostHooks {
    pub(crate) fn error(&self, message: &str) {
        self.log(Level::Error, message);
    }
    pub(crate) fn warn(&self, message: &str) {
        self.log(Level::Warn, message);
    }
    pub(crate) fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }
    pub(crate) fn debug(&self, message: &str) {
        self.log(Level::Debug, message);
    }
}
