-- A list filtered by client secret expiry, in the list's id order. With only the primary
-- key and the index on the expiry, Postgres walked the id order and read every row to
-- skip those expiring later: 500-600 rows for a 14-day page at 1,000,000 connections
-- (0.25-0.6 ms), 9,000 for a 1-day page (4-9 ms). With the expiry beside the id in one
-- index, the range is checked inside the index and only the page's rows are read
-- (0.04-0.1 ms and 0.2-0.7 ms). The index on the expiry alone stays: it serves the
-- narrowest ranges (few secrets, read by expiry and sorted) and the expiry warnings.
CREATE INDEX connections_id_client_secret_expires_at ON connections (id, client_secret_expires_at);
