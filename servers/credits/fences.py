"""Write fences on a credits shard: accounts whose writes the shard itself refuses during and after a move.

A rebalance fences an account on its source shard before the last events are copied, and
leaves a permanent "moved" marker there once the account is served elsewhere; the copy being
made on the target is marked "incoming" until it is complete. Every credits write transaction
on a shard starts with `WriteFences.check` (the `credits_write_fences` function of
`shard_migrations`), which takes each account's fence lock in shared mode and returns the
fences found; `fence` takes the same lock exclusively. So a fence waits for the writes already
past the check (prepared two-phase transactions included) and every later write sees it: no
write can land on the source after the fence, whatever topology version its server follows.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from servers.mesh import errors
from servers.mesh.storage import Transaction

FENCE_LOCK_CLASS = 1129465156
"""Advisory lock class of account fences ('CRED' as a 32-bit integer; see the migration)."""
RETRY_AFTER_SECONDS = 0.2
"""What a refused writer is told to wait: a cut-over lasts a fraction of a second."""


class FenceState(enum.StrEnum):
    """Why a shard refuses an account's writes."""

    FENCED = "fenced"
    """Being cut over to another shard; the events are still here."""
    MOVED = "moved"
    """Served by another shard now; the events here were removed."""
    INCOMING = "incoming"
    """A copy from another shard is being made here; not served yet."""


@dataclass(frozen=True, slots=True)
class Fence:
    """One account's fence on one shard."""

    account_id: str
    state: FenceState
    rebalance_id: str
    peer_shard: str
    """The target shard (fenced, moved) or the source shard (incoming)."""

    def refusal(self) -> errors.Unavailable:
        """The error a write to the fenced account answers (UNAVAILABLE with RetryInfo)."""
        reason = "ACCOUNT_MOVED" if self.state is FenceState.MOVED else "ACCOUNT_MOVING"
        return errors.Unavailable(
            f"account {self.account_id!r} is being moved between shards; retry shortly",
            retry_after=RETRY_AFTER_SECONDS,
            reason=reason,
            metadata={"account_id": self.account_id, "shard_id": self.peer_shard},
        )


class WriteFences:
    """SQL of the `account_fences` table of one shard (PostgreSQL)."""

    async def check(self, tx: Transaction, account_ids: Sequence[str]) -> dict[str, Fence]:
        """Hold the accounts' fence locks (shared) to the end of `tx`; the fences they have now."""
        rows = await tx.fetchall(
            "SELECT account_id, state, rebalance_id, peer_shard FROM credits_write_fences(?::text[])",
            (sorted(set(account_ids)),),
        )
        return {row[0]: Fence(row[0], FenceState(row[1]), row[2], row[3]) for row in rows}

    async def refuse_fenced(self, tx: Transaction, account_ids: Sequence[str]) -> None:
        """`check`, raising the first fenced account's refusal."""
        fences = await self.check(tx, account_ids)
        if fences:
            raise fences[min(fences)].refusal()

    async def fence(self, tx: Transaction, account_id: str, rebalance_id: str, target_shard: str) -> None:
        """Refuse the account's writes here from the commit of `tx` on, after the writes in flight.

        Waits for the writers holding the account's fence lock (set `lock_timeout` first to bound it).
        """
        await tx.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (FENCE_LOCK_CLASS, account_id))
        await self._set(tx, account_id, FenceState.FENCED, rebalance_id, target_shard)

    async def lift(self, tx: Transaction, account_id: str, rebalance_id: str) -> bool:
        """Remove the account's FENCED state of `rebalance_id`; False if there was none."""
        removed = await tx.execute(
            "DELETE FROM account_fences WHERE account_id = ? AND state = ? AND rebalance_id = ?",
            (account_id, FenceState.FENCED.value, rebalance_id),
        )
        return removed > 0

    async def mark_moved(self, tx: Transaction, account_id: str, rebalance_id: str, target_shard: str) -> None:
        """Leave the permanent marker of an account served by `target_shard` (its events here may then go)."""
        await self._set(tx, account_id, FenceState.MOVED, rebalance_id, target_shard)

    async def mark_incoming(self, tx: Transaction, account_id: str, source_shard: str) -> None:
        """Mark the account as a copy in the making (its rows here may be discarded, its writes are refused)."""
        await tx.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (FENCE_LOCK_CLASS, account_id))
        await self._set(tx, account_id, FenceState.INCOMING, "", source_shard)

    async def clear(self, tx: Transaction, account_id: str, state: FenceState) -> None:
        """Remove the account's fence if it is in `state`."""
        await tx.execute("DELETE FROM account_fences WHERE account_id = ? AND state = ?", (account_id, state.value))

    async def get(self, tx: Transaction, account_id: str) -> Fence | None:
        """The account's fence here, read without taking its lock."""
        row = await tx.fetchone(
            "SELECT account_id, state, rebalance_id, peer_shard FROM account_fences WHERE account_id = ?",
            (account_id,),
        )
        return None if row is None else Fence(row[0], FenceState(row[1]), row[2], row[3])

    async def _set(
        self, tx: Transaction, account_id: str, state: FenceState, rebalance_id: str, peer_shard: str
    ) -> None:
        await tx.execute(
            "INSERT INTO account_fences (account_id, state, rebalance_id, peer_shard, updated_at)"
            " VALUES (?, ?, ?, ?, now()) ON CONFLICT (account_id) DO UPDATE SET state = excluded.state,"
            " rebalance_id = excluded.rebalance_id, peer_shard = excluded.peer_shard, updated_at = now()",
            (account_id, state.value, rebalance_id, peer_shard),
        )
