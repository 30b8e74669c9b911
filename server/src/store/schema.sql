-- Schema of the server's embedded SQLite store as created fresh (version 3).
-- Timestamps are Unix milliseconds. Applied in one transaction at open;
-- databases of older versions are migrated by store.rs first.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- One row per agent identity. The public key is pinned at first registration.
CREATE TABLE IF NOT EXISTS agents (
    fingerprint          TEXT PRIMARY KEY,
    public_key           TEXT NOT NULL,
    hostname             TEXT NOT NULL,
    os                   TEXT NOT NULL,
    arch                 TEXT NOT NULL,
    agent_version        TEXT NOT NULL,
    -- The signed build the agent's stub loaded (absent without a stub).
    build_sha256         TEXT,
    build_version        TEXT,
    presence             TEXT NOT NULL CHECK (presence IN ('connected', 'down', 'deregistered')),
    presence_since_ms    INTEGER NOT NULL,
    registered_at_ms     INTEGER NOT NULL,
    last_seen_ms         INTEGER NOT NULL,
    -- Highest result sequence stored for this agent.
    acked_seq            INTEGER NOT NULL DEFAULT 0,
    -- JSON array of the tags the agent announced in its last Hello.
    hello_tags           TEXT NOT NULL DEFAULT '[]',
    -- JSON array of the tags an operator assigned on the server.
    server_tags          TEXT NOT NULL DEFAULT '[]',
    -- Whether the agent accepts ad-hoc scripts (RunScript); off by default.
    allow_adhoc          INTEGER NOT NULL DEFAULT 0,
    -- Version and SHA-256 of the last config document computed for the
    -- agent: the version moves only when the document's hash changes.
    config_version       INTEGER NOT NULL DEFAULT 0,
    config_sha256        TEXT,
    -- The stub's version, the update channel and the protocol version of
    -- the last session, as the agent's Hello reported them.
    stub_version         TEXT,
    channel              TEXT,
    protocol_version     INTEGER,
    -- Id of the enrollment token the agent registered with (NULL: before
    -- schema 8), and that token's tag allow-list (JSON array; NULL: any).
    enrollment_token_id  TEXT,
    allowed_tags         TEXT,
    -- JSON array of declared tags outside `allowed_tags`, ignored.
    refused_tags         TEXT NOT NULL DEFAULT '[]'
) STRICT;

CREATE TABLE IF NOT EXISTS checks (
    name           TEXT PRIMARY KEY,
    command        TEXT NOT NULL,        -- JSON array of strings
    interval_secs  INTEGER NOT NULL,
    timeout_secs   INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    -- JSON array: the check runs on agents carrying every one of these
    -- tags; empty = every agent.
    tags           TEXT NOT NULL DEFAULT '[]',
    -- JSON of the check's alert rules (`CheckAlert` of the API); NULL: the
    -- alerting defaults.
    alert          TEXT
) STRICT;

-- Enrollment tokens; only the SHA-256 of each secret is stored. The
-- server's own token (`<data-dir>/enrollment.token`) is the row 'bootstrap'.
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    id             TEXT PRIMARY KEY,       -- short public handle (hex)
    secret_sha256  TEXT NOT NULL UNIQUE,
    note           TEXT NOT NULL DEFAULT '',
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER,                -- NULL only before schema 8
    uses_left      INTEGER,                -- NULL: unlimited
    used           INTEGER NOT NULL DEFAULT 0,
    revoked_at_ms  INTEGER,
    -- JSON array of the tags agents enrolled with it may declare; NULL: any.
    allowed_tags   TEXT,
    -- Registrations refused with it (revoked, expired, used up).
    refused        INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Plugin files by name; the bytes live in <data-dir>/plugins/<sha256>.
CREATE TABLE IF NOT EXISTS plugins (
    name           TEXT PRIMARY KEY,
    sha256         TEXT NOT NULL,
    size           INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
) STRICT;

-- Every result, deduplicated by (agent, seq).
CREATE TABLE IF NOT EXISTS results (
    fingerprint     TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    check_name      TEXT NOT NULL,
    state           TEXT NOT NULL,
    summary         TEXT NOT NULL,
    long_output     TEXT NOT NULL,
    perfdata        TEXT NOT NULL,        -- JSON array of PerfData
    started_at_ms   INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, seq)
) STRICT, WITHOUT ROWID;

-- Pointer to the newest result per (agent, check), maintained on ingest,
-- with its state and since when the check has been in that state (the start
-- of the first of the consecutive results with this state). `state` and
-- `state_since_ms` are NULL only for rows of a schema-6 database whose
-- result was already gone.
CREATE TABLE IF NOT EXISTS latest_results (
    fingerprint     TEXT NOT NULL,
    check_name      TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    state           TEXT,
    state_since_ms  INTEGER,
    PRIMARY KEY (fingerprint, check_name)
) STRICT, WITHOUT ROWID;

-- Dashboard logins (server/src/dashboard/session.rs), so a restart logs no
-- browser out. `key` is the SHA-256 of the cookie's session id, never the
-- id; `last_ms` is written coarsely (every few minutes of use).
CREATE TABLE IF NOT EXISTS dashboard_logins (
    key         BLOB PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    csrf        TEXT NOT NULL,
    -- SHA-256 (hex) of the token it was opened with: a login opened with a
    -- token since replaced is dropped at start.
    token_sha256 TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    last_ms     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- The fleet list (store/fleet.rs) pages agents by host name.
CREATE INDEX IF NOT EXISTS agents_by_hostname ON agents (hostname, fingerprint);
