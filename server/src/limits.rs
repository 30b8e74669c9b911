//! Connection limits against denial of service (`docs/security.md`,
//! "Denial of service").
//!
//! Every accepted TCP connection takes a [`Ticket`] from the
//! [`ConnLimiter`] before anything else happens (before the TLS handshake):
//! - at most `max_connections` tickets exist at once, server-wide;
//! - at most `per_ip_connections` per client address (an IPv6 client is
//!   keyed by its /64, which one host usually owns whole);
//! - new tickets per client address come from a token bucket
//!   (`per_ip_rate` per second, bursting to `per_ip_burst`), which bounds the
//!   TLS handshakes and websocket upgrades one address can make.
//!
//! A ticket is given back when its connection closes, or earlier, when the
//! connection becomes an authenticated agent session
//! ([`ConnHandle::authenticated`]): from then on the agent counts against
//! `--max-agent-connections` instead. So the per-address limits bind only
//! what is not yet authenticated (admin requests, downloads, handshakes,
//! agents before their hello is verified), and a thousand agents behind one
//! NAT address are not refused once they are in.
//!
//! Until then, a websocket may read only [`ConnHandle::limit_reads`] bytes:
//! a hello is a few hundred bytes, so a peer streaming a megabyte frame
//! before proving who it is loses its connection after a few KiB.
//!
//! The per-address table is bounded ([`TABLE_CAPACITY`]): when full, entries
//! whose bucket has refilled (indistinguishable from a new address) are
//! dropped first, then the longest-idle entries without open connections.
//! Entries with open connections are never dropped; there are at most
//! `max_connections` of them, below the capacity.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Most client addresses remembered at once.
pub const TABLE_CAPACITY: usize = 65_536;

/// The client address a limit applies to: the IPv4 address, or the /64
/// prefix of an IPv6 one (IPv4-mapped IPv6 addresses count as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl IpKey {
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpKey(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

/// The limits; 0 turns a per-address limit off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitSettings {
    /// Tickets server-wide (must be at least 1).
    pub max_connections: usize,
    /// Tickets per address at once (0: no limit).
    pub per_ip_connections: u32,
    /// New tickets per address per second (0: no limit).
    pub per_ip_rate: f64,
    /// Tokens an address starts with and can save up.
    pub per_ip_burst: f64,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the server has its maximum of unauthenticated connections open")]
    TotalCap,
    #[error("this address has its maximum of unauthenticated connections open")]
    IpConnections,
    #[error("this address opens connections faster than its rate limit")]
    IpRate,
}

#[derive(Debug)]
struct IpState {
    open: u32,
    tokens: f64,
    last: Instant,
}

/// The decision part: who may open a connection now. Deterministic given
/// the times it is called with, so tests drive it with made-up instants.
#[derive(Debug)]
pub struct ConnLimiter {
    settings: LimitSettings,
    capacity: usize,
    open: usize,
    ips: HashMap<IpKey, IpState>,
}

impl ConnLimiter {
    pub fn new(settings: LimitSettings) -> ConnLimiter {
        ConnLimiter::with_capacity(settings, TABLE_CAPACITY)
    }

    /// With a table of `capacity` addresses (tests use small ones); never
    /// below `max_connections + 1`, so an address with open connections
    /// always has room.
    pub fn with_capacity(settings: LimitSettings, capacity: usize) -> ConnLimiter {
        ConnLimiter {
            capacity: capacity.max(settings.max_connections + 1),
            settings,
            open: 0,
            ips: HashMap::new(),
        }
    }

    /// Tickets held now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Addresses remembered now.
    pub fn addresses(&self) -> usize {
        self.ips.len()
    }

