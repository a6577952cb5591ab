"""AIP-155 request ids: a retry gets the first answer, also after a restart; reusing an id for a
different request is FAILED_PRECONDITION `REQUEST_ID_REUSED`; a retry while the first attempt is
still running is ABORTED `REQUEST_IN_PROGRESS`.

The answer is stored in the same transaction as the change it reports, so "changed but answer
lost" cannot happen. Business rejections (FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS) are
stored too, in their own transaction, so the retry of a refused request is refused the same way.
Conflicts between concurrent writers are retried here, with backoff, before giving up ABORTED.

`RequestLedger.record` stores answers decided elsewhere (a store that runs many requests in one
transaction) in exactly the form `execute` stores and replays them: `RecordedAnswer` is that form.
An answer may name its `subject` (what the request acted on, such as an account), so whatever
moves that subject to another database can take its answers along.

Request ids are scoped (`caller_scope`): by the service (the ledger's domain) and by the calling
client. Another client sending an id the admin used runs its own request (and never sees the
admin's answer); an id used on one service is free on every other, also when services share one
database schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from google.protobuf.message import Message

from servers.mesh import errors, postgres, storage
from servers.mesh.auth import current_caller
from servers.mesh.background import repeat
from servers.mesh.status import ReplayedRejection, to_status_proto

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)
Work = Callable[[storage.Transaction], Awaitable[R]]

MAX_REQUEST_ID_LENGTH = 128
RECORDED_REJECTIONS = (errors.FailedPrecondition, errors.NotFound, errors.AlreadyExists)
"""Rejections that depend on the state the request met: recorded, so a retry sees the same answer."""

_INSERT = "INSERT INTO request_ids (request_id, method, fingerprint, outcome, response, subject, scope, created_at)"
_POSTGRES_INSERT = f"{_INSERT} " + postgres.select_json_rows(
    ["text", "text", "text", "text", "bytea", "text", "text", "double precision"]
)
_SQLITE_ROWS = 1000
"""Answers per SQLite statement (its parameter count is limited)."""


class RecordedAnswer(NamedTuple):
    """The first answer to a request id, as stored in `request_ids` and replayed to retries."""

    request_id: str
    method: str
    fingerprint: str
    """`fingerprint(method, request)`: a retry must carry the same request."""
    outcome: str
    """`ok`, or `rejected` for a business rejection (one of `RECORDED_REJECTIONS`)."""
    response: bytes
    """The serialized response (`ok`) or the serialized `google.rpc.Status` (`rejected`)."""
    subject: str = ""
    """What the request acted on (e.g. an account id), or empty."""
    scope: str = ""
    """Whose request id it is (`caller_scope`): only the same service and client see this answer."""

    @classmethod
    def ok(
        cls, request_id: str, method: str, fingerprint: str, response: Message, subject: str = "", *, scope: str
    ) -> RecordedAnswer:
        """The answer of a request that succeeded with `response`."""
        serialized = response.SerializeToString(deterministic=True)
        return cls(request_id, method, fingerprint, "ok", serialized, subject, scope)

    @classmethod
    def rejected(
        cls,
        request_id: str,
        method: str,
        fingerprint: str,
        rejection: errors.DomainError,
        domain: str,
        subject: str = "",
        *,
        scope: str,
    ) -> RecordedAnswer:
        """The answer of a request refused with `rejection` (ErrorInfo domain `domain`)."""
        status = to_status_proto(rejection, domain).SerializeToString()
        return cls(request_id, method, fingerprint, "rejected", status, subject, scope)


def caller_scope(domain: str) -> str:
    """The scope of request ids the current caller sends to the service of ledger domain `domain`:
    the domain and the caller's client id (read in the request's own task, where the caller is known)."""
    return f"{domain} {current_caller().client_id}"


class AnswerSeal(Protocol):
    """Encrypts stored answers of a service whose answers carry secrets (shown once, replayed to retries)."""

    def seal(self, answer: bytes) -> bytes:
        """The stored form of a serialized answer."""
        ...

    def open(self, stored: bytes) -> bytes:
        """The serialized answer of its stored form."""
        ...


def is_recorded(rejection: BaseException) -> bool:
    """True for the rejections whose answer is recorded against the request id."""
    return isinstance(rejection, RECORDED_REJECTIONS)


async def record_answers(tx: storage.Transaction, answers: Sequence[RecordedAnswer], created_at: float) -> None:
    """Store `RecordedAnswer`s in `tx` (one statement); `storage.UniqueViolation` if an id has one already."""
    if not answers:
        return
    if tx.dialect == "postgres":
        await tx.execute(_POSTGRES_INSERT, (postgres.json_rows([(*answer, created_at) for answer in answers]),))
        return
    for start in range(0, len(answers), _SQLITE_ROWS):
        chunk = answers[start : start + _SQLITE_ROWS]
        await tx.execute(
            f"{_INSERT} VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
            [value for answer in chunk for value in (*answer, created_at)],
        )


def fingerprint(method: str, request: Message) -> str:
    """Digest of the request without its request_id (deterministic serialization)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    digest = hashlib.sha256(method.encode())
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


