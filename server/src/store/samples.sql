-- Metric sample batches (store/samples.rs): the highest batch sequence
-- number stored per agent, so a batch resent after a lost ack is not
-- stored twice. Applied at every open with IF NOT EXISTS.
CREATE TABLE IF NOT EXISTS sample_batches (
    fingerprint  TEXT PRIMARY KEY,
    acked_seq    INTEGER NOT NULL
) STRICT;
