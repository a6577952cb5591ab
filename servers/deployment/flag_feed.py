"""The flags a server resolves from, kept in step with the store, and the flag change events.

Resolving must not touch the database, so each server holds a `FlagSet` in memory. After
every change it made itself, and every few seconds for changes other replicas made, it
compares the audit log's newest sequence number with the one its set reflects; if the log
moved, it reloads the set and turns the new audit entries into CONFIGURATION_CHANGE events
for the EventStream subscribers (a target group change also lists the flags using it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from servers.deployment.flag_store import AuditRecord, FlagStore
from servers.deployment.flagset import ChangeType, FlagChange, FlagSet

log = logging.getLogger(__name__)


def changes_of(records: Iterable[AuditRecord]) -> list[FlagChange]:
    """The event items of audit records, each subject once (its latest change wins)."""
    latest: dict[str, FlagChange] = {}
    for record in records:
        entry = record.entry
        latest.pop(entry.subject, None)
        latest[entry.subject] = FlagChange(entry.subject, entry.change_type)
        for key in record.affected_flags:
            subject = f"flags/{key}"
            latest.pop(subject, None)
            latest[subject] = FlagChange(subject, ChangeType.UPDATED)
    return list(latest.values())


class FlagFeed:
    """The current `FlagSet` and the subscribers to its changes."""

    def __init__(self, store: FlagStore) -> None:
        self.store = store
        self.flags = FlagSet()
        self.sequence = -1
        self._subscribers: set[asyncio.Queue[list[FlagChange]]] = set()
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Reload the set if the audit log moved since it was loaded, and tell the subscribers."""
        async with self._lock:
            async with self.store.database.transaction() as tx:
                newest = await self.store.audit_sequence(tx)
                if newest == self.sequence:
                    return
                records = await self.store.audit_after(tx, max(self.sequence, 0))
                flags = await self.store.flag_set(tx)
            first_load = self.sequence < 0
            self.flags, self.sequence = flags, newest
        if not first_load:
            self._publish(changes_of(records))

    def subscribe(self) -> asyncio.Queue[list[FlagChange]]:
        """A queue that receives every later batch of changes; `unsubscribe` it when done."""
        queue: asyncio.Queue[list[FlagChange]] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[list[FlagChange]]) -> None:
        """Stop delivering to `queue`."""
        self._subscribers.discard(queue)

    def _publish(self, changes: list[FlagChange]) -> None:
        if not changes:
            return
        for queue in self._subscribers:
            queue.put_nowait(changes)

    async def follow_forever(self, poll_seconds: float) -> None:
        """Refresh every `poll_seconds` (changes made by other replicas); survive store outages."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a store outage must not end the loop; the next poll retries
                log.exception("could not refresh the flags from the store; retrying")
            await asyncio.sleep(poll_seconds)
