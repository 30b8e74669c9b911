//! Dashboard logins kept across restarts (`dashboard_logins` in
//! `schema.sql`). The session table of `server/src/dashboard/session.rs`
//! lives in memory and writes through here: a login, a logout, and its use
//! every few minutes; it reads all of them once, at start.

use rusqlite::params;

use super::Store;

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

impl Store {
    /// Stores (or replaces) `login`.
    pub async fn save_login(&self, login: StoredLogin) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO dashboard_logins
                     (key, role, csrf, token_sha256, created_ms, last_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    login.key.as_slice(),
                    login.role,
                    login.csrf,
                    login.token_sha256,
                    login.created_ms,
                    login.last_ms
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Records that login `key` was used at `last_ms`.
    pub async fn touch_login(&self, key: [u8; 32], last_ms: i64) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE dashboard_logins SET last_ms = ?2 WHERE key = ?1",
                params![key.as_slice(), last_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Forgets login `key` (a logout).
    pub async fn delete_login(&self, key: [u8; 32]) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM dashboard_logins WHERE key = ?1",
                [key.as_slice()],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes the logins `dead` says have ended, then returns the others.
    pub async fn live_logins(
        &self,
        dead: impl Fn(&StoredLogin) -> bool + Send + 'static,
    ) -> anyhow::Result<Vec<StoredLogin>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let all = {
                let mut stmt = tx
                    .prepare("SELECT key, role, csrf, token_sha256, created_ms, last_ms FROM dashboard_logins")?;
                let rows = stmt.query_map([], |r| {
                    let key: Vec<u8> = r.get(0)?;
                    Ok((key, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?;
                let mut all = Vec::new();
                for row in rows {
                    let (key, role, csrf, token_sha256, created_ms, last_ms) = row?;
                    // A key of another length cannot come from this server.
                    if let Ok(key) = <[u8; 32]>::try_from(key) {
                        all.push(StoredLogin {
                            key,
                            role,
                            csrf,
                            token_sha256,
                            created_ms,
                            last_ms,
                        });
                    }
                }
                all
            };
            let (ended, live): (Vec<_>, Vec<_>) = all.into_iter().partition(|l| dead(l));
            for login in &ended {
                tx.execute(
                    "DELETE FROM dashboard_logins WHERE key = ?1",
                    [login.key.as_slice()],
                )?;
            }
            tx.commit()?;
            Ok(live)
        })
        .await
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
