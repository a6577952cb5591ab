"""Retention: old attacker activity leaves the store and the in-memory books, old request ids the ledger.

Sessions inactive for longer than the retention period go with their timelines and
interactions, and alerts whose last event is that old with their notifications. What must
outlive any period stays: honeytoken fingerprints (a leaked token may surface years later),
the selection log and the learned evidence (ReplayPolicy and the decoy graph), synthetic batch
records. Request ids are kept for a shorter period of their own: they hold first answers,
minted honeytoken secrets included, only so that retries can be answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from servers.deception.books import DeceptionBooks
from servers.mesh.config import bounded
from servers.mesh.idempotency import RequestLedger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeCounts:
    """What a purge removed."""

    sessions: int
    """Sessions (with their timelines)."""
    interactions: int
    """Decoy interactions."""
    alerts: int
    """Alerts (with their notifications)."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long things are kept."""

    activity_days: float = bounded(90.0, at_least=0)
    """Sessions, interactions and alerts are kept this many days after their last event (0: forever)."""
    request_id_hours: float = bounded(168.0, at_least=0)
    """Request ids (and the first answers they replay) are kept this many hours (0: forever)."""
    interval_seconds: float = bounded(3600.0, above=0)
    """How often the purge runs."""


class Retention:
    """Purges what the policy no longer keeps; `run` is the background loop."""

    def __init__(
        self,
        books: DeceptionBooks,
        ledger: RequestLedger,
        policy: RetentionPolicy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._books = books
        self._ledger = ledger
        self.policy = policy
        self._clock = clock

    async def run(self) -> None:
        """Purge every interval until cancelled; a failed purge is logged and tried next time."""
        while True:
            # Spread over the interval so that replicas restarted together do not purge together.
            await asyncio.sleep(self.policy.interval_seconds * random.uniform(0.9, 1.1))
            try:
                await self.purge()
            except Exception:
                log.exception("purging old deception data failed; trying again in %.0f s", self.policy.interval_seconds)

    async def purge(self) -> tuple[PurgeCounts, int]:
        """Purge once: (activity removed, request ids removed)."""
        counts = PurgeCounts(0, 0, 0)
        if self.policy.activity_days > 0:
            counts = await self._purge_activity(self._clock() - timedelta(days=self.policy.activity_days))
        request_ids = 0
        if self.policy.request_id_hours > 0:
            request_ids = await self._ledger.purge(self.policy.request_id_hours * 3600)
        if counts.sessions or counts.alerts or request_ids:
            log.info(
                "purged %d session(s), %d interaction(s), %d alert(s) and %d request id(s)",
                counts.sessions,
                counts.interactions,
                counts.alerts,
                request_ids,
            )
        return counts, request_ids

    async def _purge_activity(self, cutoff: datetime) -> PurgeCounts:
        books = self._books

        async def run() -> PurgeCounts:
            async with books.store.database.transaction() as tx:
                await books.begin(tx)
                sessions, interactions = await books.store.activity.purge(tx, cutoff)
                counts = PurgeCounts(sessions, interactions, await books.store.alerts.purge(tx, cutoff))
                if counts.sessions or counts.alerts:
                    await books.reload(tx)
                return counts

        return await books.change(run)
