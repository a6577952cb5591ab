"""The runtime's server factory and interceptor chain, on a real in-process gRPC server."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from clients.errors import ShieldxError
from servers.mesh.config import load_config
from servers.mesh.faults import Fault
from servers.mesh.ratelimit import TokenBuckets
from tests.conftest import StartServer, test_config
from tests.support.echo import echo_mount, echo_pb2, echo_pb2_grpc
from tests.support.tokens import TestAuthority

ECHO = "meshtest.v1.EchoService"


def unpack(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The error's google.rpc details by type name, decoded the way the typed clients decode them."""
    status = rpc_status.from_call(error)
    assert status is not None, f"every error carries google.rpc.Status details: {error.code()} {error.details()}"
    return {detail.DESCRIPTOR.name: detail for detail in ShieldxError.from_rpc_error(error).details}


async def test_health_reports_serving_for_each_service_and_overall(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    health = health_pb2_grpc.HealthStub(running.channel)
    for name in ("", ECHO):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("package", ["grpc.reflection.v1", "grpc.reflection.v1alpha"])
async def test_reflection_lists_services_under_both_versions(
    start_server: StartServer, tmp_path: Path, package: str
) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    call = running.channel.stream_stream(
        f"/{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = await call.read()
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=ECHO))
    described = await call.read()
    await call.done_writing()
    names = {s.name for s in listed.list_services_response.service}
    assert {ECHO, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto, "the contract is described"


@pytest.mark.parametrize(
    ("fail_with", "code", "reason", "detail"),
    [
        ("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "BadRequest"),
        ("NotFound", grpc.StatusCode.NOT_FOUND, "NOT_FOUND", None),
        ("FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION, "NOT_READY", "PreconditionFailure"),
        ("QuotaExceeded", grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED", "RetryInfo"),
    ],
)
async def test_domain_errors_map_to_codes_with_one_error_info(
    start_server: StartServer, tmp_path: Path, fail_with: str, code: grpc.StatusCode, reason: str, detail: str | None
) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(text="hi", fail_with=fail_with))
    assert caught.value.code() == code
    details = unpack(caught.value)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == reason
    assert info.domain == "meshtest.v1"
    if detail:
        assert detail in details
    if fail_with == "InvalidArgument":
        bad = details["BadRequest"]
        assert isinstance(bad, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["text"]


async def test_unexpected_exception_is_internal_without_internals_on_the_wire(
    start_server: StartServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(fail_with="crash"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    info = unpack(caught.value)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    trace_id = info.metadata["trace_id"]
    assert len(trace_id) == 32
    assert "secret internal detail" in caplog.text, "the exception is logged server-side"


async def test_undecodable_request_bytes_are_invalid_argument(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    raw = running.channel.unary_unary(f"/{ECHO}/Echo")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\x0a\x05\xff\xfe\xfd\xfc\xfb")  # field 1 (string) with invalid UTF-8
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = unpack(caught.value)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "MALFORMED_REQUEST"


async def test_server_stream_passes_through_the_chain(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    texts = [r.text async for r in stub.Repeat(echo_pb2.RepeatRequest(text="x", count=3))]
    assert texts == ["x", "x", "x"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Repeat(echo_pb2.RepeatRequest(text="x", count=-1)):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_metrics_count_calls_by_code(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path), metrics=True)
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    for _ in range(3):
        await stub.Echo(echo_pb2.EchoRequest(text="ok"))
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Echo(echo_pb2.EchoRequest(fail_with="NotFound"))
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{running.server.metrics_port}/metrics").read().decode()
    )
    labels = 'grpc_method="Echo",grpc_service="meshtest.v1.EchoService",grpc_type="unary"'
    assert f"grpc_server_started_total{{{labels}}} 5.0" in body
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}} 3.0' in body
    assert f'grpc_server_handled_total{{grpc_code="NotFound",{labels}}} 2.0' in body
    assert f"grpc_server_handling_seconds_count{{{labels}}} 5.0" in body


async def test_rate_limit_answers_resource_exhausted_with_retry_info(start_server: StartServer, tmp_path: Path) -> None:
    config = test_config(tmp_path, rate_limit__rate_per_second=1.0, rate_limit__burst=3.0)
    running = await start_server(lambda rt: [echo_mount(rt)], config)
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    for _ in range(3):
        await stub.Echo(echo_pb2.EchoRequest(text="ok"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(text="one too many"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = unpack(caught.value)
    retry = details["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert 0 < retry.retry_delay.ToNanoseconds() <= 1_000_000_000
    health = health_pb2_grpc.HealthStub(running.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING


async def test_fault_injection_delays_and_aborts_matching_calls(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    running.runtime.faults.replace([Fault("f1", f"{ECHO}/Echo", 100.0, abort_code=grpc.StatusCode.UNAVAILABLE)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(text="x"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await stub.Ping(echo_pb2.EchoRequest())).text == "pong", "other methods are untouched"
    running.runtime.faults.replace([Fault("f2", f"{ECHO}/*", 100.0, delay_seconds=0.3)])
    loop = asyncio.get_running_loop()
    began = loop.time()
    await stub.Echo(echo_pb2.EchoRequest(text="x"))
    assert loop.time() - began >= 0.3
    running.runtime.faults.replace([])
    await stub.Echo(echo_pb2.EchoRequest(text="x"))


async def test_graceful_stop_finishes_in_flight_call_after_health_flips(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    watch = health_pb2_grpc.HealthStub(running.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    slow = asyncio.ensure_future(stub.Echo(echo_pb2.EchoRequest(text="slow", sleep_seconds=1.0)))
    await asyncio.sleep(0.2)
    stopping = asyncio.ensure_future(running.server.stop(grace=5, drain_delay=0.1))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not slow.done()
    assert (await slow).text == "slow"
    await stopping


async def test_failed_authentication_is_limited_per_source_before_verification(
    start_server: StartServer, tmp_path: Path
) -> None:
    authority = TestAuthority()
    config = test_config(
        tmp_path, auth__enabled=True, rate_limit__auth_failure_burst=3.0, rate_limit__auth_failures_per_second=0.01
    )
    running = await start_server(lambda rt: [echo_mount(rt)], config, verifier=authority.verifier)
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    good = authority.metadata(["echo.read"])
    for _ in range(20):  # calls that authenticate never use up the source's failures
        await stub.Echo(echo_pb2.EchoRequest(text="ok"), metadata=good)
    forged = (("authorization", "Bearer v4.public.not-a-token"),)
    codes = []
    for _ in range(6):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Echo(echo_pb2.EchoRequest(text="x"), metadata=forged)
        codes.append((caught.value.code(), unpack(caught.value)["ErrorInfo"].reason))
    assert codes[:3] == [(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MALFORMED")] * 3
    assert codes[3:] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTH_FAILURES_LIMITED")] * 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(text="x"), metadata=good)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "the source waits, whatever it presents"
    assert isinstance(unpack(caught.value)["RetryInfo"], error_details_pb2.RetryInfo)


def test_default_limits_trigger_for_one_fast_caller() -> None:
    # 2,000 fast calls from one caller were never limited under 5,000/s with bursts of 10,000.
    limits = load_config("credits", environ={}).rate_limit
    clock = [0.0]
    buckets = TokenBuckets(limits.rate_per_second, limits.burst, clock=lambda: clock[0])
    refused = 0
    for _ in range(2_000):
        clock[0] += 1 / 765  # the full chain's rate in bench_mesh_overhead --auth on this machine
        refused += buckets.take("client:greedy") > 0
    assert refused > 0
