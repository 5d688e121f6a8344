-- The database session (backend pid) that stands for the replica holding a token lease:
-- its change listener's, which lives as long as the replica does. A replica killed in
-- the middle of an exchange takes its session with it, and the lease can be claimed at
-- once instead of when it runs out (up to ~45 s of no token for that connection).
-- NULL when the holder had no listener session: then only running out frees the lease.
ALTER TABLE connections
    ADD COLUMN token_lease_session INTEGER;
