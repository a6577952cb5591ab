-- AIP-155 idempotency: the first answer to each request_id, replayed to retries.
CREATE TABLE request_ids (
    request_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    -- 'ok': response holds the serialized response message;
    -- 'rejected': response holds the serialized google.rpc.Status of the business rejection.
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'rejected')),
    response BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX request_ids_created_at ON request_ids (created_at);
