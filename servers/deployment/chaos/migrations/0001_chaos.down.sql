-- Reverts 0001_chaos.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS fault_injections_experiment;
ALTER TABLE fault_injections DROP COLUMN chaos;
ALTER TABLE fault_injections DROP COLUMN experiment_id;
DROP TABLE IF EXISTS chaos_schedules;
DROP INDEX IF EXISTS chaos_experiments_newest;
DROP TABLE IF EXISTS chaos_experiments;