    /// Takes a ticket for `ip` at `now`, or says why not. A refusal takes
    /// nothing (no token, no slot).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<IpKey, Refusal> {
        if self.open >= self.settings.max_connections {
            return Err(Refusal::TotalCap);
        }
        let key = IpKey::of(ip);
        if !self.ips.contains_key(&key) && self.ips.len() >= self.capacity {
            self.evict(now);
        }
        let s = self.settings;
        let entry = self.ips.entry(key).or_insert(IpState {
            open: 0,
            tokens: s.per_ip_burst,
            last: now,
        });
        if s.per_ip_connections > 0 && entry.open >= s.per_ip_connections {
            return Err(Refusal::IpConnections);
        }
        if s.per_ip_rate > 0.0 {
            let elapsed = now.saturating_duration_since(entry.last).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * s.per_ip_rate).min(s.per_ip_burst);
            entry.last = now;
            if entry.tokens < 1.0 {
                return Err(Refusal::IpRate);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        self.open += 1;
        Ok(key)
    }

    /// Gives back a ticket of `key`.
    pub fn release(&mut self, key: IpKey) {
        if let Some(entry) = self.ips.get_mut(&key)
            && entry.open > 0
        {
            entry.open -= 1;
            self.open = self.open.saturating_sub(1);
        }
    }

    /// Frees at least a quarter of the table: refilled entries first, then
    /// the longest-idle ones without open connections.
    fn evict(&mut self, now: Instant) {
        let s = self.settings;
        let refill = if s.per_ip_rate > 0.0 {
            Duration::from_secs_f64(s.per_ip_burst / s.per_ip_rate)
        } else {
            Duration::ZERO
        };
        self.ips
            .retain(|_, e| e.open > 0 || now.saturating_duration_since(e.last) < refill);
        let target = self.capacity - self.capacity / 4;
        if self.ips.len() <= target {
            return;
        }
        let mut idle: Vec<(Instant, IpKey)> = self
            .ips
            .iter()
            .filter(|(_, e)| e.open == 0)
            .map(|(k, e)| (e.last, *k))
            .collect();
        let excess = (self.ips.len() - target).min(idle.len());
        if excess == 0 {
            return;
        }
        idle.select_nth_unstable_by_key(excess - 1, |(last, _)| *last);
        for (_, key) in &idle[..excess] {
            self.ips.remove(key);
        }
    }
}

/// Refusals and cut-offs, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Refusals {
    pub total_cap: AtomicU64,
    pub ip_connections: AtomicU64,
    pub ip_rate: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake: AtomicU64,
    /// Websockets that sent more than allowed before authenticating.
    pub preauth_bytes: AtomicU64,
    /// Responses the client did not read within the idle timeout.
    pub write_stall: AtomicU64,
    /// Authenticated agents turned away because every agent slot was taken.
    pub agent_slots: AtomicU64,
    /// Authenticated hellos asked to come back after waiting
    /// `agent_ws::HELLO_QUEUE_WAIT` for their turn.
    pub hello_queue: AtomicU64,
}

