-- Reverts 0001_transfer_decisions.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS transfer_decisions_decided_at;
DROP TABLE IF EXISTS transfer_decisions;
DROP TABLE IF EXISTS coordinator_identity;
