"""In-process change signals that wake the watch streams and the controller.

A writer calls `notify()` after its transaction committed; a watcher remembers the generation
it last acted on and sleeps until a newer one, or until its poll interval passes (changes
made by another replica of the deployment server reach it that way, through the store).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


class Signal:
    """A generation counter whose waiters wake when it moves."""

    def __init__(self) -> None:
        self._generation = 0
        self._event = asyncio.Event()

    @property
    def generation(self) -> int:
        """How many times it was notified."""
        return self._generation

    def notify(self) -> None:
        """Something changed: wake every waiter."""
        self._generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_after(self, generation: int, timeout: float) -> None:
        """Return once the generation is past `generation`, or after `timeout` seconds."""
        if self._generation != generation:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(timeout, 0.0))


@dataclass
class Signals:
    """The signals of the deployment server."""

    routes: Signal = field(default_factory=Signal)
    """A route was published."""
    deployments: Signal = field(default_factory=Signal)
    """A deployment changed."""
    faults: Signal = field(default_factory=Signal)
    """A fault injection was created or deleted."""
    controller: Signal = field(default_factory=Signal)
    """The controller should look at the deployments now (one was created or commanded)."""
