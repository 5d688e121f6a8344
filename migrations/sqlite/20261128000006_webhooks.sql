-- Mirrors migrations/postgres.
CREATE TABLE webhook_endpoints (
    id BLOB PRIMARY KEY,
    url TEXT NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE TABLE webhook_subscriptions (
    endpoint_id BLOB NOT NULL REFERENCES webhook_endpoints (id),
    event_type TEXT NOT NULL,
    PRIMARY KEY (event_type, endpoint_id)
);
CREATE TABLE webhook_deliveries (
    event_id BLOB NOT NULL,
    endpoint_id BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    locked_until TEXT,
    last_attempt_at TEXT,
    last_status INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

CREATE TABLE secret_expiry_warnings (
    connection_id BLOB NOT NULL,
    expires_at TEXT NOT NULL,
    days_ahead INTEGER NOT NULL,
    PRIMARY KEY (connection_id, expires_at, days_ahead)
);
