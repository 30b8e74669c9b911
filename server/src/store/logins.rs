//! Dashboard logins kept across restarts (`dashboard_logins` in
//! `schema.sql`). The session table of `server/src/dashboard/session.rs`
//! lives in memory and writes through here: a login, a logout, and its use
//! every few minutes; it reads all of them once, at start.
//!
//! The area's interface, rules and types are `crate::backend::logins`
//! ([`LoginStore`]); its SQLite statements live in
//! server/src/backend/sqlite/logins.rs, its PostgreSQL ones in
//! server/src/backend/postgres/logins.rs. The `Store` methods below are
//! one-line calls of the trait on the backend the server runs on ([`Store::backend`]: this file, or the shared PostgreSQL),
//! so the session table calls `Store` unchanged (as
//! server/src/store/agents.rs explains for the agents area).

use crate::backend::Backend;
use crate::backend::logins::LoginStore;
pub use crate::backend::logins::StoredLogin;

use super::Store;

impl Store {
    /// The logins area of this store behind its trait.
    fn logins_area(&self) -> Backend {
        self.backend()
    }

    /// Stores (or replaces) `login`.
    pub async fn save_login(&self, login: StoredLogin) -> anyhow::Result<()> {
        Ok(self.logins_area().save_login(login).await?)
    }

    /// Records that login `key` was used at `last_ms`.
    pub async fn touch_login(&self, key: [u8; 32], last_ms: i64) -> anyhow::Result<()> {
        Ok(self.logins_area().touch_login(key, last_ms).await?)
    }

    /// Forgets login `key` (a logout).
    pub async fn delete_login(&self, key: [u8; 32]) -> anyhow::Result<()> {
        Ok(self.logins_area().delete_login(key).await?)
    }

    /// Deletes the logins `dead` says have ended, then returns the others.
    pub async fn live_logins(
        &self,
        dead: impl Fn(&StoredLogin) -> bool + Send + 'static,
    ) -> anyhow::Result<Vec<StoredLogin>> {
        Ok(self.logins_area().live_logins(dead).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(byte: u8, last_ms: i64) -> StoredLogin {
        StoredLogin {
            key: [byte; 32],
            role: "viewer".into(),
            csrf: format!("csrf-{byte}"),
            token_sha256: "ab".repeat(32),
            created_ms: 0,
            last_ms,
        }
    }

    #[tokio::test]
    async fn logins_are_saved_touched_deleted_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        store.save_login(login(1, 10)).await.unwrap();
        store.save_login(login(2, 20)).await.unwrap();
        store.save_login(login(3, 30)).await.unwrap();
        store.touch_login([1; 32], 100).await.unwrap();
        store.delete_login([2; 32]).await.unwrap();
        // Those last used before 50 have ended.
        let live = store.live_logins(|l| l.last_ms < 50).await.unwrap();
        assert_eq!(live, [login(1, 100)]);
        let again = store.live_logins(|_| false).await.unwrap();
        assert_eq!(again, [login(1, 100)], "the ended one was deleted");
    }
}
