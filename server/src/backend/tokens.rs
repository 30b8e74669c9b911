//! Enrollment tokens: created, listed and revoked by operators, consumed by
//! agents registering for the first time.
//!
//! Table `enrollment_tokens` (server/src/store/schema.sql for SQLite,
//! server/src/backend/postgres/migrations/0006_tokens.sql for PostgreSQL):
//! one row per token, keyed by a short public id, holding the SHA-256 of
//! its secret (never the secret: a copy of the database enrolls no agent),
//! its expiry, the uses left (`NULL`: unlimited), the uses and refusals
//! counted so far, its revocation and its tag allow-list.
//!
//! Rules (the pure functions below state the decisions; both backends run
//! them on the row as it is when they hold it, so they hold under
//! concurrent nodes too; the shared suite in `backend/token_tests.rs`
//! checks both):
//! 1. Every token expires ([`expiry_ms`]: the default lifetime when none is
//!    asked for, at most a year).
//! 2. A token is accepted while it is not revoked, not expired and has a use
//!    left ([`judge`]; revocation is reported first, then expiry, then
//!    uses). Consuming checks and counts one use in one step: a token with
//!    `n` uses left enrolls at most `n` agents however many nodes race for
//!    it. A refusal of a known token is counted on its row (`refused`), so
//!    `outrider tokens` shows who keeps knocking.
//! 3. Revoking twice keeps the first time.
//! 4. The server's own token (`<data-dir>/enrollment.token` or
//!    `--enrollment-token(-file)`) is the row [`BOOTSTRAP_TOKEN_ID`]: it
//!    expires and can be revoked like the others, and the row is kept as it
//!    is while the secret stays the same ([`keeps_bootstrap_row`]), so
//!    neither its expiry nor a revocation is undone by restarting; a new
//!    secret replaces it (and takes over a token created with that secret
//!    before).

use std::future::Future;

use outrider_protocol::api::{
    CreatedEnrollmentToken, DEFAULT_TOKEN_EXPIRES_IN_SECS, EnrollmentTokenInfo,
    MAX_TOKEN_EXPIRES_IN_SECS, NewEnrollmentToken,
};
use sha2::{Digest, Sha256};

use super::{Backend, StoreError, dispatch};

/// Id of the row of the server's own token.
pub const BOOTSTRAP_TOKEN_ID: &str = "bootstrap";

/// The note of the row of the server's own token.
pub const BOOTSTRAP_NOTE: &str = "the server's enrollment.token";

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

/// The id and secret of a token about to be created, drawn by the caller
/// (randomness is a side effect, so it comes in as an argument).
#[derive(Clone, Debug)]
pub struct MintedToken {
    /// The short public handle (8 hex digits).
    pub id: String,
    /// The secret handed to the operator once (64 hex digits).
    pub secret: String,
}

impl MintedToken {
    /// A new id and secret from the OS's randomness; fails when the OS
    /// gives none.
    pub fn generate() -> Result<MintedToken, getrandom::Error> {
        Ok(MintedToken {
            id: random_hex(4)?,
            secret: random_hex(32)?,
        })
    }
}

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// What the store keeps of a secret: its SHA-256, in hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Rule 1: when a token created at `now_ms` for `expires_in_secs` (default
/// [`DEFAULT_TOKEN_EXPIRES_IN_SECS`], at most [`MAX_TOKEN_EXPIRES_IN_SECS`])
/// stops working.
pub fn expiry_ms(now_ms: i64, expires_in_secs: Option<u64>) -> i64 {
    let secs = expires_in_secs
        .unwrap_or(DEFAULT_TOKEN_EXPIRES_IN_SECS)
        .min(MAX_TOKEN_EXPIRES_IN_SECS);
    // At most a year of milliseconds: no overflow.
    now_ms.saturating_add(secs as i64 * 1000)
}

