"""Client-side telemetry: W3C trace context on every outgoing call, a CLIENT span and the
de-facto `grpc_client_*` Prometheus metrics, as grpc.aio client interceptors."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

# grpc_code label values as go-grpc-prometheus writes them (codes.Code.String()).
CODE_LABELS: dict[grpc.StatusCode, str] = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
}
CODE_LABELS[grpc.StatusCode.OK] = "OK"
CODE_LABELS[grpc.StatusCode.CANCELLED] = "Canceled"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def split_method(path: str | bytes) -> tuple[str, str]:
    """(`package.Service`, `Method`) of a wire path."""
    text = path.decode() if isinstance(path, bytes) else path
    service, _, name = text.lstrip("/").rpartition("/")
    return service, name


class GrpcMetrics:
    """The started / handled / handling-seconds trio for one side (`server` or `client`)."""

    def __init__(self, side: str, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(f"grpc_{side}_started_total", f"RPCs started on the {side}.", labels, registry=registry)
        self.handled = Counter(
            f"grpc_{side}_handled_total",
            f"RPCs completed on the {side}, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.handling = Histogram(
            f"grpc_{side}_handling_seconds",
            f"Time from start to completion of an RPC on the {side}.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """A cached labelled child (labels() is too slow for every call)."""
        key = (metric._name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def record_start(self, kind: str, service: str, method: str) -> None:
        """Count a started call."""
        self.child(self.started, kind, service, method).inc()

    def record_end(self, kind: str, service: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count a finished call and its duration."""
        self.child(self.handled, kind, service, method, CODE_LABELS[code]).inc()
        self.child(self.handling, kind, service, method).observe(seconds)


_client_metrics: weakref.WeakKeyDictionary[CollectorRegistry, GrpcMetrics] = weakref.WeakKeyDictionary()


def client_metrics(registry: CollectorRegistry | None = None) -> GrpcMetrics:
    """The one set of client metrics of `registry` (default: the process-wide registry)."""
    registry = registry or REGISTRY
    found = _client_metrics.get(registry)
    if found is None:
        found = _client_metrics[registry] = GrpcMetrics("client", registry)
    return found


def _with_metadata(details: grpc.aio.ClientCallDetails, extra: list[tuple[str, str]]) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()))) if details.metadata else grpc.aio.Metadata()
    for key, value in extra:
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class ClientTelemetry:
    """A CLIENT span and metrics around every call; the span's context travels as `traceparent`.

    grpc.aio files an interceptor object under the first call type it implements only, so
    `interceptors()` hands out one object per call type, sharing this state.
    """

    def __init__(self, metrics: GrpcMetrics | None = None, tracer: trace.Tracer | None = None) -> None:
        self._metrics = metrics or client_metrics()
        self._tracer = tracer or trace.get_tracer("shieldx.clients")

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """The interceptors to give a channel: unary and server-streaming calls."""
        return [_UnaryTelemetry(self), _StreamTelemetry(self)]

    def start(self, details: grpc.aio.ClientCallDetails, kind: str) -> tuple[trace.Span, Any, str, str]:
        """Open the span, count the start, and return details carrying the traceparent."""
        service, method = split_method(details.method)
        span = self._tracer.start_span(
            f"{service}/{method}",
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        self._metrics.record_start(kind, service, method)
        return span, _with_metadata(details, list(carrier.items())), service, method

    def end(self, span: trace.Span, kind: str, service: str, method: str, code: grpc.StatusCode, began: float) -> None:
        """Count the end with its code and duration, and close the span."""
        self._metrics.record_end(kind, service, method, code, time.perf_counter() - began)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()


class _UnaryTelemetry(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, telemetry: ClientTelemetry) -> None:
        self._telemetry = telemetry

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        began = time.perf_counter()
        span, details, service, method = self._telemetry.start(client_call_details, "unary")
        code = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(details, request)
            response = await call
            code = grpc.StatusCode.OK
            return response
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._telemetry.end(span, "unary", service, method, code, began)


class _StreamTelemetry(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, telemetry: ClientTelemetry) -> None:
        self._telemetry = telemetry

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> AsyncIterator[Any]:
        began = time.perf_counter()
        span, details, service, method = self._telemetry.start(client_call_details, "server_stream")
        call = await continuation(details, request)
        telemetry = self._telemetry

        async def responses() -> AsyncIterator[Any]:
            code = grpc.StatusCode.UNKNOWN
            try:
                async for response in call:
                    yield response
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
                raise
            except BaseException:
                code = grpc.StatusCode.CANCELLED
                call.cancel()
                raise
            finally:
                telemetry.end(span, "server_stream", service, method, code, began)

        return responses()
