"""Prometheus metrics: the process registry, the `grpc_server_*` interceptor and the `/metrics` HTTP port.

Every service metric is named `shieldx_<service>_*`; the de-facto `grpc_*` names and the
standard `process_*`, `python_info` and `python_gc_*` collectors keep their usual names, so
dashboards and alert rules written for other gRPC services work unchanged.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from clients.telemetry import CODE_LABELS, GrpcMetrics
from servers.mesh.interception import CallInterceptor, Context, Method


def process_registry() -> CollectorRegistry:
    """A registry for one server: its own metrics plus the process, platform and GC collectors.

    Each server has its own registry (tests run several in one process), so the collectors the
    default registry carries are registered here explicitly: without them memory, CPU and open
    file descriptors are not observable.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class _MethodMetrics:
    """The labelled children of one method, resolved once instead of on every call."""

    __slots__ = ("handled", "handling", "started")

    def __init__(self, metrics: GrpcMetrics, method: Method) -> None:
        labels = (method.kind, method.service, method.name)
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self.handled = {code: metrics.handled.labels(*labels, CODE_LABELS[code]) for code in grpc.StatusCode}


class MetricsInterceptor(CallInterceptor[tuple[_MethodMetrics, float]]):
    """`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`, `grpc_server_handling_seconds`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.metrics = GrpcMetrics("server", registry)
        self._methods: dict[str, _MethodMetrics] = {}

    async def enter(self, method: Method, context: Context, request: Any) -> tuple[_MethodMetrics, float]:
        children = self._methods.get(method.path)
        if children is None:
            children = self._methods[method.path] = _MethodMetrics(self.metrics, method)
        children.started.inc()
        return children, time.perf_counter()

    async def exit(
        self, method: Method, context: Context, state: tuple[_MethodMetrics, float], error: BaseException | None
    ) -> None:
        children, began = state
        children.handled[context.final_code(error)].inc()
        children.handling.observe(time.perf_counter() - began)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[Any, int]:
    """Serve `/metrics` for `registry` on a background thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)
