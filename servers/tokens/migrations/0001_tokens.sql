-- The token service's tables. Times are microseconds since the Unix epoch (UTC), BIGINT on
-- both backends, so comparisons in SQL are exact and portable.

-- Registered clients. The secret exists only as an Argon2id hash; the TOTP secret only as a
-- SecretBox ciphertext (base64) under a key kept outside the database.
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('workload', 'person')),
    display_name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    -- Space-separated and sorted; neither scopes nor audiences may contain spaces.
    allowed_scopes TEXT NOT NULL,
    allowed_audiences TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL,
    mfa_secret TEXT,
    mfa_enabled BOOLEAN NOT NULL DEFAULT FALSE,
    mfa_enroll_time_us BIGINT,
    -- TOTP time step of the last accepted code; advanced only by compare-and-set.
    mfa_last_step BIGINT,
    CHECK (mfa_secret IS NOT NULL OR NOT mfa_enabled)
);

-- Signing keys: public halves and lifecycle only. The secret half of the active key lives in
-- a 0600 file under <data_dir>/keys/ and never enters the database.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    -- PASERK k4.public of the Ed25519 public key.
    public_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'previous')),
    create_time_us BIGINT NOT NULL,
    not_before_us BIGINT NOT NULL,
    not_after_us BIGINT,
    CHECK ((state = 'active') = (not_after_us IS NULL))
);
-- At most one key signs: a second 'active' row is a unique violation (concurrent rotations).
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

-- Revoked token ids, kept until the token expires anyway. `sequence` is assigned from
-- revocation_log inside the recording transaction: it increases by one per revocation and
-- commits in order, which makes it the resume point of WatchRevocations.
CREATE TABLE revocations (
    sequence BIGINT PRIMARY KEY,
    jti TEXT NOT NULL UNIQUE,
    expire_time_us BIGINT NOT NULL,
    revoke_time_us BIGINT NOT NULL
);
CREATE INDEX revocations_expire_time ON revocations (expire_time_us);

-- One row: the last sequence handed out (never goes back, even when rows are purged) and the
-- highest sequence purged so far (a watcher resuming below it gets a fresh snapshot).
CREATE TABLE revocation_log (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_sequence BIGINT NOT NULL,
    purged_through BIGINT NOT NULL
);
INSERT INTO revocation_log (id, last_sequence, purged_through) VALUES (1, 0, 0);
