-- The checks area (server/src/backend/checks.rs): the `checks` and
-- `plugins` tables of the SQLite store's store/schema.sql, column for
-- column, in PostgreSQL's types: times are BIGINT Unix milliseconds, the
-- command and the tag selector are TEXT[] (JSON text in SQLite), the alert
-- rules stay JSON text (compared as text, as SQLite does). The agents'
-- document versions are the `config_version`/`config_sha256` columns of
-- 0005_agents.sql.
CREATE TABLE checks (
    name           TEXT PRIMARY KEY,
    command        TEXT[] NOT NULL,
    interval_secs  BIGINT NOT NULL CHECK (interval_secs >= 0),
    timeout_secs   BIGINT NOT NULL CHECK (timeout_secs >= 0),
    updated_at_ms  BIGINT NOT NULL,
    -- The check runs on agents carrying every one of these tags (sorted,
    -- deduplicated); empty = every agent.
    tags           TEXT[] NOT NULL DEFAULT '{}',
    -- JSON of the check's alert rules (`CheckAlert` of the API); NULL: the
    -- alerting defaults.
    alert          TEXT
);

-- Plugin names → the stored file they point at (the files themselves:
-- 0003_artefacts.sql, server/src/backend/postgres/plugin_files.rs).
CREATE TABLE plugins (
    name           TEXT PRIMARY KEY,
    sha256         TEXT NOT NULL,
    size           BIGINT NOT NULL CHECK (size >= 0),
    updated_at_ms  BIGINT NOT NULL
);

-- "Which plugins use this file" when one is repointed or deleted.
CREATE INDEX plugins_by_sha256 ON plugins (sha256);
