-- Check results (server/src/backend/results.rs): the `results` and
-- `latest_results` tables of the SQLite store's store/schema.sql, column
-- for column, in PostgreSQL's types (times BIGINT Unix milliseconds). The
-- perfdata stays the JSON text the server wrote (TEXT, not JSONB, which
-- refuses the "\u0000" a plugin's label can carry). Perfdata points do not
-- come here: metrics stay in each node's embedded store.
--
-- No foreign key to `agents`: a removed agent's results stay until
-- retention, and its enrollment again starts `acked_seq` above them
-- (postgres/agents.rs).

-- Every result, once per (agent, seq). The server's own results have
-- negative seqs. `unknown_perfdata` is the JSON of the result's `U` items
-- as stored (label and unit, cut as series names are), which SQLite reads
-- from its unknown points instead.
CREATE TABLE results (
    fingerprint       TEXT NOT NULL,
    seq               BIGINT NOT NULL,
    check_name        TEXT NOT NULL,
    state             TEXT NOT NULL,
    summary           TEXT NOT NULL,
    long_output       TEXT NOT NULL,
    perfdata          TEXT NOT NULL,
    unknown_perfdata  TEXT NOT NULL DEFAULT '[]',
    started_at_ms     BIGINT NOT NULL,
    duration_ms       BIGINT NOT NULL,
    received_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (fingerprint, seq)
);

-- The newest result per (agent, check), with its state and since when the
-- check is in that state.
CREATE TABLE latest_results (
    fingerprint     TEXT NOT NULL,
    check_name      TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    state           TEXT NOT NULL,
    state_since_ms  BIGINT NOT NULL,
    PRIMARY KEY (fingerprint, check_name)
);
