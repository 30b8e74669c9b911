-- The cross-node bus (server/src/backend/bus.rs, postgres/bus.rs): one
-- table of messages, each addressed to one node. A request goes to the
-- node holding an agent's session; its reply comes back to the requesting
-- node (`request_id` names the request); a broadcast is one row per node
-- alive when it was sent. A node takes its rows with DELETE … RETURNING
-- (so a row is delivered once) when NOTIFY wakes it and every 200 ms.
-- Rows past their deadline are dropped by the node that takes them, and
-- swept by any node a minute later (rows of a node that died).
CREATE TABLE bus_messages (
    id             BIGSERIAL PRIMARY KEY,
    target_node    TEXT NOT NULL,
    from_node      TEXT NOT NULL,
    class          TEXT NOT NULL CHECK (class IN ('request', 'reply', 'broadcast')),
    kind           TEXT NOT NULL,
    -- The request a reply answers; NULL otherwise.
    request_id     BIGINT,
    payload        BYTEA NOT NULL CHECK (octet_length(payload) <= 65536),
    -- A reply's error text (the request failed on its node); NULL on success.
    error          TEXT CHECK (octet_length(error) <= 4096),
    created_at_ms  BIGINT NOT NULL,
    deadline_ms    BIGINT NOT NULL,
    CHECK ((class = 'reply') = (request_id IS NOT NULL))
);

CREATE INDEX bus_messages_by_target ON bus_messages (target_node, id);
CREATE INDEX bus_messages_by_deadline ON bus_messages (deadline_ms);
