//! One warning per outage: a task retrying a store call every few hundred
//! milliseconds while PostgreSQL is away would otherwise write the same
//! warning several times a second for as long as the outage lasts.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a repeated store call is failing, for its logs; see the module
/// documentation.
#[derive(Debug, Default)]
pub struct OutageLog {
    failing: AtomicBool,
}

impl OutageLog {
    /// `what` failed with `error`: warned once, until [`OutageLog::ok`].
    /// Returns whether this call warned.
    pub fn failed(&self, what: &str, error: &dyn Display) -> bool {
        let first = !self.failing.swap(true, Ordering::Relaxed);
        if first {
            tracing::warn!("{what} failed (retried; logged again once it works): {error}");
        }
        first
    }

    /// `what` worked: after failures, says so once. Returns whether this
    /// call ended an outage.
    pub fn ok(&self, what: &str) -> bool {
        let ended = self.failing.swap(false, Ordering::Relaxed);
        if ended {
            tracing::info!("{what} works again");
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let log = OutageLog::default();
        // (call, reported)
        let steps = [
            (true, false),  // fine: nothing to say
            (false, true),  // first failure: warned
            (false, false), // again: quiet
            (true, true),   // works again: said once
            (true, false),
            (false, true), // a new outage
        ];
        for (i, (works, reported)) in steps.into_iter().enumerate() {
            let said = if works {
                log.ok("taking")
            } else {
                log.failed("taking", &"down")
            };
            assert_eq!(said, reported, "step {i}");
        }
    }
}
