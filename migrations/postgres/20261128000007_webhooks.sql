-- Webhook endpoints (their signing secret sealed like every secret), the event types each
-- takes, and one delivery per (event, endpoint), queued in the transaction that records
-- the event. Replicas claim due deliveries with FOR UPDATE SKIP LOCKED and a short lock.
CREATE TABLE webhook_endpoints (
    id UUID PRIMARY KEY,
    url TEXT NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE TABLE webhook_subscriptions (
    endpoint_id UUID NOT NULL REFERENCES webhook_endpoints (id),
    event_type TEXT NOT NULL,
    PRIMARY KEY (event_type, endpoint_id)
);
CREATE TABLE webhook_deliveries (
    event_id UUID NOT NULL,
    endpoint_id UUID NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    locked_until TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ,
    last_status INTEGER,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

-- Which client-secret expiry warnings (14 and 3 days ahead) were sent, so each is sent once.
CREATE TABLE secret_expiry_warnings (
    connection_id UUID NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    days_ahead INTEGER NOT NULL,
    PRIMARY KEY (connection_id, expires_at, days_ahead)
);
