-- Enrollment tokens (server/src/backend/tokens.rs): the `enrollment_tokens`
-- table of the SQLite store's store/schema.sql, column for column, in
-- PostgreSQL's types: times and counts are BIGINT (Unix milliseconds), the
-- tag allow-list is TEXT[] (JSON text in SQLite). Only the SHA-256 (hex) of
-- a secret is stored, as in SQLite: a copy of the database enrolls no agent.
CREATE TABLE enrollment_tokens (
    -- Short public handle (hex); the server's own token is 'bootstrap'.
    id             TEXT PRIMARY KEY,
    secret_sha256  TEXT NOT NULL UNIQUE,
    note           TEXT NOT NULL DEFAULT '',
    created_at_ms  BIGINT NOT NULL,
    -- Every token expires (nullable only to mirror SQLite's column, which
    -- was NULL before its schema 8).
    expires_at_ms  BIGINT,
    -- NULL: unlimited. Never below 0: a consumption counts a use only
    -- while one is left (postgres/tokens.rs), and this refuses any write
    -- that would over-use the token.
    uses_left      BIGINT CHECK (uses_left >= 0),
    used           BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0),
    revoked_at_ms  BIGINT,
    -- The tags agents enrolled with it may declare; NULL: any.
    allowed_tags   TEXT[],
    -- Registrations refused with it (revoked, expired, used up).
    refused        BIGINT NOT NULL DEFAULT 0 CHECK (refused >= 0)
);
