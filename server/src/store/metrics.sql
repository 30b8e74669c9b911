-- Perfdata metrics (schema version 4). Applied at every open with
-- IF NOT EXISTS, and as the 3 → 4 migration step. Timestamps are Unix ms.

-- One row per series: (agent, check, perfdata label). The unit is an
-- attribute (the last one the plugin printed), not part of the key, so a
-- plugin that adds a unit does not split the history in two.
CREATE TABLE IF NOT EXISTS series (
    id           INTEGER PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    check_name   TEXT NOT NULL,
    label        TEXT NOT NULL,
    uom          TEXT NOT NULL,
    UNIQUE (fingerprint, check_name, label)
) STRICT;

-- Raw samples, at the time the check started (back-dated samples land at
-- their own time). Kept for the raw retention period, then folded into
-- `rollups`.
CREATE TABLE IF NOT EXISTS points (
    series_id  INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    value      REAL NOT NULL,
    PRIMARY KEY (series_id, ts_ms)
) STRICT, WITHOUT ROWID;

-- Samples a plugin printed as `U` (value undetermined), at the time the
-- check started. Kept apart from `points`, whose value is a number, so
-- aggregates never count them; raw queries show them as `value: null`.
-- Deleted, not folded, when raw points are (a rollup has no unknowns).
-- Created at every open, so it needs no schema version of its own.
CREATE TABLE IF NOT EXISTS unknown_points (
    series_id  INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    PRIMARY KEY (series_id, ts_ms)
) STRICT, WITHOUT ROWID;

-- Five-minute aggregates of raw samples older than the raw retention
-- period. Merging is associative (samples and sums add, min and max fold), so
-- a late sample folded into an existing bucket gives the same row as if it
-- had arrived on time.
CREATE TABLE IF NOT EXISTS rollups (
    series_id  INTEGER NOT NULL,
    bucket_ms  INTEGER NOT NULL,
    samples    INTEGER NOT NULL,
    min_value  REAL NOT NULL,
    max_value  REAL NOT NULL,
    sum_value  REAL NOT NULL,
    PRIMARY KEY (series_id, bucket_ms)
) STRICT, WITHOUT ROWID;
