-- The coordinator log of cross-shard transfers (two-phase commit, see servers/credits/twophase.py).

-- Who this log belongs to: part of every prepared transaction's name, so recovery touches only
-- the transactions this log decides.
CREATE TABLE coordinator_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    coordinator_id TEXT NOT NULL
);

-- One decision per transfer, written once: COMMIT by the coordinator after both shards
-- prepared, or ABORT by recovery when it finds a prepared transaction with no decision. The
-- primary key makes the first writer win, so a transfer can never be both.
CREATE TABLE transfer_decisions (
    transfer_id TEXT PRIMARY KEY,
    decision TEXT NOT NULL CHECK (decision IN ('commit', 'abort')),
    from_account_id TEXT NOT NULL,
    to_account_id TEXT NOT NULL,
    from_shard TEXT NOT NULL,
    to_shard TEXT NOT NULL,
    amount BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    decided_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX transfer_decisions_decided_at ON transfer_decisions (decided_at);
