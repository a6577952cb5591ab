-- The shard registry: the current topology, versioned. Every change rewrites the shard and node
-- rows and bumps `registry.version` in the same transaction (optimistic: WHERE version = old).
CREATE TABLE registry (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    version BIGINT NOT NULL CHECK (version >= 0),
    vnodes_per_shard INTEGER NOT NULL CHECK (vnodes_per_shard BETWEEN 1 AND 4096),
    -- The running rebalance (the topology's migration routing); its fenced and moved accounts
    -- are the rebalance_accounts rows in those states.
    rebalance_id TEXT,
    fence_unplanned INTEGER NOT NULL DEFAULT 0 CHECK (fence_unplanned IN (0, 1)),
    -- Microseconds since the Unix epoch.
    updated_us BIGINT
);
INSERT INTO registry (singleton, version, vnodes_per_shard) VALUES (1, 0, 256);

CREATE TABLE shards (
    shard_id TEXT PRIMARY KEY,
    weight DOUBLE PRECISION NOT NULL CHECK (weight > 0 AND weight <= 64),
    placement_seed BIGINT NOT NULL CHECK (placement_seed >= 0),
    state TEXT NOT NULL CHECK (state IN ('joining', 'active', 'leaving'))
);

CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    shard_id TEXT NOT NULL REFERENCES shards (shard_id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('primary', 'replica')),
    -- May hold a password: the followers connect with it (WatchTopology). Never logged.
    dsn TEXT NOT NULL,
    region TEXT NOT NULL,
    health TEXT NOT NULL CHECK (health IN ('unknown', 'healthy', 'suspect', 'down'))
);
CREATE INDEX nodes_by_shard ON nodes (shard_id);
CREATE UNIQUE INDEX nodes_one_primary ON nodes (shard_id) WHERE role = 'primary';

-- Every failover, automatic or manual, with its measured recovery time.
CREATE TABLE failover_history (
    failover_id TEXT PRIMARY KEY,
    shard_id TEXT NOT NULL,
    failover_trigger TEXT NOT NULL CHECK (failover_trigger IN ('automatic', 'manual')),
    old_primary TEXT NOT NULL,
    new_primary TEXT NOT NULL,
    -- As PostgreSQL prints it (e.g. 16/B374D848); NULL if never measured.
    promoted_lsn TEXT,
    outage_started_us BIGINT NOT NULL,
    completed_us BIGINT NOT NULL,
    recovery_us BIGINT NOT NULL,
    topology_version BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX failover_history_newest ON failover_history (completed_us, failover_id);
CREATE INDEX failover_history_by_shard ON failover_history (shard_id, completed_us, failover_id);

-- Rebalances, and the move of each account in them.
CREATE TABLE rebalances (
    rebalance_id TEXT PRIMARY KEY,
    phase TEXT NOT NULL CHECK (phase IN ('running', 'finalizing', 'completed')),
    started_us BIGINT NOT NULL,
    finished_us BIGINT,
    topology_version BIGINT NOT NULL
);
CREATE INDEX rebalances_newest ON rebalances (started_us, rebalance_id);

CREATE TABLE rebalance_accounts (
    rebalance_id TEXT NOT NULL REFERENCES rebalances (rebalance_id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    source_shard TEXT NOT NULL,
    target_shard TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('pending', 'copying', 'verifying', 'fenced', 'cut_over', 'done', 'failed')),
    attempts INTEGER NOT NULL CHECK (attempts >= 0),
    fenced_us BIGINT,
    last_error TEXT NOT NULL,
    updated_us BIGINT,
    PRIMARY KEY (rebalance_id, account_id)
);
CREATE INDEX rebalance_accounts_by_state ON rebalance_accounts (rebalance_id, state);
