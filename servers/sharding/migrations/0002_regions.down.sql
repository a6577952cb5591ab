-- Reverts 0002_regions.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS failover_history_by_region_failover;
ALTER TABLE failover_history DROP COLUMN region_failover_id;
DROP INDEX IF EXISTS region_failovers_newest;
DROP TABLE IF EXISTS region_failovers;
ALTER TABLE shards DROP COLUMN replication_mode;
ALTER TABLE shards DROP COLUMN preferred_region;
DROP TABLE IF EXISTS regions;
