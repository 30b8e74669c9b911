//! The registry of live agent sessions, their resume tokens and the RPCs
//! waiting for an answer.
//!
//! Invariants:
//! - At most one session per fingerprint: registering a new one cancels the
//!   old, and only the session still registered may write presence.
//! - Removing an agent ([`Sessions::remove_agent`]) ends its live session
//!   (which then writes no presence: the agent is gone, not down) and drops
//!   its resume token.
//! - Per session the registry keeps a few hundred bytes: a cancellation
//!   token, a [`Notify`] raised when the agent's config document changed
//!   (coalescing: many changes, one wake-up; the session then reads the
//!   newest document from the shared cache) and a bounded sender of RPC
//!   requests ([`MAX_PENDING_RPCS`]).
//! - An RPC waiter is woken exactly once: by the answer, by the session
//!   ending or being replaced (its sender is dropped), or by its own timeout, after which
//!   the [`PendingGuard`] removes it so a late answer is ignored.
//! - A resume token is valid for one reconnect within [`RESUME_WINDOW`]
//!   after its session ended; while the session is live it does not age.
//!   An agent that says goodbye has its token dropped, so the map holds at
//!   most one token per live agent plus those that left in the window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_protocol::{CheckResult, Fingerprint, ServerMessage};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::constant_time_eq;
use crate::backend::presence::Lease;

/// RPCs that may wait for one agent at the same time.
pub const MAX_PENDING_RPCS: usize = 16;

/// How long after a session ended its resume token is honoured.
pub const RESUME_WINDOW: Duration = Duration::from_secs(600);

/// What the agent answered to an RPC.
pub type RpcAnswer = Result<CheckResult, String>;

/// The registry's side of one live session.
#[derive(Debug)]
struct Live {
    id: u64,
    cancel: CancellationToken,
    removed: CancellationToken,
    config_changed: Arc<Notify>,
    rpc_tx: mpsc::Sender<Box<ServerMessage>>,
    /// The session's lease in the shared presence table (multi-node mode,
    /// `backend/presence.rs`), once taken.
    lease: Option<Lease>,
}

/// The session's side: what it must watch.
#[derive(Debug)]
pub struct SessionLink {
    pub id: u64,
    /// Cancelled when a newer session of the same agent replaces this one.
    pub replaced: CancellationToken,
    /// Cancelled when an operator removed the agent.
    pub removed: CancellationToken,
    pub config_changed: Arc<Notify>,
    pub rpc_rx: mpsc::Receiver<Box<ServerMessage>>,
    /// Woken by [`crate::nudges`] when this agent should check for updates.
    pub nudge: Arc<Notify>,
}

/// A resume token and when its session ended (`None` while it is live).
#[derive(Debug)]
struct ResumeToken {
    token: String,
    ended_at: Option<Instant>,
}

#[derive(Debug)]
struct Pending {
    agent: Fingerprint,
    tx: oneshot::Sender<RpcAnswer>,
}

/// Live sessions, resume tokens and pending RPCs.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<HashMap<Fingerprint, Live>>,
    resume: Mutex<HashMap<Fingerprint, ResumeToken>>,
    pending: Mutex<HashMap<String, Pending>>,
}

/// Why an RPC could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendRpcError {
    #[error("agent {0} is not connected")]
    NotConnected(Fingerprint),
    #[error("agent {0} already has {MAX_PENDING_RPCS} calls waiting; retry later")]
    TooMany(Fingerprint),
}

/// Removes its pending RPC when dropped (answered, timed out or abandoned).
#[derive(Debug)]
pub struct PendingGuard<'a> {
    sessions: &'a Sessions,
    id: String,
}

