-- Mirrors migrations/postgres (…_status_index_carries_region_environment.sql): region
-- and environment ride in the status index after the id, so a status filter combined
-- with either is checked inside the index.
CREATE INDEX connections_status_id_region_environment
    ON connections (status, id, region, environment);
DROP INDEX connections_status_id;
