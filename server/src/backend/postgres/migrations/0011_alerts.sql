-- The alert engine's state and outbox (server/src/backend/alerts.rs): the
-- tables of the SQLite store's store/alerts.sql and store/alert_outbox.sql,
-- column for column, in PostgreSQL's types (times BIGINT Unix
-- milliseconds; tags TEXT[] as in `agents`). The notifications stay the
-- JSON text the driver wrote (TEXT, not JSONB, which would reorder it).

-- One row, the JSON of `alerting::State`, written in the same fenced
-- transaction as the outbox rows decided before it.
CREATE TABLE alert_state (
    id           SMALLINT PRIMARY KEY CHECK (id = 1),
    state        TEXT NOT NULL,
    saved_at_ms  BIGINT NOT NULL
);

-- One row per `alerting::Action::Notify`; `batch_key` unique, so a
-- decision saved again (a retry, or a new leader) is one row.
CREATE TABLE alert_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_key       TEXT NOT NULL UNIQUE,
    group_key       TEXT NOT NULL,
    tags            TEXT[] NOT NULL,
    severity        TEXT NOT NULL,
    notifications   TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    routed_at_ms    BIGINT
);

-- The notifier's queue: rows not routed yet.
CREATE INDEX alert_outbox_unrouted ON alert_outbox (id) WHERE routed_at_ms IS NULL;
