"""Circuit breakers for the typed clients' channels: closed → open → half-open → closed.

A breaker watches the outcome of the calls through one channel (one target). It opens after
`consecutive_failures` failures in a row, or when at least `failure_rate` of the last `window`
calls failed (with `min_calls` seen); while open, calls fail at once with UNAVAILABLE instead of
waiting on a target that is down. After `open_seconds` it lets `half_open_calls` trial calls
through: if they succeed it closes, if one fails it opens again. Only outcomes that say
something about the target count as failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
UNKNOWN, DATA_LOSS); a refused request (INVALID_ARGUMENT, NOT_FOUND, ...) is the caller's.

The same channel gate refuses calls a network-partition fault forbids (`outbound_gate`), so a
partition is enforced on the caller as on the callee.
"""

from __future__ import annotations

import collections
import enum
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""Codes that count against the target."""


class BreakerState(enum.IntEnum):
    """A breaker's state (the value of `shieldx_client_circuit_breaker_state`)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class BreakerSettings:
    """When a breaker opens and how it recovers."""

    consecutive_failures: int = 10
    """Failures in a row that open it (a target failing 30 % of its calls, a bad canary say, does
    this about once in 170,000 calls: the breaker is for targets that are down, not degraded)."""
    failure_rate: float = 0.5
    """Share of failed calls in the window that opens it."""
    window: int = 100
    """Calls the failure rate is measured over."""
    min_calls: int = 50
    """Calls the window must hold before the rate counts."""
    open_seconds: float = 2.0
    """How long it stays open before trial calls."""
    half_open_calls: int = 3
    """Trial calls that must succeed to close it again."""


class BreakerMetrics:
    """`shieldx_client_circuit_breaker_trips_total` and `_state`, per target, in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.trips = Counter(
            "shieldx_client_circuit_breaker_trips_total",
            "Times a client circuit breaker opened.",
            ["target"],
            registry=registry,
        )
        self.state = Gauge(
            "shieldx_client_circuit_breaker_state",
            "Client circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ["target"],
            registry=registry,
        )


_metrics: weakref.WeakKeyDictionary[CollectorRegistry, BreakerMetrics] = weakref.WeakKeyDictionary()


def breaker_metrics(registry: CollectorRegistry | None = None) -> BreakerMetrics:
    """The one set of breaker metrics of `registry` (default: the process-wide registry)."""
    registry = registry or REGISTRY
    found = _metrics.get(registry)
    if found is None:
        found = _metrics[registry] = BreakerMetrics(registry)
    return found


class CircuitBreaker:
    """The breaker of one target."""

    def __init__(
        self,
        target: str,
        settings: BreakerSettings | None = None,
        *,
        metrics: BreakerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.settings = settings or BreakerSettings()
        self.trips = 0
        """Times it opened."""
        self._metrics = metrics
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._in_a_row = 0
        self._recent: collections.deque[bool] = collections.deque(maxlen=self.settings.window)
        self._trials_started = 0
        self._trials_passed = 0
        self._publish()

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose wait is over reads half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.settings.open_seconds:
            self._enter(BreakerState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now (counts a trial call when half-open)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trials_started >= self.settings.half_open_calls:
            return False
        self._trials_started += 1
        return True

    def record(self, failed: bool) -> None:
        """The outcome of a call that `allow` let through."""
        if self._state is BreakerState.HALF_OPEN:
            if failed:
                self._open()
                return
            self._trials_passed += 1
            if self._trials_passed >= self.settings.half_open_calls:
                self._enter(BreakerState.CLOSED)
            return
        self._recent.append(failed)
        self._in_a_row = self._in_a_row + 1 if failed else 0
        if self._state is BreakerState.CLOSED and (failed and self._tripped()):
            self._open()

    def _tripped(self) -> bool:
        settings = self.settings
        if self._in_a_row >= settings.consecutive_failures:
            return True
        seen = len(self._recent)
        return seen >= settings.min_calls and sum(self._recent) / seen >= settings.failure_rate

    def _open(self) -> None:
        self.trips += 1
        if self._metrics is not None:
            self._metrics.trips.labels(self.target).inc()
        self._opened_at = self._clock()
        self._enter(BreakerState.OPEN)

    def _enter(self, state: BreakerState) -> None:
        self._state = state
        self._trials_started = self._trials_passed = 0
        if state is BreakerState.CLOSED:
            self._in_a_row = 0
            self._recent.clear()
        self._publish()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.state.labels(self.target).set(int(self._state))


def refusal(details: str) -> grpc.aio.AioRpcError:
    """The UNAVAILABLE error a refused call fails with, as if the target could not be reached."""
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


Gate = Callable[[], str | None]
"""Why calls may not go out now (a partition), or None."""


class _Guard:
    def __init__(self, breaker: CircuitBreaker | None, gate: Gate | None) -> None:
        self.breaker = breaker
        self.gate = gate

    def admit(self) -> None:
        if self.gate is not None:
            reason = self.gate()
            if reason is not None:
                raise refusal(reason)
        if self.breaker is not None and not self.breaker.allow():
            raise refusal(f"circuit breaker for {self.breaker.target} is open")

    def record(self, code: grpc.StatusCode) -> None:
        if self.breaker is not None:
            self.breaker.record(code in FAILURE_CODES)


class _UnaryGuard(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, guard: _Guard) -> None:
        self._guard = guard

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        self._guard.admit()
        try:
            call = await continuation(client_call_details, request)
            response = await call
        except grpc.aio.AioRpcError as error:
            self._guard.record(error.code())
            raise
        self._guard.record(grpc.StatusCode.OK)
        return response


class _StreamGuard(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, guard: _Guard) -> None:
        self._guard = guard

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> AsyncIterator[Any]:
        self._guard.admit()
        call = await continuation(client_call_details, request)

        async def responses() -> AsyncIterator[Any]:
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as error:
                self._guard.record(error.code())
                raise
            self._guard.record(grpc.StatusCode.OK)

        return responses()


def guard_interceptors(breaker: CircuitBreaker | None, gate: Gate | None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that refuse calls the gate forbids or the breaker holds back, and feed the breaker."""
    if breaker is None and gate is None:
        return []
    guard = _Guard(breaker, gate)
    return [_UnaryGuard(guard), _StreamGuard(guard)]
