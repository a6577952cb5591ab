-- Reverts 0002_mfa_lockouts.sql (`shieldx migrate down`): runs of wrong TOTP codes are forgotten.
DROP TABLE mfa_lockouts;
