-- The notifier's tables (server/src/backend/notify.rs): the tables of the
-- SQLite store's store/notify.sql, column for column, in PostgreSQL's
-- types (times BIGINT Unix milliseconds; route tags and severities TEXT[]
-- where SQLite keeps JSON text; the receiver config stays the JSON text
-- the API wrote, secrets included), plus each delivery's claim, which
-- several nodes delivering at once need (rule 3 of backend/notify.rs).

CREATE TABLE notify_receivers (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'pagerduty', 'email')),
    config          TEXT NOT NULL,
    rate_per_sec    INTEGER NOT NULL CHECK (rate_per_sec > 0),
    created_at_ms   BIGINT NOT NULL
);

-- A receiver with routes gets the groups one of them matches; a receiver
-- without routes gets everything.
CREATE TABLE notify_routes (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    receiver        TEXT NOT NULL REFERENCES notify_receivers (name) ON DELETE CASCADE,
    tags            TEXT[] NOT NULL,
    severities      TEXT[] NOT NULL,
    created_at_ms   BIGINT NOT NULL
);

-- One message of one outbox row to one receiver. (batch_key, receiver) is
-- unique: routing the same row twice cannot send it twice. Routing takes
-- turns (an advisory lock), so ids grow in routing order: a receiver's
-- queue order.
--
-- The claim: `claim` counts the claims ever made, and is the fencing token
-- of the marks (a mark of an older claim changes nothing);
-- `claimed_by`/`claim_until_ms` name the node sending it and until when no
-- other node may. A claim that ran out is taken over.
CREATE TABLE notify_deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id       BIGINT NOT NULL,
    batch_key       TEXT NOT NULL,
    receiver        TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error      TEXT,
    created_at_ms   BIGINT NOT NULL,
    done_at_ms      BIGINT,
    claim           BIGINT NOT NULL DEFAULT 0,
    claimed_by      TEXT,
    claim_until_ms  BIGINT,
    UNIQUE (batch_key, receiver)
);

CREATE INDEX notify_deliveries_pending
    ON notify_deliveries (receiver, id) WHERE state = 'pending';
CREATE INDEX notify_deliveries_done
    ON notify_deliveries (done_at_ms) WHERE state <> 'pending';
-- The prune's "does a delivery still need this outbox row".
CREATE INDEX notify_deliveries_outbox ON notify_deliveries (outbox_id);

-- The incidents each receiver was told about: later notifications of an
-- incident follow it to the same receivers (a resolve is 'ok').
CREATE TABLE notify_incidents (
    receiver        TEXT NOT NULL,
    incident_key    TEXT NOT NULL,
    seen_at_ms      BIGINT NOT NULL,
    PRIMARY KEY (receiver, incident_key)
);
CREATE INDEX notify_incidents_by_key ON notify_incidents (incident_key);

-- The outbox of migration 11 keeps `routed_at_ms`, set in the routing
-- transaction; routed rows are pruned by it once no delivery needs them
-- (bounding `alert_outbox` as on SQLite).
CREATE INDEX alert_outbox_routed ON alert_outbox (routed_at_ms) WHERE routed_at_ms IS NOT NULL;
