"""The credits store: where each account lives, and the one path every account change takes.

Every account-level operation goes through `CreditsStore`, which asks `AccountPlacement`
(`placement.py`) for the shard (a database with its AIP-155 request ledger) that holds the account: the single
store by default, or the shard the sharding topology names (`shards.TopologyPlacement`). A
change runs under an in-process lock per account (`accountcache.py`: a hot account's writers
queue instead of failing each other's optimistic checks), inside `RequestLedger.execute` (so the answer is
recorded with the change): load the account (cache, then the events after it), decide, append
the sealed events, update the read models, and snapshot every `snapshot_every` events — all
in one transaction. The (account_id, version) key still guards against writers in other
processes: a collision drops the cached state and the ledger retries the whole work.

On shards, every write transaction first checks the accounts' write fences on that shard
(`fences.py`), so a rebalance cut-over is honoured even by a server on an older topology, and
a shard that cannot be reached answers UNAVAILABLE. A transfer between accounts on two shards
goes through two-phase commit (`crossshard.py`); reads are in `queries.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import Message

from servers.credits.account import AccountState
from servers.credits.accountcache import AccountCache, AccountLocks
from servers.credits.domain import Decision, TransferDecision, expire_reservations
from servers.credits.events import Event, LowBalanceAlerted
from servers.credits.eventstore import LoadedAccount
from servers.credits.fences import WriteFences
from servers.credits.groupcommit import (
    GroupAccount,
    GroupCommitter,
    GroupOutcome,
    Operation,
    StaleAccount,
    alerted,
    record_answers,
    refusal_is_recorded,
    sealed_entries,
)
from servers.credits.placement import LEDGER_DOMAIN, AccountPlacement, Shard, unreachable_as_unavailable
from servers.mesh import errors, storage
from servers.mesh.caches import CacheGate
from servers.mesh.idempotency import InFlightRequests, RecordedAnswer, caller_scope, fingerprint
from servers.mesh.storage import Transaction

if TYPE_CHECKING:
    from servers.credits.crossshard import CrossShardTransfers

R = TypeVar("R", bound=Message)
Decide = Callable[[AccountState, datetime], Decision]
DecideTransfer = Callable[[AccountState, AccountState, datetime], TransferDecision]

_SWEEP_ATTEMPTS = 8
_ANSWERED_MEMORY = 100_000
"""Request ids answered by groups that this process remembers, to route their retries straight to the ledger."""


@dataclass(slots=True)
class _Outcome:
    """What the latest attempt of a work function wrote, to cache once its transaction committed."""

    response: Message | None = None
    accounts: list[LoadedAccount] = field(default_factory=list)
    alerted: bool = False


class CreditsStore:
    """The credits ledger's persistence: account changes, balances, listings, the audit chain."""

    def __init__(
        self,
        placement: AccountPlacement,
        *,
        snapshot_every: int = 100,
        cache_size: int = 10_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_alert: Callable[[], None] = lambda: None,
        group_commit: bool = True,
        max_group: int = 128,
        cross_shard: CrossShardTransfers | None = None,
        cache_gate: CacheGate | None = None,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.placement = placement
        self.snapshot_every = snapshot_every
        self.clock = clock
        self._on_alert = on_alert
        self._cache = AccountCache(cache_size, cache_gate)
        self._locks = AccountLocks()
        self.in_flight = InFlightRequests()
        """(scope, request id) of requests being decided in this process (group commits and two-phase transfers)."""
        self._answered: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.group_commit = group_commit
        self.max_group = max_group
        self.cross_shard = cross_shard
        """Two-phase commit of transfers between shards (None: such transfers are refused)."""
        # One committer per shard database: a failover swaps the database, and with it the committer.
        self._committers: dict[Shard, GroupCommitter] = {}
        self._fences = WriteFences()

    # -- what two-phase transfers build on (see crossshard.py) ------------------------------------

    def hold(self, *account_ids: str) -> contextlib.AbstractAsyncContextManager[None]:
        """This process's write locks of the accounts, taken in account-id order."""
        return self._locks.hold(*account_ids)

    async def refuse_fenced(self, tx: Transaction, account_ids: Sequence[str]) -> None:
        """On shards: hold the accounts' fence locks for `tx` and refuse a fenced one (UNAVAILABLE)."""
        if self.placement.sharded:
            await self._fences.refuse_fenced(tx, account_ids)

    async def load_current(self, tx: Transaction, shard: Shard, account_id: str) -> LoadedAccount:
        """The account as committed now on `shard` (cached state brought up to date, or loaded)."""
        return await self._current(tx, shard, account_id)

    async def append(
        self, tx: Transaction, shard: Shard, loaded: LoadedAccount, events: Sequence[Event], request_id: str
    ) -> LoadedAccount:
        """Append `events` to the account in `tx` (read models and snapshot too); the account after them."""
        return await self._write(tx, shard, loaded, events, request_id)

    def remember(self, accounts: Sequence[LoadedAccount], events: Sequence[Event]) -> None:
        """Cache accounts as just committed; wake alert watchers if `events` hold an alert."""
        for loaded in accounts:
            self._cache.put(loaded.state.account_id, loaded)
        if any(isinstance(event, LowBalanceAlerted) for event in events):
            self._on_alert()

    def forget(self, *account_ids: str) -> None:
        """Drop cached accounts whose committed state is unknown."""
        for account_id in account_ids:
            self._cache.drop(account_id)

    def unreachable_as_unavailable(self, shard: Shard) -> contextlib.AbstractContextManager[None]:
        """On shards, a database that cannot be reached (or refuses writes) is UNAVAILABLE."""
        return unreachable_as_unavailable(self.placement, shard)

    # -- changes ---------------------------------------------------------------------------------

    async def execute(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        account_id: str,
        decide: Decide,
        respond: Callable[[Decision, AccountState], R],
    ) -> R:
        """Decide on one account and record the events, once per `request.request_id`.

        With group commit on, the operation joins the next group of its shard; otherwise it
        runs alone in its own transaction.
        """
        shard = self.placement.shard_for(account_id)
        request_id: str = getattr(request, "request_id", "")
        committer = self._committer(shard)
        scope = caller_scope(LEDGER_DOMAIN)
        if committer is None or (scope, request_id) in self._answered:
            # A retry of a request this process answered: the request ledger replays the answer.
            return await self._execute_alone(shard, method, request, response_type, account_id, decide, respond)
        with self.in_flight.claim(request_id, scope):
            operation = Operation(
                method,
                request,
                response_type,
                account_id,
                decide,
                respond,
                request_id,
                fingerprint(method, request) if request_id else "",
                scope,
            )
            answer = await committer.submit(operation)
        assert isinstance(answer, response_type)
        return answer

    def _committer(self, shard: Shard) -> GroupCommitter | None:
        if not self.group_commit:
            return None
        committer = self._committers.get(shard)
        if committer is None:
            current = set(self.placement.shards)
            for retired in [s for s in self._committers if s not in current]:
                # A shard swapped by a failover: nothing new joins its groups.
                del self._committers[retired]
            committer = self._committers[shard] = GroupCommitter(
                functools.partial(self._commit_group, shard), max_group=self.max_group
            )
        return committer

    async def _execute_alone(
        self,
        shard: Shard,
        method: str,
        request: Message,
        response_type: type[R],
        account_id: str,
        decide: Decide,
        respond: Callable[[Decision, AccountState], R],
    ) -> R:
        request_id: str = getattr(request, "request_id", "")
        outcome = _Outcome()

        async def work(tx: Transaction) -> R:
            await self.refuse_fenced(tx, [account_id])
            loaded = await self._current(tx, shard, account_id)
            decision = decide(loaded.state, self.clock())
            after = await self._write(tx, shard, loaded, decision.events, request_id)
            response = respond(decision, after.state)
            self._expect(outcome, response, [after], decision.events)
            return response

        async with self._locks.hold(account_id):
            response = await self._run(shard, method, request, response_type, work, [account_id])
            self._settle(outcome, response, [account_id])
        return response

    async def _commit_group(self, shard: Shard, group: Sequence[Operation]) -> None:
        accounts = sorted({operation.account_id for operation in group})
        async with self._locks.hold(*accounts):
            try:
                with self.unreachable_as_unavailable(shard):
                    outcome: GroupOutcome | None = await self._group_transaction(shard, group)
            except (storage.UniqueViolation, storage.TransientError, StaleAccount):
                outcome = None
            except BaseException:
                for account_id in accounts:
                    self._cache.drop(account_id)
                raise
            if outcome is None:
                for account_id in accounts:
                    self._cache.drop(account_id)
            else:
                for account_id, loaded in outcome.accounts.items():
                    self._cache.put(account_id, loaded)
                self._remember_answered(outcome.answered)
                if outcome.alerted:
                    self._on_alert()
                for operation, answer in outcome.answers:
                    operation.settle(answer)
                return
        # Another process wrote to one of the accounts, or recorded one of the request ids:
        # each operation runs alone, where the request ledger sorts conflicts out.
        await asyncio.gather(*(self._alone(shard, operation) for operation in group))

    async def _alone(self, shard: Shard, operation: Operation) -> None:
        try:
            answer = await self._execute_alone(
                shard,
                operation.method,
                operation.request,
                operation.response_type,
                operation.account_id,
                operation.decide,
                operation.respond,
            )
        except Exception as error:
            operation.settle(error)
        else:
            operation.settle(answer)

    async def _group_transaction(self, shard: Shard, group: Sequence[Operation]) -> GroupOutcome:
        now = self.clock()
        answers: list[tuple[Operation, Message | BaseException]] = []
        records: list[RecordedAnswer] = []
        working: dict[str, GroupAccount] = {}
        async with shard.database.transaction() as tx:
            fences = await self._fences.check(tx, [o.account_id for o in group]) if self.placement.sharded else {}
            # No look-up of the request ids first: a retry is rare, and one already answered makes
            # the answers' insert fail, which sends the whole group through the request ledger.
            for operation in group:
                fence = fences.get(operation.account_id)
                if fence is not None:
                    answers.append((operation, fence.refusal()))
                    continue
                account = working.get(operation.account_id)
                if account is None:
                    account = working[operation.account_id] = await self._group_account(tx, shard, operation.account_id)
                try:
                    decision = operation.decide(account.state, now)
                except errors.DomainError as refusal:
                    if not account.verified:
                        # Refused on the cached state: make sure it is the latest before answering.
                        if await shard.events.has_events_after(tx, account.base.state):
                            raise StaleAccount(operation.account_id) from refusal
                        account.verified = True
                    answers.append((operation, refusal))
                    if operation.request_id and refusal_is_recorded(refusal):
                        records.append(
                            RecordedAnswer.rejected(
                                operation.request_id,
                                operation.method,
                                operation.fingerprint,
                                refusal,
                                LEDGER_DOMAIN,
                                operation.account_id,
                                scope=operation.scope,
                            )
                        )
                    continue
                for event in decision.events:
                    account.state.apply(event)
                account.events += [(event, operation.request_id) for event in decision.events]
                response = operation.respond(decision, account.state)
                answers.append((operation, response))
                if operation.request_id:
                    records.append(
                        RecordedAnswer.ok(
                            operation.request_id,
                            operation.method,
                            operation.fingerprint,
                            response,
                            operation.account_id,
                            scope=operation.scope,
                        )
                    )
            written = [account for account in working.values() if account.events]
            committed = await self._write_group(tx, shard, written)
            await record_answers(tx, records)
        return GroupOutcome(
            answers, committed, alerted(written), [(record.scope, record.request_id) for record in records]
        )

    def _remember_answered(self, request_ids: Sequence[tuple[str, str]]) -> None:
        for scoped in request_ids:
            self._answered[scoped] = None
        while len(self._answered) > _ANSWERED_MEMORY:
            self._answered.popitem(last=False)

    async def _group_account(self, tx: Transaction, shard: Shard, account_id: str) -> GroupAccount:
        cached = self._cache.get(account_id)
        if cached is not None:
            return GroupAccount(cached, cached.state.copy(), verified=False)
        loaded = await shard.events.load(tx, account_id)
        self._cache.put(account_id, loaded)
        return GroupAccount(loaded, loaded.state.copy(), verified=True)

    async def _write_group(
        self, tx: Transaction, shard: Shard, written: Sequence[GroupAccount]
    ) -> dict[str, LoadedAccount]:
        if not written:
            return {}
        entries = sealed_entries(written)
        positions = await shard.events.insert(tx, entries)
        changes = []
        committed: dict[str, LoadedAccount] = {}
        start = 0
        for account in written:
            end = start + len(account.events)
            changes.append((account.state, [event for event, _ in account.events], positions[start:end]))
            committed[account.state.account_id] = LoadedAccount(account.state, entries[end - 1][1].hash)
            if account.base.state.version // self.snapshot_every != account.state.version // self.snapshot_every:
                await shard.events.save_snapshot(tx, account.state, self.clock())
            start = end
        await shard.projection.record_many(tx, changes)
        return committed

    async def close(self) -> None:
        """Let the groups in progress finish (at shutdown)."""
        for committer in self._committers.values():
            await committer.close()

    async def transfer(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        from_account_id: str,
        to_account_id: str,
        decide: DecideTransfer,
        respond: Callable[[TransferDecision, AccountState, AccountState], R],
    ) -> R:
        """Decide a transfer and record both sides atomically, once per `request.request_id`.

        Accounts on one shard change in one transaction; on two shards, by two-phase commit.
        """
        shard = self.placement.shard_for(from_account_id)
        other = self.placement.shard_for(to_account_id)
        if other is not shard:
            if self.cross_shard is None:
                raise errors.Unavailable(
                    "transfers between accounts on different shards need the two-phase commit coordinator",
                    reason="CROSS_SHARD_TRANSFER_UNAVAILABLE",
                )
            return await self.cross_shard.transfer(
                method, request, response_type, (shard, from_account_id), (other, to_account_id), decide, respond
            )
        request_id: str = getattr(request, "request_id", "")
        outcome = _Outcome()

        async def work(tx: Transaction) -> R:
            await self.refuse_fenced(tx, [from_account_id, to_account_id])
            source = await self._current(tx, shard, from_account_id)
            destination = await self._current(tx, shard, to_account_id)
            decision = decide(source.state, destination.state, self.clock())
            sent = await self._write(tx, shard, source, decision.outgoing.events, request_id)
            received = await self._write(tx, shard, destination, decision.incoming.events, request_id)
            response = respond(decision, sent.state, received.state)
            self._expect(outcome, response, [sent, received], decision.outgoing.events + decision.incoming.events)
            return response

        accounts = [from_account_id, to_account_id]
        async with self._locks.hold(*accounts):
            response = await self._run(shard, method, request, response_type, work, accounts)
            self._settle(outcome, response, accounts)
        return response

    async def expire_due(self, *, trace_id: str = "", limit: int = 500) -> int:
        """Record the release of every reservation past its expiry; returns how many were released."""
        released = 0
        for shard in self.placement.shards:
            async with shard.database.transaction() as tx:
                due = await shard.projection.due_for_expiry(tx, self.clock(), limit)
            # An account copied here by a rebalance in progress is still served by its source.
            owned = [a for a, owner in zip(due, self.placement.owners(due), strict=True) if owner == shard.name]
            for account_id in owned:
                released += await self._expire_account(shard, account_id, trace_id)
        return released

    async def _expire_account(self, shard: Shard, account_id: str, trace_id: str) -> int:
        async with self._locks.hold(account_id):
            for attempt in range(_SWEEP_ATTEMPTS):
                try:
                    async with shard.database.transaction() as tx:
                        if self.placement.sharded and await self._fences.check(tx, [account_id]):
                            return 0  # being moved: the shard it lands on releases them
                        loaded = await self._current(tx, shard, account_id)
                        events = expire_reservations(loaded.state, now=self.clock(), trace_id=trace_id)
                        if not events:
                            return 0
                        after = await self._write(tx, shard, loaded, events, "")
                except (storage.UniqueViolation, storage.TransientError):
                    self._cache.drop(account_id)
                    await asyncio.sleep(0.002 * 2**attempt)
                    continue
                except BaseException:
                    self._cache.drop(account_id)
                    raise
                self._cache.put(account_id, after)
                return len(events)
        return 0

    async def _run(
        self,
        shard: Shard,
        method: str,
        request: Message,
        response_type: type[R],
        work: Callable[[Transaction], Awaitable[R]],
        accounts: list[str],
    ) -> R:
        async def guarded(tx: Transaction) -> R:
            try:
                return await work(tx)
            except (storage.UniqueViolation, storage.TransientError):
                # Another process wrote to the account: the cached state is behind.
                for account_id in accounts:
                    self._cache.drop(account_id)
                raise

        try:
            with self.unreachable_as_unavailable(shard):
                # Recorded against the first account: the one whose shard holds the answer.
                return await shard.ledger.execute(method, request, response_type, guarded, subject=accounts[0])
        except errors.DomainError:
            raise  # a refusal wrote nothing; the cache still holds committed states
        except BaseException:
            for account_id in accounts:
                self._cache.drop(account_id)
            raise

    @staticmethod
    def _expect(outcome: _Outcome, response: Message, accounts: list[LoadedAccount], events: Sequence[Event]) -> None:
        outcome.response = response
        outcome.accounts = accounts
        outcome.alerted = any(isinstance(event, LowBalanceAlerted) for event in events)

    def _settle(self, outcome: _Outcome, response: Message, account_ids: list[str]) -> None:
        # The ledger returns the very response object of the attempt whose transaction committed;
        # any other object is a stored answer replayed, and what was cached may be stale.
        if outcome.response is not response:
            for account_id in account_ids:
                self._cache.drop(account_id)
            return
        for account_id, loaded in zip(account_ids, outcome.accounts, strict=True):
            self._cache.put(account_id, loaded)
        if outcome.alerted:
            self._on_alert()

    async def _current(self, tx: Transaction, shard: Shard, account_id: str) -> LoadedAccount:
        """The account as committed now: the cached state brought up to date, or loaded."""
        cached = self._cache.get(account_id)
        if cached is None:
            cached = await shard.events.load(tx, account_id)
        else:
            cached = await shard.events.catch_up(tx, cached)
        self._cache.put(account_id, cached)
        return cached

    async def _write(
        self, tx: Transaction, shard: Shard, loaded: LoadedAccount, events: Sequence[Event], request_id: str
    ) -> LoadedAccount:
        if not events:
            return loaded
        before = loaded.state
        state = before.copy()
        for event in events:
            state.apply(event)
        appended = await shard.events.append(tx, events, loaded.head_hash, request_id)
        await shard.projection.record(tx, state, events, appended.positions)
        if before.version // self.snapshot_every != state.version // self.snapshot_every:
            await shard.events.save_snapshot(tx, state, self.clock())
        return LoadedAccount(state, appended.head_hash)
