-- Reverts 0004_experiments.sql (`shieldx migrate down`): drops what it created, newest first.
DROP TABLE IF EXISTS experiment_arms;
DROP INDEX IF EXISTS experiments_newest;
DROP TABLE IF EXISTS experiments;
