-- Mirrors migrations/postgres (…_list_indexes.sql): for GET /connections, which lists in
-- id order, an index on (its columns, id) for each equality filter; the one on
-- merchant_token alone is a prefix of the new one.
CREATE INDEX connections_status_id ON connections (status, id);
CREATE INDEX connections_merchant_token_id ON connections (merchant_token, id);
CREATE INDEX connections_region_id ON connections (region, id);
CREATE INDEX connections_environment_id ON connections (environment, id);
CREATE INDEX connections_region_environment_id ON connections (region, environment, id);
DROP INDEX connections_merchant_token;
