-- Request ids belong to whoever sent them, at the service they sent them to: `scope` is the
-- service's ledger domain and the calling client (`shieldx.credits.v1 billing`), so another
-- client reusing an id never gets this answer, and services sharing one file never refuse
-- each other's ids. Rows recorded before this migration keep the empty scope: nobody's.
-- SQLite cannot change a primary key in place: the table is rebuilt.
CREATE TABLE request_ids_scoped (
    scope TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'rejected')),
    response BLOB NOT NULL,
    created_at REAL NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (scope, request_id)
);
INSERT INTO request_ids_scoped (request_id, method, fingerprint, outcome, response, created_at, subject)
    SELECT request_id, method, fingerprint, outcome, response, created_at, subject FROM request_ids;
DROP TABLE request_ids;
ALTER TABLE request_ids_scoped RENAME TO request_ids;
CREATE INDEX request_ids_created_at ON request_ids (created_at);
CREATE INDEX request_ids_subject ON request_ids (subject) WHERE subject <> '';
