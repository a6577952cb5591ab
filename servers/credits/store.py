"""The credits store: where each account lives, and the one path every account change takes.

Every account-level operation goes through `CreditsStore`, which asks `AccountPlacement` for
the shard (a database with its AIP-155 request ledger) that holds the account: the single
store by default, or the shard the sharding topology names (`shards.TopologyPlacement`). A
change runs under an in-process lock per account (so a hot account's writers queue instead of
failing each other's optimistic checks), inside `RequestLedger.execute` (so the answer is
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import psycopg
from google.protobuf.message import Message

from servers.credits.account import AccountState
from servers.credits.domain import Decision, TransferDecision, expire_reservations
from servers.credits.events import Event, LowBalanceAlerted
from servers.credits.eventstore import EventStore, LoadedAccount
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
from servers.credits.projection import Projection
from servers.mesh import errors, storage
from servers.mesh.idempotency import MAX_REQUEST_ID_LENGTH, RecordedAnswer, RequestLedger, fingerprint
from servers.mesh.storage import Database, Transaction

if TYPE_CHECKING:
    from servers.credits.crossshard import CrossShardTransfers

R = TypeVar("R", bound=Message)
Decide = Callable[[AccountState, datetime], Decision]
DecideTransfer = Callable[[AccountState, AccountState, datetime], TransferDecision]

LEDGER_DOMAIN = "shieldx.credits.v1"
_SWEEP_ATTEMPTS = 8
_ANSWERED_MEMORY = 100_000
"""Request ids answered by groups that this process remembers, to route their retries straight to the ledger."""


@dataclass(frozen=True)
class Shard:
    """One database holding accounts, with the request ledger and SQL of its dialect."""

    name: str
    database: Database
    ledger: RequestLedger
    events: EventStore
    projection: Projection

    @classmethod
    def of(cls, name: str, database: Database) -> Shard:
        """The shard for a migrated credits database."""
        return cls(
            name,
            database,
            RequestLedger(database, LEDGER_DOMAIN),
            EventStore(database.dialect),
            Projection(database.dialect),
        )


class AccountPlacement:
    """Chooses the shard that holds an account: here the single store; see `shards.TopologyPlacement`.

    The methods below are what the store and the queries ask of any placement: where to write
    an account, where to read it, which shard serves each account (for scans over every
    shard), and the server's own store (`home`) for what belongs to no account.
    """

    sharded = False
    """True if accounts live on several shards (write fences are checked, scans are merged)."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        if not shards:
            raise ValueError("at least one shard is needed")
        self._shards = tuple(shards)

    @property
    def shards(self) -> tuple[Shard, ...]:
        """Every shard (for scans over all accounts)."""
        return self._shards

    @property
    def every_shard_open(self) -> bool:
        """True if `shards` holds every shard accounts may live on."""
        return True

    @property
    def home(self) -> Database:
        """The server's own store: signed heads, the cross-shard coordinator log."""
        return self._shards[0].database

    def shard_for(self, account_id: str) -> Shard:
        """The shard to write `account_id` on."""
        return self._shards[0]

    def shard_for_reading(self, account_id: str) -> Shard:
        """The shard (primary) serving `account_id`, writes fenced or not."""
        return self.shard_for(account_id)

    def primary_of(self, shard_id: str) -> Shard:
        """The shard named `shard_id`."""
        for shard in self._shards:
            if shard.name == shard_id:
                return shard
        raise errors.Unavailable(f"shard {shard_id!r} is not known", reason="SHARD_UNAVAILABLE")

    def shard_id_of(self, account_id: str) -> str:
        """The id of the shard serving `account_id`."""
        return self.shard_for(account_id).name

    def owners(self, account_ids: Sequence[str]) -> list[str]:
        """The shard serving each account, in order."""
        return [self._shards[0].name] * len(account_ids)

    @contextlib.asynccontextmanager
    async def reading(self, account_id: str, *, replica_ok: bool = False) -> AsyncIterator[Shard]:
        """The shard (or a replica of it, if `replica_ok`) to read `account_id` from."""
        yield self.shard_for(account_id)

    def replica_or_primary(self, shard: Shard) -> Shard:
        """What to scan for the whole of `shard`: a healthy replica of it where there is one."""
        return shard


