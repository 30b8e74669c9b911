//! The dashboard logins area on SQLite: the statements the server has
//! always run (moved here from server/src/store/logins.rs, whose `Store`
//! methods now call these), on `dashboard_logins` of
//! server/src/store/schema.sql. One writer, so the prune of
//! [`LoginStore::live_logins`] reads, decides and deletes in one immediate
//! transaction with nothing in between.

use rusqlite::params;

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::logins::{LoginStore, StoredLogin, split_ended, stored_key};

impl LoginStore for SqliteBackend {
    async fn save_login(&self, login: StoredLogin) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
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

    async fn touch_login(&self, key: [u8; 32], last_ms: i64) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE dashboard_logins SET last_ms = ?2 WHERE key = ?1",
                params![key.as_slice(), last_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_login(&self, key: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM dashboard_logins WHERE key = ?1",
                [key.as_slice()],
            )?;
            Ok(())
        })
        .await
    }

    async fn live_logins<F>(&self, dead: F) -> Result<Vec<StoredLogin>, StoreError>
    where
        F: Fn(&StoredLogin) -> bool + Send + 'static,
    {
        self.write(move |tx| {
            let mut stmt = tx.prepare(
                "SELECT key, role, csrf, token_sha256, created_ms, last_ms FROM dashboard_logins",
            )?;
            let rows = stmt.query_map([], |r| {
                let key: Vec<u8> = r.get(0)?;
                Ok((key, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?;
            let mut all = Vec::new();
            for row in rows {
                let (key, role, csrf, token_sha256, created_ms, last_ms) = row?;
                if let Some(key) = stored_key(key) {
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
            let (ended, live) = split_ended(all, dead);
            for login in &ended {
                tx.execute(
                    "DELETE FROM dashboard_logins WHERE key = ?1",
                    [login.key.as_slice()],
                )?;
            }
            Ok(live)
        })
        .await
    }
}
