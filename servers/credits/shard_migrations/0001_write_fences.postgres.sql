-- Write fences of a credits shard (applied to every shard database after servers.credits.migrations).
--
-- A rebalance moving an account records here, on the shard itself, that the account's writes
-- are refused: a credits server still on an older topology must not write where the topology
-- no longer sends writes. States:
--   fenced    the account is being cut over to `peer_shard`; its events are still here.
--   moved     the account lives on `peer_shard` now; its events here were removed (a permanent
--             marker that keeps refusing stale writers).
--   incoming  a copy of the account from `peer_shard` is being made here; not served yet.
CREATE TABLE account_fences (
    account_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('fenced', 'moved', 'incoming')),
    rebalance_id TEXT NOT NULL,
    peer_shard TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Called first by every credits write transaction with the accounts it will write. Each
-- account's fence lock is taken in SHARED mode (writers never wait for each other) and held to
-- the end of the transaction, prepared transactions included; a fence is written under the same
-- lock in EXCLUSIVE mode, so it waits for the writers already past this check to finish, and
-- the writers after it see it. The fences are read after the locks are held (each statement of
-- a volatile function reads with a fresh snapshot), so none committed meanwhile is missed.
-- 1129465156 is 'CRED' as a 32-bit integer: the advisory lock class of account fences.
CREATE FUNCTION credits_write_fences(accounts TEXT[])
RETURNS TABLE (account_id TEXT, state TEXT, rebalance_id TEXT, peer_shard TEXT)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    lock_key INTEGER;
BEGIN
    FOR lock_key IN SELECT DISTINCT hashtext(a) FROM unnest(accounts) AS a ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock_shared(1129465156, lock_key);
    END LOOP;
    RETURN QUERY
        SELECT f.account_id, f.state, f.rebalance_id, f.peer_shard FROM account_fences f
        WHERE f.account_id = ANY (accounts);
END
$$;

-- The event store stays append-only, with one exception: the events of an account that has
-- moved to another shard (marker `moved`), or of a partial copy being discarded (`incoming`),
-- may be deleted. A live account's events can never be.
CREATE OR REPLACE FUNCTION event_store_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM account_fences f WHERE f.account_id = OLD.account_id AND f.state IN ('moved', 'incoming')
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'event_store is append-only: % refused', TG_OP;
END
$$;
