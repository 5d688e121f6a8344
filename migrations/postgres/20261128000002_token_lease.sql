-- The right to exchange a connection's refresh token with LWA, held by one fetch of one
-- replica at a time without holding a database connection while LWA answers: claimed by
-- one short UPDATE, released by the write of the new token (or by running out).
ALTER TABLE connections
    ADD COLUMN token_lease_until TIMESTAMPTZ,
    ADD COLUMN token_lease_holder UUID;
