-- Mirrors migrations/postgres. The store also deletes a connection's states itself, so
-- they go with it whether or not foreign keys are enforced.
CREATE TABLE oauth_states (
    state_hash TEXT PRIMARY KEY,
    connection_id BLOB NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX oauth_states_expires_at ON oauth_states (expires_at);
CREATE INDEX oauth_states_connection_id ON oauth_states (connection_id);
