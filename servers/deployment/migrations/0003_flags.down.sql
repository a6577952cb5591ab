-- Reverts 0003_flags.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS flag_audit_by_subject;
DROP TABLE IF EXISTS flag_audit;
DROP TABLE IF EXISTS target_groups;
DROP TABLE IF EXISTS flags;
