-- What a request acted on (a credits account, say), so its answers, refusals included, can move
-- with it to another database: a retry there must get the same answer.
ALTER TABLE request_ids ADD COLUMN subject TEXT NOT NULL DEFAULT '';
CREATE INDEX request_ids_subject ON request_ids (subject) WHERE subject <> '';
