-- Mirrors migrations/postgres: UUIDs are 16-byte BLOBs, timestamps RFC 3339 TEXT,
-- JSON arrays TEXT. Secrets hold sealed text written by src/crypto.rs, never plaintext.
CREATE TABLE connections (
    id BLOB PRIMARY KEY,
    name TEXT,
    account_type TEXT NOT NULL CHECK (account_type IN ('seller', 'vendor')),
    region TEXT NOT NULL CHECK (region IN ('na', 'eu', 'fe')),
    environment TEXT NOT NULL CHECK (environment IN ('production', 'sandbox')),
    client_id TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    client_secret_hint TEXT NOT NULL,
    client_secret_expires_at TEXT NOT NULL,
    client_secret_expires_at_estimated BOOLEAN NOT NULL,
    client_secret_updated_at TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    merchant_token TEXT NOT NULL,
    application_id TEXT,
    marketplace_ids TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    last_error_code TEXT,
    last_error_message TEXT,
    last_error_at TEXT,
    authorized_at TEXT,
    last_tested_at TEXT,
    access_token TEXT,
    access_token_fetched_at TEXT,
    access_token_expires_at TEXT,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX connections_client_id ON connections (client_id);
CREATE INDEX connections_merchant_token ON connections (merchant_token);
CREATE INDEX connections_status ON connections (status);

CREATE TABLE api_keys (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE idempotency_keys (
    api_key_id BLOB NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    connection_id BLOB NOT NULL,
    response TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (api_key_id, key)
);

CREATE TABLE key_checks (
    key_id TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    created_at TEXT NOT NULL
);
