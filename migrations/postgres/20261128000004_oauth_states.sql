-- Website authorization: the `state` of each consent URL handed out, by its SHA-256 (the
-- state itself travels through the seller's browser and is never stored). Single use: the
-- callback deletes the row it presents. Rows of a deleted connection go with it.
CREATE TABLE oauth_states (
    state_hash TEXT PRIMARY KEY,
    connection_id UUID NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX oauth_states_expires_at ON oauth_states (expires_at);
CREATE INDEX oauth_states_connection_id ON oauth_states (connection_id);
