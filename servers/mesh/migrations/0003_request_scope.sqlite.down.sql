-- Reverts 0003_request_scope.sqlite.sql (`shieldx migrate down`): ids are unscoped again, so of
-- answers sharing a request id across scopes only one (the lowest scope) can stay.
CREATE TABLE request_ids_unscoped (
    request_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'rejected')),
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    subject TEXT NOT NULL DEFAULT ''
);
INSERT OR IGNORE INTO request_ids_unscoped (request_id, method, fingerprint, outcome, response, created_at, subject)
    SELECT request_id, method, fingerprint, outcome, response, created_at, subject FROM request_ids ORDER BY scope;
DROP TABLE request_ids;
ALTER TABLE request_ids_unscoped RENAME TO request_ids;
CREATE INDEX request_ids_created_at ON request_ids (created_at);
CREATE INDEX request_ids_subject ON request_ids (subject) WHERE subject <> '';
