-- Reverts 0004_sealed_secrets.sql (`shieldx migrate down`). This destroys the shared keys (signing
-- keys, the keys of data encrypted at rest): restore the backup taken before migrating, or data
-- sealed under them stays unreadable.
DROP TABLE sealed_secrets;
