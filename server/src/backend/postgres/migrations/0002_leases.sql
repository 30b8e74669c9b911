-- Singletons (server/src/backend/leader.rs): one row per job, the term of
-- its newest leadership. A node that takes the job's advisory lock bumps
-- the term; a leader's fenced writes read it FOR SHARE and go ahead only
-- under their own term (server/src/backend/postgres/leader.rs).
CREATE TABLE leases (
    job             TEXT PRIMARY KEY,
    holder_node     TEXT NOT NULL,
    -- Counts up from 1 per job and never goes back.
    term            BIGINT NOT NULL CHECK (term > 0),
    acquired_at_ms  BIGINT NOT NULL
);
