"""One call through two server processes is one trace, received by a real OTLP/gRPC endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry

from clients.channel import ChannelOptions, open_channel
from clients.telemetry import ClientTelemetry, GrpcMetrics
from tests.support.echo import echo_pb2, echo_pb2_grpc
from tests.support.otlp import OtlpReceiver
from tests.support.processes import ServerProcess

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


def test_relay_through_two_processes_is_one_trace(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        back = ServerProcess(
            "tests.support.echo_server", tmp_path, name="back", env={**otel, "OTEL_SERVICE_NAME": "back"}
        )
        front = ServerProcess(
            "tests.support.echo_server", tmp_path, name="front", env={**otel, "OTEL_SERVICE_NAME": "front"}
        )
        front.env["SHIELDX_ENDPOINTS"] = f"relay={back.address}"
        try:
            back.start()
            front.start()
            provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
            provider.add_span_processor(
                SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
            )
            telemetry = ClientTelemetry(GrpcMetrics("client", CollectorRegistry()), provider.get_tracer("test"))

            async def call() -> echo_pb2.EchoResponse:
                options = ChannelOptions(telemetry=False, extra_interceptors=telemetry.interceptors())
                async with open_channel(front.address, options) as channel:
                    reply: echo_pb2.EchoResponse = await echo_pb2_grpc.EchoServiceStub(channel).Relay(
                        echo_pb2.EchoRequest(text="hello"), timeout=10
                    )
                    return reply

            reply = asyncio.run(call())
            provider.shutdown()
            assert reply.text == "relayed:hello"
            spans = receiver.wait_for(4)
        finally:
            front.stop()
            back.stop()
    relay = "meshtest.v1.EchoService/Relay"
    echo = "meshtest.v1.EchoService/Echo"
    by_role = {(s.service, s.name, s.kind): s for s in spans}
    test_client = by_role[("test-client", relay, CLIENT)]
    front_server = by_role[("front", relay, SERVER)]
    front_client = by_role[("front", echo, CLIENT)]
    back_server = by_role[("back", echo, SERVER)]
    assert len({s.trace_id for s in (test_client, front_server, front_client, back_server)}) == 1
    assert reply.trace_id == test_client.trace_id, "the server saw the caller's trace"
    assert front_server.parent_span_id == test_client.span_id
    assert front_client.parent_span_id == front_server.span_id
    assert back_server.parent_span_id == front_client.span_id
