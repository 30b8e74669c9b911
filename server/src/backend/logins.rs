//! Dashboard logins kept across restarts: the login sessions of
//! `server/src/dashboard/session.rs`, which lives in memory and writes
//! through here (a login, a logout, its use every few minutes) and reads
//! them all once, at start.
//!
//! Table `dashboard_logins` (server/src/store/schema.sql for SQLite,
//! server/src/backend/postgres/migrations/0007_logins.sql for PostgreSQL):
//! one row per login, keyed by the SHA-256 of the cookie's session id
//! (never the id), with its role, CSRF token, the hash of the token it was
//! opened with, and when it was opened and last used.
//!
//! Rules (checked on both backends by `backend/login_tests.rs`):
//! 1. A save stores or replaces the login of its key whole.
//! 2. A touch moves `last_ms` of a stored login; a touch or delete of an
//!    unknown key changes nothing and is no error (the login may have been
//!    pruned meanwhile).
//! 3. At start the caller decides which logins have ended (idle, too old,
//!    opened with a token since replaced); [`LoginStore::live_logins`]
//!    deletes those and returns the others. A stored key that is not 32
//!    bytes cannot come from this server and is skipped ([`stored_key`]).
//! 4. With several nodes a login pruned by one node's start must not be
//!    one another node has just used: the prune deletes a login only while
//!    it is as read (same `last_ms`); one touched in between is kept, and
//!    returned when the caller's rule finds it live on its newest version.

use std::future::Future;

use super::{Backend, StoreError, dispatch};

/// One stored login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLogin {
    /// SHA-256 of the cookie's session id.
    pub key: [u8; 32],
    /// `admin` or `viewer`.
    pub role: String,
    pub csrf: String,
    /// SHA-256 (hex) of the token the login was opened with.
    pub token_sha256: String,
    pub created_ms: i64,
    pub last_ms: i64,
}

/// Rule 3: a stored key as this server writes it, `None` for any other
/// length.
pub fn stored_key(key: Vec<u8>) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(key).ok()
}

/// Rule 3: splits `all` into the logins `dead` says have ended and the
/// others, each in the order given.
pub fn split_ended(
    all: Vec<StoredLogin>,
    dead: impl Fn(&StoredLogin) -> bool,
) -> (Vec<StoredLogin>, Vec<StoredLogin>) {
    all.into_iter().partition(|l| dead(l))
}

/// The dashboard logins area of the store. Times are Unix milliseconds
/// given by the caller.
pub trait LoginStore {
    /// Stores (or replaces) `login` (rule 1).
    fn save_login(&self, login: StoredLogin)
    -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records that login `key` was used at `last_ms` (rule 2).
    fn touch_login(
        &self,
        key: [u8; 32],
        last_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets login `key` (a logout; rule 2).
    fn delete_login(&self, key: [u8; 32]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the logins `dead` says have ended, then returns the others
    /// (rules 3 and 4), in no particular order.
    fn live_logins<F>(
        &self,
        dead: F,
    ) -> impl Future<Output = Result<Vec<StoredLogin>, StoreError>> + Send
    where
        F: Fn(&StoredLogin) -> bool + Send + 'static;
}

impl LoginStore for Backend {
    async fn save_login(&self, login: StoredLogin) -> Result<(), StoreError> {
        dispatch!(self, b => b.save_login(login))
    }

    async fn touch_login(&self, key: [u8; 32], last_ms: i64) -> Result<(), StoreError> {
        dispatch!(self, b => b.touch_login(key, last_ms))
    }

    async fn delete_login(&self, key: [u8; 32]) -> Result<(), StoreError> {
        dispatch!(self, b => b.delete_login(key))
    }

    async fn live_logins<F>(&self, dead: F) -> Result<Vec<StoredLogin>, StoreError>
    where
        F: Fn(&StoredLogin) -> bool + Send + 'static,
    {
        dispatch!(self, b => b.live_logins(dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_of_32_bytes_are_logins_of_this_server() {
        // (stored key, kept)
        let cases: [(Vec<u8>, Option<[u8; 32]>); 4] = [
            (vec![7; 32], Some([7; 32])),
            (vec![7; 31], None),
            (vec![7; 33], None),
            (vec![], None),
        ];
        for (key, kept) in cases {
            assert_eq!(stored_key(key.clone()), kept, "{key:?}");
        }
    }

    #[test]
    fn logins_are_split_by_the_callers_decision_in_order() {
        let login = |b: u8, last_ms: i64| StoredLogin {
            key: [b; 32],
            role: "viewer".into(),
            csrf: String::new(),
            token_sha256: String::new(),
            created_ms: 0,
            last_ms,
        };
        let all = vec![login(1, 10), login(2, 60), login(3, 20), login(4, 70)];
        // (ended before, ended, live)
        let cases: [(i64, &[u8], &[u8]); 3] = [
            (0, &[], &[1, 2, 3, 4]),
            (50, &[1, 3], &[2, 4]),
            (100, &[1, 2, 3, 4], &[]),
        ];
        for (before, ended, live) in cases {
            let (e, l) = split_ended(all.clone(), |l| l.last_ms < before);
            let keys = |v: Vec<StoredLogin>| v.iter().map(|l| l.key[0]).collect::<Vec<_>>();
            assert_eq!(
                (keys(e), keys(l)),
                (ended.to_vec(), live.to_vec()),
                "{before}"
            );
        }
    }
}
