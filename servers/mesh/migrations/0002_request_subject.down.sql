-- Reverts 0002_request_subject.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS request_ids_subject;
ALTER TABLE request_ids DROP COLUMN subject;
