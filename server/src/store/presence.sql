-- Presence across nodes (server/src/backend/presence.rs): one row per agent
-- that ever connected, owned by the node its newest session is on, with a
-- fencing generation; and the nodes' heartbeats. The PostgreSQL backend
-- creates the same tables (server/src/backend/postgres/migrations/).
-- Applied at every open with IF NOT EXISTS, without a schema version bump
-- (SCHEMA_VERSION in server/src/store.rs says why): only add tables and
-- indexes here, never change one, or the version must go up.
CREATE TABLE IF NOT EXISTS nodes (
    node_id       TEXT PRIMARY KEY,
    last_seen_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS sessions (
    agent_fp         TEXT PRIMARY KEY,
    node_id          TEXT NOT NULL,
    -- Bumped by every connect, on any node; never reset (the row stays
    -- when the session ends), so an old generation never comes back.
    generation       INTEGER NOT NULL,
    connected_at_ms  INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL,
    -- NULL while the session is up.
    ended_at_ms      INTEGER
) STRICT;

CREATE INDEX IF NOT EXISTS sessions_up_by_node ON sessions (node_id) WHERE ended_at_ms IS NULL;
