//! The enrollment tokens area on PostgreSQL (table of
//! migrations/0006_tokens.sql).
//!
//! Concurrency. SQLite runs one consumption at a time (one writer), so each
//! reads the token, judges it ([`judge`]) and counts a use or a refusal as
//! if it were alone. Here several nodes enroll agents at once; a
//! consumption gets the same result by locking the token's row with its
//! first statement (`SELECT … FOR UPDATE`) and keeping the lock to its
//! commit. Under READ COMMITTED a consumption that waited for another's
//! lock then reads the row's newest version, with that one's use counted,
//! so the verdict is the same pure function as SQLite's on the same row
//! SQLite's writer would see: a token with `n` uses left enrolls at most
//! `n` agents however many nodes race for it, and each refusal is counted
//! once. A row lock rather than one guarded `UPDATE … WHERE uses_left > 0`:
//! the refusal must be judged and counted on the very row version that
//! refused it (a guarded update that matches nothing would need a second,
//! unlocked read to say why, which can see a later state), nothing has to
//! be retried, and only consumptions of the same token wait for each other.
//! The table's `CHECK (uses_left >= 0)` refuses an over-use should any
//! write get this wrong.
//!
//! The bootstrap row: nodes sharing a database start with the same secret
//! (given with `--enrollment-token-file`); their `ensure_bootstrap_token`
//! calls take turns on a transaction-scoped advisory lock
//! ([`BOOTSTRAP_LOCK`]; there may be no row to lock yet), so the first
//! inserts the row and the others find it and keep it, instead of two
//! inserts colliding on the id.

use outrider_protocol::api::{CreatedEnrollmentToken, EnrollmentTokenInfo, NewEnrollmentToken};

use super::PgBackend;
use crate::backend::StoreError;
use crate::backend::tokens::{
    BOOTSTRAP_NOTE, BOOTSTRAP_TOKEN_ID, BootstrapToken, MintedToken, TokenGrant, TokenRefusal,
    TokenStore, expiry_ms, judge, keeps_bootstrap_row, new_token_info, secret_hash,
};

/// The advisory lock key `ensure_bootstrap_token` runs under ("outrboot"
/// in ASCII).
pub const BOOTSTRAP_LOCK: i64 = 0x6f75_7472_626f_6f74;

/// The query behind [`token_from_row`].
const TOKEN_COLUMNS: &str = "SELECT id, note, created_at_ms, expires_at_ms, uses_left, used,
        revoked_at_ms, allowed_tags, refused FROM enrollment_tokens";

/// A stored count, checked against the type it is reported in.
fn stored<T: TryFrom<i64>>(what: &'static str, value: i64) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Malformed {
        what,
        value: value.to_string(),
    })
}

/// Maps a row of [`TOKEN_COLUMNS`]; a malformed stored count is
/// [`StoreError::Malformed`].
fn token_from_row(r: &tokio_postgres::Row) -> Result<EnrollmentTokenInfo, StoreError> {
    Ok(EnrollmentTokenInfo {
        id: r.get(0),
        note: r.get(1),
        created_at_ms: r.get(2),
        expires_at_ms: r.get(3),
        uses_left: r
            .get::<_, Option<i64>>(4)
            .map(|u| stored("uses left of an enrollment token", u))
            .transpose()?,
        used: stored("uses of an enrollment token", r.get(5))?,
        revoked_at_ms: r.get(6),
        allowed_tags: r.get(7),
        refused: stored("refusals of an enrollment token", r.get(8))?,
    })
}

/// Whether a consumption's commit must wait for the disk: only when it
/// counts down a token's remaining uses (`uses_left` is `Some`), which is
/// what keeps a token of n uses from enrolling more than n agents after a
/// crash. The count of an unlimited token, or of a refusal, is a
/// statistic: its commit returns before the disk has it (a crash may forget
/// the last few counted, never an enrollment, which registration commits
/// durably on its own). That matters when a fleet enrolls at once: every
/// consumption of one token takes turns on its row until commit, and
/// 10,000 agents installed together with one unlimited token queued
/// behind one disk flush each, past their handshake timeout.
fn count_is_durable(uses_left: Option<i64>, admitted: bool) -> bool {
    admitted && uses_left.is_some()
}