/// Rule 2: the verdict on stored token `id` at `now_ms`.
pub fn judge(
    id: &str,
    expires_at_ms: Option<i64>,
    uses_left: Option<i64>,
    revoked_at_ms: Option<i64>,
    now_ms: i64,
) -> Result<(), TokenRefusal> {
    let id = id.to_owned();
    if revoked_at_ms.is_some() {
        return Err(TokenRefusal::Revoked { id });
    }
    if expires_at_ms.is_some_and(|e| e <= now_ms) {
        return Err(TokenRefusal::Expired { id });
    }
    if uses_left.is_some_and(|u| u <= 0) {
        return Err(TokenRefusal::UsedUp { id });
    }
    Ok(())
}

/// Why a token row cannot enroll anyone at `now_ms` ("revoked", "expired",
/// "used up"), or `None` while it can.
pub fn token_status(info: &EnrollmentTokenInfo, now_ms: i64) -> Option<&'static str> {
    let uses_left = info.uses_left.map(i64::from);
    match judge(
        &info.id,
        info.expires_at_ms,
        uses_left,
        info.revoked_at_ms,
        now_ms,
    ) {
        Ok(()) => None,
        Err(TokenRefusal::Revoked { .. }) => Some("revoked"),
        Err(TokenRefusal::Expired { .. }) => Some("expired"),
        Err(_) => Some("used up"),
    }
}

/// Rule 4: whether the bootstrap row holding `stored_hash` (`None`: no such
/// row) is kept as it is for a secret hashing to `hash`.
pub fn keeps_bootstrap_row(stored_hash: Option<&str>, hash: &str) -> bool {
    stored_hash == Some(hash)
}

/// The enrollment tokens area of the store. Times are Unix milliseconds
/// given by the caller (the clock is an argument, so tests set it).
pub trait TokenStore {
    /// Creates the token `minted` at `now_ms` as `req` asks (the caller has
    /// validated it, tags normalised); only the secret's hash is stored.
    /// Fails (a constraint error) when the id or secret is taken.
    fn create_enrollment_token(
        &self,
        minted: MintedToken,
        req: NewEnrollmentToken,
        now_ms: i64,
    ) -> impl Future<Output = Result<CreatedEnrollmentToken, StoreError>> + Send;

    /// Records the server's own token as the row [`BOOTSTRAP_TOKEN_ID`]
    /// (rule 4): the same secret as last time keeps its row as it is
    /// (expiry, uses, revocation); a new secret replaces the row, starting
    /// a new lifetime at `now_ms`. Returns the row. Nodes starting at once
    /// with the same secret leave one row.
    fn ensure_bootstrap_token(
        &self,
        token: BootstrapToken,
        now_ms: i64,
    ) -> impl Future<Output = Result<EnrollmentTokenInfo, StoreError>> + Send;

    /// Every token, newest first (then by id, byte by byte).
    fn enrollment_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<EnrollmentTokenInfo>, StoreError>> + Send;

