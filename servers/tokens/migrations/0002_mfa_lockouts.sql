-- Runs of wrong TOTP codes per client (servers/tokens/lockout.py): a row exists only while a
-- client has wrong codes since its last right one. Shared by every replica on the database.
CREATE TABLE mfa_lockouts (
    client_id TEXT PRIMARY KEY REFERENCES clients (client_id) ON DELETE CASCADE,
    failures INTEGER NOT NULL,
    locked_until_us BIGINT
);
