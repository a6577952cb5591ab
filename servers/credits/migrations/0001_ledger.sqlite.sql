-- The credits ledger on SQLite: the same tables as on PostgreSQL (see 0001_ledger.postgres.sql
-- for what each holds), with times as canonical UTC text and bytes as BLOB.

-- SQLite allows one rowid key, which `position` takes so that it is assigned on insert;
-- (account_id, version) is the same unique optimistic-concurrency key as on PostgreSQL.
CREATE TABLE event_store (
    position INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    request_id TEXT NOT NULL DEFAULT '',
    reference TEXT NOT NULL DEFAULT '',
    alert_seq INTEGER,
    UNIQUE (account_id, version)
);
CREATE UNIQUE INDEX event_store_alert_seq ON event_store (alert_seq) WHERE alert_seq IS NOT NULL;
CREATE INDEX event_store_reference ON event_store (reference) WHERE reference <> '';
CREATE INDEX event_store_usage ON event_store (occurred_at) WHERE type IN ('Consumed', 'ReservationCommitted');

CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store
BEGIN
    SELECT RAISE(ABORT, 'event_store is append-only: UPDATE refused');
END;
CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store
BEGIN
    SELECT RAISE(ABORT, 'event_store is append-only: DELETE refused');
END;

CREATE TABLE alert_sequence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO alert_sequence (id, last) VALUES (1, 0);

CREATE TABLE snapshots (
    account_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    taken_at TEXT NOT NULL,
    PRIMARY KEY (account_id, version)
);

CREATE TABLE credit_balances_read_model (
    account_id TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    held INTEGER NOT NULL CHECK (held >= 0),
    version INTEGER NOT NULL CHECK (version >= 1),
    threshold INTEGER NOT NULL CHECK (threshold >= 0),
    alert_armed INTEGER NOT NULL,
    purchased INTEGER NOT NULL,
    consumed INTEGER NOT NULL,
    transferred_in INTEGER NOT NULL,
    transferred_out INTEGER NOT NULL,
    open_reservations INTEGER NOT NULL,
    next_expiry TEXT,
    updated_at TEXT NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX credit_balances_next_expiry ON credit_balances_read_model (next_expiry)
    WHERE next_expiry IS NOT NULL;

CREATE TABLE credit_reservations_read_model (
    account_id TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'cancelled', 'expired')),
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    closed_at TEXT,
    committed INTEGER NOT NULL,
    released INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (account_id, reservation_id)
);
CREATE INDEX credit_reservations_position ON credit_reservations_read_model (position);

CREATE TABLE projection_checkpoint (
    projection TEXT NOT NULL,
    slot INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (projection, slot)
);

CREATE TABLE signed_heads (
    id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    signature BLOB NOT NULL,
    public_key BLOB NOT NULL,
    signed_at TEXT NOT NULL,
    account_count INTEGER NOT NULL,
    event_count INTEGER NOT NULL
);
