"""Transfers between accounts on two shards: both halves prepared, one decision, both finished alike.

`CreditsStore.transfer` hands a transfer here when its accounts live on different shards.
Under this process's locks of both accounts, one transaction opens on each shard primary; each
checks its account's write fence, loads the account, and the domain decides the transfer on
both states. Each side appends its events (with the request id) and updates its read models;
the source side also records the AIP-155 answer, exactly as `RequestLedger` would, so the
answer becomes visible with the source's events and a retry finds it on the source shard like
the answer of any transfer. Both transactions end in `PREPARE TRANSACTION`; then the
coordinator logs COMMIT and finishes both (`twophase.TransferCoordinator`). Anything failing
before the decision rolls back whatever was prepared; after it, recovery finishes the halves.

Locks: each transfer takes its connection to the shard with the lower id first (so transfers
in opposite directions cannot exhaust both pools waiting on each other) and writes there first,
and only then on the other,
so two transfers can never wait on each other across two databases (a deadlock neither
PostgreSQL could see): rows shared by many accounts, such as the read models' checkpoint slots,
are locked in one global order. The answer's row, written last on the source, is a fresh key
only a concurrent duplicate of the same request could contend for. As a safety net (and so
that writers meeting a half left in doubt by a crashed coordinator do not wait for ever), the
transactions also set a lock timeout; the one that times out retries like any write conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from servers.credits.account import AccountState
from servers.credits.domain import TransferDecision
from servers.credits.events import Event, TransferredOut
from servers.credits.eventstore import LoadedAccount
from servers.credits.groupcommit import RECORDED_REJECTIONS, record_answers
from servers.credits.placement import LEDGER_DOMAIN, Shard
from servers.credits.store import CreditsStore, DecideTransfer
from servers.credits.twophase import PreparedName, TransferCoordinator, TransferRecord, prepare
from servers.mesh import errors, storage
from servers.mesh.idempotency import RecordedAnswer, caller_scope, fingerprint
from servers.mesh.storage import Transaction

R = TypeVar("R", bound=Message)
Party = tuple[Shard, str]
"""A shard and the account of one side of a transfer."""

_Append = tuple[Transaction, Shard, LoadedAccount, Sequence[Event]]
"""One side's write: its transaction, shard, account as loaded, and events."""

LOCK_TIMEOUT = "2s"
"""Longest a cross-shard transfer waits for a row lock before retrying."""


