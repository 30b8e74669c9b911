-- The contract between the alert engine's driver (server/src/alerts) and
-- the notifier (server/src/notify). Timestamps are Unix milliseconds.
--
-- One row per `alerting::Action::Notify`: the notifications that go to
-- receivers as one message. The driver inserts it in the same transaction
-- that stores the engine's new state, so a crash neither loses a decision
-- (the state is never ahead of the outbox) nor makes it twice. The notifier
-- routes each unrouted row to the receivers its routes select, inserting one
-- delivery per receiver and setting `routed_at_ms` in one transaction.
CREATE TABLE IF NOT EXISTS alert_outbox (
    id              INTEGER PRIMARY KEY,
    -- `<incident_key>#<seq>` of every notification, sorted, joined by ' ':
    -- with a receiver it is a delivery's unique key.
    batch_key       TEXT NOT NULL UNIQUE,
    -- `agent/<fingerprint>` or `site/<tag>`.
    group_key       TEXT NOT NULL,
    -- JSON array of the group's tags (an agent's effective tags, or the
    -- site's one tag): what routes match on.
    tags            TEXT NOT NULL,
    -- The worst status among the notifications ('critical', 'warning',
    -- 'unknown', 'ok'): what routes match severity on.
    severity        TEXT NOT NULL,
    -- JSON array of `alerting::Notification`, at least one.
    notifications   TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    routed_at_ms    INTEGER
) STRICT;

CREATE INDEX IF NOT EXISTS alert_outbox_unrouted
    ON alert_outbox (id) WHERE routed_at_ms IS NULL;
