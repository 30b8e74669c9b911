//! The dashboard logins area on PostgreSQL (table of
//! migrations/0007_logins.sql).
//!
//! Concurrency. Every node keeps its own in-memory session table and
//! writes through to this shared one; each write is one statement:
//! - a save is `INSERT … ON CONFLICT (key) DO UPDATE` of every column, so
//!   two nodes saving one key leave one of the two logins whole;
//! - a touch only moves `last_ms` forward (`GREATEST`): touches of one
//!   login from two nodes, or a late one from a slow node, never make it
//!   look idle for longer than it is;
//! - the prune at a node's start ([`LoginStore::live_logins`]) reads every
//!   login, decides with the caller's rule, then deletes the ended ones in
//!   one statement only where `last_ms` is still what it read (rule 4 of
//!   `backend/logins.rs`): a login another node touched meanwhile was in
//!   use there, so it is kept rather than deleted under that node's
//!   browser, and decided again on its newest version (returned when live
//!   now). No lock is held across the decision, which runs the caller's
//!   code.

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::logins::{LoginStore, StoredLogin, split_ended, stored_key};

impl LoginStore for PgBackend {
    async fn save_login(&self, login: StoredLogin) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO dashboard_logins (key, role, csrf, token_sha256, created_ms, last_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key) DO UPDATE SET
                     role = excluded.role, csrf = excluded.csrf,
                     token_sha256 = excluded.token_sha256,
                     created_ms = excluded.created_ms, last_ms = excluded.last_ms",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &login.key.as_slice(),
                    &login.role,
                    &login.csrf,
                    &login.token_sha256,
                    &login.created_ms,
                    &login.last_ms,
                ],
            )
            .await?;
        Ok(())
    }

    async fn touch_login(&self, key: [u8; 32], last_ms: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE dashboard_logins SET last_ms = GREATEST(last_ms, $2) WHERE key = $1",
            )
            .await?;
        client.execute(&stmt, &[&key.as_slice(), &last_ms]).await?;
        Ok(())
    }

    async fn delete_login(&self, key: [u8; 32]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM dashboard_logins WHERE key = $1")
            .await?;
        client.execute(&stmt, &[&key.as_slice()]).await?;
        Ok(())
    }

    async fn live_logins<F>(&self, dead: F) -> Result<Vec<StoredLogin>, StoreError>
    where
        F: Fn(&StoredLogin) -> bool + Send + 'static,
    {
        let client = self.client().await?;
        let read = client
            .prepare_cached(
                "SELECT key, role, csrf, token_sha256, created_ms, last_ms FROM dashboard_logins",
            )
            .await?;
        let all: Vec<StoredLogin> = client
            .query(&read, &[])
            .await?
            .into_iter()
            .filter_map(|r| {
                Some(StoredLogin {
                    key: stored_key(r.get(0))?,
                    role: r.get(1),
                    csrf: r.get(2),
                    token_sha256: r.get(3),
                    created_ms: r.get(4),
                    last_ms: r.get(5),
                })
            })
            .collect();
        let (ended, mut live) = split_ended(all, &dead);
        if ended.is_empty() {
            return Ok(live);
        }
        let keys: Vec<&[u8]> = ended.iter().map(|l| l.key.as_slice()).collect();
        let last: Vec<i64> = ended.iter().map(|l| l.last_ms).collect();
        // Deleted only as read; the keys not deleted were touched since.
        let prune = client
            .prepare_cached(
                "DELETE FROM dashboard_logins d
                 USING unnest($1::bytea[], $2::bigint[]) AS e(key, last_ms)
                 WHERE d.key = e.key AND d.last_ms = e.last_ms
                 RETURNING d.key",
            )
            .await?;
        let deleted: Vec<Vec<u8>> = client
            .query(&prune, &[&keys, &last])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let kept: Vec<&[u8; 32]> = ended
            .iter()
            .map(|l| &l.key)
            .filter(|k| !deleted.iter().any(|d| d.as_slice() == k.as_slice()))
            .collect();
        if !kept.is_empty() {
            // Touched by another node since the read: decided again on
            // the newest version; left stored either way (that node uses
            // it), and returned only when live now.
            let keys: Vec<&[u8]> = kept.iter().map(|k| k.as_slice()).collect();
            let now = client
                .prepare_cached(
                    "SELECT key, role, csrf, token_sha256, created_ms, last_ms
                     FROM dashboard_logins WHERE key = ANY($1)",
                )
                .await?;
            for r in client.query(&now, &[&keys]).await? {
                if let Some(key) = stored_key(r.get(0)) {
                    let login = StoredLogin {
                        key,
                        role: r.get(1),
                        csrf: r.get(2),
                        token_sha256: r.get(3),
                        created_ms: r.get(4),
                        last_ms: r.get(5),
                    };
                    if !dead(&login) {
                        live.push(login);
                    }
                }
            }
        }
        Ok(live)
    }
}
