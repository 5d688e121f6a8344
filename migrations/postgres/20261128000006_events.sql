-- The event record: one row per change (a transactional outbox: written in the
-- transaction of the change it describes). Append-only; ids are UUIDv7, so they order by
-- time. `body` is JSON and never holds a secret.
CREATE TABLE events (
    id UUID PRIMARY KEY,
    type TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    actor TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    connection_id UUID,
    request_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX events_connection_id ON events (connection_id, id);
CREATE INDEX events_type ON events (type, id);
CREATE INDEX events_actor ON events (actor, id);

-- Token hand-outs per API key, connection and minute, counted in memory and added here
-- every few seconds (no write per request on the hot path).
CREATE TABLE token_handouts (
    api_key_id UUID NOT NULL,
    connection_id UUID NOT NULL,
    minute TIMESTAMPTZ NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (connection_id, minute, api_key_id)
);
CREATE INDEX token_handouts_api_key_id ON token_handouts (api_key_id, minute);
