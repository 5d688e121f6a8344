-- Mirrors migrations/postgres.
ALTER TABLE connections ADD COLUMN previous_client_secret TEXT;
ALTER TABLE connections ADD COLUMN previous_client_secret_until TEXT;

CREATE TABLE spapi_notifications (
    notification_id TEXT PRIMARY KEY,
    notification_type TEXT NOT NULL,
    client_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    connections INTEGER NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX connections_client_secret_expires_at ON connections (client_secret_expires_at);