class CrossShardTransfers:
    """Runs transfers between shards by two-phase commit, once per request id."""

    def __init__(self, store: CreditsStore, coordinator: TransferCoordinator, *, attempts: int = 8) -> None:
        self.store = store
        self.coordinator = coordinator
        self.attempts = attempts

    async def transfer(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        source: Party,
        target: Party,
        decide: DecideTransfer,
        respond: Callable[[TransferDecision, AccountState, AccountState], R],
    ) -> R:
        """Decide a transfer and record both sides on their shards atomically."""
        request_id: str = getattr(request, "request_id", "")
        digest = fingerprint(method, request) if request_id else ""
        accounts = (source[1], target[1])
        scope = caller_scope(LEDGER_DOMAIN)
        with self.store.in_flight.claim(request_id, scope):
            async with self.store.hold(*accounts):
                for attempt in range(self.attempts):
                    try:
                        with (
                            self.store.unreachable_as_unavailable(source[0]),
                            self.store.unreachable_as_unavailable(target[0]),
                        ):
                            if request_id:
                                replayed = await source[0].ledger.replay(request_id, digest, response_type, scope=scope)
                                if replayed is not None:
                                    self.store.forget(*accounts)
                                    return replayed
                            return await self._attempt(
                                method, (scope, request_id), digest, source, target, decide, respond
                            )
                    except (storage.UniqueViolation, storage.TransientError):
                        # Another writer changed one of the accounts, or a lock timed out.
                        self.store.forget(*accounts)
                        await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
                    except RECORDED_REJECTIONS as rejection:
                        if request_id:
                            with self.store.unreachable_as_unavailable(source[0]):
                                answer = RecordedAnswer.rejected(
                                    request_id, method, digest, rejection, LEDGER_DOMAIN, source[1], scope=scope
                                )
                                await source[0].ledger.record_rejection(answer)
                        raise
                    except BaseException:
                        self.store.forget(*accounts)
                        raise
                raise errors.Conflict(
                    f"gave up after {self.attempts} concurrent modifications; retry", reason="CONCURRENT_MODIFICATION"
                )

    async def _attempt(
        self,
        method: str,
        scoped_id: tuple[str, str],
        digest: str,
        source: Party,
        target: Party,
        decide: DecideTransfer,
        respond: Callable[[TransferDecision, AccountState, AccountState], R],
    ) -> R:
        scope, request_id = scoped_id
        transfer_id = uuid.uuid4().hex
        from_name, to_name = self.coordinator.names(transfer_id)
        (source_shard, from_account), (target_shard, to_account) = source, target
        with self.coordinator.running(transfer_id):
            prepared: list[tuple[Shard, PreparedName]] = []
            try:
                async with _in_shard_order(source_shard, target_shard) as (stx, ttx):
                    await asyncio.gather(self._begin(stx, from_account), self._begin(ttx, to_account))
                    before = await asyncio.gather(
                        self.store.load_current(stx, source_shard, from_account),
                        self.store.load_current(ttx, target_shard, to_account),
                    )
                    decision = decide(before[0].state, before[1].state, self.store.clock())
                    sent, received = await self._append_in_shard_order(
                        (stx, source_shard, before[0], decision.outgoing.events),
                        (ttx, target_shard, before[1], decision.incoming.events),
                        request_id,
                    )
                    response = respond(decision, sent.state, received.state)
                    if request_id:
                        answer = RecordedAnswer.ok(request_id, method, digest, response, from_account, scope=scope)
                        await record_answers(stx, [answer])
                    await self._prepare_both(prepared, (stx, source_shard, from_name), (ttx, target_shard, to_name))
            except BaseException:
                for shard, name in prepared:
                    await asyncio.shield(self.coordinator.abandon(shard, name))
                raise
            record = TransferRecord(
                transfer_id,
                from_account,
                to_account,
                source_shard.name,
                target_shard.name,
                _amount(decision),
                request_id,
            )
            committed, finished = await asyncio.shield(self.coordinator.commit(record, source_shard, target_shard))
        if not committed:
            raise errors.Conflict(
                "the transfer was aborted by recovery before it could commit; retry",
                reason="TRANSFER_ABORTED",
                metadata={"transfer_id": transfer_id},
            )
        if finished:
            self._remember(sent, received, decision)
        return response

    async def _append_in_shard_order(
        self, source: _Append, target: _Append, request_id: str
    ) -> tuple[LoadedAccount, LoadedAccount]:
        """Append both sides, the shard with the lower id first (so its row locks are taken first)."""
        first, second = (source, target) if source[1].name < target[1].name else (target, source)
        done = {}
        for tx, shard, loaded, events in (first, second):
            done[shard.name] = await self.store.append(tx, shard, loaded, events, request_id)
        return done[source[1].name], done[target[1].name]

    async def _begin(self, tx: Transaction, account_id: str) -> None:
        await tx.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await self.store.refuse_fenced(tx, [account_id])

    @staticmethod
    async def _prepare_both(
        prepared: list[tuple[Shard, PreparedName]],
        *halves: tuple[Transaction, Shard, PreparedName],
    ) -> None:
        results = await asyncio.gather(*(prepare(tx, name) for tx, _, name in halves), return_exceptions=True)
        for (_, shard, name), result in zip(halves, results, strict=True):
            if not isinstance(result, BaseException):
                prepared.append((shard, name))
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _remember(self, sent: LoadedAccount, received: LoadedAccount, decision: TransferDecision) -> None:
        self.store.remember([sent, received], [*decision.outgoing.events, *decision.incoming.events])


@contextlib.asynccontextmanager
async def _in_shard_order(source: Shard, target: Shard) -> AsyncIterator[tuple[Transaction, Transaction]]:
    """A transaction on each shard, the lower shard id's connection taken first (as every transfer
    does, so transfers in opposite directions never hold one pool's last connection each while
    waiting for the other's)."""
    low, high = (source, target) if source.name < target.name else (target, source)
    async with low.database.transaction() as first, high.database.transaction() as second:
        yield (first, second) if low is source else (second, first)


def _amount(decision: TransferDecision) -> int:
    sent = decision.outgoing.primary
    return sent.amount if isinstance(sent, TransferredOut) else 0
