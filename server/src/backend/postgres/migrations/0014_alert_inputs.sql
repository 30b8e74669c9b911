-- The shared log of alert engine inputs (server/src/backend/postgres/alert_inputs.rs):
-- every node appends what it observes (a committed result batch, a session
-- opened or ended, an agent removed, checks changed); the node leading
-- alert evaluation reads it in (tx, id) order and deletes what its saved
-- engine state covers, in the same fenced transaction as that save.
--
-- `tx` is the appending transaction's id (xid8: 64 bits, never wraps):
-- the reader takes only rows whose transaction is older than every
-- transaction still running, so a row committed late is never skipped
-- (see the module for why `id` order alone would).
CREATE TABLE alert_inputs (
    tx             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id             BIGINT GENERATED ALWAYS AS IDENTITY,
    created_at_ms  BIGINT NOT NULL,
    -- JSON of one `alerts::Input` (at most alert_inputs::MAX_INPUT_BYTES).
    input          TEXT NOT NULL,
    PRIMARY KEY (tx, id)
);

-- Rows nobody consumed for an hour (no leader) are deleted by any node.
CREATE INDEX alert_inputs_created ON alert_inputs (created_at_ms);
