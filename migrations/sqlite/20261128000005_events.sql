-- Mirrors migrations/postgres.
CREATE TABLE events (
    id BLOB PRIMARY KEY,
    type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    connection_id BLOB,
    request_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX events_connection_id ON events (connection_id, id);
CREATE INDEX events_type ON events (type, id);
CREATE INDEX events_actor ON events (actor, id);

CREATE TABLE token_handouts (
    api_key_id BLOB NOT NULL,
    connection_id BLOB NOT NULL,
    minute TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (connection_id, minute, api_key_id)
);
CREATE INDEX token_handouts_api_key_id ON token_handouts (api_key_id, minute);