impl PendingGuard<'_> {
    /// The correlation id of the call.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.sessions.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a plain map operation that cannot
    // leave the map inconsistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    /// Registers a new session for `fp`, cancelling any older one.
    pub fn insert(&self, fp: &Fingerprint) -> SessionLink {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let removed = CancellationToken::new();
        let config_changed = Arc::new(Notify::new());
        let (rpc_tx, rpc_rx) = mpsc::channel(MAX_PENDING_RPCS);
        let live = Live {
            id,
            cancel: cancel.clone(),
            removed: removed.clone(),
            config_changed: config_changed.clone(),
            rpc_tx,
            lease: None,
        };
        if let Some(old) = lock(&self.live).insert(fp.clone(), live) {
            old.cancel.cancel();
            // The old session's calls went out on (or were queued for) a
            // connection that is gone: the new one will never answer them,
            // so their waiters fail now instead of at their timeout.
            lock(&self.pending).retain(|_, p| &p.agent != fp);
        }
        SessionLink {
            id,
            replaced: cancel,
            removed,
            config_changed,
            rpc_rx,
            nudge: Arc::new(Notify::new()),
        }
    }

    /// Removes session `id` of `fp`; false when a newer session replaced
    /// it. When it was ours, pending RPCs of the agent fail at once and the
    /// resume window of its token starts now.
    pub fn remove(&self, fp: &Fingerprint, id: u64) -> bool {
        let mut live = lock(&self.live);
        match live.get(fp) {
            Some(l) if l.id == id => {
                live.remove(fp);
                drop(live);
                lock(&self.pending).retain(|_, p| &p.agent != fp);
                if let Some(resume) = lock(&self.resume).get_mut(fp) {
                    resume.ended_at = Some(Instant::now());
                }
                true
            }
            _ => false,
        }
    }

    /// Ends `fp`'s live session, if any, because the agent was removed:
    /// its pending RPCs fail and its resume token is dropped. Returns
    /// whether a session was live.
    pub fn remove_agent(&self, fp: &Fingerprint) -> bool {
        let live = lock(&self.live).remove(fp);
        lock(&self.pending).retain(|_, p| &p.agent != fp);
        lock(&self.resume).remove(fp);
        match live {
            Some(l) => {
                l.removed.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether `fp` has a live session.
    pub fn is_connected(&self, fp: &Fingerprint) -> bool {
        lock(&self.live).contains_key(fp)
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        lock(&self.live).len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the shared-presence lease of session `id` of `fp`; false
    /// when a newer session replaced it meanwhile.
    pub fn set_lease(&self, fp: &Fingerprint, id: u64, lease: Lease) -> bool {
        match lock(&self.live).get_mut(fp) {
            Some(l) if l.id == id => {
                l.lease = Some(lease);
                true
            }
            _ => false,
        }
    }

    /// The leases of the live sessions, for this node's heartbeat.
    pub fn leases(&self) -> Vec<Lease> {
        lock(&self.live)
            .values()
            .filter_map(|l| l.lease.clone())
            .collect()
    }

    /// Ends the live session holding `lease`, as replaced: the agent's
    /// session was taken by another node (or swept while this node was
    /// silent), so this one must write nothing more for it. False when no
    /// live session holds that lease.
    pub fn lose(&self, lease: &Lease) -> bool {
        match lock(&self.live).get(&lease.agent) {
            Some(l) if l.lease.as_ref() == Some(lease) => {
                l.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Wakes `fp`'s session to push its new config document.
    pub fn notify_config(&self, fp: &Fingerprint) {
        if let Some(l) = lock(&self.live).get(fp) {
            l.config_changed.notify_one();
        }
    }

    /// A fresh resume token for `fp`'s live session, replacing the previous one.
    pub fn issue_resume_token(&self, fp: &Fingerprint) -> String {
        let token = random_id(16);
        let entry = ResumeToken {
            token: token.clone(),
            ended_at: None,
        };
        lock(&self.resume).insert(fp.clone(), entry);
        token
    }

    /// Whether `token` is `fp`'s current resume token, its session ended
    /// less than [`RESUME_WINDOW`] ago or is still live (the agent
    /// reconnects before the server noticed the loss); it is consumed
    /// either way.
    pub fn take_resume_token(&self, fp: &Fingerprint, token: &str) -> bool {
        let mut resume = lock(&self.resume);
        resume.retain(|_, r| r.ended_at.is_none_or(|at| at.elapsed() < RESUME_WINDOW));
        match resume.remove(fp) {
            Some(expected) => constant_time_eq(expected.token.as_bytes(), token.as_bytes()),
            None => false,
        }
    }

    /// Drops `fp`'s resume token: the agent said goodbye and will register
    /// afresh, so nothing may resume its session.
    pub fn forget_resume_token(&self, fp: &Fingerprint) {
        lock(&self.resume).remove(fp);
    }

    /// Sends the RPC built by `make(id)` to `fp` and registers its waiter.
    pub fn send_rpc(
        &self,
        fp: &Fingerprint,
        make: impl FnOnce(String) -> ServerMessage,
    ) -> Result<(PendingGuard<'_>, oneshot::Receiver<RpcAnswer>), SendRpcError> {
        let rpc_tx = lock(&self.live)
            .get(fp)
            .map(|l| l.rpc_tx.clone())
            .ok_or_else(|| SendRpcError::NotConnected(fp.clone()))?;
        let id = random_id(12);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.values().filter(|p| &p.agent == fp).count() >= MAX_PENDING_RPCS {
                return Err(SendRpcError::TooMany(fp.clone()));
            }
            pending.insert(
                id.clone(),
                Pending {
                    agent: fp.clone(),
                    tx,
                },
            );
        }
        let guard = PendingGuard {
            sessions: self,
            id: id.clone(),
        };
        match rpc_tx.try_send(Box::new(make(id))) {
            Ok(()) => Ok((guard, rx)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SendRpcError::TooMany(fp.clone())),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(SendRpcError::NotConnected(fp.clone()))
            }
        }
    }

    /// Delivers an agent's answer; false when nobody waits for `id` from
    /// `fp` (timed out already, or never asked).
    pub fn complete_rpc(&self, fp: &Fingerprint, id: &str, answer: RpcAnswer) -> bool {
        let mut pending = lock(&self.pending);
        match pending.get(id) {
            Some(p) if &p.agent == fp => {
                let p = pending.remove(id).expect("entry checked above");
                p.tx.send(answer).is_ok()
            }
            _ => false,
        }
    }
}

/// `bytes` random bytes as hex; falls back to a counter-and-clock mix only
/// if the OS has no randomness, which getrandom reports as an error.
fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        static FALLBACK: AtomicU64 = AtomicU64::new(0);
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed) ^ crate::store::now_ms() as u64;
        return format!("{n:016x}");
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        format!("{:020x}", n).parse().unwrap()
    }

    #[test]
    fn rpc_waiters_are_bounded_answered_once_and_failed_on_disconnect() {
        let sessions = Sessions::default();
        let a = fp(1);
        assert!(matches!(
            sessions.send_rpc(&a, |id| ServerMessage::RunCheck {
                id,
                check: "x".into()
            }),
            Err(SendRpcError::NotConnected(_))
        ));
        let mut link = sessions.insert(&a);
        let mut waiting = Vec::new();
        for _ in 0..MAX_PENDING_RPCS {
            waiting.push(
                sessions
                    .send_rpc(&a, |id| ServerMessage::RunCheck {
                        id,
                        check: "x".into(),
                    })
                    .unwrap(),
            );
        }
        assert!(matches!(
            sessions.send_rpc(&a, |id| ServerMessage::RunCheck {
                id,
                check: "x".into()
            }),
            Err(SendRpcError::TooMany(_))
        ));
        let Some(msg) = link.rpc_rx.try_recv().ok() else {
            panic!("request not queued")
        };
        let ServerMessage::RunCheck { id, .. } = *msg else {
            panic!("unexpected {msg:?}")
        };
        // Another agent cannot answer for this one.
        assert!(!sessions.complete_rpc(&fp(2), &id, Err("no".into())));
        assert!(sessions.complete_rpc(&a, &id, Err("ran".into())));
        assert!(!sessions.complete_rpc(&a, &id, Err("twice".into())));
        let (_guard, mut rx) = waiting.remove(0);
        assert_eq!(rx.try_recv().unwrap(), Err("ran".into()));
        // The session ends: every other waiter fails at once.
        assert!(sessions.remove(&a, link.id));
        for (_guard, mut rx) in waiting {
            assert!(matches!(
                rx.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ));
        }
    }

    #[test]
    fn a_resume_token_works_once_and_only_for_its_agent() {
        let sessions = Sessions::default();
        let token = sessions.issue_resume_token(&fp(1));
        assert!(!sessions.take_resume_token(&fp(2), &token));
        assert!(!sessions.take_resume_token(&fp(1), "forged"));
        let token = sessions.issue_resume_token(&fp(1));
        assert!(sessions.take_resume_token(&fp(1), &token));
        assert!(!sessions.take_resume_token(&fp(1), &token));
    }

    #[tokio::test(start_paused = true)]
    async fn a_resume_token_does_not_age_while_its_session_is_live() {
        let sessions = Sessions::default();
        let long = sessions.insert(&fp(1));
        let token = sessions.issue_resume_token(&fp(1));
        let _other = sessions.insert(&fp(2));
        let other_token = sessions.issue_resume_token(&fp(2));
        // A session that outlives the window; meanwhile another agent
        // resumes, which prunes expired tokens.
        tokio::time::advance(RESUME_WINDOW * 2).await;
        assert!(sessions.take_resume_token(&fp(2), &other_token));
        // The window counts from the end of the session.
        assert!(sessions.remove(&fp(1), long.id));
        tokio::time::advance(RESUME_WINDOW / 2).await;
        assert!(sessions.take_resume_token(&fp(1), &token));
        // And it does end.
        let again = sessions.insert(&fp(1));
        let token = sessions.issue_resume_token(&fp(1));
        assert!(sessions.remove(&fp(1), again.id));
        tokio::time::advance(RESUME_WINDOW).await;
        assert!(!sessions.take_resume_token(&fp(1), &token));
    }

    #[test]
    fn removing_an_agent_ends_its_session_and_its_resume_token() {
        let sessions = Sessions::default();
        let link = sessions.insert(&fp(1));
        let other = sessions.insert(&fp(2));
        let token = sessions.issue_resume_token(&fp(1));
        let (_guard, mut waiting) = sessions
            .send_rpc(&fp(1), |id| ServerMessage::RunCheck {
                id,
                check: "x".into(),
            })
            .unwrap();
        assert!(sessions.remove_agent(&fp(1)));
        assert!(link.removed.is_cancelled());
        assert!(!link.replaced.is_cancelled());
        assert!(!other.removed.is_cancelled());
        assert!(!sessions.is_connected(&fp(1)));
        assert!(matches!(
            waiting.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(!sessions.take_resume_token(&fp(1), &token));
        // The session's own end is then not "ours": it writes no presence.
        assert!(!sessions.remove(&fp(1), link.id));
        assert!(!sessions.remove_agent(&fp(1)));
    }

    #[test]
    fn a_goodbye_forgets_the_resume_token() {
        let sessions = Sessions::default();
        let token = sessions.issue_resume_token(&fp(1));
        sessions.forget_resume_token(&fp(1));
        assert!(!sessions.take_resume_token(&fp(1), &token));
    }

    #[test]
    fn a_newer_session_replaces_the_older() {
        let sessions = Sessions::default();
        let old = sessions.insert(&fp(1));
        let (_guard, mut waiting) = sessions
            .send_rpc(&fp(1), |id| ServerMessage::RunCheck {
                id,
                check: "x".into(),
            })
            .unwrap();
        let new = sessions.insert(&fp(1));
        assert!(old.replaced.is_cancelled());
        // A call sent through the old session fails at once.
        assert!(matches!(
            waiting.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(!sessions.remove(&fp(1), old.id));
        assert!(sessions.is_connected(&fp(1)));
        assert!(sessions.remove(&fp(1), new.id));
    }

    #[test]
    fn a_lost_lease_ends_only_the_session_holding_it() {
        let sessions = Sessions::default();
        let lease = |generation| Lease {
            agent: fp(1),
            node: "a".parse().unwrap(),
            generation,
        };
        let old = sessions.insert(&fp(1));
        assert!(sessions.set_lease(&fp(1), old.id, lease(1)));
        let new = sessions.insert(&fp(1));
        // The replaced session cannot record a lease any more.
        assert!(!sessions.set_lease(&fp(1), old.id, lease(1)));
        assert!(sessions.leases().is_empty());
        assert!(sessions.set_lease(&fp(1), new.id, lease(2)));
        assert_eq!(sessions.leases(), vec![lease(2)]);
        // A heartbeat reporting the old generation lost ends nothing.
        assert!(!sessions.lose(&lease(1)));
        assert!(!new.replaced.is_cancelled());
        assert!(sessions.lose(&lease(2)));
        assert!(new.replaced.is_cancelled());
    }
}
