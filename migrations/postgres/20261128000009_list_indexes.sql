-- GET /connections lists in id (creation) order with a keyset cursor and a LIMIT. An
-- equality filter is served by an index on (its columns, id): the matching rows come out
-- in id order from the cursor on, and the scan stops at the limit however rare the value
-- or deep the page. Several filters together use the most selective of these indexes
-- (region and environment, often asked for together, have one of their own). The index
-- on merchant_token alone is a prefix of the new one and goes; the one on status alone
-- stays for the gauges' count by status, which reads it in half the time (five values,
-- deduplicated, it is a tenth of the size of (status, id)). client_secret_expires_at, a
-- range, keeps its index (also used by the expiry warnings): Postgres scans it when few
-- secrets expire before the time asked and walks the id order when many do. Plans and
-- timings at 1,000,000 connections: docs/performance-list.md.
CREATE INDEX connections_status_id ON connections (status, id);
CREATE INDEX connections_merchant_token_id ON connections (merchant_token, id);
CREATE INDEX connections_region_id ON connections (region, id);
CREATE INDEX connections_environment_id ON connections (environment, id);
CREATE INDEX connections_region_environment_id ON connections (region, environment, id);
DROP INDEX connections_merchant_token;
