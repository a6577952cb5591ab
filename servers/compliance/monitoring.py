"""Continuous assessments of the compliance server, elected among the servers sharing its store.

When several compliance servers share one store, exactly one runs the scheduled assessments:
the holder of the `monitor` lead (a PostgreSQL advisory lock, or a flock beside the SQLite file;
see `servers.mesh.leadership`). The others ask again every round and take over when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from servers.mesh.leadership import Leadership

log = logging.getLogger(__name__)

Loop = Callable[[], Coroutine[Any, Any, None]]


class ElectedSchedule:
    """Runs `assess` every `interval` seconds while this server holds the lead."""

    def __init__(
        self, leadership: Leadership, interval: float, assess: Callable[[], Awaitable[object]], *, poll: float = 1.0
    ) -> None:
        self.leadership = leadership
        self.interval = interval
        self.assess = assess
        self.poll = min(poll, interval)
        self.leading = False
        self.runs = 0

    async def run_forever(self) -> None:
        """Ask for the lead every `poll` seconds; while leading, assess every `interval`."""
        loop = asyncio.get_running_loop()
        next_run = loop.time()
        try:
            while True:
                leading = await self.leadership.lead(timeout=max(2.0, self.poll))
                if leading != self.leading:
                    log.info("compliance monitoring %s", "leading" if leading else "standing by")
                    self.leading = leading
                    next_run = loop.time()
                if leading and loop.time() >= next_run:
                    next_run = loop.time() + self.interval
                    try:
                        await self.assess()
                        self.runs += 1
                    except Exception:
                        log.exception("scheduled assessment failed")
                await asyncio.sleep(max(0.0, min(self.poll, next_run - loop.time())) if leading else self.poll)
        finally:
            await self.leadership.release()
