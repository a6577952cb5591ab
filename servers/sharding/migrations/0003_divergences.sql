-- What each deposed primary committed that its successor never received (the RPO a failover
-- actually incurred), measured when it came back; LSNs as PostgreSQL prints them.
CREATE TABLE divergences (
    shard_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    from_lsn TEXT NOT NULL,
    to_lsn TEXT NOT NULL,
    transactions BIGINT NOT NULL CHECK (transactions >= 0),
    detected_us BIGINT NOT NULL,
    PRIMARY KEY (shard_id, node_id, from_lsn)
);
CREATE INDEX divergences_newest ON divergences (detected_us);
