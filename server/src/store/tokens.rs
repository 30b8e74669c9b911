//! Enrollment tokens: created, listed and revoked by operators, consumed by
//! agents registering for the first time.
//!
//! Only the SHA-256 of a secret is stored, so a copy of the database does not
//! enroll agents. Consuming a token (checking expiry, revocation and uses
//! left, then counting the use) is one transaction: two agents racing for the
//! last use cannot both win. A refusal of a known token is counted on its row
//! (`refused`), so `outrider tokens` shows who keeps knocking.
//!
//! Every token expires. The server's own token, written to
//! `<data-dir>/enrollment.token` on first start (or given with
//! `--enrollment-token(-file)`), is the row [`BOOTSTRAP_TOKEN_ID`]: it expires
//! like the others and can be revoked, and the row survives restarts as long
//! as the secret stays the same, so neither its expiry nor a revocation is
//! undone by restarting the server.

use anyhow::Context;
use outrider_protocol::api::{
    CreatedEnrollmentToken, DEFAULT_TOKEN_EXPIRES_IN_SECS, EnrollmentTokenInfo,
    MAX_TOKEN_EXPIRES_IN_SECS, NewEnrollmentToken,
};
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::checks::json_tags;
use super::{Store, now_ms};

/// Id of the row of the server's own token.
pub const BOOTSTRAP_TOKEN_ID: &str = "bootstrap";

/// Why an enrollment token was refused; each is its own sentence to the agent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRefusal {
    #[error("the enrollment token is not valid")]
    Unknown,
    #[error("the enrollment token {id} was revoked; ask for a new one")]
    Revoked { id: String },
    #[error("the enrollment token {id} expired; ask for a new one")]
    Expired { id: String },
    #[error("the enrollment token {id} has no uses left; ask for a new one")]
    UsedUp { id: String },
}

/// Why an unknown agent was refused enrollment, as `/metrics` counts it
/// (`outrider_refused_enrollments_total{reason}`): a host that keeps
/// knocking with a stale token shows up there before anyone reads a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollmentRefusal {
    /// An unknown agent presented no token at all.
    Missing,
    Unknown,
    Revoked,
    Expired,
    UsedUp,
}

impl EnrollmentRefusal {
    pub const ALL: [Self; 5] = [
        Self::Missing,
        Self::Unknown,
        Self::Revoked,
        Self::Expired,
        Self::UsedUp,
    ];

    /// Position in [`Self::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::UsedUp => "used_up",
        }
    }
}

impl From<&TokenRefusal> for EnrollmentRefusal {
    fn from(refusal: &TokenRefusal) -> Self {
        match refusal {
            TokenRefusal::Unknown => Self::Unknown,
            TokenRefusal::Revoked { .. } => Self::Revoked,
            TokenRefusal::Expired { .. } => Self::Expired,
            TokenRefusal::UsedUp { .. } => Self::UsedUp,
        }
    }
}

/// What an accepted token grants the agent that presented it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    /// The token's id, recorded with the agent.
    pub id: String,
    /// Tags the agent may declare; `None` = any.
    pub allowed_tags: Option<Vec<String>>,
}

/// How the server's own token is set up at start.
#[derive(Clone, Debug)]
pub struct BootstrapToken {
    /// The secret (from `enrollment.token` or the command line).
    pub secret: String,
    /// Lifetime when the secret is new to the store.
    pub expires_in_secs: u64,
    /// Registrations it allows when new; `None` = unlimited.
    pub uses: Option<u32>,
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
    Ok(hex::encode(buf))
}

/// When a token created at `now_ms` for `expires_in_secs` (default
/// [`DEFAULT_TOKEN_EXPIRES_IN_SECS`], at most [`MAX_TOKEN_EXPIRES_IN_SECS`])
/// stops working.
pub fn expiry_ms(now_ms: i64, expires_in_secs: Option<u64>) -> i64 {
    let secs = expires_in_secs
        .unwrap_or(DEFAULT_TOKEN_EXPIRES_IN_SECS)
        .min(MAX_TOKEN_EXPIRES_IN_SECS);
    // At most a year of milliseconds: no overflow.
    now_ms.saturating_add(secs as i64 * 1000)
}

