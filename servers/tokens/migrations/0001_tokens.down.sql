-- Reverts 0001_tokens.sql (`shieldx migrate down`): drops what it created, newest first.
DROP TABLE IF EXISTS revocation_log;
DROP INDEX IF EXISTS revocations_expire_time;
DROP TABLE IF EXISTS revocations;
DROP INDEX IF EXISTS signing_keys_one_active;
DROP TABLE IF EXISTS signing_keys;
DROP TABLE IF EXISTS clients;
