"""Rate limiting with token buckets, answering RESOURCE_EXHAUSTED with RetryInfo: per caller after
authentication, and per source address for failed authentication before any verification."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc

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

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token (0.0 if it has one now); takes nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        level = min(self.burst, bucket[0] + (self._clock() - bucket[1]) * self.rate)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate


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


class AuthFailureGuard(CallInterceptor[str]):
    """Limits failed authentication per source address, before any credential is verified.

    Checking a credential is the costly part of a refused call (Ed25519 for a token, Argon2id
    for a client secret), and auth runs before the per-caller limit, so a source sending bad
    credentials made the server do that work as fast as it could ask. Each call from a source
    that ends UNAUTHENTICATED takes a token from that address's bucket; while the bucket is
    empty, the source's calls are refused (RESOURCE_EXHAUSTED, AUTH_FAILURES_LIMITED) before
    verification. Calls that authenticate take nothing, so a busy, valid source is never slowed.
    """

    def __init__(self, buckets: TokenBuckets) -> None:
        self.buckets = buckets

    def applies_to(self, method: Method) -> bool:
        return not method.is_infrastructure

    async def enter(self, method: Method, context: Context, request: Any) -> str:
        source = peer_address(context.peer() or "unknown")
        wait = self.buckets.wait(source)
        if wait:
            await status.abort(
                context,
                errors.QuotaExceeded(
                    f"source:{source}",
                    f"too many failed authentications from {source}",
                    retry_after=wait,
                    reason="AUTH_FAILURES_LIMITED",
                ),
                "shieldx.mesh",
            )
        return source

    async def exit(self, method: Method, context: Context, state: str, error: BaseException | None) -> None:
        if context.final_code(error) == grpc.StatusCode.UNAUTHENTICATED:
            self.buckets.take(state)