impl TokenStore for PgBackend {
    async fn create_enrollment_token(
        &self,
        minted: MintedToken,
        req: NewEnrollmentToken,
        now_ms: i64,
    ) -> Result<CreatedEnrollmentToken, StoreError> {
        let hash = secret_hash(&minted.secret);
        let info = new_token_info(minted.id, req, now_ms);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO enrollment_tokens
                     (id, secret_sha256, note, created_at_ms, expires_at_ms, uses_left, allowed_tags)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &info.id,
                    &hash,
                    &info.note,
                    &info.created_at_ms,
                    &info.expires_at_ms,
                    &info.uses_left.map(i64::from),
                    &info.allowed_tags,
                ],
            )
            .await?;
        Ok(CreatedEnrollmentToken {
            token: minted.secret,
            info,
        })
    }

    async fn ensure_bootstrap_token(
        &self,
        token: BootstrapToken,
        now_ms: i64,
    ) -> Result<EnrollmentTokenInfo, StoreError> {
        let hash = secret_hash(&token.secret);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Nodes starting together take turns (module comment).
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK])
            .await?;
        let stored: Option<String> = tx
            .query_opt(
                "SELECT secret_sha256 FROM enrollment_tokens WHERE id = $1",
                &[&BOOTSTRAP_TOKEN_ID],
            )
            .await?
            .map(|r| r.get(0));
        if !keeps_bootstrap_row(stored.as_deref(), &hash) {
            // The secret may have been created as an ordinary token
            // before; it is the bootstrap token from now on.
            tx.execute(
                "DELETE FROM enrollment_tokens WHERE id = $1 OR secret_sha256 = $2",
                &[&BOOTSTRAP_TOKEN_ID, &hash],
            )
            .await?;
            tx.execute(
                "INSERT INTO enrollment_tokens
                     (id, secret_sha256, note, created_at_ms, expires_at_ms, uses_left)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &BOOTSTRAP_TOKEN_ID,
                    &hash,
                    &BOOTSTRAP_NOTE,
                    &now_ms,
                    &expiry_ms(now_ms, Some(token.expires_in_secs)),
                    &token.uses.map(i64::from),
                ],
            )
            .await?;
        }
        let row = tx
            .query_one(
                &format!("{TOKEN_COLUMNS} WHERE id = $1"),
                &[&BOOTSTRAP_TOKEN_ID],
            )
            .await?;
        let info = token_from_row(&row)?;
        tx.commit().await?;
        Ok(info)
    }

    async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenInfo>, StoreError> {
        let client = self.client().await?;
        // Ids in byte order, as SQLite sorts, whatever the collation.
        let stmt = client
            .prepare_cached(&format!(
                "{TOKEN_COLUMNS} ORDER BY created_at_ms DESC, id COLLATE \"C\""
            ))
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(token_from_row)
            .collect()
    }

    async fn revoke_enrollment_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // One statement: of two concurrent revocations the second, after
        // waiting for the first's row lock, sees its time and keeps it.
        let stmt = client
            .prepare_cached(
                "UPDATE enrollment_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, $2)
                 WHERE id = $1",
            )
            .await?;
        Ok(client.execute(&stmt, &[&id, &now_ms]).await? > 0)
    }

    async fn consume_enrollment_token(
        &self,
        secret: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRefusal>, StoreError> {
        let hash = secret_hash(secret);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The row lock is held to the commit, so the verdict and the count
        // are made on the newest row and no other consumption of this token
        // runs in between (module comment).
        let lock = tx
            .prepare_cached(
                "SELECT id, expires_at_ms, uses_left, revoked_at_ms, allowed_tags
                 FROM enrollment_tokens WHERE secret_sha256 = $1
                 FOR UPDATE",
            )
            .await?;
        let Some(row) = tx.query_opt(&lock, &[&hash]).await? else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let id: String = row.get(0);
        let verdict = judge(&id, row.get(1), row.get(2), row.get(3), now_ms);
        let count = if verdict.is_ok() {
            "UPDATE enrollment_tokens SET used = used + 1, uses_left = uses_left - 1
             WHERE id = $1"
        } else {
            "UPDATE enrollment_tokens SET refused = refused + 1 WHERE id = $1"
        };
        let count = tx.prepare_cached(count).await?;
        tx.execute(&count, &[&id]).await?;
        if !count_is_durable(row.get(2), verdict.is_ok()) {
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await?;
        }
        tx.commit().await?;
        Ok(verdict.map(|()| TokenGrant {
            allowed_tags: row.get(4),
            id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::count_is_durable;

    #[test]
    fn only_a_count_down_of_limited_uses_waits_for_the_disk() {
        // (uses_left, admitted, durable)
        let cases = [
            (Some(3), true, true),
            (Some(0), true, true),
            (None, true, false),
            (Some(3), false, false),
            (None, false, false),
        ];
        for (uses_left, admitted, durable) in cases {
            assert_eq!(
                count_is_durable(uses_left, admitted),
                durable,
                "{uses_left:?} {admitted}"
            );
        }
    }
}
