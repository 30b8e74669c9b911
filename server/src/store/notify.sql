-- The notifier's tables (server/src/notify.rs): receivers, routes, and the
-- delivery queue fed from `alert_outbox`. Timestamps are Unix milliseconds.
-- Created if missing at every open, so no schema version is needed for them.

-- Where notifications go. `config` is the JSON of
-- `outrider_protocol::api::ReceiverConfig`, secrets included: the API
-- never answers with it.
CREATE TABLE IF NOT EXISTS notify_receivers (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'pagerduty', 'email')),
    config          TEXT NOT NULL,
    rate_per_sec    INTEGER NOT NULL CHECK (rate_per_sec > 0),
    created_at_ms   INTEGER NOT NULL
) STRICT;

-- A receiver with routes gets the groups one of them matches; a receiver
-- without routes gets everything.
CREATE TABLE IF NOT EXISTS notify_routes (
    id              INTEGER PRIMARY KEY,
    receiver        TEXT NOT NULL REFERENCES notify_receivers (name) ON DELETE CASCADE,
    -- JSON array: every one must be among the group's tags.
    tags            TEXT NOT NULL,
    -- JSON array of severities ('critical', 'warning', 'unknown', 'ok'); empty: any.
    severities      TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL
) STRICT;

-- One message of one outbox row to one receiver. (batch_key, receiver) is
-- unique: routing the same row twice cannot send it twice.
CREATE TABLE IF NOT EXISTS notify_deliveries (
    id              INTEGER PRIMARY KEY,
    outbox_id       INTEGER NOT NULL,
    batch_key       TEXT NOT NULL,
    receiver        TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    created_at_ms   INTEGER NOT NULL,
    done_at_ms      INTEGER,
    UNIQUE (batch_key, receiver)
) STRICT;

CREATE INDEX IF NOT EXISTS notify_deliveries_pending
    ON notify_deliveries (receiver, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS notify_deliveries_done
    ON notify_deliveries (done_at_ms) WHERE state != 'pending';

-- The incidents each receiver was told about: later notifications of an
-- incident (repeats, flapping, the resolve) follow it to the same
-- receivers even when routes would not select them (a resolve is 'ok').
CREATE TABLE IF NOT EXISTS notify_incidents (
    receiver        TEXT NOT NULL,
    incident_key    TEXT NOT NULL,
    -- Refreshed by every notification of the incident (repeats come every
    -- few hours), so an open incident is never pruned.
    seen_at_ms      INTEGER NOT NULL,
    PRIMARY KEY (receiver, incident_key)
) STRICT, WITHOUT ROWID;
