-- The stub's update outcomes, as agents report them on `outrider.update`
-- results (store/update_events.rs). Timestamps are Unix milliseconds.

-- Every event, the newest KEEP_PER_AGENT per agent kept.
CREATE TABLE IF NOT EXISTS update_events (
    fingerprint     TEXT NOT NULL,
    id              INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    build_sha256    TEXT,
    version         TEXT,
    to_sha256       TEXT,
    to_version      TEXT,
    reason          TEXT NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, id)
) STRICT;

-- The newest event of each agent about each build ('' when the event
-- names none): what release status groups by, one row per (agent, build).
CREATE TABLE IF NOT EXISTS update_latest (
    fingerprint     TEXT NOT NULL,
    build_sha256    TEXT NOT NULL,
    id              INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    version         TEXT,
    reason          TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, build_sha256)
) STRICT;