impl Refusals {
    pub fn count(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::TotalCap => &self.total_cap,
            Refusal::IpConnections => &self.ip_connections,
            Refusal::IpRate => &self.ip_rate,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus exposition of these counters.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP outrider_connections_refused_total Connections refused or closed by a denial-of-service limit (docs/security.md).\n\
             # TYPE outrider_connections_refused_total counter\n",
        );
        for (reason, counter) in [
            ("total_cap", &self.total_cap),
            ("ip_connections", &self.ip_connections),
            ("ip_rate", &self.ip_rate),
            ("tls_handshake", &self.tls_handshake),
            ("preauth_bytes", &self.preauth_bytes),
            ("write_stall", &self.write_stall),
            ("agent_slots", &self.agent_slots),
            ("hello_queue", &self.hello_queue),
        ] {
            out.push_str(&format!(
                "outrider_connections_refused_total{{reason=\"{reason}\"}} {}\n",
                counter.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// The limiter and its counters, shared by the listener and the handlers.
#[derive(Debug)]
pub struct Limits {
    limiter: Mutex<ConnLimiter>,
    pub refusals: Refusals,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Arc<Limits> {
        Arc::new(Limits {
            limiter: Mutex::new(ConnLimiter::new(settings)),
            refusals: Refusals::default(),
        })
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, ConnLimiter> {
        // Plain counter updates: a poisoned lock is still consistent.
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tickets held now (tests, logs).
    pub fn open(&self) -> usize {
        self.limiter().open()
    }

    /// A ticket for a connection from `ip`, or the refusal (counted).
    pub fn admit(self: &Arc<Limits>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let admitted = self.limiter().admit(ip, Instant::now());
        match admitted {
            Ok(key) => Ok(Ticket {
                limits: self.clone(),
                key,
            }),
            Err(refusal) => {
                self.refusals.count(refusal);
                Err(refusal)
            }
        }
    }
}

/// One admitted connection's place; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    limits: Arc<Limits>,
    key: IpKey,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.limits.limiter().release(self.key);
    }
}

/// What a request handler can do to its connection: limit what it reads
/// before authentication, mark it authenticated.
#[derive(Debug)]
pub struct ConnHandle {
    ticket: Mutex<Option<Ticket>>,
    /// Bytes the connection may still read; `u64::MAX`: unlimited.
    read_budget: AtomicU64,
    /// Set when the connection became a websocket: it has its own timeouts.
    upgraded: AtomicBool,
    limits: Arc<Limits>,
}

impl ConnHandle {
    pub fn new(ticket: Ticket) -> Arc<ConnHandle> {
        Arc::new(ConnHandle {
            limits: ticket.limits.clone(),
            ticket: Mutex::new(Some(ticket)),
            read_budget: AtomicU64::new(u64::MAX),
            upgraded: AtomicBool::new(false),
        })
    }

    /// From now on the connection may read at most `bytes` more, until
    /// [`ConnHandle::authenticated`]; it is a websocket now, whose
    /// sessions bound their own sends.
    pub fn limit_reads(&self, bytes: u64) {
        self.read_budget.store(bytes, Ordering::Relaxed);
        self.upgraded.store(true, Ordering::Relaxed);
    }

    /// The peer proved who it is: no read limit any more, and its ticket
    /// goes back (it counts against the agent slots now).
    pub fn authenticated(&self) {
        self.read_budget.store(u64::MAX, Ordering::Relaxed);
        drop(self.ticket.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Takes `n` read bytes from the budget; false when it is exceeded.
    fn consume(&self, n: usize) -> bool {
        let left = self.read_budget.load(Ordering::Relaxed);
        if left == u64::MAX {
            return true;
        }
        let n = n as u64;
        if n > left {
            self.read_budget.store(0, Ordering::Relaxed);
            return false;
        }
        self.read_budget.store(left - n, Ordering::Relaxed);
        true
    }
}

/// A connection's stream with its [`ConnHandle`]: enforces the read
/// budget, and fails a write the peer has not taken within `stall` (a
/// client that requests and never reads must not hold the connection
/// forever) until the connection becomes a websocket.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    handle: Arc<ConnHandle>,
    stall: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, handle: Arc<ConnHandle>, stall: Duration) -> Guarded<S> {
        Guarded {
            inner,
            handle,
            stall,
            stalled: None,
        }
    }

    pub fn handle(&self) -> &Arc<ConnHandle> {
        &self.handle
    }

    /// Polls the stall timer of a pending write.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.handle.upgraded.load(Ordering::Relaxed) {
            self.stalled = None;
            return Poll::Pending;
        }
        let stall = self.stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        ready!(timer.as_mut().poll(cx));
        self.stalled = None;
        self.handle
            .limits
            .refusals
            .write_stall
            .fetch_add(1, Ordering::Relaxed);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client did not read for {} s", stall.as_secs()),
        ))
    }
}

