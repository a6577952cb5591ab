"""OpenTelemetry tracing: the process tracer provider and the server-side span interceptor.

Spans are named `package.Service/Method`; W3C `traceparent` is read from incoming metadata
(and written on outgoing calls by `clients.telemetry`). Export is OTLP/gRPC, configured by
the standard `OTEL_*` variables.

Spans are recorded only when they go somewhere: with no exporter endpoint set, no recording
SDK is installed, and the interceptor only gives each call its trace context — a new span id
under the caller's trace (or a new trace), the caller's sampled flag kept — so logs still
carry trace ids and the context still travels downstream. Recording a span that nobody
exports cost a quarter of a small call's CPU in our measurements.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from servers.mesh.interception import (
    HEALTH_SERVICE,
    CallInterceptor,
    Context,
    Method,
    finalized_elsewhere,
)

log = logging.getLogger(__name__)

# Server span statuses that are errors per the RPC semantic conventions; the rest are the
# caller's fault and leave the server span unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_configured = False


def tracing_resource(version: str) -> Resource:
    """The resource every exported span carries: `service.namespace` and `service.version` (the
    version the server runs as, `v1`, `v2`, as in its routes), plus what `OTEL_SERVICE_NAME` and
    `OTEL_RESOURCE_ATTRIBUTES` say."""
    return Resource.create({"service.namespace": "shieldx", "service.version": version})


def configure_tracing(service: str, version: str = "v1") -> trace.TracerProvider:
    """Install the process-wide tracer provider once (OTLP export if an endpoint is configured)."""
    global _configured
    if _configured:
        return trace.get_tracer_provider()
    _configured = True
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return trace.get_tracer_provider()
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return trace.get_tracer_provider()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    os.environ.setdefault("OTEL_SERVICE_NAME", f"shieldx-{service}")
    provider = TracerProvider(resource=tracing_resource(version))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("exporting traces over OTLP/gRPC")
    return provider


def shutdown_tracing() -> None:
    """Flush and stop exporting (called at process exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


_ids = RandomIdGenerator()
_PROPAGATED = frozenset({"traceparent", "tracestate", "baggage"})


def _incoming(context: Context) -> otel_context.Context | None:
    carrier = {key: value for key, value in context.invocation_metadata() if key in _PROPAGATED}
    return propagate.extract(carrier) if carrier else None


class TracingInterceptor(CallInterceptor[tuple[trace.Span, object]]):
    """A SERVER span around every call except health checks, child of the caller's traceparent.

    When spans are not recorded (no exporter), a non-recording span with fresh ids stands in,
    so the call still has a trace id (logs, INTERNAL errors) and passes its context on.
    """

    def __init__(self, tracer: trace.Tracer | None = None, *, record: bool | None = None) -> None:
        self._tracer = tracer or trace.get_tracer("shieldx.mesh")
        self._record = isinstance(trace.get_tracer_provider(), TracerProvider) if record is None else record
        self._attributes: dict[str, dict[str, str]] = {}

    def applies_to(self, method: Method) -> bool:
        return method.service != HEALTH_SERVICE

    async def enter(self, method: Method, context: Context, request: Any) -> tuple[trace.Span, object]:
        parent = _incoming(context)
        if not self._record:
            return _stand_in(parent)
        attributes = self._attributes.get(method.path)
        if attributes is None:
            attributes = {"rpc.system": "grpc", "rpc.service": method.service, "rpc.method": method.name}
            self._attributes[method.path] = attributes
        span = self._tracer.start_span(method.span_name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    async def exit(
        self, method: Method, context: Context, state: tuple[trace.Span, object], error: BaseException | None
    ) -> None:
        span, token = state
        if not self._record:
            if not finalized_elsewhere(error):
                otel_context.detach(token)  # type: ignore[arg-type]
            return
        code = context.final_code(error)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        if not finalized_elsewhere(error):
            otel_context.detach(token)  # type: ignore[arg-type]
        span.end()


def _stand_in(parent: otel_context.Context | None) -> tuple[trace.Span, object]:
    caller = trace.get_current_span(parent).get_span_context() if parent is not None else INVALID_SPAN_CONTEXT
    span = trace.NonRecordingSpan(
        SpanContext(
            trace_id=caller.trace_id if caller.is_valid else _ids.generate_trace_id(),
            span_id=_ids.generate_span_id(),
            is_remote=False,
            trace_flags=caller.trace_flags if caller.is_valid else TraceFlags(TraceFlags.DEFAULT),
        )
    )
    return span, otel_context.attach(trace.set_span_in_context(span, parent))
