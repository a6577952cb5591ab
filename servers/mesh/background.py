"""Background loops of a server: steps repeated on an interval, with backoff (`clients.backoff`) after failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from clients.backoff import Backoff

log = logging.getLogger(__name__)


async def repeat(
    name: str,
    step: Callable[[], Awaitable[object]],
    interval: float,
    *,
    max_backoff: float = 60.0,
    finish_round_on_cancel: bool = False,
) -> None:
    """Run `step` every `interval` seconds until cancelled; a failure is logged and retried with backoff.

    After failures the pause doubles from twice the interval up to `max_backoff` (or the interval,
    if longer). With `finish_round_on_cancel` a round under way when the loop is cancelled runs to
    its end first (a step that writes should not stop halfway at shutdown).
    """
    backoff = Backoff(2 * interval, max(interval, max_backoff))
    while True:
        if await _round(name, step, backoff.failures, finish_round_on_cancel):
            backoff.reset()
            await asyncio.sleep(interval)
        else:
            await asyncio.sleep(backoff.next())


async def _round(name: str, step: Callable[[], Awaitable[object]], failures: int, finish_on_cancel: bool) -> bool:
    async def attempt() -> bool:
        try:
            await step()
        except Exception:  # the loop must outlive any failure; the next round retries
            log.exception("background step failed; retrying", extra={"task": name, "failures": failures + 1})
            return False
        return True

    if not finish_on_cancel:
        return await attempt()
    current = asyncio.ensure_future(attempt())
    try:
        return await asyncio.shield(current)
    except asyncio.CancelledError:
        await asyncio.wait([current])
        raise