use std::future::Future as _;

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 && !self.handle.consume(n) {
            self.handle
                .limits
                .refusals
                .preauth_bytes
                .fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent more than allowed before authenticating",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.write_pending(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.write_pending(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.write_pending(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const SETTINGS: LimitSettings = LimitSettings {
        max_connections: 4,
        per_ip_connections: 2,
        per_ip_rate: 1.0,
        per_ip_burst: 3.0,
    };

    /// One step of a table: at `at_ms`, either admit `ip` (expecting the
    /// outcome) or release one ticket of `ip`.
    enum Step {
        Admit(u64, &'static str, Result<(), Refusal>),
        Release(&'static str),
    }
    use Step::{Admit, Release};

    fn run(settings: LimitSettings, steps: &[Step]) {
        let t0 = Instant::now();
        let mut limiter = ConnLimiter::new(settings);
        for (i, step) in steps.iter().enumerate() {
            match step {
                Admit(at_ms, addr, want) => {
                    let got = limiter
                        .admit(ip(addr), t0 + Duration::from_millis(*at_ms))
                        .map(|_| ());
                    assert_eq!(&got, want, "step {i}: admit {addr} at {at_ms} ms");
                }
                Release(addr) => limiter.release(IpKey::of(ip(addr))),
            }
        }
    }

    #[test]
    fn per_address_concurrency_is_capped_and_freed_on_release() {
        run(
            SETTINGS,
            &[
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.1", Err(Refusal::IpConnections)),
                // Another address is not affected.
                Admit(0, "10.0.0.2", Ok(())),
                Release("10.0.0.1"),
                Admit(0, "10.0.0.1", Ok(())),
            ],
        );
    }

    #[test]
    fn the_rate_admits_a_burst_then_refills() {
        let settings = LimitSettings {
            per_ip_connections: 0,
            max_connections: 100,
            ..SETTINGS
        };
        run(
            settings,
            &[
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.1", Err(Refusal::IpRate)),
                Admit(500, "10.0.0.1", Err(Refusal::IpRate)),
                Admit(1000, "10.0.0.1", Ok(())),
                Admit(1000, "10.0.0.1", Err(Refusal::IpRate)),
                // Tokens do not accumulate beyond the burst.
                Admit(60_000, "10.0.0.1", Ok(())),
                Admit(60_000, "10.0.0.1", Ok(())),
                Admit(60_000, "10.0.0.1", Ok(())),
                Admit(60_000, "10.0.0.1", Err(Refusal::IpRate)),
                Admit(60_000, "10.0.0.2", Ok(())),
            ],
        );
    }

    #[test]
    fn the_total_cap_refuses_everyone_until_a_release() {
        run(
            SETTINGS,
            &[
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.2", Ok(())),
                Admit(0, "10.0.0.3", Ok(())),
                Admit(0, "10.0.0.4", Ok(())),
                Admit(0, "10.0.0.5", Err(Refusal::TotalCap)),
                Release("10.0.0.2"),
                Admit(0, "10.0.0.5", Ok(())),
            ],
        );
    }

    #[test]
    fn refusals_cost_no_token() {
        run(
            SETTINGS,
            &[
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.1", Ok(())),
                Admit(0, "10.0.0.1", Err(Refusal::IpConnections)),
                Admit(0, "10.0.0.1", Err(Refusal::IpConnections)),
                Release("10.0.0.1"),
                // The third token is still there.
                Admit(0, "10.0.0.1", Ok(())),
            ],
        );
    }

    #[test]
    fn zero_turns_per_address_limits_off() {
        let off = LimitSettings {
            max_connections: 1000,
            per_ip_connections: 0,
            per_ip_rate: 0.0,
            per_ip_burst: 0.0,
        };
        let steps: Vec<Step> = (0..500).map(|_| Admit(0, "10.0.0.1", Ok(()))).collect();
        run(off, &steps);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_v4_as_v4() {
        for (a, b, same) in [
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true),
            ("2001:db8:1:2::1", "2001:db8:1:3::1", false),
            ("::ffff:10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
        ] {
            assert_eq!(IpKey::of(ip(a)) == IpKey::of(ip(b)), same, "{a} vs {b}");
        }
        run(
            SETTINGS,
            &[
                Admit(0, "2001:db8:1:2::1", Ok(())),
                Admit(0, "2001:db8:1:2::2", Ok(())),
                Admit(0, "2001:db8:1:2::3", Err(Refusal::IpConnections)),
                Admit(0, "2001:db8:1:3::1", Ok(())),
            ],
        );
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_addresses_with_open_connections() {
        let settings = LimitSettings {
            max_connections: 11,
            per_ip_connections: 1,
            per_ip_rate: 1.0,
            per_ip_burst: 1.0,
        };
        let t0 = Instant::now();
        let mut limiter = ConnLimiter::with_capacity(settings, 16);
        // Ten addresses hold a connection each and are at their cap.
        for i in 0..10u8 {
            limiter
                .admit(IpAddr::from([10, 0, 0, i]), t0)
                .expect("room");
        }
        // Thousands of one-shot addresses come and go.
        for i in 0..5_000u32 {
            let addr = IpAddr::from((0xac10_0000u32 + i).to_be_bytes());
            let key = limiter.admit(addr, t0).expect("a new address is admitted");
            limiter.release(key);
            assert!(
                limiter.addresses() <= 16,
                "table grew to {}",
                limiter.addresses()
            );
        }
        // The holders were not forgotten: still at their cap.
        for i in 0..10u8 {
            assert_eq!(
                limiter.admit(IpAddr::from([10, 0, 0, i]), t0),
                Err(Refusal::IpConnections)
            );
        }
        assert_eq!(limiter.open(), 10);
    }

    #[test]
    fn the_read_budget_applies_until_authenticated() {
        let limits = Limits::new(SETTINGS);
        let handle = ConnHandle::new(limits.admit(ip("10.0.0.1")).unwrap());
        assert!(handle.consume(1 << 20), "no budget before limit_reads");
        handle.limit_reads(100);
        assert!(handle.consume(60));
        assert!(handle.consume(40));
        assert!(!handle.consume(1));
        assert_eq!(limits.open(), 1);
        handle.authenticated();
        assert_eq!(limits.open(), 0, "the ticket went back");
        assert!(handle.consume(1 << 20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_take_fails_after_the_idle_timeout() {
        use tokio::io::AsyncWriteExt;
        let limits = Limits::new(SETTINGS);
        let (ours, _client) = tokio::io::duplex(64);
        let handle = ConnHandle::new(limits.admit(ip("10.0.0.1")).unwrap());
        let mut conn = Guarded::new(ours, handle, Duration::from_secs(60));
        let start = Instant::now();
        let err = conn.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert_eq!(limits.refusals.write_stall.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_websocket_write_is_left_to_the_session_timeouts() {
        use tokio::io::AsyncWriteExt;
        let limits = Limits::new(SETTINGS);
        let (ours, _client) = tokio::io::duplex(64);
        let handle = ConnHandle::new(limits.admit(ip("10.0.0.1")).unwrap());
        handle.limit_reads(PREAUTH);
        let mut conn = Guarded::new(ours, handle, Duration::from_secs(60));
        let blocked =
            tokio::time::timeout(Duration::from_secs(600), conn.write_all(&[0u8; 1024])).await;
        assert!(blocked.is_err(), "the write failed on its own: {blocked:?}");
    }

    const PREAUTH: u64 = 100;

    #[tokio::test]
    async fn reads_beyond_the_budget_fail_and_are_counted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = Limits::new(SETTINGS);
        let (ours, mut client) = tokio::io::duplex(4096);
        let handle = ConnHandle::new(limits.admit(ip("10.0.0.1")).unwrap());
        handle.limit_reads(PREAUTH);
        let mut conn = Guarded::new(ours, handle.clone(), Duration::from_secs(60));
        client.write_all(&[1u8; 60]).await.unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 60);
        client.write_all(&[1u8; 60]).await.unwrap();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(limits.refusals.preauth_bytes.load(Ordering::Relaxed), 1);
        // Once authenticated, the same connection reads freely.
        handle.authenticated();
        client.write_all(&[1u8; 1000]).await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1000);
    }
}
