-- Chaos experiments and schedules, and the fault fields only experiments set.

CREATE TABLE chaos_experiments (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('CREATED', 'RUNNING', 'COMPLETED', 'ABORTED')),
    created_at DOUBLE PRECISION NOT NULL,
    -- The whole experiment (spec, times, report) as JSON.
    document TEXT NOT NULL
);
CREATE INDEX chaos_experiments_newest ON chaos_experiments (created_at, id);

CREATE TABLE chaos_schedules (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    -- The schedule (spec, interval, last run) as JSON.
    document TEXT NOT NULL
);

-- The experiment that owns a fault (it renews the expiry), and the chaos-only fault fields
-- (kind, jitter, partition peer and sides, workers, ballast, instance) as JSON.
ALTER TABLE fault_injections ADD COLUMN experiment_id TEXT NOT NULL DEFAULT '';
ALTER TABLE fault_injections ADD COLUMN chaos TEXT NOT NULL DEFAULT '{}';
CREATE INDEX fault_injections_experiment ON fault_injections (experiment_id);