/// The verdict on a stored token at `now` (pure, tested by table).
fn judge(
    id: &str,
    expires_at_ms: Option<i64>,
    uses_left: Option<i64>,
    revoked_at_ms: Option<i64>,
    now: i64,
) -> Result<(), TokenRefusal> {
    let id = id.to_owned();
    if revoked_at_ms.is_some() {
        return Err(TokenRefusal::Revoked { id });
    }
    if expires_at_ms.is_some_and(|e| e <= now) {
        return Err(TokenRefusal::Expired { id });
    }
    if uses_left.is_some_and(|u| u <= 0) {
        return Err(TokenRefusal::UsedUp { id });
    }
    Ok(())
}

/// Why a token row cannot enroll anyone at `now` ("revoked", "expired",
/// "used up"), or `None` while it can.
pub fn token_status(info: &EnrollmentTokenInfo, now: i64) -> Option<&'static str> {
    let uses_left = info.uses_left.map(i64::from);
    match judge(
        &info.id,
        info.expires_at_ms,
        uses_left,
        info.revoked_at_ms,
        now,
    ) {
        Ok(()) => None,
        Err(TokenRefusal::Revoked { .. }) => Some("revoked"),
        Err(TokenRefusal::Expired { .. }) => Some("expired"),
        Err(_) => Some("used up"),
    }
}

const TOKEN_COLUMNS: &str = "SELECT id, note, created_at_ms, expires_at_ms, uses_left, used,
        revoked_at_ms, allowed_tags, refused FROM enrollment_tokens";

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EnrollmentTokenInfo> {
    Ok(EnrollmentTokenInfo {
        id: r.get(0)?,
        note: r.get(1)?,
        created_at_ms: r.get(2)?,
        expires_at_ms: r.get(3)?,
        uses_left: r.get(4)?,
        used: r.get::<_, i64>(5)? as u64,
        revoked_at_ms: r.get(6)?,
        allowed_tags: r.get::<_, Option<String>>(7)?.map(json_tags),
        refused: r.get::<_, i64>(8)? as u64,
    })
}

