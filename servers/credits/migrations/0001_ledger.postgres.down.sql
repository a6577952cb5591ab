-- Reverts 0001_ledger.postgres.sql (`shieldx migrate down`): drops what it created, newest first.
DROP TABLE IF EXISTS signed_heads;
DROP TABLE IF EXISTS projection_checkpoint;
DROP INDEX IF EXISTS credit_reservations_position;
DROP TABLE IF EXISTS credit_reservations_read_model;
DROP INDEX IF EXISTS credit_balances_next_expiry;
DROP TABLE IF EXISTS credit_balances_read_model;
DROP TABLE IF EXISTS snapshots;
DROP TABLE IF EXISTS alert_sequence;
DROP INDEX IF EXISTS event_store_usage;
DROP INDEX IF EXISTS event_store_reference;
DROP INDEX IF EXISTS event_store_alert_seq;
DROP TABLE IF EXISTS event_store;
DROP FUNCTION IF EXISTS event_store_append_only;
