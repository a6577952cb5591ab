"""The low-balance alert feed: alert events read from the event store in a resumable order.

Alerts are ordinary ledger events (`LowBalanceAlerted`), so the feed reads them from the store
and a watcher resumes from an opaque token. The store-wide `position` cannot serve as that
order on PostgreSQL: it is taken when a row is inserted but becomes visible when its
transaction commits, possibly after higher positions, so a reader following positions could
skip an alert for good. Each alert therefore also gets an `alert_seq` from the one-row
`alert_sequence` table, incremented in the writing transaction and locked until it commits:
alert numbers become visible strictly in order. Alerts are rare (once per threshold crossing),
so only the few transactions recording one queue on that row.

Writers in this process wake the watchers at once (`notify`). On PostgreSQL, `notify` also
sends a `NOTIFY` on the store once the alert has committed, and a feed with watchers keeps one
connection `LISTEN`ing (`CrossProcessWakeups`), so watchers of other processes sharing the store
wake at once as well. Polling every `poll_seconds` stays as the safety net (a lost connection,
SQLite, a notification sent while no one listened).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from servers.credits.events import LowBalanceAlerted, decode_event
from servers.credits.eventstore import Instants
from servers.mesh.errors import InvalidArgument
from servers.mesh.postgres import PostgresDatabase
from servers.mesh.storage import Database

log = logging.getLogger(__name__)

_TOKEN_PREFIX = "a1:"
_BATCH = 200


@dataclass(frozen=True, slots=True, order=True)
class AlertCursor:
    """A place in the alert feed: after the alert numbered `alert_seq` (0: before the first)."""

    alert_seq: int

    def token(self) -> str:
        """The opaque resume token of this place."""
        return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{self.alert_seq}".encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str, field: str = "resume_token") -> AlertCursor:
        """The place a resume token names; InvalidArgument(field) for anything this service did not issue."""
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
            if not text.startswith(_TOKEN_PREFIX):
                raise ValueError(text)
            alert_seq = int(text[len(_TOKEN_PREFIX) :])
        except (ValueError, UnicodeError, binascii.Error) as exc:
            raise InvalidArgument(field, "is not a token this service issued") from exc
        if not 0 <= alert_seq < 2**63:
            raise InvalidArgument(field, "is not a token this service issued")
        return cls(alert_seq)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert of the feed and its place."""

    cursor: AlertCursor
    alert: LowBalanceAlerted


class CrossProcessWakeups:
    """`NOTIFY` after an alert commits; `LISTEN` on one connection while anyone here watches.

    The channel is named after the store's schema, so stores sharing a PostgreSQL database do
    not wake each other. A notification carries nothing: it only says "read the feed again".
    """

    def __init__(self, database: PostgresDatabase, wake: Callable[[], None], *, retry_seconds: float = 1.0) -> None:
        self.database = database
        self.wake = wake
        self.retry_seconds = retry_seconds
        self.channel = f"shieldx_alerts_{database.schema}"
        self._watchers = 0
        self._listener: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def publish(self) -> None:
        """Send the notification in the background (a lost one only costs a poll interval)."""
        task = asyncio.get_running_loop().create_task(self._send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Listen while the block runs (one connection for all the watchers of this process)."""
        self._watchers += 1
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        try:
            yield
        finally:
            self._watchers -= 1
            if self._watchers == 0 and self._listener is not None:
                self._listener.cancel()
                self._listener = None

    async def _send(self) -> None:
        try:
            async with self.database.transaction() as tx:
                await tx.execute("SELECT pg_notify(?, '')", (self.channel,))
        except Exception as error:  # the watchers' poll still finds the alert
            log.warning("could not announce an alert to other processes: %s", error)

    async def _listen(self) -> None:
        while True:
            try:
                connection: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
                    self.database.url, autocommit=True, application_name=f"shieldx:{self.database.schema}:alerts"
                )
                async with connection:
                    await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.wake()  # anything committed before LISTEN took effect
                    async for _ in connection.notifies():
                        self.wake()
            except (psycopg.Error, OSError) as error:
                log.warning("alert listener connection lost (%s); polling until it is back", error)
                await asyncio.sleep(self.retry_seconds)


class AlertFeed:
    """Reads alerts in feed order from one database and wakes watchers on new ones.

    `wake` (default: this feed's own watchers) is what a notification from another process
    wakes; a merged stream over several feeds passes its own.
    """

    def __init__(
        self, database: Database, *, poll_seconds: float = 1.0, wake: Callable[[], None] | None = None
    ) -> None:
        self.database = database
        self.poll_seconds = poll_seconds
        self._changed = asyncio.Event()
        self.wakeups = (
            CrossProcessWakeups(database, wake or self.wake) if isinstance(database, PostgresDatabase) else None
        )

    def notify(self) -> None:
        """An alert was just committed in this process: wake the watchers here and in other processes."""
        self.wake()
        if self.wakeups is not None:
            self.wakeups.publish()

    def wake(self) -> None:
        """Wake every watcher of this process."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def watching(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While the block runs, notifications from other processes wake the watchers."""
        return self.wakeups.watching() if self.wakeups is not None else contextlib.nullcontext()

    async def head(self) -> AlertCursor:
        """The place after every alert committed now (where a watch without a token starts)."""
        last = await self.database.fetchone("SELECT COALESCE(MAX(alert_seq), 0) FROM event_store")
        return AlertCursor(0 if last is None else int(last[0]))

    async def after(self, cursor: AlertCursor, account_id: str = "", limit: int = _BATCH) -> list[AlertRecord]:
        """The alerts after `cursor` in feed order (of one account, or all)."""
        account, params = (" AND account_id = ?", (account_id,)) if account_id else ("", ())
        rows = await self.database.fetchall(
            "SELECT alert_seq, account_id, version, body, occurred_at, trace_id FROM event_store"
            f" WHERE alert_seq > ?{account} ORDER BY alert_seq LIMIT ?",
            (cursor.alert_seq, *params, limit),
        )
        records = []
        for alert_seq, account, version, body, occurred_at, trace_id in rows:
            event = decode_event(
                account, int(version), LowBalanceAlerted.TYPE, body, Instants.required(occurred_at), trace_id
            )
            assert isinstance(event, LowBalanceAlerted)
            records.append(AlertRecord(AlertCursor(int(alert_seq)), event))
        return records

    async def watch(self, account_id: str = "", cursor: AlertCursor | None = None) -> AsyncIterator[AlertRecord]:
        """Alerts after `cursor` (None: from now on), as they are recorded, until the caller stops."""
        async with self.watching():
            if cursor is None:
                cursor = await self.head()
            while True:
                # Taken before reading, so an alert committed while the query runs still wakes us.
                changed = self._changed
                batch = await self.after(cursor, account_id)
                for record in batch:
                    yield record
                    cursor = record.cursor
                if len(batch) == _BATCH:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.poll_seconds)
