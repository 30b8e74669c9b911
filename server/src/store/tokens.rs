//! Enrollment tokens, on the server's SQLite store.
//!
//! The area's interface, rules and types are `crate::backend::tokens`
//! ([`TokenStore`]); its SQLite statements live in
//! server/src/backend/sqlite/tokens.rs, its PostgreSQL ones in
//! server/src/backend/postgres/tokens.rs.
//!
//! The `Store` methods below are kept, each a call of the trait on
//! the backend the server runs on ([`Store::backend`]: this file, or the shared PostgreSQL), with the clock read (and a new
//! token's id and secret drawn) here, as server/src/store/agents.rs does:
//! the callers (the agent sessions, the API, the server's start, the
//! tests) are unchanged, and the statements exist once, behind the trait
//! both backends implement.

use anyhow::Context;
use outrider_protocol::api::{CreatedEnrollmentToken, EnrollmentTokenInfo, NewEnrollmentToken};

use crate::backend::Backend;
pub use crate::backend::tokens::{
    BOOTSTRAP_TOKEN_ID, BootstrapToken, EnrollmentRefusal, TokenGrant, TokenRefusal, token_status,
};
use crate::backend::tokens::{MintedToken, TokenStore};

use super::{Store, now_ms};

impl Store {
    /// The enrollment tokens area of this store behind its trait.
    fn tokens_area(&self) -> Backend {
        self.backend()
    }

    /// Creates a token; the returned secret is not stored anywhere. The
    /// caller has validated `req` (tags normalised).
    pub async fn create_enrollment_token(
        &self,
        req: NewEnrollmentToken,
    ) -> anyhow::Result<CreatedEnrollmentToken> {
        let minted =
            MintedToken::generate().map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
        self.tokens_area()
            .create_enrollment_token(minted, req, now_ms())
            .await
            .context("storing the enrollment token")
    }

    /// Records the server's own token as the row [`BOOTSTRAP_TOKEN_ID`]
    /// ([`TokenStore::ensure_bootstrap_token`]): the same secret as last
    /// time keeps its row as it is (expiry, uses, revocation); a new secret
    /// replaces the row, starting a new lifetime. Returns the row.
    pub async fn ensure_bootstrap_token(
        &self,
        token: BootstrapToken,
    ) -> anyhow::Result<EnrollmentTokenInfo> {
        self.tokens_area()
            .ensure_bootstrap_token(token, now_ms())
            .await
            .context("recording the bootstrap enrollment token")
    }

    /// Every token, newest first.
    pub async fn enrollment_tokens(&self) -> anyhow::Result<Vec<EnrollmentTokenInfo>> {
        Ok(self.tokens_area().enrollment_tokens().await?)
    }

    /// Revokes token `id`; false when no such token exists. Revoking twice
    /// keeps the first time.
    pub async fn revoke_enrollment_token(&self, id: String) -> anyhow::Result<bool> {
        Ok(self
            .tokens_area()
            .revoke_enrollment_token(&id, now_ms())
            .await?)
    }

    /// Checks `secret` and counts one use of it, or one refusal.
    ///
    /// The outer error is a store failure; the inner one says why a token
    /// was refused.
    pub async fn consume_enrollment_token(
        &self,
        secret: &str,
    ) -> anyhow::Result<Result<TokenGrant, TokenRefusal>> {
        Ok(self
            .tokens_area()
            .consume_enrollment_token(secret, now_ms())
            .await?)
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
            Ok(TokenGrant {
                id: once.info.id.clone(),
                allowed_tags: None
            })
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
