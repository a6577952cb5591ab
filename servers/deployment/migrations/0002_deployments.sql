-- Deployments as versioned JSON documents (servers.deployment.snapshots), and every transition.

CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    state TEXT NOT NULL,
    -- 1 until the deployment succeeded, rolled back or was aborted.
    active INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    -- Compared on every write, so two writers never both move one deployment.
    revision BIGINT NOT NULL,
    document TEXT NOT NULL,
    -- When the latest analysis (document.last_analysis) was made.
    last_analysis_at DOUBLE PRECISION
);
-- At most one active deployment per service.
CREATE UNIQUE INDEX deployments_one_active ON deployments (service) WHERE active = 1;
CREATE INDEX deployments_newest ON deployments (created_at, id);
CREATE INDEX deployments_by_service ON deployments (service, created_at, id);

-- Every transition that changed something, with the actions carried out for it (JSON list).
CREATE TABLE deployment_transitions (
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    revision BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    step INTEGER NOT NULL,
    weight_percent INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    detail TEXT NOT NULL,
    actions TEXT NOT NULL,
    PRIMARY KEY (deployment_id, revision)
);
