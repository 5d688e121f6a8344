-- Secrets (client_secret, refresh_token, access_token) hold sealed text
-- `v1:<key id>:<base64>` written by src/crypto.rs, never plaintext.
CREATE TABLE connections (
    id UUID PRIMARY KEY,
    name TEXT,
    account_type TEXT NOT NULL CHECK (account_type IN ('seller', 'vendor')),
    region TEXT NOT NULL CHECK (region IN ('na', 'eu', 'fe')),
    environment TEXT NOT NULL CHECK (environment IN ('production', 'sandbox')),
    client_id TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    client_secret_hint TEXT NOT NULL,
    client_secret_expires_at TIMESTAMPTZ NOT NULL,
    client_secret_expires_at_estimated BOOLEAN NOT NULL,
    client_secret_updated_at TIMESTAMPTZ NOT NULL,
    refresh_token TEXT NOT NULL,
    merchant_token TEXT NOT NULL,
    application_id TEXT,
    marketplace_ids JSONB NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    last_error_code TEXT,
    last_error_message TEXT,
    last_error_at TIMESTAMPTZ,
    authorized_at TIMESTAMPTZ,
    last_tested_at TIMESTAMPTZ,
    access_token TEXT,
    access_token_fetched_at TIMESTAMPTZ,
    access_token_expires_at TIMESTAMPTZ,
    version BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX connections_client_id ON connections (client_id);
CREATE INDEX connections_merchant_token ON connections (merchant_token);
CREATE INDEX connections_status ON connections (status);

CREATE TABLE api_keys (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    scopes JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

-- A create request replayed with the same Idempotency-Key returns the stored response.
CREATE TABLE idempotency_keys (
    api_key_id UUID NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    connection_id UUID NOT NULL,
    response TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (api_key_id, key)
);

-- One known plaintext sealed under each master key: start-up proves every configured
-- key is the one that encrypted this database, and that no key in use is missing.
CREATE TABLE key_checks (
    key_id TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
