"""What a credits server keeps per account in memory: the states it last committed (so a write
needs no replay) and one lock per account in use (so a hot account's writers queue in the
process instead of failing each other's optimistic checks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from servers.credits.eventstore import LoadedAccount
from servers.mesh.caches import CacheGate


class AccountCache:
    """Recently used accounts as last committed (LRU), so a write needs no replay."""

    def __init__(self, capacity: int, gate: CacheGate | None = None) -> None:
        self.capacity = capacity
        self.gate = gate
        """Counts lookups, and bypasses the cache during a cache-failure fault."""
        self._entries: OrderedDict[str, LoadedAccount] = OrderedDict()

    def get(self, account_id: str) -> LoadedAccount | None:
        gate = self.gate
        if gate is not None and gate.bypassed():
            gate.miss()
            return None
        entry = self._entries.get(account_id)
        if entry is not None:
            self._entries.move_to_end(account_id)
        if gate is not None:
            gate.hit() if entry is not None else gate.miss()
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


class AccountLocks:
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
