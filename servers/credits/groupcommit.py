"""Group commit: concurrent single-account operations recorded together in one transaction.

Each round trip to PostgreSQL costs far more than deciding an operation, so operations that
arrive while a transaction is running wait and then go together: one transaction decides them
in arrival order (later operations on an account see the earlier ones' events, which is what
makes a hot account fast), inserts every event in one statement, updates the read models and
records every answer — a handful of round trips for the whole group instead of about ten per
operation. Under load a group first waits briefly for the callers of the previous group to come
back (`GroupCommitter._gather`), so that more operations share those round trips.

Answers are recorded with `RequestLedger.record` (the `request_ids` rows `RequestLedger.execute`
writes and replays), so a retry is answered the same whichever path served the first attempt.
Anything unusual — an account changed by another process, a request id answered before (a
retry) — makes the group fall back to running each operation alone through
`RequestLedger.execute`, which replays answers and retries conflicts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from servers.credits.account import AccountState
from servers.credits.audit import seal
from servers.credits.domain import Decision
from servers.credits.events import Event, LowBalanceAlerted, StoredEvent
from servers.credits.eventstore import LoadedAccount
from servers.mesh import errors, idempotency
from servers.mesh.storage import Transaction

log = logging.getLogger(__name__)

_QUIET_TURNS = 32
"""Turns of the event loop that must bring nobody new before a gathered group goes."""
_GATHER_SLICES = 10
"""Parts of the gathering time after each of which a group stops waiting if nobody new came."""

RECORDED_REJECTIONS = idempotency.RECORDED_REJECTIONS
"""The rejections the request ledger records (their answer depends on the state the request met)."""


@dataclass(eq=False)
class Operation:
    """One single-account operation waiting for its group."""

    method: str
    request: Message
    response_type: type[Message]
    account_id: str
    decide: Callable[[AccountState, Any], Decision]
    respond: Callable[[Decision, AccountState], Message]
    request_id: str
    fingerprint: str
    """`idempotency.fingerprint` of the request (empty without a request id)."""
    scope: str
    """Whose request id it is (`idempotency.caller_scope`, read in the caller's task)."""
    future: asyncio.Future[Message] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def settle(self, outcome: Message | BaseException) -> None:
        """Hand the caller its answer (unless it stopped waiting)."""
        if self.future.done():
            return
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


@dataclass
class GroupAccount:
    """An account during one group: its committed state, and the state with the group's events."""

    base: LoadedAccount
    state: AccountState
    verified: bool
    """True once the base is known to be the latest committed state (not just the cached one)."""
    events: list[tuple[Event, str]] = field(default_factory=list)
    """The group's events for the account, each with the request id that caused it."""


@dataclass
class GroupOutcome:
    """What one committed group produced."""

    answers: list[tuple[Operation, Message | BaseException]]
    accounts: dict[str, LoadedAccount]
    """The accounts the group wrote, as committed."""
    alerted: bool
    answered: list[tuple[str, str]]
    """Request ids whose answers the group recorded."""


class StaleAccount(Exception):
    """An account in the group was changed by another process since it was cached."""


class GroupCommitter:
    """Collects operations and records them in groups, one transaction at a time."""

    def __init__(
        self,
        run_group: Callable[[Sequence[Operation]], Awaitable[None]],
        *,
        max_group: int = 128,
        gather_seconds: float = 0.010,
    ) -> None:
        self._run_group = run_group
        self.max_group = max_group
        self.gather_seconds = gather_seconds
        """Under load, how long a group waits at most for operations still on their way."""
        self._waiting: list[Operation] = []
        self._worker: asyncio.Task[None] | None = None
        self._last_size = 0
        """Operations in the last group: the callers likely to come back for the next one."""
        self._expected = 0
        self._arrived: asyncio.Future[None] | None = None
        """While a group gathers: resolved once `_expected` operations are waiting."""
        self.gather_endings: Counter[str] = Counter()
        """How each gathering ended: `full` (max_group), `callers_stopped` (the expected callers
        came and the loop brought nobody more), `quiet_slice` (a slice of the time brought
        nobody), `deadline` (gather_seconds spent). A lone caller never gathers."""

    async def submit(self, operation: Operation) -> Message:
        """Queue `operation` for the next group and wait for its answer."""
        self._waiting.append(operation)
        if self._arrived is not None and len(self._waiting) >= self._expected and not self._arrived.done():
            self._arrived.set_result(None)
        if self._worker is None:
            # The group runs in its own task: a caller that stops waiting must not cut a
            # transaction in half for everyone else.
            self._worker = asyncio.create_task(self._drain(), name="credits.group_commit")
        return await operation.future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                expected = min(self._last_size, self.max_group)
                if expected > 1 and len(self._waiting) < expected:
                    # The last group had company: its callers are likely on their way back.
                    await self._gather(expected)
                group = self._waiting[: self.max_group]
                del self._waiting[: self.max_group]
                self._last_size = len(group)
                try:
                    await self._run_group(group)
                except BaseException as error:
                    for operation in group:
                        operation.settle(error)
                    if not isinstance(error, Exception):
                        raise
                    log.exception("group commit failed", extra={"operations": len(group)})
        finally:
            self._worker = None
            for operation in self._waiting:  # only when cancelled: nobody will run them
                operation.settle(errors.Unavailable("the credits server is stopping", retry_after=1.0))
            self._waiting.clear()

    async def _gather(self, expected: int) -> None:
        """Let the operations on their way join the group, as long as they keep coming.

        Under load every group pays the same few round trips, so the more operations share them,
        the less each costs; waiting costs latency. So a group waits (woken by each arrival) for
        as many operations as the last group had — its callers coming back — and then for more
        only while the loop keeps bringing them; never longer than `gather_seconds`, nor than a
        slice of it that brings nobody new.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gather_seconds
        self._expected = expected
        ending = "deadline"
        try:
            while loop.time() < deadline:
                seen = len(self._waiting)
                if seen >= self.max_group:
                    ending = "full"
                    break
                if seen >= expected:
                    # As many as last time: more come only while other calls are still being
                    # taken in, which shows within a few turns of the loop (a busy server). An
                    # idle loop turns in microseconds, so few callers are hardly held up.
                    for _ in range(_QUIET_TURNS):
                        await asyncio.sleep(0)
                        if len(self._waiting) > seen:
                            break
                    else:
                        ending = "callers_stopped"
                        break
                    continue
                self._arrived = arrived = loop.create_future()
                timer = loop.call_later(self.gather_seconds / _GATHER_SLICES, _resolve, arrived)
                try:
                    await arrived
                finally:
                    timer.cancel()
                if len(self._waiting) == seen:
                    ending = "quiet_slice"
                    break
        finally:
            self._arrived = None
            self.gather_endings[ending] += 1

    async def close(self) -> None:
        """Wait for the group in progress (at shutdown)."""
        if self._worker is not None:
            await asyncio.wait([self._worker])


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def record_answers(tx: Transaction, answers: Sequence[idempotency.RecordedAnswer]) -> None:
    """Record answers in `tx`, each against the account it acted on (its subject), so they move with it."""
    await idempotency.record_answers(tx, answers, time.time())


def sealed_entries(accounts: Sequence[GroupAccount]) -> list[tuple[Event, StoredEvent, str]]:
    """Each account's group events sealed onto its chain, with their request ids."""
    entries: list[tuple[Event, StoredEvent, str]] = []
    for account in accounts:
        events = [event for event, _ in account.events]
        for (event, request_id), row in zip(account.events, seal(events, account.base.head_hash), strict=True):
            entries.append((event, row, request_id))
    return entries


def alerted(accounts: Sequence[GroupAccount]) -> bool:
    """True if the group recorded a low-balance alert."""
    return any(isinstance(event, LowBalanceAlerted) for account in accounts for event, _ in account.events)


def refusal_is_recorded(error: BaseException) -> bool:
    """True for the refusals whose answer is recorded against the request id."""
    return idempotency.is_recorded(error)
