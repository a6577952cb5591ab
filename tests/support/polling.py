"""Waiting in tests for what happens a moment later: poll a condition until it holds.

Both return the condition's first truthy value and fail with an AssertionError naming `what`
(and the last value seen) once `timeout` seconds have passed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 20.0, what: str = "the condition", interval: float = 0.05
) -> T:
    """Block until `condition()` returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g} s (last: {value!r})")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 20.0,
    what: str = "the condition",
    interval: float = 0.05,
) -> T:
    """Wait until `condition()` (plain or async) returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g} s (last: {value!r})")
        await asyncio.sleep(interval)
