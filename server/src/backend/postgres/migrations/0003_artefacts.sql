-- Release artefacts shared by every node (server/src/backend/postgres/artefacts.rs):
-- the same documents as update-server's releases.db, and blobs as bytea chunks.

CREATE TABLE release_roots (
    version       BIGINT PRIMARY KEY,
    envelope      BYTEA NOT NULL,
    created_unix  BIGINT NOT NULL
);

-- One row per channel: its current sequence (NULL until the first manifest
-- is stored). Publishes of a channel lock this row, so deciding on a new
-- manifest and storing it is one step for every node.
CREATE TABLE release_channels (
    channel   TEXT PRIMARY KEY,
    sequence  BIGINT
);

CREATE TABLE release_manifests (
    channel         TEXT NOT NULL,
    sequence        BIGINT NOT NULL,
    envelope        BYTEA NOT NULL,
    -- Target triple -> version (JSON), for channel listings.
    versions        TEXT NOT NULL,
    published_unix  BIGINT NOT NULL,
    PRIMARY KEY (channel, sequence)
);

-- A blob's header; inserted in the transaction that inserted its chunks,
-- after them, so a blob with a header has every chunk.
CREATE TABLE release_blobs (
    sha256       TEXT PRIMARY KEY CHECK (length(sha256) = 64),
    size         BIGINT NOT NULL CHECK (size >= 0),
    chunk_bytes  INTEGER NOT NULL CHECK (chunk_bytes > 0),
    -- Last upload (refreshed by an upload of a stored blob): garbage
    -- collection spares blobs uploaded after its cutoff.
    stored_unix  BIGINT NOT NULL
);

CREATE TABLE release_blob_chunks (
    sha256    TEXT NOT NULL,
    chunk_no  INTEGER NOT NULL CHECK (chunk_no >= 0),
    data      BYTEA NOT NULL,
    PRIMARY KEY (sha256, chunk_no)
);

-- Plugin files (server/src/backend/postgres/plugin_files.rs), apart from
-- release blobs so that neither's garbage collection sees the other's.
-- An upload writes its chunks under a temporary key ("upload-<nonce>") and
-- renames them to the hash with the header in the same transaction.
CREATE TABLE plugin_files (
    sha256       TEXT PRIMARY KEY CHECK (length(sha256) = 64),
    size         BIGINT NOT NULL CHECK (size > 0),
    chunk_bytes  INTEGER NOT NULL CHECK (chunk_bytes > 0)
);

CREATE TABLE plugin_file_chunks (
    file_key  TEXT NOT NULL,
    chunk_no  INTEGER NOT NULL CHECK (chunk_no >= 0),
    data      BYTEA NOT NULL,
    PRIMARY KEY (file_key, chunk_no)
);
