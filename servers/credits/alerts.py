"""The low-balance alert feed: alert events read from the event store in a resumable order.

Alerts are ordinary ledger events (`LowBalanceAlerted`), so the feed reads them from the store
and a watcher resumes from an opaque token. On PostgreSQL, positions are taken when a row is
inserted but become visible when its transaction commits, possibly after higher ones; reading
by position alone could skip an alert for good. The feed therefore orders by (writing
transaction id, position) and reads only rows of transactions older than every transaction
still running (`pg_snapshot_xmin`), which can no longer be joined by an earlier row. SQLite
commits one writer at a time, so positions there are already final in order.

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
    """A place in the alert feed: after the alert of (`tx_id`, `position`)."""

    tx_id: int
    position: int

    def token(self) -> str:
        """The opaque resume token of this place."""
        return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{self.tx_id}:{self.position}".encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str, field: str = "resume_token") -> AlertCursor:
        """The place a resume token names; InvalidArgument(field) for anything this service did not issue."""
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
            if not text.startswith(_TOKEN_PREFIX):
                raise ValueError(text)
            tx_id, position = (int(part) for part in text[len(_TOKEN_PREFIX) :].split(":"))
        except (ValueError, UnicodeError, binascii.Error) as exc:
            raise InvalidArgument(field, "is not a token this service issued") from exc
        if not (0 <= tx_id < 2**63 and 0 <= position < 2**63):
            raise InvalidArgument(field, "is not a token this service issued")
        return cls(tx_id, position)


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
        settled = "tx_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        self._settled = f" AND {settled}" if database.dialect == "postgres" else ""
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Wake every watcher: an alert was just committed in this process."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def head(self, account_id: str = "") -> AlertCursor:
        """The place after every alert readable now (where a watch without a token starts)."""
        account, params = (" AND account_id = ?", (account_id,)) if account_id else ("", ())
        row = await self.database.fetchone(
            f"SELECT tx_id, position FROM event_store WHERE type = 'LowBalanceAlerted'{self._settled}{account}"
            " ORDER BY tx_id DESC, position DESC LIMIT 1",
            params,
        )
        return AlertCursor(0, 0) if row is None else AlertCursor(int(row[0]), int(row[1]))

    async def after(self, cursor: AlertCursor, account_id: str = "", limit: int = _BATCH) -> list[AlertRecord]:
        """The alerts after `cursor` in feed order (of one account, or all)."""
        account, params = (" AND account_id = ?", (account_id,)) if account_id else ("", ())
        rows = await self.database.fetchall(
            "SELECT tx_id, position, account_id, version, body, occurred_at, trace_id FROM event_store"
            f" WHERE type = 'LowBalanceAlerted' AND (tx_id, position) > (?, ?){self._settled}{account}"
            " ORDER BY tx_id, position LIMIT ?",
            (cursor.tx_id, cursor.position, *params, limit),
        )
        records = []
        for tx_id, position, account, version, body, occurred_at, trace_id in rows:
            event = decode_event(
                account, int(version), LowBalanceAlerted.TYPE, body, Instants.required(occurred_at), trace_id
            )
            assert isinstance(event, LowBalanceAlerted)
            records.append(AlertRecord(AlertCursor(int(tx_id), int(position)), event))
        return records

    async def watch(self, account_id: str = "", cursor: AlertCursor | None = None) -> AsyncIterator[AlertRecord]:
        """Alerts after `cursor` (None: from now on), as they are recorded, until the caller stops."""
        if cursor is None:
            cursor = await self.head(account_id)
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
