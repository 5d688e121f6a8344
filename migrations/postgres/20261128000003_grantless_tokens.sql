-- Grantless access tokens (grant_type=client_credentials), one per application, scope
-- and client secret (by its fingerprint, so a connection naming an application's id
-- with another secret cannot get that application's token), shared by every
-- connection of the application; sealed like access tokens. The lease lets one fetch of
-- one replica at a time call LWA, as for connections.
CREATE TABLE grantless_tokens (
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    secret_fingerprint TEXT NOT NULL,
    access_token TEXT,
    fetched_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ,
    lease_until TIMESTAMPTZ,
    lease_holder UUID,
    PRIMARY KEY (client_id, scope, secret_fingerprint)
);
