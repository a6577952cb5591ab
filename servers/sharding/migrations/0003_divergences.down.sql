-- Reverts 0003_divergences.sql (`shieldx migrate down`): drops what it created, newest first.
DROP INDEX IF EXISTS divergences_newest;
DROP TABLE IF EXISTS divergences;
