CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    balance BIGINT NOT NULL CHECK (balance >= 0)
);
