-- The alert engine's persisted state (server/src/alerts.rs): one row, the
-- JSON of `alerting::State`. Written in the same transaction as the
-- `alert_outbox` rows of every notification decided since the previous
-- write, so the state is never ahead of the outbox.
CREATE TABLE IF NOT EXISTS alert_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    state        TEXT NOT NULL,
    saved_at_ms  INTEGER NOT NULL
) STRICT;
