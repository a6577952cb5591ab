"""Reading the ledger: balances, history, listings, usage and the audit chain, over one store or many shards.

Reads of one account go to its shard. On shards, reads where a few milliseconds of staleness
cannot mislead (ListTransactions, ListReservations, GetUsageReport, VerifyAuditChain) may be
served by a healthy streaming replica; the balance, current or as of a past point, is read from
the primary, so a caller always sees its own acknowledged writes and an `as_of_version` just
written is never refused as too new. A read whose replica cannot be reached falls back to the
primary.

Reads over every account visit every shard and keep, from each, only the accounts that shard
serves now: during a rebalance an account can have a copy on its target (not yet served) or a
leftover on its source (being removed), and neither must be counted twice. Listings merge the
shards' pages in the same order a single store would give.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from servers.credits.account import AccountState
from servers.credits.audit import AccountHead, ChainMismatch, ChainVerifier, ledger_head
from servers.credits.domain import account_not_found
from servers.credits.events import StoredEvent
from servers.credits.eventstore import TransactionQuery
from servers.credits.fences import FenceState, WriteFences
from servers.credits.placement import UNREACHABLE, AccountPlacement, Shard, unreachable_as_unavailable
from servers.credits.readmodels import BalanceRow, ReservationRow, ReservationState
from servers.credits.reports import UsageReport
from servers.credits.signing import HeadSigner, SignedHead, SignedHeads
from servers.mesh import errors
from servers.mesh.storage import Transaction

T = TypeVar("T")

SCAN_BATCH = 5000
"""Rows read per query when scanning a whole shard."""


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of verifying audit chains."""

    events_checked: int
    accounts_checked: int
    mismatch: ChainMismatch | None

    @property
    def ok(self) -> bool:
        """True if every event checked matches its chain."""
        return self.mismatch is None


