"""Background loops of a server: an action repeated on an interval, surviving failures, cancelled cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from opentelemetry import trace

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


def every(seconds: float, name: str, action: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
    """A loop running `action` every `seconds` (each round a span named `name`, e.g. `credits.sign_head`),
    surviving failures with backoff, until cancelled.

    Cancellation waits for the round in progress: a database transaction cut off between its
    last statement and its commit can leave the connection idle in transaction, holding locks.
    """

    async def round_() -> bool:
        try:
            with tracer.start_as_current_span(name):
                await action()
        except Exception:
            log.exception("background task failed; retrying", extra={"task": name})
            return False
        return True

    async def loop() -> None:
        failures = 0
        while True:
            current = asyncio.ensure_future(round_())
            try:
                succeeded = await asyncio.shield(current)
            except asyncio.CancelledError:
                await asyncio.wait([current])
                raise
            failures = 0 if succeeded else failures + 1
            await asyncio.sleep(min(seconds * 2 ** min(failures, 6), max(seconds, 300.0)))

    loop.__qualname__ = name
    return loop