class _AccountCache:
    """Recently used accounts as last committed (LRU), so a write needs no replay."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, LoadedAccount] = OrderedDict()

    def get(self, account_id: str) -> LoadedAccount | None:
        entry = self._entries.get(account_id)
        if entry is not None:
            self._entries.move_to_end(account_id)
        return entry

    def put(self, account_id: str, loaded: LoadedAccount) -> None:
        if self.capacity <= 0:
            return
        self._entries[account_id] = loaded
        self._entries.move_to_end(account_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, account_id: str) -> None:
        self._entries.pop(account_id, None)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class _AccountLocks:
    """One asyncio lock per account in use; several are always taken in account-id order."""

    def __init__(self) -> None:
        self._entries: dict[str, _LockEntry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, *account_ids: str) -> AsyncIterator[None]:
        ordered = sorted(set(account_ids))
        entries = []
        for account_id in ordered:
            entry = self._entries.setdefault(account_id, _LockEntry())
            entry.users += 1
            entries.append(entry)
        acquired: list[_LockEntry] = []
        try:
            for entry in entries:
                await entry.lock.acquire()
                acquired.append(entry)
            yield
        finally:
            for entry in reversed(acquired):
                entry.lock.release()
            for account_id, entry in zip(ordered, entries, strict=True):
                entry.users -= 1
                if entry.users == 0:
                    del self._entries[account_id]


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
    ) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.placement = placement
        self.snapshot_every = snapshot_every
        self.clock = clock
        self._on_alert = on_alert
        self._cache = _AccountCache(cache_size)
        self._locks = _AccountLocks()
        self._in_flight: set[str] = set()
        self._answered: OrderedDict[str, None] = OrderedDict()
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

    def claim_request(self, request_id: str) -> None:
        """Mark a request id as in flight in this process (ABORTED REQUEST_IN_PROGRESS if it already is)."""
        _validate_request_id(request_id)
        if request_id in self._in_flight:
            raise _in_progress(request_id)
        self._in_flight.add(request_id)

    def release_request(self, request_id: str) -> None:
        """The request id is no longer in flight here."""
        self._in_flight.discard(request_id)

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
        if committer is None or request_id in self._answered:
            # A retry of a request this process answered: the request ledger replays the answer.
            return await self._execute_alone(shard, method, request, response_type, account_id, decide, respond)
        if request_id:
            _validate_request_id(request_id)
            if request_id in self._in_flight:
                raise _in_progress(request_id)
            self._in_flight.add(request_id)
        try:
            operation = Operation(
                method,
                request,
                response_type,
                account_id,
                decide,
                respond,
                request_id,
                fingerprint(method, request) if request_id else "",
            )
            answer = await committer.submit(operation)
        finally:
            self._in_flight.discard(request_id)
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
                        )
                    )
            written = [account for account in working.values() if account.events]
            committed = await self._write_group(tx, shard, written)
            await record_answers(tx, records)
        return GroupOutcome(answers, committed, alerted(written), [record.request_id for record in records])

    def _remember_answered(self, request_ids: Sequence[str]) -> None:
        for request_id in request_ids:
            self._answered[request_id] = None
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


UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction)
"""What a shard database raises when it is down, restarting, or a standby refusing writes."""


@contextlib.contextmanager
def unreachable_as_unavailable(placement: AccountPlacement, shard: Shard) -> Iterator[None]:
    """On shards, turn a database that cannot be reached into UNAVAILABLE `SHARD_UNAVAILABLE` with RetryInfo.

    The single store keeps its errors as they are (it has no other node to wait for).
    """
    if not placement.sharded:
        yield
        return
    try:
        yield
    except UNREACHABLE as error:
        raise errors.Unavailable(
            f"shard {shard.name!r} cannot be reached; retry shortly",
            retry_after=0.5,
            reason="SHARD_UNAVAILABLE",
            metadata={"shard_id": shard.name},
        ) from error


def _validate_request_id(request_id: str) -> None:
    # The same rule RequestLedger applies, checked before an operation joins a group.
    if len(request_id) > MAX_REQUEST_ID_LENGTH or not request_id.isprintable() or not request_id.isascii():
        raise errors.InvalidArgument(
            "request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters"
        )


def _in_progress(request_id: str) -> errors.Conflict:
    return errors.Conflict(
        "a request with this request_id is still being processed; retry later",
        reason="REQUEST_IN_PROGRESS",
        metadata={"request_id": request_id},
    )
