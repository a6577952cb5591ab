"""Prometheus metrics: the `grpc_server_*` interceptor and the per-process `/metrics` HTTP port."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from clients.telemetry import GrpcMetrics
from servers.mesh.interception import CallInterceptor, Context, Method, final_code


class MetricsInterceptor(CallInterceptor[float]):
    """`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`, `grpc_server_handling_seconds`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.metrics = GrpcMetrics("server", registry)

    async def enter(self, method: Method, context: Context, request: Any) -> float:
        self.metrics.record_start(method.kind, method.service, method.name)
        return time.perf_counter()

    async def exit(self, method: Method, context: Context, state: float, error: BaseException | None) -> None:
        code = final_code(context, error)
        self.metrics.record_end(method.kind, method.service, method.name, code, time.perf_counter() - state)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[Any, int]:
    """Serve `/metrics` for `registry` on a background thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)
