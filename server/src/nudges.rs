//! Update nudges: after a release change of a channel (publish, promote,
//! rollout, pause, rollback — each stores a new manifest, see
//! [`outrider_update_server::ManifestHook`]) every connected agent of that
//! channel that announced [`outrider_protocol::capability::UPDATE_NUDGE`]
//! is sent [`outrider_protocol::ServerMessage::CheckUpdate`], each at its
//! own delay within `--nudge-window-secs` so the fleet does not fetch the
//! manifest at once.
//!
//! Invariants:
//! - bounded work: one scheduler task for the whole server (no task or
//!   timer per agent); the queue holds at most one entry per member agent;
//! - the delay of an agent is the pure function [`nudge_delay`] of its
//!   fingerprint, the channel's manifest sequence and the window, so the
//!   order changes between releases and is reproducible in tests;
//! - a nudge is a wake-up of the agent's session (a `Notify`), never a
//!   queued message: a session that is gone is skipped, a session that is
//!   slow gets one nudge however many releases happened meanwhile.
//!
//! Agents that miss a nudge (not connected, older library) still find the
//! new build at their stub's regular update interval.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use outrider_protocol::Fingerprint;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The delay of `fp`'s nudge after release `sequence`: a hash of both,
/// uniform over `[0, window)` at millisecond resolution (zero for a zero
/// window).
pub fn nudge_delay(fp: &Fingerprint, sequence: u64, window: Duration) -> Duration {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if window_ms == 0 {
        return Duration::ZERO;
    }
    let digest = Sha256::new()
        .chain_update(fp.as_str().as_bytes())
        .chain_update(sequence.to_be_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_be_bytes(first) % window_ms)
}

/// A connected agent that accepts nudges.
#[derive(Debug)]
struct Member {
    session: u64,
    channel: String,
    wake: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    members: HashMap<Fingerprint, Member>,
    /// Due nudges, earliest first; at most one per agent (`queued`).
    due: BinaryHeap<Reverse<(Instant, Fingerprint)>>,
    queued: HashSet<Fingerprint>,
    /// Nudges delivered since start (for tests and logs).
    sent: u64,
}

/// The nudge registry and queue, shared by the sessions, the release hook
/// and the scheduler.
#[derive(Debug)]
pub struct Nudges {
    inner: Mutex<Inner>,
    window: Duration,
    /// Wakes the scheduler when an earlier deadline was queued.
    changed: Notify,
}

impl Nudges {
    pub fn new(window: Duration) -> Nudges {
        Nudges {
            inner: Mutex::new(Inner::default()),
            window,
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Session `session` of `fp` follows `channel` and is woken by `wake`.
    pub fn join(&self, fp: &Fingerprint, session: u64, channel: &str, wake: Arc<Notify>) {
        let member = Member {
            session,
            channel: channel.to_owned(),
            wake,
        };
        self.lock().members.insert(fp.clone(), member);
    }

    /// Session `session` of `fp` ended (a newer session's entry stays).
    pub fn leave(&self, fp: &Fingerprint, session: u64) {
        let mut inner = self.lock();
        if inner.members.get(fp).is_some_and(|m| m.session == session) {
            inner.members.remove(fp);
        }
    }

    /// Queues a nudge of every member of `channel` after its manifest
    /// `sequence` was stored; returns how many were queued.
    pub fn schedule(&self, channel: &str, sequence: u64) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let Inner {
            members,
            due,
            queued,
            ..
        } = &mut *inner;
        let mut count = 0;
        for (fp, member) in members.iter() {
            if member.channel != channel || !queued.insert(fp.clone()) {
                continue;
            }
            let at = now + nudge_delay(fp, sequence, self.window);
            due.push(Reverse((at, fp.clone())));
            count += 1;
        }
        drop(inner);
        debug!(%channel, sequence, agents = count, window_secs = self.window.as_secs(), "update nudges scheduled");
        self.changed.notify_one();
        count
    }

    /// Nudges delivered so far.
    pub fn sent(&self) -> u64 {
        self.lock().sent
    }

    /// Wakes every member whose nudge is due at `now`; returns the next
    /// deadline.
    fn deliver_due(&self, now: Instant) -> Option<Instant> {
        let mut inner = self.lock();
        while let Some(Reverse((at, _))) = inner.due.peek() {
            if *at > now {
                return Some(*at);
            }
            let Some(Reverse((_, fp))) = inner.due.pop() else {
                break;
            };
            inner.queued.remove(&fp);
            if let Some(member) = inner.members.get(&fp) {
                member.wake.notify_one();
                inner.sent += 1;
            }
        }
        None
    }

    /// The scheduler: delivers nudges at their time until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let next = self.deliver_due(Instant::now());
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = self.changed.notified() => {}
                () = sleep => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: u32) -> Fingerprint {
        format!("{i:020x}").parse().unwrap()
    }

    #[test]
    fn delay_is_a_pure_function_within_the_window() {
        let w = Duration::from_secs(60);
        let table = [
            (fp(1), 7, w),
            (fp(2), 7, w),
            (fp(1), 8, w),
            (fp(3), 1, Duration::from_millis(1)),
        ];
        for (f, seq, window) in table {
            let d = nudge_delay(&f, seq, window);
            assert!(d < window, "{f} {seq}: {d:?}");
            assert_eq!(d, nudge_delay(&f, seq, window), "not deterministic");
        }
        assert_eq!(nudge_delay(&fp(1), 7, Duration::ZERO), Duration::ZERO);
        // Another release reorders the fleet.
        assert_ne!(nudge_delay(&fp(1), 7, w), nudge_delay(&fp(1), 8, w));
    }

    #[test]
    fn delays_spread_uniformly_over_the_window() {
        let window = Duration::from_secs(60);
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            let d = nudge_delay(&fp(i), 42, window);
            buckets[(d.as_millis() * 10 / window.as_millis()) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!((850..=1150).contains(n), "bucket {i} holds {n} of 10000");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn members_of_the_channel_are_woken_once_within_the_window() {
        let nudges = Arc::new(Nudges::new(Duration::from_secs(60)));
        let wakes: Vec<Arc<Notify>> = (0..20).map(|_| Arc::new(Notify::new())).collect();
        for (i, wake) in wakes.iter().enumerate() {
            let channel = if i < 15 { "stable" } else { "beta" };
            nudges.join(&fp(i as u32), i as u64, channel, wake.clone());
        }
        nudges.leave(&fp(14), 14);
        nudges.leave(&fp(13), 999); // another session's end: stays
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let nudges = nudges.clone();
            let shutdown = shutdown.clone();
            async move { nudges.run(shutdown).await }
        });
        assert_eq!(nudges.schedule("stable", 5), 14);
        // A second release before delivery does not queue twice.
        assert_eq!(nudges.schedule("stable", 6), 0);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(nudges.sent(), 14);
        for (i, wake) in wakes.iter().enumerate() {
            let woken = tokio::time::timeout(Duration::ZERO, wake.notified())
                .await
                .is_ok();
            assert_eq!(woken, i < 14, "agent {i}");
        }
        shutdown.cancel();
        task.await.unwrap();
    }
}
