-- A list filtered by client secret expiry, in the list's id order: with the expiry beside
-- the id in one index, the range is checked inside the index and only the page's rows are
-- read, rather than every row the id order passes (the Postgres migration of the same
-- name has the measurements).
CREATE INDEX connections_id_client_secret_expires_at ON connections (id, client_secret_expires_at);
