"""Schema migrations of the sharding registry (shards, nodes, failover history, rebalances)."""
