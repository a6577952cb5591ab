-- A/B tests and the exposure / conversion counts of their arms.

CREATE TABLE experiments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    control TEXT NOT NULL,
    -- JSON list of the variant arms, in order.
    variants TEXT NOT NULL,
    binding TEXT NOT NULL CHECK (binding IN ('FLAG', 'ROUTE')),
    target TEXT NOT NULL,
    min_exposures_per_arm BIGINT NOT NULL,
    win_probability DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('RUNNING', 'CONCLUDED')),
    winner TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    concluded_at DOUBLE PRECISION,
    -- Compared on every count update, so concurrent batches never lose one another.
    revision BIGINT NOT NULL
);
CREATE INDEX experiments_newest ON experiments (created_at, id);

CREATE TABLE experiment_arms (
    experiment_id TEXT NOT NULL REFERENCES experiments (id),
    arm TEXT NOT NULL,
    exposures BIGINT NOT NULL CHECK (exposures >= 0),
    conversions BIGINT NOT NULL CHECK (conversions >= 0 AND conversions <= exposures),
    PRIMARY KEY (experiment_id, arm)
);
