//! Enrollment tokens: created, listed and revoked by operators, consumed by
//! agents registering for the first time.
//!
//! Only the SHA-256 of a secret is stored, so a copy of the database does not
//! enroll agents. Consuming a token (checking expiry, revocation and uses
//! left, then counting the use) is one transaction: two agents racing for the
//! last use cannot both win.

use anyhow::Context;
use outrider_protocol::api::{CreatedEnrollmentToken, EnrollmentTokenInfo, NewEnrollmentToken};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{Store, now_ms};

/// Why an enrollment token was refused; each is its own sentence to the agent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRefusal {
    #[error("the enrollment token is not valid")]
    Unknown,
    #[error("the enrollment token {id} was revoked")]
    Revoked { id: String },
    #[error("the enrollment token {id} expired")]
    Expired { id: String },
    #[error("the enrollment token {id} has no uses left")]
    UsedUp { id: String },
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
    Ok(hex::encode(buf))
}

impl Store {
    /// Creates a token; the returned secret is not stored anywhere.
    pub async fn create_enrollment_token(
        &self,
        req: NewEnrollmentToken,
    ) -> anyhow::Result<CreatedEnrollmentToken> {
        let id = random_hex(4)?;
        let token = random_hex(32)?;
        let hash = secret_hash(&token);
        self.call(move |c| {
            let now = now_ms();
            let expires = req
                .expires_in_secs
                .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX / 2000) * 1000));
            c.execute(
                "INSERT INTO enrollment_tokens (id, secret_sha256, note, created_at_ms, expires_at_ms, uses_left)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, hash, req.note, now, expires, req.uses],
            )
            .context("storing the enrollment token")?;
            Ok(CreatedEnrollmentToken {
                token,
                info: EnrollmentTokenInfo {
                    id,
                    note: req.note,
                    created_at_ms: now,
                    expires_at_ms: expires,
                    uses_left: req.uses,
                    used: 0,
                    revoked_at_ms: None,
                },
            })
        })
        .await
    }

    /// Every token, newest first.
    pub async fn enrollment_tokens(&self) -> anyhow::Result<Vec<EnrollmentTokenInfo>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id, note, created_at_ms, expires_at_ms, uses_left, used, revoked_at_ms
                 FROM enrollment_tokens ORDER BY created_at_ms DESC, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(EnrollmentTokenInfo {
                    id: r.get(0)?,
                    note: r.get(1)?,
                    created_at_ms: r.get(2)?,
                    expires_at_ms: r.get(3)?,
                    uses_left: r.get(4)?,
                    used: r.get::<_, i64>(5)? as u64,
                    revoked_at_ms: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Revokes token `id`; false when no such token exists. Revoking twice
    /// keeps the first time.
    pub async fn revoke_enrollment_token(&self, id: String) -> anyhow::Result<bool> {
        self.call(move |c| {
            let found = c.execute(
                "UPDATE enrollment_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE id = ?1",
                params![id, now_ms()],
            )?;
            Ok(found > 0)
        })
        .await
    }

    /// Checks `secret` and counts one use of it.
    ///
    /// The outer error is a store failure; the inner one says why a token
    /// was refused.
    pub async fn consume_enrollment_token(
        &self,
        secret: &str,
    ) -> anyhow::Result<Result<(), TokenRefusal>> {
        let hash = secret_hash(secret);
        self.call(move |c| {
            let tx = c.transaction()?;
            // id, expires_at_ms, uses_left, revoked_at_ms
            type Row = (String, Option<i64>, Option<i64>, Option<i64>);
            let row: Option<Row> = tx
                .query_row(
                    "SELECT id, expires_at_ms, uses_left, revoked_at_ms
                     FROM enrollment_tokens WHERE secret_sha256 = ?1",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((id, expires, uses_left, revoked)) = row else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            if revoked.is_some() {
                return Ok(Err(TokenRefusal::Revoked { id }));
            }
            if expires.is_some_and(|e| e <= now_ms()) {
                return Ok(Err(TokenRefusal::Expired { id }));
            }
            if uses_left.is_some_and(|u| u <= 0) {
                return Ok(Err(TokenRefusal::UsedUp { id }));
            }
            tx.execute(
                "UPDATE enrollment_tokens SET used = used + 1,
                     uses_left = CASE WHEN uses_left IS NULL THEN NULL ELSE uses_left - 1 END
                 WHERE id = ?1",
                [&id],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_expire_run_out_and_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).await.unwrap();
        let once = store
            .create_enrollment_token(NewEnrollmentToken {
                note: "ci".into(),
                uses: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            store.consume_enrollment_token(&once.token).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            store.consume_enrollment_token(&once.token).await.unwrap(),
            Err(TokenRefusal::UsedUp {
                id: once.info.id.clone()
            })
        );
        let expired = store
            .create_enrollment_token(NewEnrollmentToken {
                expires_in_secs: Some(0),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .consume_enrollment_token(&expired.token)
                .await
                .unwrap(),
            Err(TokenRefusal::Expired {
                id: expired.info.id.clone()
            })
        );
        let open = store
            .create_enrollment_token(NewEnrollmentToken::default())
            .await
            .unwrap();
        assert!(
            store
                .revoke_enrollment_token(open.info.id.clone())
                .await
                .unwrap()
        );
        assert_eq!(
            store.consume_enrollment_token(&open.token).await.unwrap(),
            Err(TokenRefusal::Revoked {
                id: open.info.id.clone()
            })
        );
        assert_eq!(
            store.consume_enrollment_token("nope").await.unwrap(),
            Err(TokenRefusal::Unknown)
        );
        let listed = store.enrollment_tokens().await.unwrap();
        assert_eq!(listed.len(), 3);
        let once_row = listed.iter().find(|t| t.id == once.info.id).unwrap();
        assert_eq!((once_row.used, once_row.uses_left), (1, Some(0)));
        assert!(
            !store
                .revoke_enrollment_token("missing".into())
                .await
                .unwrap()
        );
    }
}
