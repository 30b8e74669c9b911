-- Dashboard logins (server/src/backend/logins.rs): `dashboard_logins` of
-- the SQLite store's store/schema.sql, column for column, in PostgreSQL's
-- types: the key is BYTEA (the SHA-256 of the cookie's session id, never
-- the id), times are BIGINT Unix milliseconds.
CREATE TABLE dashboard_logins (
    key          BYTEA PRIMARY KEY CHECK (octet_length(key) = 32),
    role         TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    csrf         TEXT NOT NULL,
    -- SHA-256 (hex) of the token it was opened with: a login opened with a
    -- token since replaced is dropped at a node's start.
    token_sha256 TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    last_ms      BIGINT NOT NULL
);
