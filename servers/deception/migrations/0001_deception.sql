-- The deception service's store: the installation's identity, attacker activity (interactions,
-- sessions and their timelines), deduplicated alerts and their forwarding to compliance, the
-- decoy selection log, honeytoken fingerprints and synthetic data batches.
--
-- Times are microseconds since the Unix epoch (UTC) in BIGINT: exact on both backends.
-- Lists and small objects are JSON in TEXT. BYTEA is PostgreSQL's binary type; SQLite gives a
-- column declared BYTEA numeric affinity, which leaves the bytes it is given as a BLOB.

-- Which installation file the decoys' fingerprints come from: a digest of its seed, never the
-- seed itself, so a replaced or lost file is noticed at start instead of silently changing
-- every fingerprint.
CREATE TABLE installation (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    seed_digest TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    file_path TEXT NOT NULL,
    record_time_us BIGINT NOT NULL
);

-- Attacker sessions (SessionBook), upserted whenever an event changes one.
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    source_address TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    last_event_time_us BIGINT NOT NULL,
    event_count BIGINT NOT NULL CHECK (event_count >= 0),
    -- ReconStage number; NULL before the first event.
    stage INTEGER,
    -- JSON list of decoy ids in order of first contact.
    decoy_ids TEXT NOT NULL,
    -- JSON object of the labels given at creation.
    labels TEXT NOT NULL
);
CREATE INDEX sessions_create_time ON sessions (create_time_us);

-- Every connection to a decoy, as recorded when it ended.
CREATE TABLE interactions (
    interaction_id TEXT PRIMARY KEY,
    decoy_id TEXT NOT NULL,
    protocol INTEGER NOT NULL,
    source_address TEXT NOT NULL,
    source_port INTEGER NOT NULL,
    start_time_us BIGINT NOT NULL,
    end_time_us BIGINT NOT NULL,
    bytes_received BIGINT NOT NULL,
    received_sample BYTEA NOT NULL,
    stage INTEGER NOT NULL,
    -- JSON list of [username, secret] pairs the client tried (attacker input, kept as evidence).
    credentials TEXT NOT NULL,
    client_banner TEXT NOT NULL,
    -- JSON lists of indicator names and of received commands.
    indicators TEXT NOT NULL,
    commands TEXT NOT NULL,
    session_id TEXT NOT NULL
);
CREATE INDEX interactions_newest ON interactions (start_time_us, interaction_id);
CREATE INDEX interactions_source ON interactions (source_address, start_time_us);
CREATE INDEX interactions_decoy ON interactions (decoy_id, start_time_us);

-- The timeline entries of sessions: decoy interactions (by reference) and LogRecon reports.
CREATE TABLE session_events (
    event_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    time_us BIGINT NOT NULL,
    stage INTEGER NOT NULL,
    summary TEXT NOT NULL,
    -- Set for decoy events.
    interaction_id TEXT,
    -- JSON of the ReconReport, for events reported by other services.
    recon TEXT
);
CREATE INDEX session_events_timeline ON session_events (session_id, time_us);

-- Deduplicated alerts (AlertBook), upserted on every event folded in.
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    kind INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    source_address TEXT NOT NULL,
    first_time_us BIGINT NOT NULL,
    last_time_us BIGINT NOT NULL,
    event_count BIGINT NOT NULL CHECK (event_count >= 0),
    stage INTEGER,
    decoy_ids TEXT NOT NULL,
    session_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    honeytoken_id TEXT NOT NULL,
    summary TEXT NOT NULL
);

-- Alerts to forward to the compliance service (one per new alert and per escalation), written
-- in the transaction that raised them and retried until compliance takes them.
CREATE TABLE alert_notifications (
    -- Also the request_id of the RaiseAlert call, so a retried delivery is applied once.
    notification_id TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    -- The serialized compliance RaiseAlertRequest, frozen so every retry sends the same request.
    request BYTEA NOT NULL,
    create_time_us BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_us BIGINT NOT NULL,
    -- Set once compliance accepted it.
    delivered_time_us BIGINT,
    -- Set when compliance refused it for good (INVALID_ARGUMENT, FAILED_PRECONDITION).
    abandoned_time_us BIGINT,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alert_notifications_due ON alert_notifications (next_attempt_us);

-- What the decoy selection policies learned: per context bucket, discounted evidence per decoy
-- as JSON {decoy_id: [engaged, ignored]} (a DecoySelector snapshot).
CREATE TABLE bandit_evidence (
    bucket TEXT PRIMARY KEY,
    evidence TEXT NOT NULL,
    update_time_us BIGINT NOT NULL
);

-- Every decoy selection with the seed and draw that made it, and its feedback once given.
CREATE TABLE decoy_selections (
    selection_id TEXT PRIMARY KEY,
    draw BIGINT NOT NULL,
    bucket TEXT NOT NULL,
    decoy_id TEXT NOT NULL,
    policy INTEGER NOT NULL,
    -- uint64 in decimal: neither backend has an unsigned 64-bit integer type.
    seed TEXT NOT NULL,
    -- JSON list of [decoy_id, score, alpha, beta] at selection time.
    scores TEXT NOT NULL,
    propensity DOUBLE PRECISION NOT NULL,
    select_time_us BIGINT NOT NULL,
    source_address TEXT NOT NULL,
    session_id TEXT NOT NULL,
    -- JSON object of the attacker context's features.
    features TEXT NOT NULL,
    reward DOUBLE PRECISION,
    feedback_time_us BIGINT
);
CREATE INDEX decoy_selections_draw ON decoy_selections (draw);
CREATE INDEX decoy_selections_time ON decoy_selections (select_time_us);

-- Registered honeytokens: fingerprints of the secrets, never the secrets.
CREATE TABLE honeytokens (
    honeytoken_id TEXT PRIMARY KEY,
    kind INTEGER NOT NULL,
    username TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    row_index BIGINT NOT NULL,
    create_time_us BIGINT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE
);
CREATE INDEX honeytokens_batch ON honeytokens (batch_id);

-- Synthetic data batches: enough to regenerate one byte for byte (kind, seed, version, shape)
-- and what it scored.
CREATE TABLE synthetic_batches (
    batch_id TEXT PRIMARY KEY,
    kind INTEGER NOT NULL,
    seed TEXT NOT NULL,
    generator_version TEXT NOT NULL,
    row_count BIGINT NOT NULL,
    chunk_size INTEGER NOT NULL,
    honeytoken_count INTEGER NOT NULL,
    create_time_us BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    -- Filled in when the last chunk has been streamed.
    complete_time_us BIGINT,
    chunk_count BIGINT,
    quality_overall DOUBLE PRECISION,
    -- JSON list of {column, metric, statistic, score} of the whole batch.
    quality TEXT
);
CREATE INDEX synthetic_batches_seed ON synthetic_batches (kind, seed);
