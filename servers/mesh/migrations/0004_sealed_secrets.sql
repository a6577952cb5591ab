-- Secrets the replicas of a service share (servers/mesh/vault.py): signing keys and the keys that
-- encrypt data at rest, each sealed (XChaCha20-Poly1305) under a key-encryption key that never
-- enters the database. Names start with the service (`tokens/signing/<kid>`), so services
-- sharing one schema never meet. `kek_id` is the sealing KEK's public fingerprint.
CREATE TABLE sealed_secrets (
    name TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
