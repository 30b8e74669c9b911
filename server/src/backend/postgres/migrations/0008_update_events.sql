-- The stub's update outcomes (server/src/backend/update_events.rs): the
-- tables of the SQLite store's store/update_events.sql, column for column,
-- in PostgreSQL's types (ids and times BIGINT; times Unix milliseconds).
-- No foreign key to `agents`, as in SQLite: a removed agent's events stay
-- until retention drops them.

-- Every event, the newest KEEP_PER_AGENT per agent kept.
CREATE TABLE update_events (
    fingerprint     TEXT NOT NULL,
    id              BIGINT NOT NULL CHECK (id >= 0),
    kind            TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    build_sha256    TEXT,
    version         TEXT,
    to_sha256       TEXT,
    to_version      TEXT,
    reason          TEXT NOT NULL,
    received_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (fingerprint, id)
);

-- The rollbacks of the last 24 hours, counted by the update health.
CREATE INDEX update_events_rollbacks ON update_events (at_ms) WHERE kind = 'rolled_back';

-- The newest event of each agent about each build ('' when the event
-- names none): what release status groups by, one row per (agent, build).
CREATE TABLE update_latest (
    fingerprint     TEXT NOT NULL,
    build_sha256    TEXT NOT NULL,
    id              BIGINT NOT NULL CHECK (id >= 0),
    kind            TEXT NOT NULL,
    version         TEXT,
    reason          TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    PRIMARY KEY (fingerprint, build_sha256)
);
