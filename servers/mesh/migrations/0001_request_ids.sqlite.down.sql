-- Reverts 0001_request_ids.sqlite.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS request_ids_created_at;
DROP TABLE IF EXISTS request_ids;
