"""The fault machinery of a server process: every fault kind at its seam (interceptor, client
gate, storage, caches, resources, termination), Envoy's fault headers, and the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from clients.breaker import BreakerSettings, BreakerState, CircuitBreaker, breaker_metrics
from clients.channel import ChannelOptions, open_channel
from servers.mesh.faults import PROCESS_STARTED, Exhaustion, Fault, FaultKind, FaultSettings, FaultTable, envoy_fault
from servers.mesh.storage import open_database
from tests.conftest import StartServer, test_config
from tests.support.echo import echo_mount, echo_pb2, echo_pb2_grpc
from tests.support.tokens import TestAuthority

ECHO = "meshtest.v1.EchoService"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_partitions_refuse_only_the_named_peer_on_the_sides_asked_for() -> None:
    table = FaultTable()
    table.replace(
        [
            Fault("p1", "*", 100.0, kind=FaultKind.PARTITION, peer_service="tokens", block_inbound=True),
            Fault("p2", "*", 100.0, kind=FaultKind.PARTITION, peer_service="credits", block_outbound=True),
        ]
    )
    assert table.refuses_from("tokens") is not None and table.refuses_from("credits") is None
    assert table.refuses_to("credits") is not None and table.refuses_to("tokens") is None
    assert bool(table), "inbound partitions put the interceptor on its slow path"


def test_faults_expire_on_their_own_without_a_new_table() -> None:
    clock = Clock()
    table = FaultTable(clock=clock)
    table.replace(
        [
            Fault("s", "*", 100.0, delay_seconds=0.2, kind=FaultKind.DB_SLOW_QUERY, expires_at=1005.0),
            Fault("c", "*", 100.0, kind=FaultKind.CACHE_BYPASS, expires_at=1005.0),
            Fault("p", "*", 100.0, kind=FaultKind.PARTITION, peer_service="x", block_outbound=True, expires_at=1005.0),
        ]
    )
    assert table.statement_delay() == 0.2 and table.caches_bypassed() and table.refuses_to("x")
    clock.now = 1005.0
    assert table.statement_delay() == 0.0 and not table.caches_bypassed() and table.refuses_to("x") is None


def test_statement_delays_hit_the_asked_share_and_carry_jitter() -> None:
    rolls = iter([0.1, 0.9, 0.5])
    table = FaultTable(chance=lambda: next(rolls))
    table.replace([Fault("s", "*", 50.0, delay_seconds=0.1, jitter_seconds=0.2, kind=FaultKind.DB_SLOW_QUERY)])
    assert table.statement_delay() == pytest.approx(0.1 + 0.9 * 0.2)  # chosen (0.1 < 0.5), jitter roll 0.9
    assert table.statement_delay() == 0.0  # 0.5 is not under 50 %


def test_faults_for_another_version_or_instance_are_ignored() -> None:
    table = FaultTable("v2")
    table.instance_address = "127.0.0.1:5"
    table.replace(
        [
            Fault("v1-only", "*", 100.0, kind=FaultKind.CACHE_BYPASS, version="v1"),
            Fault("other", "*", 100.0, kind=FaultKind.DB_SLOW_QUERY, delay_seconds=1, instance_address="127.0.0.1:6"),
        ]
    )
    assert table.faults == ()


def test_termination_ends_only_a_process_started_before_the_fault() -> None:
    ended: list[str] = []
    table = FaultTable(terminate=lambda fault: ended.append(fault.id))
    old = Fault("old", "*", 100.0, kind=FaultKind.TERMINATE, created_wall=PROCESS_STARTED - 1)
    new = Fault("new", "*", 100.0, kind=FaultKind.TERMINATE, created_wall=time.time() + 1)
    table.replace([old, new])
    table.replace([old, new])
    assert ended == ["new"], "a restarted process ignores the fault that ended its predecessor, and it fires once"


def test_exhaustion_holds_capped_workers_and_ballast_and_releases_at_the_deadline() -> None:
    exhaustion = Exhaustion(FaultSettings(max_cpu_workers=1, max_memory_mib=8))
    exhaustion.hold(cpu_workers=4, memory_mib=64, until=time.monotonic() + 0.5)
    assert exhaustion.workers == 1 and exhaustion.ballast_mib == 8, "the config's hard caps apply"
    deadline = time.monotonic() + 10
    while (exhaustion.workers or exhaustion.ballast_mib) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exhaustion.workers == 0 and exhaustion.ballast_mib == 0, "released by the deadline alone"


def test_withdrawing_the_fault_releases_exhaustion_at_once() -> None:
    table = FaultTable(settings=FaultSettings(max_cpu_workers=2, max_memory_mib=16))
    fault = Fault("r", "*", 100.0, kind=FaultKind.RESOURCE_EXHAUSTION, cpu_workers=1, memory_mib=4)
    table.replace([fault])
    assert table.exhaustion.workers == 1 and table.exhaustion.ballast_mib == 4
    table.replace([])
    time.sleep(0.1)
    assert table.exhaustion.workers == 0 and table.exhaustion.ballast_mib == 0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-envoy-fault-delay-request": "250"}, (0.25, None)),
        ({"x-envoy-fault-abort-grpc-request": "14"}, (0.0, grpc.StatusCode.UNAVAILABLE)),
        ({"x-envoy-fault-abort-grpc-request": "14", "x-envoy-fault-abort-request-percentage": "0"}, None),
        ({"x-envoy-fault-delay-request": "100", "x-envoy-fault-delay-request-percentage": "60"}, (0.1, None)),
        ({"x-envoy-fault-delay-request": "100", "x-envoy-fault-delay-request-percentage": "40"}, None),
        ({"x-envoy-fault-delay-request": "soon"}, None),
        ({"x-envoy-fault-abort-grpc-request": "0"}, None),
        ({"x-other": "1"}, None),
    ],
)
def test_envoy_fault_headers_are_read_as_envoy_reads_them(
    headers: dict[str, str], expected: tuple[float, grpc.StatusCode | None] | None
) -> None:
    assert envoy_fault(list(headers.items()), chance=lambda: 0.5) == expected


async def test_slow_query_faults_hold_statements_inside_the_transaction(tmp_path: Path) -> None:
    database = await open_database("slow", data_dir=tmp_path)
    table = FaultTable()
    database.statement_delay = table.statement_delay
    try:
        await database.execute("CREATE TABLE t (x INTEGER)")
        table.replace([Fault("s", "*", 100.0, delay_seconds=0.2, kind=FaultKind.DB_SLOW_QUERY)])
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with database.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1)")
            await tx.fetchall("SELECT x FROM t")
        assert loop.time() - began >= 0.4, "two statements, each held 0.2 s"
        table.replace([])
        assert await database.fetchall("SELECT x FROM t")
    finally:
        await database.close()


async def test_a_partition_refuses_the_callers_outgoing_calls_to_the_peer_only(
    start_server: StartServer, tmp_path: Path
) -> None:
    peer = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path / "peer"))
    config = test_config(tmp_path / "caller", endpoints={"relay": peer.address, "other": peer.address})
    caller = await start_server(lambda rt: [echo_mount(rt)], config)
    to_peer = echo_pb2_grpc.EchoServiceStub(caller.runtime.channel("relay"))
    to_other = echo_pb2_grpc.EchoServiceStub(caller.runtime.channel("other"))
    assert (await to_peer.Echo(echo_pb2.EchoRequest(text="hi"))).text == "hi"
    caller.runtime.faults.replace(
        [Fault("p", "*", 100.0, kind=FaultKind.PARTITION, peer_service="relay", block_outbound=True)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await to_peer.Echo(echo_pb2.EchoRequest(text="hi"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "partitioned" in (caught.value.details() or "")
    assert (await to_other.Echo(echo_pb2.EchoRequest(text="hi"))).text == "hi", "other services are untouched"
    caller.runtime.faults.replace([])
    assert (await to_peer.Echo(echo_pb2.EchoRequest(text="hi"))).text == "hi"


def test_the_breaker_opens_on_consecutive_failures_and_closes_through_half_open() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    breaker = CircuitBreaker(
        "t",
        BreakerSettings(consecutive_failures=3, open_seconds=2.0, half_open_calls=2),
        metrics=breaker_metrics(registry),
        clock=clock,
    )
    for _ in range(3):
        assert breaker.allow()
        breaker.record(failed=True)
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert registry.get_sample_value("shieldx_client_circuit_breaker_trips_total", {"target": "t"}) == 1
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and breaker.allow() and not breaker.allow(), "two trial calls, no more"
    breaker.record(failed=False)
    breaker.record(failed=False)
    assert breaker.state is BreakerState.CLOSED
    assert registry.get_sample_value("shieldx_client_circuit_breaker_state", {"target": "t"}) == 0


def test_a_failed_trial_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker("t", BreakerSettings(consecutive_failures=1, open_seconds=1.0), clock=clock)
    breaker.record(failed=True)
    clock.now += 1.0
    assert breaker.allow()
    breaker.record(failed=True)
    assert breaker.state is BreakerState.OPEN and breaker.trips == 2


def test_the_breaker_opens_on_the_failure_rate() -> None:
    breaker = CircuitBreaker("t", BreakerSettings(consecutive_failures=100, failure_rate=0.5, window=10, min_calls=10))
    for failed in [True, False] * 4 + [True]:
        breaker.record(failed)
    assert breaker.state is BreakerState.CLOSED, "9 calls: below min_calls"
    breaker.record(True)
    assert breaker.state is BreakerState.OPEN


async def test_a_channel_breaker_fails_fast_once_open(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    running.runtime.faults.replace([Fault("f", f"{ECHO}/Echo", 100.0, abort_code=grpc.StatusCode.UNAVAILABLE)])
    registry = CollectorRegistry()
    options = ChannelOptions(
        retry=None, metrics_registry=registry, circuit_breaker=BreakerSettings(consecutive_failures=3, open_seconds=60)
    )
    channel = open_channel(running.address, options)
    try:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        details = []
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Echo(echo_pb2.EchoRequest(text="x"))
            details.append(caught.value.details() or "")
        assert [("circuit breaker" in d) for d in details] == [False, False, False, True, True]
        assert registry.get_sample_value("shieldx_client_circuit_breaker_trips_total", {"target": running.address}) == 1
    finally:
        await channel.close()


async def test_a_partition_refuses_the_named_callers_identity_on_the_server_side(
    start_server: StartServer, tmp_path: Path
) -> None:
    authority = TestAuthority()
    running = await start_server(
        lambda rt: [echo_mount(rt)], test_config(tmp_path, auth__enabled=True), verifier=authority.verifier
    )
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    running.runtime.faults.replace(
        [Fault("p", "*", 100.0, kind=FaultKind.PARTITION, peer_service="credits", block_inbound=True)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(echo_pb2.EchoRequest(text="x"), metadata=authority.metadata(["echo.read"], client_id="credits"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(caught.value) == "NETWORK_PARTITIONED"
    answer = await stub.Echo(
        echo_pb2.EchoRequest(text="x"), metadata=authority.metadata(["echo.read"], client_id="tokens")
    )
    assert answer.text == "x", "workloads outside the partition are untouched"


@pytest.mark.parametrize(("scopes", "refused"), [(["echo.read", "chaos.inject"], True), (["echo.read"], False)])
async def test_envoy_fault_headers_are_honoured_only_with_the_chaos_inject_scope(
    start_server: StartServer, tmp_path: Path, scopes: list[str], refused: bool
) -> None:
    authority = TestAuthority()
    config = test_config(tmp_path, auth__enabled=True)
    config.sections["faults"] = {"envoy_fault_headers": True}
    running = await start_server(lambda rt: [echo_mount(rt)], config, verifier=authority.verifier)
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    metadata = (*authority.metadata(scopes), ("x-envoy-fault-abort-grpc-request", "14"))
    if refused:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Echo(echo_pb2.EchoRequest(text="x"), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and reason_of(caught.value) == "FAULT_INJECTED"
    else:
        assert (await stub.Echo(echo_pb2.EchoRequest(text="x"), metadata=metadata)).text == "x"


async def test_envoy_fault_headers_are_ignored_unless_enabled(start_server: StartServer, tmp_path: Path) -> None:
    authority = TestAuthority()
    running = await start_server(
        lambda rt: [echo_mount(rt)], test_config(tmp_path, auth__enabled=True), verifier=authority.verifier
    )
    metadata = (*authority.metadata(["echo.read", "chaos.inject"]), ("x-envoy-fault-abort-grpc-request", "14"))
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    assert (await stub.Echo(echo_pb2.EchoRequest(text="x"), metadata=metadata)).text == "x"


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason
    return ""