impl Store {
    /// Creates a token; the returned secret is not stored anywhere. The
    /// caller has validated `req` (tags normalised).
    pub async fn create_enrollment_token(
        &self,
        req: NewEnrollmentToken,
    ) -> anyhow::Result<CreatedEnrollmentToken> {
        let id = random_hex(4)?;
        let token = random_hex(32)?;
        let hash = secret_hash(&token);
        self.call(move |c| {
            let now = now_ms();
            let expires = expiry_ms(now, req.expires_in_secs);
            let tags = req.allowed_tags.as_ref().map(serde_json::to_string).transpose()?;
            c.execute(
                "INSERT INTO enrollment_tokens
                     (id, secret_sha256, note, created_at_ms, expires_at_ms, uses_left, allowed_tags)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, hash, req.note, now, expires, req.uses, tags],
            )
            .context("storing the enrollment token")?;
            Ok(CreatedEnrollmentToken {
                token,
                info: EnrollmentTokenInfo {
                    id,
                    note: req.note,
                    created_at_ms: now,
                    expires_at_ms: Some(expires),
                    uses_left: req.uses,
                    used: 0,
                    revoked_at_ms: None,
                    allowed_tags: req.allowed_tags,
                    refused: 0,
                },
            })
        })
        .await
    }

    /// Records the server's own token as the row [`BOOTSTRAP_TOKEN_ID`].
    ///
    /// The same secret as last time keeps its row as it is (expiry, uses,
    /// revocation); a new secret replaces the row, starting a new lifetime.
    /// Returns the row.
    pub async fn ensure_bootstrap_token(
        &self,
        token: BootstrapToken,
    ) -> anyhow::Result<EnrollmentTokenInfo> {
        let hash = secret_hash(&token.secret);
        self.call(move |c| {
            let tx = c.transaction()?;
            let stored: Option<String> = tx
                .query_row(
                    "SELECT secret_sha256 FROM enrollment_tokens WHERE id = ?1",
                    [BOOTSTRAP_TOKEN_ID],
                    |r| r.get(0),
                )
                .optional()?;
            if stored.as_deref() != Some(hash.as_str()) {
                let now = now_ms();
                // The secret may have been created as an ordinary token
                // before; it is the bootstrap token from now on.
                tx.execute(
                    "DELETE FROM enrollment_tokens WHERE id = ?1 OR secret_sha256 = ?2",
                    params![BOOTSTRAP_TOKEN_ID, hash],
                )?;
                tx.execute(
                    "INSERT INTO enrollment_tokens
                         (id, secret_sha256, note, created_at_ms, expires_at_ms, uses_left)
                     VALUES (?1, ?2, 'the server''s enrollment.token', ?3, ?4, ?5)",
                    params![
                        BOOTSTRAP_TOKEN_ID,
                        hash,
                        now,
                        expiry_ms(now, Some(token.expires_in_secs)),
                        token.uses
                    ],
                )
                .context("recording the bootstrap enrollment token")?;
            }
            let info = tx.query_row(
                &format!("{TOKEN_COLUMNS} WHERE id = ?1"),
                [BOOTSTRAP_TOKEN_ID],
                token_from_row,
            )?;
            tx.commit()?;
            Ok(info)
        })
        .await
    }

    /// Every token, newest first.
    pub async fn enrollment_tokens(&self) -> anyhow::Result<Vec<EnrollmentTokenInfo>> {
        self.read(|c| {
            let mut stmt =
                c.prepare(&format!("{TOKEN_COLUMNS} ORDER BY created_at_ms DESC, id"))?;
            let rows = stmt.query_map([], token_from_row)?;
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

    /// Checks `secret` and counts one use of it, or one refusal.
    ///
    /// The outer error is a store failure; the inner one says why a token
    /// was refused.
    pub async fn consume_enrollment_token(
        &self,
        secret: &str,
    ) -> anyhow::Result<Result<TokenGrant, TokenRefusal>> {
        let hash = secret_hash(secret);
        self.call(move |c| {
            let tx = c.transaction()?;
            // id, expires_at_ms, uses_left, revoked_at_ms, allowed_tags
            type Row = (
                String,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<String>,
            );
            let row: Option<Row> = tx
                .query_row(
                    "SELECT id, expires_at_ms, uses_left, revoked_at_ms, allowed_tags
                     FROM enrollment_tokens WHERE secret_sha256 = ?1",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let Some((id, expires, uses_left, revoked, tags)) = row else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            if let Err(refusal) = judge(&id, expires, uses_left, revoked, now_ms()) {
                tx.execute(
                    "UPDATE enrollment_tokens SET refused = refused + 1 WHERE id = ?1",
                    [&id],
                )?;
                tx.commit()?;
                return Ok(Err(refusal));
            }
            tx.execute(
                "UPDATE enrollment_tokens SET used = used + 1,
                     uses_left = CASE WHEN uses_left IS NULL THEN NULL ELSE uses_left - 1 END
                 WHERE id = ?1",
                [&id],
            )?;
            tx.commit()?;
            Ok(Ok(TokenGrant {
                id,
                allowed_tags: tags.map(json_tags),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_lifetimes_by_table() {
        let refused = |f: fn(String) -> TokenRefusal| Err(f("t".into()));
        // (expires_at_ms, uses_left, revoked_at_ms) at now = 100
        let cases = [
            ((Some(101), None, None), Ok(())),
            (
                (Some(100), None, None),
                refused(|id| TokenRefusal::Expired { id }),
            ),
            ((None, Some(1), None), Ok(())),
            (
                (None, Some(0), None),
                refused(|id| TokenRefusal::UsedUp { id }),
            ),
            // Revocation wins over every other reason.
            (
                (Some(1), Some(0), Some(5)),
                refused(|id| TokenRefusal::Revoked { id }),
            ),
        ];
        for ((expires, uses, revoked), want) in cases {
            assert_eq!(judge("t", expires, uses, revoked, 100), want);
        }
        assert_eq!(expiry_ms(0, None), 86_400_000);
        assert_eq!(expiry_ms(0, Some(60)), 60_000);
        assert_eq!(expiry_ms(0, Some(u64::MAX)), 365 * 86_400_000);
    }

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
