-- Regions (failure domains), each shard's preferred primary region and replication mode, and
-- the history of region failovers (their shard failovers point back at them).
CREATE TABLE regions (
    region_id TEXT PRIMARY KEY,
    priority INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 1000),
    state TEXT NOT NULL CHECK (state IN ('active', 'degraded', 'standby'))
);

ALTER TABLE shards ADD COLUMN preferred_region TEXT NOT NULL DEFAULT '';
ALTER TABLE shards ADD COLUMN replication_mode TEXT NOT NULL DEFAULT 'unmanaged'
    CHECK (replication_mode IN ('unmanaged', 'synchronous', 'semi_synchronous', 'asynchronous'));

CREATE TABLE region_failovers (
    region_failover_id TEXT PRIMARY KEY,
    region_id TEXT NOT NULL,
    failover_trigger TEXT NOT NULL CHECK (failover_trigger IN ('automatic', 'manual')),
    planned INTEGER NOT NULL CHECK (planned IN (0, 1)),
    started_us BIGINT NOT NULL,
    completed_us BIGINT NOT NULL,
    reason TEXT NOT NULL,
    -- JSON list of {step, started_us, duration_us, detail}.
    steps TEXT NOT NULL
);
CREATE INDEX region_failovers_newest ON region_failovers (completed_us, region_failover_id);

ALTER TABLE failover_history ADD COLUMN region_failover_id TEXT;
CREATE INDEX failover_history_by_region_failover ON failover_history (region_failover_id);
