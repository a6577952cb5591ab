-- Reverts 0001_registry.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS rebalance_accounts_by_state;
DROP TABLE IF EXISTS rebalance_accounts;
DROP INDEX IF EXISTS rebalances_newest;
DROP TABLE IF EXISTS rebalances;
DROP INDEX IF EXISTS failover_history_by_shard;
DROP INDEX IF EXISTS failover_history_newest;
DROP TABLE IF EXISTS failover_history;
DROP INDEX IF EXISTS nodes_one_primary;
DROP INDEX IF EXISTS nodes_by_shard;
DROP TABLE IF EXISTS nodes;
DROP TABLE IF EXISTS shards;
DROP TABLE IF EXISTS registry;
