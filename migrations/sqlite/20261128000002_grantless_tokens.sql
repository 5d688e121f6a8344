-- Mirrors migrations/postgres (without a lease: one SQLite process has no other replica).
CREATE TABLE grantless_tokens (
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    secret_fingerprint TEXT NOT NULL,
    access_token TEXT,
    fetched_at TEXT,
    expires_at TEXT,
    PRIMARY KEY (client_id, scope, secret_fingerprint)
);
