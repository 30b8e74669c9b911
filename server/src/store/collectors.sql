-- Collector definitions (store/collectors.rs). Applied at every open with
-- IF NOT EXISTS: a new table needs no schema version of its own.
CREATE TABLE IF NOT EXISTS collectors (
    name           TEXT PRIMARY KEY,
    -- The definition as `CollectorSpecWire` JSON (protocol/src/collector.rs).
    definition     TEXT NOT NULL,
    -- Selector: sorted JSON array; an agent runs the collector when its
    -- tags include every one (empty: every agent), as for checks.
    tags           TEXT NOT NULL DEFAULT '[]',
    updated_at_ms  INTEGER NOT NULL
) STRICT;
