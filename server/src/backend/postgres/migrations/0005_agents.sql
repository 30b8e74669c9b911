-- The agents registry (server/src/backend/agents.rs): the `agents` table of
-- the SQLite store's store/schema.sql, column for column, in PostgreSQL's
-- types: times are BIGINT Unix milliseconds, tag lists are TEXT[] (JSON
-- text in SQLite), `allow_adhoc` is a BOOLEAN.
CREATE TABLE agents (
    fingerprint          TEXT PRIMARY KEY,
    -- Pinned at the first registration with an enrollment token.
    public_key           TEXT NOT NULL,
    hostname             TEXT NOT NULL,
    os                   TEXT NOT NULL,
    arch                 TEXT NOT NULL,
    agent_version        TEXT NOT NULL,
    -- The signed build the agent's stub loaded (absent without a stub).
    build_sha256         TEXT,
    build_version        TEXT,
    presence             TEXT NOT NULL CHECK (presence IN ('connected', 'down', 'deregistered')),
    presence_since_ms    BIGINT NOT NULL,
    registered_at_ms     BIGINT NOT NULL,
    last_seen_ms         BIGINT NOT NULL,
    -- Highest result sequence stored for this agent (the results area
    -- raises it on ingest).
    acked_seq            BIGINT NOT NULL DEFAULT 0 CHECK (acked_seq >= 0),
    -- The tags the agent announced in its last Hello within its allow-list.
    hello_tags           TEXT[] NOT NULL DEFAULT '{}',
    -- The tags an operator assigned on the server.
    server_tags          TEXT[] NOT NULL DEFAULT '{}',
    -- Whether the agent accepts ad-hoc scripts (RunScript); off by default.
    allow_adhoc          BOOLEAN NOT NULL DEFAULT false,
    -- Version and SHA-256 of the last config document computed for the
    -- agent (written by the checks area).
    config_version       BIGINT NOT NULL DEFAULT 0,
    config_sha256        TEXT,
    -- The stub's version, the update channel and the protocol version of
    -- the last session, as the agent's Hello reported them.
    stub_version         TEXT,
    channel              TEXT,
    protocol_version     BIGINT,
    -- The enrollment token the agent registered with, and that token's tag
    -- allow-list (NULL: any tag).
    enrollment_token_id  TEXT,
    allowed_tags         TEXT[],
    -- Declared tags outside `allowed_tags`, ignored.
    refused_tags         TEXT[] NOT NULL DEFAULT '{}'
);

-- Lists (and the fleet pages, when ported) go by host name, compared byte
-- by byte as SQLite compares it, whatever the database's collation.
CREATE INDEX agents_by_hostname ON agents (hostname COLLATE "C", fingerprint COLLATE "C");
