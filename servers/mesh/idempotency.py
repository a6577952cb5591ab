"""AIP-155 request ids: a retry gets the first answer, also after a restart; reusing an id for a
different request is FAILED_PRECONDITION `REQUEST_ID_REUSED`; a retry while the first attempt is
still running is ABORTED `REQUEST_IN_PROGRESS`.

The answer is stored in the same transaction as the change it reports, so "changed but answer
lost" cannot happen. Business rejections (FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS) are
stored too, in their own transaction, so the retry of a refused request is refused the same way.
Conflicts between concurrent writers are retried here, with backoff, before giving up ABORTED.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message

from servers.mesh import errors, storage
from servers.mesh.status import ReplayedRejection, to_status_proto

R = TypeVar("R", bound=Message)
Work = Callable[[storage.Transaction], Awaitable[R]]

MAX_REQUEST_ID_LENGTH = 128
# Rejections that depend on the state the request met: a retry must see the same answer.
_RECORDED_REJECTIONS = (errors.FailedPrecondition, errors.NotFound, errors.AlreadyExists)


def fingerprint(method: str, request: Message) -> str:
    """Digest of the request without its request_id (deterministic serialization)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    digest = hashlib.sha256(method.encode())
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _validate(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_LENGTH or not request_id.isprintable() or not request_id.isascii():
        raise errors.InvalidArgument(
            "request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters"
        )


class RequestLedger:
    """Runs mutating work exactly once per request_id against one store."""

    def __init__(
        self,
        database: storage.Database,
        domain: str,
        *,
        attempts: int = 12,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.domain = domain
        self.attempts = attempts
        self._clock = clock
        self._in_flight: set[str] = set()

    async def execute(self, method: str, request: Message, response_type: type[R], work: Work[R]) -> R:
        """Run `work` in a transaction (retrying write conflicts), once per `request.request_id`."""
        request_id: str = getattr(request, "request_id", "")
        if not request_id:
            return await self._attempt(work, None)
        _validate(request_id)
        if request_id in self._in_flight:
            raise errors.Conflict(
                "a request with this request_id is still being processed; retry later",
                reason="REQUEST_IN_PROGRESS",
                metadata={"request_id": request_id},
            )
        self._in_flight.add(request_id)
        try:
            return await self._attempt(work, (request_id, method, fingerprint(method, request), response_type))
        finally:
            self._in_flight.discard(request_id)

    async def _attempt(self, work: Work[R], key: tuple[str, str, str, type[R]] | None) -> R:
        for attempt in range(self.attempts):
            if key is not None:
                stored = await self._replay(*key)
                if stored is not None:
                    return stored
            try:
                async with self.database.transaction() as tx:
                    response = await work(tx)
                    if key is not None:
                        await self._record(tx, key, "ok", response.SerializeToString(deterministic=True))
                return response
            except (storage.UniqueViolation, storage.TransientError):
                # Another writer got there first (an account version, or this very request_id
                # from another process): look again, with jittered backoff.
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
            except _RECORDED_REJECTIONS as rejection:
                if key is not None:
                    await self._record_rejection(key, rejection)
                raise
        raise errors.Conflict(
            f"gave up after {self.attempts} concurrent modifications; retry", reason="CONCURRENT_MODIFICATION"
        )

    async def _replay(self, request_id: str, method: str, digest: str, response_type: type[R]) -> R | None:
        row = await self.database.fetchone(
            "SELECT method, fingerprint, outcome, response FROM request_ids WHERE request_id = ?", (request_id,)
        )
        if row is None:
            return None
        if row["fingerprint"] != digest:
            raise errors.FailedPrecondition(
                f"request_id {request_id!r} was already used for a different request",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request_id, "first_method": row["method"]},
                violations=(errors.PreconditionViolation("REQUEST_ID", request_id, "used for another request"),),
            )
        if row["outcome"] == "rejected":
            raise ReplayedRejection(bytes(row["response"]))
        return response_type.FromString(bytes(row["response"]))

    async def _record(
        self, tx: storage.Transaction, key: tuple[str, str, str, type[R]], outcome: str, payload: bytes
    ) -> None:
        request_id, method, digest, _ = key
        await tx.execute(
            "INSERT INTO request_ids (request_id, method, fingerprint, outcome, response, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (request_id, method, digest, outcome, payload, self._clock()),
        )

    async def _record_rejection(self, key: tuple[str, str, str, type[R]], rejection: errors.DomainError) -> None:
        payload = to_status_proto(rejection, self.domain).SerializeToString()
        try:
            async with self.database.transaction() as tx:
                await self._record(tx, key, "rejected", payload)
        except storage.UniqueViolation:
            pass  # a concurrent attempt recorded its answer first; retries will replay that one

    async def purge(self, older_than_seconds: float) -> int:
        """Forget request ids older than the retention period; returns how many."""
        cutoff = self._clock() - older_than_seconds
        return await self.database.execute("DELETE FROM request_ids WHERE created_at < ?", (cutoff,))