def validate_request_id(request_id: str) -> None:
    """InvalidArgument(request_id) unless it is at most `MAX_REQUEST_ID_LENGTH` printable ASCII characters."""
    if len(request_id) > MAX_REQUEST_ID_LENGTH or not request_id.isprintable() or not request_id.isascii():
        raise errors.InvalidArgument(
            "request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters"
        )


@dataclass(frozen=True)
class _Key(Generic[R]):
    """What `execute` records an attempt's answer under."""

    request_id: str
    method: str
    fingerprint: str
    subject: str
    scope: str
    response_type: type[R]


def request_in_progress(request_id: str) -> errors.Conflict:
    """ABORTED `REQUEST_IN_PROGRESS`: a retry arrived while the first attempt still runs."""
    return errors.Conflict(
        "a request with this request_id is still being processed; retry later",
        reason="REQUEST_IN_PROGRESS",
        metadata={"request_id": request_id},
    )


class InFlightRequests:
    """The request ids this process is working on: a retry arriving while its first attempt runs is
    refused (ABORTED `REQUEST_IN_PROGRESS`) rather than run twice or queued behind it."""

    def __init__(self) -> None:
        self._request_ids: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def claim(self, request_id: str, scope: str) -> Iterator[None]:
        """Hold `request_id` of `scope` (`caller_scope`; validated first) while the block runs; an empty
        request id holds nothing."""
        if not request_id:
            yield
            return
        validate_request_id(request_id)
        if (scope, request_id) in self._request_ids:
            raise request_in_progress(request_id)
        self._request_ids.add((scope, request_id))
        try:
            yield
        finally:
            self._request_ids.discard((scope, request_id))

    def __contains__(self, scoped_id: object) -> bool:
        """True for a `(scope, request_id)` being worked on."""
        return scoped_id in self._request_ids


