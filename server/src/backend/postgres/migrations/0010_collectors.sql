-- The collectors area (server/src/backend/collectors.rs): the
-- `collectors` table of the SQLite store's store/collectors.sql, column for
-- column, in PostgreSQL's types: the definition stays JSON text (compared
-- as text, as SQLite does, and parsed by the server so a newer server's
-- definition is left out, not refused), the tag selector is TEXT[], times
-- are BIGINT Unix milliseconds.
CREATE TABLE collectors (
    name           TEXT PRIMARY KEY,
    definition     TEXT NOT NULL,
    tags           TEXT[] NOT NULL DEFAULT '{}',
    updated_at_ms  BIGINT NOT NULL
);
