//! The enrollment tokens area on SQLite: the statements the server has
//! always run (moved here from server/src/store/tokens.rs, whose `Store`
//! methods now call these), on the `enrollment_tokens` table of
//! server/src/store/schema.sql. Writes run in one immediate transaction on
//! the single writer, so a consumption's read of the token, its verdict
//! ([`judge`]) and its count are atomic: two agents racing for the last use
//! cannot both win. Reads go through the read-only connections.

use outrider_protocol::api::{CreatedEnrollmentToken, EnrollmentTokenInfo, NewEnrollmentToken};
use rusqlite::{OptionalExtension, params};

use super::SqliteBackend;
use crate::backend::StoreError;
use crate::backend::tokens::{
    BOOTSTRAP_NOTE, BOOTSTRAP_TOKEN_ID, BootstrapToken, MintedToken, TokenGrant, TokenRefusal,
    TokenStore, expiry_ms, judge, keeps_bootstrap_row, new_token_info, secret_hash,
};
use crate::store::json_tags;

/// The query behind [`token_from_row`].
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

impl TokenStore for SqliteBackend {
    async fn create_enrollment_token(
        &self,
        minted: MintedToken,
        req: NewEnrollmentToken,
        now_ms: i64,
    ) -> Result<CreatedEnrollmentToken, StoreError> {
        let hash = secret_hash(&minted.secret);
        let info = new_token_info(minted.id, req, now_ms);
        self.write(move |tx| {
            // A list of strings always serialises.
            let tags = info
                .allowed_tags
                .as_ref()
                .map(|t| serde_json::to_string(t).expect("a list of strings serialises"));
            tx.execute(
                "INSERT INTO enrollment_tokens
                     (id, secret_sha256, note, created_at_ms, expires_at_ms, uses_left, allowed_tags)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    info.id,
                    hash,
                    info.note,
                    info.created_at_ms,
                    info.expires_at_ms,
                    info.uses_left,
                    tags
                ],
            )?;
            Ok(CreatedEnrollmentToken {
                token: minted.secret,
                info,
            })
        })
        .await
    }

    async fn ensure_bootstrap_token(
        &self,
        token: BootstrapToken,
        now_ms: i64,
    ) -> Result<EnrollmentTokenInfo, StoreError> {
        let hash = secret_hash(&token.secret);
        self.write(move |tx| {
            let stored: Option<String> = tx
                .query_row(
                    "SELECT secret_sha256 FROM enrollment_tokens WHERE id = ?1",
                    [BOOTSTRAP_TOKEN_ID],
                    |r| r.get(0),
                )
                .optional()?;
            if !keeps_bootstrap_row(stored.as_deref(), &hash) {
                // The secret may have been created as an ordinary token
                // before; it is the bootstrap token from now on.
                tx.execute(
                    "DELETE FROM enrollment_tokens WHERE id = ?1 OR secret_sha256 = ?2",
                    params![BOOTSTRAP_TOKEN_ID, hash],
                )?;
                tx.execute(
                    "INSERT INTO enrollment_tokens
                         (id, secret_sha256, note, created_at_ms, expires_at_ms, uses_left)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        BOOTSTRAP_TOKEN_ID,
                        hash,
                        BOOTSTRAP_NOTE,
                        now_ms,
                        expiry_ms(now_ms, Some(token.expires_in_secs)),
                        token.uses
                    ],
                )?;
            }
            Ok(tx.query_row(
                &format!("{TOKEN_COLUMNS} WHERE id = ?1"),
                [BOOTSTRAP_TOKEN_ID],
                token_from_row,
            )?)
        })
        .await
    }

    async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenInfo>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare(&format!("{TOKEN_COLUMNS} ORDER BY created_at_ms DESC, id"))?;
            let rows = stmt.query_map([], token_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn revoke_enrollment_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let found = tx.execute(
                "UPDATE enrollment_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE id = ?1",
                params![id, now_ms],
            )?;
            Ok(found > 0)
        })
        .await
    }

    async fn consume_enrollment_token(
        &self,
        secret: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRefusal>, StoreError> {
        let hash = secret_hash(secret);
        self.write(move |tx| {
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
            if let Err(refusal) = judge(&id, expires, uses_left, revoked, now_ms) {
                tx.execute(
                    "UPDATE enrollment_tokens SET refused = refused + 1 WHERE id = ?1",
                    [&id],
                )?;
                return Ok(Err(refusal));
            }
            tx.execute(
                "UPDATE enrollment_tokens SET used = used + 1,
                     uses_left = CASE WHEN uses_left IS NULL THEN NULL ELSE uses_left - 1 END
                 WHERE id = ?1",
                [&id],
            )?;
            Ok(Ok(TokenGrant {
                id,
                allowed_tags: tags.map(json_tags),
            }))
        })
        .await
    }
}
