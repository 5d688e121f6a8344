-- The client secret a new one replaced, kept sealed until its grace ends (Amazon accepts an
-- old secret for 7 days after a rotation): LWA calls fall back to it once if the new one
-- is refused meanwhile.
ALTER TABLE connections
    ADD COLUMN previous_client_secret TEXT,
    ADD COLUMN previous_client_secret_until TIMESTAMPTZ;

-- SP-API notifications forwarded by an operator, by Amazon's notificationId: a duplicate
-- is accepted and ignored. What it did (`applied` or `ignored`, and why) is kept; the
-- notification itself (it may hold a new client secret) is not.
CREATE TABLE spapi_notifications (
    notification_id TEXT PRIMARY KEY,
    notification_type TEXT NOT NULL,
    client_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    connections BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX connections_client_secret_expires_at ON connections (client_secret_expires_at);