    /// Revokes token `id` at `now_ms` (rule 3); false when no such token
    /// exists.
    fn revoke_enrollment_token(
        &self,
        id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Checks `secret` at `now_ms` and counts one use of it, or one refusal
    /// (rule 2). The outer error is a store failure; the inner one says why
    /// the token was refused. Concurrent consumptions, on any nodes, give
    /// what running them one after the other gives.
    fn consume_enrollment_token(
        &self,
        secret: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Result<TokenGrant, TokenRefusal>, StoreError>> + Send;
}

impl TokenStore for Backend {
    async fn create_enrollment_token(
        &self,
        minted: MintedToken,
        req: NewEnrollmentToken,
        now_ms: i64,
    ) -> Result<CreatedEnrollmentToken, StoreError> {
        dispatch!(self, b => b.create_enrollment_token(minted, req, now_ms))
    }

    async fn ensure_bootstrap_token(
        &self,
        token: BootstrapToken,
        now_ms: i64,
    ) -> Result<EnrollmentTokenInfo, StoreError> {
        dispatch!(self, b => b.ensure_bootstrap_token(token, now_ms))
    }

    async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenInfo>, StoreError> {
        dispatch!(self, b => b.enrollment_tokens())
    }

    async fn revoke_enrollment_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        dispatch!(self, b => b.revoke_enrollment_token(id, now_ms))
    }

    async fn consume_enrollment_token(
        &self,
        secret: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRefusal>, StoreError> {
        dispatch!(self, b => b.consume_enrollment_token(secret, now_ms))
    }
}

/// The row a new token is stored as (both backends insert these values).
pub(crate) fn new_token_info(
    id: String,
    req: NewEnrollmentToken,
    now_ms: i64,
) -> EnrollmentTokenInfo {
    EnrollmentTokenInfo {
        id,
        note: req.note,
        created_at_ms: now_ms,
        expires_at_ms: Some(expiry_ms(now_ms, req.expires_in_secs)),
        uses_left: req.uses,
        used: 0,
        revoked_at_ms: None,
        allowed_tags: req.allowed_tags,
        refused: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_by_table() {
        let refused = |f: fn(String) -> TokenRefusal| Err(f("t".into()));
        // (expires_at_ms, uses_left, revoked_at_ms) at now = 100
        let cases = [
            ((Some(101), None, None), Ok(())),
            ((None, None, None), Ok(())),
            (
                (Some(100), None, None),
                refused(|id| TokenRefusal::Expired { id }),
            ),
            ((None, Some(1), None), Ok(())),
            (
                (None, Some(0), None),
                refused(|id| TokenRefusal::UsedUp { id }),
            ),
            // A negative count (hand-edited) is used up too.
            (
                (None, Some(-1), None),
                refused(|id| TokenRefusal::UsedUp { id }),
            ),
            // Expiry is reported before uses.
            (
                (Some(50), Some(0), None),
                refused(|id| TokenRefusal::Expired { id }),
            ),
            // Revocation wins over every other reason.
            (
                (Some(1), Some(0), Some(5)),
                refused(|id| TokenRefusal::Revoked { id }),
            ),
        ];
        for ((expires, uses, revoked), want) in cases {
            assert_eq!(
                judge("t", expires, uses, revoked, 100),
                want,
                "{expires:?} {uses:?} {revoked:?}"
            );
        }
    }

    #[test]
    fn lifetimes_by_table() {
        // (expires_in_secs, expiry at now = 0)
        let cases = [
            (None, 86_400_000),
            (Some(0), 0),
            (Some(60), 60_000),
            (Some(MAX_TOKEN_EXPIRES_IN_SECS), 365 * 86_400_000),
            (Some(u64::MAX), 365 * 86_400_000),
        ];
        for (secs, want) in cases {
            assert_eq!(expiry_ms(0, secs), want, "{secs:?}");
        }
        assert_eq!(expiry_ms(i64::MAX, Some(60)), i64::MAX);
    }

    #[test]
    fn statuses_by_table() {
        let info = |expires, uses_left, revoked| EnrollmentTokenInfo {
            id: "t".into(),
            note: String::new(),
            created_at_ms: 0,
            expires_at_ms: expires,
            uses_left,
            used: 0,
            revoked_at_ms: revoked,
            allowed_tags: None,
            refused: 0,
        };
        let cases = [
            (info(Some(101), None, None), None),
            (info(Some(100), None, None), Some("expired")),
            (info(Some(101), Some(0), None), Some("used up")),
            (info(Some(101), Some(1), Some(1)), Some("revoked")),
        ];
        for (row, want) in cases {
            assert_eq!(token_status(&row, 100), want, "{row:?}");
        }
    }

    #[test]
    fn the_bootstrap_row_is_kept_only_for_its_own_secret() {
        let (a, b) = (secret_hash("a"), secret_hash("b"));
        // (stored hash, hash of the secret given, kept)
        let cases = [
            (Some(a.as_str()), a.as_str(), true),
            (Some(a.as_str()), b.as_str(), false),
            (None, a.as_str(), false),
        ];
        for (stored, hash, kept) in cases {
            assert_eq!(keeps_bootstrap_row(stored, hash), kept, "{stored:?}");
        }
        // The hash is SHA-256 in hex, as stored since schema 3.
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn minted_tokens_are_fresh_hex() {
        let (x, y) = (
            MintedToken::generate().unwrap(),
            MintedToken::generate().unwrap(),
        );
        assert_eq!((x.id.len(), x.secret.len()), (8, 64));
        assert!(x.secret.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(x.secret, y.secret);
    }
}
