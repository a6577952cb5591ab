"""Per-caller rate limiting with token buckets, answering RESOURCE_EXHAUSTED with RetryInfo."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from servers.mesh import errors, status
from servers.mesh.auth import current_caller, peer_address
from servers.mesh.interception import CallInterceptor, Context, Method


class TokenBuckets:
    """One token bucket per caller key, refilled at `rate` per second up to `burst`.

    Only the most recently seen `max_callers` keys are kept; a forgotten caller starts again
    with a full bucket, which errs on the side of letting calls through.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 100_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_callers = max_callers
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
            if len(self._buckets) > self._max_callers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate


def caller_key(context: Context) -> str:
    """The authenticated client id, or the peer's address for anonymous callers."""
    caller = current_caller()
    if caller.client_id:
        return f"client:{caller.client_id}"
    return f"peer:{peer_address(context.peer() or 'unknown')}"


class RateLimitInterceptor(CallInterceptor[None]):
    """Refuses calls beyond a caller's bucket; health and reflection are never limited."""

    def __init__(self, buckets: TokenBuckets) -> None:
        self.buckets = buckets

    def applies_to(self, method: Method) -> bool:
        return not method.is_infrastructure

    async def enter(self, method: Method, context: Context, request: Any) -> None:
        key = caller_key(context)
        wait = self.buckets.take(key)
        if wait:
            await status.abort(
                context,
                errors.QuotaExceeded(
                    key,
                    f"rate limit of {self.buckets.rate:g} calls/s exceeded",
                    retry_after=wait,
                    reason="RATE_LIMITED",
                ),
                "shieldx.mesh",
            )
