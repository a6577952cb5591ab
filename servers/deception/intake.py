"""The path from the decoy listeners to the books and the store: a bounded queue drained in batches.

The listeners hand each finished interaction to `InteractionIntake.offer` (never blocking a
decoy); `run` records them in batches, each batch in one transaction with the sessions, events
and alerts it changes. A batch that fails to record is retried with backoff until it succeeds,
so the queue fills while the store is away and, once full, new interactions are dropped and
counted rather than held without bound.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge

from clients.backoff import Backoff
from servers.deception.books import DeceptionBooks
from servers.deception.domain import Interaction

log = logging.getLogger(__name__)


class InteractionIntake:
    """Queue and recorder of decoy interactions."""

    def __init__(
        self,
        books: DeceptionBooks,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._books = books
        self._queue: asyncio.Queue[Interaction] = asyncio.Queue(capacity)
        self._batch_size = batch_size
        self._in_flight: list[Interaction] = []
        self._maybe_recorded = False
        self.dropped = 0
        """Interactions dropped so far because the queue was full."""
        registry = registry if registry is not None else CollectorRegistry()
        self._recorded = Counter(
            "shieldx_deception_interactions",
            "Decoy interactions recorded, by decoy and reconnaissance stage.",
            ["decoy_id", "stage"],
            registry=registry,
        )
        self._dropped = Counter(
            "shieldx_deception_interactions_dropped",
            "Decoy interactions dropped because the intake queue was full.",
            registry=registry,
        )
        self._waiting = Gauge(
            "shieldx_deception_interactions_queued", "Decoy interactions waiting to be recorded.", registry=registry
        )
        self._waiting.set_function(self._queue.qsize)

    def offer(self, interaction: Interaction) -> None:
        """Queue an interaction (the decoy fleet's sink); drops it, counted, if the queue is full."""
        try:
            self._queue.put_nowait(interaction)
        except asyncio.QueueFull:
            self._dropped.inc()
            self.dropped += 1
            # One line per power of two keeps a flood from flooding the log too.
            if self.dropped & (self.dropped - 1) == 0:
                log.warning("interaction queue full: %d interaction(s) dropped so far", self.dropped)

    @property
    def queued(self) -> int:
        """Interactions waiting, including a batch being recorded."""
        return self._queue.qsize() + len(self._in_flight)

    async def run(self) -> None:
        """Record queued interactions until cancelled."""
        while True:
            if not self._in_flight:
                self._in_flight = [await self._queue.get()]
                self._take(self._in_flight)
            backoff = Backoff(0.2, 30.0)
            while True:
                try:
                    await self._record(self._in_flight)
                    break
                except Exception:
                    delay = backoff.next()
                    log.exception("recording %d interaction(s) failed; retrying in %.1f s", len(self._in_flight), delay)
                    await asyncio.sleep(delay)
            self._in_flight = []

    async def flush(self) -> None:
        """Record everything queued now (at shutdown, after the decoys stopped)."""
        while self._in_flight or not self._queue.empty():
            if not self._in_flight:
                self._take(self._in_flight)
            await self._record(self._in_flight)
            self._in_flight = []

    def _take(self, batch: list[Interaction]) -> None:
        while len(batch) < self._batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _record(self, batch: list[Interaction]) -> None:
        recorded: list[Interaction] = batch

        async def run() -> None:
            nonlocal recorded
            async with self._books.store.database.transaction() as tx:
                await self._books.begin(tx)
                if self._maybe_recorded:
                    stored = await self._books.store.activity.stored(tx, [i.interaction_id for i in batch])
                    recorded = [i for i in batch if i.interaction_id not in stored]
                await self._books.record_interactions(tx, recorded)

        # An attempt cut short (an error, or cancelled at shutdown) may still have committed:
        # the next attempt at the same batch skips what the store already has.
        self._maybe_recorded = True
        await self._books.change(run)
        self._maybe_recorded = False
        for interaction in recorded:
            self._recorded.labels(interaction.decoy_id, interaction.stage.name.lower()).inc()
