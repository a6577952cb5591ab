"""Prometheus metrics of the credits ledger, and the decorator that counts and times each RPC."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from servers.mesh import errors, storage

Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S", bound="Measured")

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LedgerMetrics:
    """Operations by result, their durations, and the projection lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.operations = Counter(
            "shieldx_credits_operations_total",
            "Credits operations by operation and result (ok, or the ErrorInfo reason of the refusal).",
            ["op", "result"],
            registry=registry,
        )
        self.duration = Histogram(
            "shieldx_credits_operation_duration_seconds",
            "Time to serve a credits operation, refusals included.",
            ["op"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.projection_lag = Gauge(
            "shieldx_credits_projection_lag_events",
            "Events stored beyond the read models' projection checkpoint (0 while they are in step).",
            registry=registry,
        )

        # Every call counts and times itself: keep each label set's child instead of looking it
        # up (a lock and a validation) twice per call.
        self._counts: dict[tuple[str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    def observe(self, op: str, result: str, seconds: float) -> None:
        """Count one operation and its duration."""
        count = self._counts.get((op, result))
        if count is None:
            count = self._counts[op, result] = self.operations.labels(op, result)
        count.inc()
        duration = self._durations.get(op)
        if duration is None:
            duration = self._durations[op] = self.duration.labels(op)
        duration.observe(seconds)


class Measured(Protocol):
    """A servicer with ledger metrics."""

    metrics: LedgerMetrics


def measured(op: str) -> Callable[[Callable[[S, Req, Any], Awaitable[Resp]]], Callable[[S, Req, Any], Awaitable[Resp]]]:
    """Count and time a unary servicer method as operation `op`."""

    def decorate(method: Callable[[S, Req, Any], Awaitable[Resp]]) -> Callable[[S, Req, Any], Awaitable[Resp]]:
        @functools.wraps(method)
        async def call(self: S, request: Req, context: Any) -> Resp:
            began = time.perf_counter()
            result = "ok"
            try:
                return await method(self, request, context)
            except errors.DomainError as error:
                result = error.reason
                raise
            except storage.TransientError:
                result = "STORE_BUSY"
                raise
            except Exception:
                result = "INTERNAL"
                raise
            finally:
                self.metrics.observe(op, result, time.perf_counter() - began)

        return call

    return decorate
