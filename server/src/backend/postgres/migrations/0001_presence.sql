-- Presence across nodes (server/src/backend/presence.rs): the same tables
-- as the SQLite store's store/presence.sql.
CREATE TABLE nodes (
    node_id       TEXT PRIMARY KEY,
    last_seen_ms  BIGINT NOT NULL
);

CREATE TABLE sessions (
    agent_fp         TEXT PRIMARY KEY,
    node_id          TEXT NOT NULL,
    -- Bumped by every connect, on any node; never reset (the row stays
    -- when the session ends), so an old generation never comes back.
    generation       BIGINT NOT NULL CHECK (generation > 0),
    connected_at_ms  BIGINT NOT NULL,
    last_seen_ms     BIGINT NOT NULL,
    -- NULL while the session is up.
    ended_at_ms      BIGINT
);

CREATE INDEX sessions_up_by_node ON sessions (node_id) WHERE ended_at_ms IS NULL;