class LedgerQueries:
    """Every read of the credits ledger, wherever its accounts live."""

    def __init__(self, placement: AccountPlacement, clock: Callable[[], datetime]) -> None:
        self.placement = placement
        self.clock = clock
        self._signed_heads = SignedHeads(placement.home.dialect)
        self._fences = WriteFences()

    # -- one account -----------------------------------------------------------------------------

    async def balance(self, account_id: str) -> BalanceRow | None:
        """An account's current balance row (None if it has no events), from its primary.

        A reservation past its expiry counts as released at once, as the next command on the
        account would record, rather than once the sweeper has got to it.
        """
        now = self.clock()

        async def current(shard: Shard, tx: Transaction) -> BalanceRow | None:
            row = await shard.projection.balance(tx, account_id)
            if row is None or row.next_expiry is None or row.next_expiry > now:
                return row
            return row.releasing(*await shard.projection.expired_holds(tx, account_id, now))

        async def read(shard: Shard) -> BalanceRow | None:
            async with shard.database.transaction() as tx:
                row = await current(shard, tx)
                if row is not None or not self.placement.sharded:
                    return row
                fence = await self._fences.get(tx, account_id)
            if fence is None or fence.state is not FenceState.MOVED:
                return None
            # This server's topology is behind a cut-over the shard already knows of.
            moved_to = self.placement.primary_of(fence.peer_shard)
            async with moved_to.database.transaction() as tx:
                return await current(moved_to, tx)

        return await self._on_account(account_id, read)

    async def state_at(
        self, account_id: str, *, version: int | None = None, moment: datetime | None = None
    ) -> AccountState:
        """The account replayed up to `version`, or to its last event at or before `moment`.

        NotFound ACCOUNT_NOT_FOUND if it had no events by then; InvalidArgument on
        `as_of_version` past its latest version.
        """

        async def read(shard: Shard) -> tuple[AccountState, int | None]:
            async with shard.database.transaction() as tx:
                upto = version
                if moment is not None:
                    upto = await shard.events.version_at(tx, account_id, moment)
                    if upto is None:
                        raise account_not_found(account_id)
                loaded = await shard.events.load(tx, account_id, up_to=upto)
            return loaded.state, upto

        state, upto = await self._on_account(account_id, read)
        if not state.exists:
            raise account_not_found(account_id)
        if upto is not None and state.version < upto:
            raise errors.InvalidArgument("as_of_version", f"the account's latest version is {state.version}")
        return state

    # -- listings --------------------------------------------------------------------------------

    async def transactions(
        self, query: TransactionQuery, after: tuple[str, int] | None, limit: int
    ) -> list[StoredEvent]:
        """A page of events matching `query`, in (account, version) order after `after`."""
        if query.account_id:

            async def one(shard: Shard) -> list[StoredEvent]:
                async with shard.database.transaction() as tx:
                    return await shard.events.transactions(tx, query, after, limit)

            return await self._on_account(query.account_id, one, replica_ok=True)
        pages = [await self._owned_transactions(shard, query, after, limit) for shard in self.placement.shards]
        return list(heapq.merge(*pages, key=lambda row: (row.account_id, row.version)))[:limit]

    async def _owned_transactions(
        self, shard: Shard, query: TransactionQuery, after: tuple[str, int] | None, limit: int
    ) -> list[StoredEvent]:
        """Up to `limit` matching events after `after` of the accounts `shard` serves."""
        owned: list[StoredEvent] = []
        while len(owned) < limit:

            async def batch(node: Shard, cursor: tuple[str, int] | None = after) -> list[StoredEvent]:
                async with node.database.transaction() as tx:
                    return await node.events.transactions(tx, query, cursor, limit)

            rows = await self._on_shard(shard, batch)
            owned += self._served_by(shard, rows, lambda row: row.account_id)
            if len(rows) < limit:
                break
            after = (rows[-1].account_id, rows[-1].version)
        return owned[:limit]

    async def reservations(
        self, account_id: str, states: Sequence[ReservationState], after: tuple[str, int] | None, limit: int
    ) -> list[tuple[str, ReservationRow]]:
        """A page of reservations as of now, each with its shard: by shard, then oldest first, after `after`.

        `after` is (shard, position) of the last reservation of the previous page.
        """
        now = self.clock()

        async def page(node: Shard, position: int, size: int) -> list[ReservationRow]:
            async with node.database.transaction() as tx:
                return await node.projection.reservations(tx, account_id, states, now, position, size)

        if account_id:
            shard_id = self.placement.shard_id_of(account_id)
            position = after[1] if after is not None and after[0] == shard_id else 0
            rows = await self._on_account(account_id, lambda node: page(node, position, limit), replica_ok=True)
            return [(shard_id, row) for row in rows]
        found: list[tuple[str, ReservationRow]] = []
        for shard in self.placement.shards:
            if after is not None and shard.name < after[0]:
                continue
            position = after[1] if after is not None and after[0] == shard.name else 0
            while len(found) < limit:
                rows = await self._on_shard(shard, functools.partial(page, position=position, size=limit))
                found += [(shard.name, row) for row in self._served_by(shard, rows, lambda row: row.account_id)]
                if len(rows) < limit:
                    break
                position = rows[-1].position
            if len(found) >= limit:
                break
        return found[:limit]

    async def add_usage(self, report: UsageReport, account_id: str) -> None:
        """Feed `report` every consumption event in its range (of one account, or all)."""
        if account_id:
            await self._on_account(account_id, lambda node: self._add_usage(node, report, account_id), replica_ok=True)
            return
        for shard in self.placement.shards:
            await self._on_shard(
                shard, functools.partial(self._add_usage, report=report, account_id="", served_by=shard)
            )

    async def _add_usage(
        self, node: Shard, report: UsageReport, account_id: str, served_by: Shard | None = None
    ) -> None:
        position = 0
        while True:
            async with node.database.transaction() as tx:
                batch = await node.events.usage_events(
                    tx, account_id, report.start_time, report.end_time, position, SCAN_BATCH
                )
            events = [event for _, event in batch]
            if served_by is not None:
                events = self._served_by(served_by, events, lambda event: event.account_id)
            for event in events:
                report.add(event)
            if batch:
                position = batch[-1][0]
            if len(batch) < SCAN_BATCH:
                return

    async def events_by_request(self, request_id: str) -> list[StoredEvent]:
        """Every event recorded by the call with this request id (each once, wherever it is)."""
        found: dict[tuple[str, int], StoredEvent] = {}
        for shard in self.placement.shards:
            with unreachable_as_unavailable(self.placement, shard):
                async with shard.database.transaction() as tx:
                    rows = await shard.events.events_by_request(tx, request_id)
            for row in self._served_by(shard, rows, lambda row: row.account_id):
                found[(row.account_id, row.version)] = row
        return [found[key] for key in sorted(found)]

    # -- the audit chain -------------------------------------------------------------------------

    async def verify_chain(self, account_id: str = "") -> ChainReport:
        """Recompute the audit chain of one account (or all) and name the first event that does not match."""
        verifier = ChainVerifier()
        if account_id:
            mismatch = await self._on_account(
                account_id, lambda node: self._verify(node, verifier, account_id, None), replica_ok=True
            )
            return ChainReport(verifier.events_checked, verifier.accounts_checked, mismatch)
        for shard in self.placement.shards:
            mismatch = await self._on_shard(
                shard, functools.partial(self._verify, verifier=verifier, account_id="", served_by=shard)
            )
            if mismatch is not None:
                return ChainReport(verifier.events_checked, verifier.accounts_checked, mismatch)
        return ChainReport(verifier.events_checked, verifier.accounts_checked, None)

    async def _verify(
        self, node: Shard, verifier: ChainVerifier, account_id: str, served_by: Shard | None
    ) -> ChainMismatch | None:
        after: tuple[str, int] | None = None
        query = TransactionQuery(account_id=account_id)
        while True:
            # Short transactions: a full verification must not hold SQLite's write lock.
            async with node.database.transaction() as tx:
                batch = await node.events.transactions(tx, query, after, SCAN_BATCH)
            rows = batch if served_by is None else self._served_by(served_by, batch, lambda row: row.account_id)
            for row in rows:
                mismatch = verifier.check(row)
                if mismatch is not None:
                    return mismatch
            if len(batch) < SCAN_BATCH:
                return None
            after = (batch[-1].account_id, batch[-1].version)

    async def heads(self) -> list[AccountHead]:
        """The chain head of every account."""
        heads: list[AccountHead] = []
        for shard in self.placement.shards:
            with unreachable_as_unavailable(self.placement, shard):
                async with shard.database.transaction() as tx:
                    found = await shard.projection.heads(tx)
            heads += self._served_by(shard, found, lambda head: head.account_id)
        return heads

    async def projection_lag(self) -> int:
        """Events stored beyond the read models' checkpoint, over all shards."""
        lag = 0
        for shard in self.placement.shards:
            with unreachable_as_unavailable(self.placement, shard):
                async with shard.database.transaction() as tx:
                    lag += await shard.projection.lag(tx)
        return lag

    async def sign_head(self, signer: HeadSigner) -> SignedHead:
        """Sign the ledger head now and store it (in the server's own store), unless it equals the latest."""
        head = ledger_head(await self.heads(), self.clock())
        async with self.placement.home.transaction() as tx:
            latest = await self._signed_heads.latest(tx)
            if latest is not None and latest.head.digest == head.digest and latest.public_key == signer.public_key:
                return latest
            signed = signer.sign(head)
            await self._signed_heads.add(tx, signed)
        return signed

    async def latest_signed_head(self) -> SignedHead | None:
        """The most recently stored signed head."""
        async with self.placement.home.transaction() as tx:
            return await self._signed_heads.latest(tx)

    # -- where reads go --------------------------------------------------------------------------

    async def _on_account(
        self, account_id: str, read: Callable[[Shard], Awaitable[T]], *, replica_ok: bool = False
    ) -> T:
        """`read` on the account's shard (a replica if allowed), on its primary if the replica fails."""
        primary = self.placement.shard_for_reading(account_id)
        async with self.placement.reading(account_id, replica_ok=replica_ok) as node:
            if node is primary:
                with unreachable_as_unavailable(self.placement, primary):
                    return await read(node)
            try:
                return await read(node)
            except UNREACHABLE:
                pass
        with unreachable_as_unavailable(self.placement, primary):
            return await read(primary)

    async def _on_shard(self, shard: Shard, read: Callable[[Shard], Awaitable[T]]) -> T:
        """`read` of a whole shard, on a healthy replica where there is one, else (or if it fails) the primary."""
        node = self.placement.replica_or_primary(shard)
        if node is not shard:
            try:
                return await read(node)
            except UNREACHABLE:
                pass
        with unreachable_as_unavailable(self.placement, shard):
            return await read(shard)

    def _served_by(self, shard: Shard, items: Sequence[T], account_of: Callable[[T], str]) -> list[T]:
        """The items whose account `shard` serves now (all of them on a single store)."""
        if not self.placement.sharded or not items:
            return list(items)
        accounts = sorted({account_of(item) for item in items})
        served = {a for a, owner in zip(accounts, self.placement.owners(accounts), strict=True) if owner == shard.name}
        return [item for item in items if account_of(item) in served]
