//! Jittered exponential backoff, the one retry-delay policy of the agent.
//!
//! "Full jitter": attempt `n` sleeps a uniformly random time in
//! `[0, min(cap, base * 2^n)]`, which spreads a fleet of agents reconnecting
//! after a server restart. [`Backoff::reset`] after a successful session
//! starts again from `base`.

use std::time::Duration;

/// First reconnect delay ceiling.
pub const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// Largest reconnect delay ceiling.
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// Exponential backoff state with full jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The reconnect policy: 500 ms doubling to 30 s.
    pub fn reconnect() -> Backoff {
        Backoff::new(RECONNECT_BASE, RECONNECT_CAP)
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The ceiling of the next delay, advancing the attempt count: for a
    /// pure policy that applies its own jitter from a random number handed
    /// in (the collector supervisor's).
    pub fn next_ceiling(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling
    }

    /// The next delay: random in `[0, ceiling]`; advances the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(random_below(ms.saturating_add(1)))
    }

    /// Starts over from `base` (after a successful session).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly distributed number in `[0, bound)` (0 when `bound` is 0).
///
/// Falls back to the clock's nanoseconds if the OS RNG is unavailable: jitter
/// only needs to differ between hosts, not to be secret.
pub fn random_below(bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut buf = [0u8; 8];
    let raw = match getrandom::fill(&mut buf) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0),
    };
    // Modulo bias is irrelevant for jitter.
    raw % bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_to_cap_and_resets() {
        let mut b = Backoff::reconnect();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= RECONNECT_CAP);
        }
        assert_eq!(&ceilings[..7], &[500, 1000, 2000, 4000, 8000, 16000, 30000]);
        assert_eq!(ceilings[9], 30000);
        b.reset();
        assert_eq!(b.ceiling(), RECONNECT_BASE);
    }

    #[test]
    fn delays_stay_within_ceiling_and_are_jittered() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::reconnect();
            let d = b.next_delay();
            assert!(d <= RECONNECT_BASE);
            seen.insert(d);
        }
        assert!(seen.len() > 1, "delays are not jittered");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..200 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
        assert_eq!(random_below(0), 0);
    }
}