class RequestLedger:
    """Runs mutating work exactly once per request_id against one store."""

    def __init__(
        self,
        database: storage.Database,
        domain: str,
        *,
        attempts: int = 12,
        clock: Callable[[], float] = time.time,
        seal: AnswerSeal | None = None,
    ) -> None:
        """A ledger over `database` for the service of ErrorInfo domain `domain`; with `seal`, answers
        are stored encrypted (a service whose answers carry secrets keeps none in the clear)."""
        self.database = database
        self._seal = seal
        self.domain = domain
        self.attempts = attempts
        self._clock = clock
        self.in_flight = InFlightRequests()
        """Request ids `execute` is running now."""

    async def execute(
        self, method: str, request: Message, response_type: type[R], work: Work[R], *, subject: str = ""
    ) -> R:
        """Run `work` in a transaction (retrying write conflicts), once per `request.request_id`;
        the answer is recorded against `subject`, if given (see `RecordedAnswer.subject`)."""
        request_id: str = getattr(request, "request_id", "")
        if not request_id:
            return await self._attempt(work, None)
        scope = self.scope()
        with self.in_flight.claim(request_id, scope):
            key = _Key(request_id, method, fingerprint(method, request), subject, scope, response_type)
            return await self._attempt(work, key)

    def scope(self) -> str:
        """The scope of the current caller's request ids here (`caller_scope` of this ledger's domain)."""
        return caller_scope(self.domain)

    async def record(self, tx: storage.Transaction, answers: Sequence[RecordedAnswer]) -> None:
        """Store answers decided outside `execute` in `tx`, in the form `execute` replays.

        For a store that decides many requests in one transaction. `storage.UniqueViolation` if
        one of the request ids has an answer already (a retry: run it through `execute`).
        """
        if self._seal is not None:
            answers = [answer._replace(response=self._seal.seal(answer.response)) for answer in answers]
        await record_answers(tx, answers, self._clock())

    async def _attempt(self, work: Work[R], key: _Key[R] | None) -> R:
        for attempt in range(self.attempts):
            if key is not None:
                stored = await self.replay(key.request_id, key.fingerprint, key.response_type, scope=key.scope)
                if stored is not None:
                    return stored
            try:
                async with self.database.transaction() as tx:
                    response = await work(tx)
                    if key is not None:
                        answer = RecordedAnswer.ok(
                            key.request_id, key.method, key.fingerprint, response, key.subject, scope=key.scope
                        )
                        await self.record(tx, [answer])
                return response
            except (storage.UniqueViolation, storage.TransientError):
                # Another writer got there first (an account version, or this very request_id
                # from another process): look again, with jittered backoff.
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
            except RECORDED_REJECTIONS as rejection:
                if key is not None:
                    await self.record_rejection(
                        RecordedAnswer.rejected(
                            key.request_id,
                            key.method,
                            key.fingerprint,
                            rejection,
                            self.domain,
                            key.subject,
                            scope=key.scope,
                        )
                    )
                raise
        raise errors.Conflict(
            f"gave up after {self.attempts} concurrent modifications; retry", reason="CONCURRENT_MODIFICATION"
        )

    async def replay(
        self, request_id: str, digest: str, response_type: type[R], *, scope: str | None = None
    ) -> R | None:
        """The recorded answer to `request_id` in `scope` (default: the current caller's here; a
        rejection is raised again), or None if there is none.

        FAILED_PRECONDITION `REQUEST_ID_REUSED` if it was recorded for a request with another fingerprint.
        """
        row = await self.database.fetchone(
            "SELECT method, fingerprint, outcome, response FROM request_ids WHERE scope = ? AND request_id = ?",
            (self.scope() if scope is None else scope, request_id),
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
        stored = bytes(row["response"])
        answer = stored if self._seal is None else self._seal.open(stored)
        if row["outcome"] == "rejected":
            raise ReplayedRejection(answer)
        return response_type.FromString(answer)

    async def record_rejection(self, answer: RecordedAnswer) -> None:
        """Store a business rejection in its own transaction (the refused work wrote nothing); a retry
        that recorded its answer first wins."""
        try:
            async with self.database.transaction() as tx:
                await self.record(tx, [answer])
        except storage.UniqueViolation:
            pass  # a concurrent attempt recorded its answer first; retries will replay that one

    async def purge(self, older_than_seconds: float) -> int:
        """Forget this service's request ids older than the retention period (another service sharing
        the table keeps its own, under its own retention); returns how many."""
        cutoff = self._clock() - older_than_seconds
        prefix = f"{self.domain} "
        return await self.database.execute(
            "DELETE FROM request_ids WHERE created_at < ? AND (scope = '' OR substr(scope, 1, ?) = ?)",
            (cutoff, len(prefix), prefix),
        )

    async def purge_forever(self, retention_seconds: float) -> None:
        """Background loop for a service whose request ids need no other housekeeping: purge hourly
        (or four times per retention period, if shorter) until cancelled."""

        async def purge_once() -> None:
            forgotten = await self.purge(retention_seconds)
            if forgotten:
                log.info("forgot %d request ids", forgotten, extra={"domain": self.domain})

        await repeat("purge request ids", purge_once, min(3600.0, retention_seconds / 4))
