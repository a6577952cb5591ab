-- Registered instances, traffic routes and the record of every route change.

-- One running instance of one version of a service.
CREATE TABLE instances (
    service TEXT NOT NULL,
    address TEXT NOT NULL,
    version TEXT NOT NULL,
    metrics_endpoint TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (service, address)
);
CREATE INDEX instances_by_version ON instances (service, version, address);

-- The last ScaleVersion a deployment asked for: the first `replicas` instances of the version
-- (by address) stay in the routes, the others are drained. No row: every instance is active.
CREATE TABLE version_scales (
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    replicas INTEGER NOT NULL CHECK (replicas >= 0),
    PRIMARY KEY (service, version)
);

-- The route of each service as last published. `weights` is a JSON object version -> basis
-- points; `published` the JSON of the versions with their addresses, to tell real changes from
-- no-ops. A route whose last instance left is kept with removed = 1 so revisions keep growing.
CREATE TABLE routes (
    service TEXT PRIMARY KEY,
    revision BIGINT NOT NULL CHECK (revision > 0),
    weights TEXT NOT NULL,
    sticky_metadata_key TEXT NOT NULL,
    published TEXT NOT NULL,
    removed INTEGER NOT NULL CHECK (removed IN (0, 1)),
    updated_at DOUBLE PRECISION NOT NULL
);

-- Every revision of every route: what it was, why and who. The primary key also makes two
-- writers racing to the same revision collide, so one of them retries.
CREATE TABLE route_changes (
    service TEXT NOT NULL,
    revision BIGINT NOT NULL,
    weights TEXT NOT NULL,
    sticky_metadata_key TEXT NOT NULL,
    published TEXT NOT NULL,
    removed INTEGER NOT NULL,
    cause TEXT NOT NULL,
    actor TEXT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (service, revision)
);

-- Fault injections, active until expires_at (rows are kept afterwards as a record).
CREATE TABLE fault_injections (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    method_pattern TEXT NOT NULL,
    delay_seconds DOUBLE PRECISION NOT NULL,
    abort_code INTEGER NOT NULL,
    percentage DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX fault_injections_by_service ON fault_injections (service, expires_at);
CREATE INDEX fault_injections_by_age ON fault_injections (created_at, id);
