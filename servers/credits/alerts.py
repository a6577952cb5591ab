"""The low-balance alert feed: alert events read from the event store in a resumable order.

Alerts are ordinary ledger events (`LowBalanceAlerted`), so the feed reads them from the store
and a watcher resumes from an opaque token. The store-wide `position` cannot serve as that
order on PostgreSQL: it is taken when a row is inserted but becomes visible when its
transaction commits, possibly after higher positions, so a reader following positions could
skip an alert for good. Each alert therefore also gets an `alert_seq` from the one-row
`alert_sequence` table, incremented in the writing transaction and locked until it commits:
alert numbers become visible strictly in order. Alerts are rare (once per threshold crossing),
so only the few transactions recording one queue on that row.

Writers in this process wake the watchers at once (`notify`); writes by other processes are
picked up by polling.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from servers.credits.events import LowBalanceAlerted, decode_event
from servers.credits.eventstore import Instants
from servers.mesh.errors import InvalidArgument
from servers.mesh.storage import Database

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


class AlertFeed:
    """Reads alerts in feed order from one database and wakes watchers on new ones."""

    def __init__(self, database: Database, *, poll_seconds: float = 1.0) -> None:
        self.database = database
        self.poll_seconds = poll_seconds
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Wake every watcher: an alert was just committed in this process."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

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
