"""Canary deployments across real processes: a deployment server, stable (v1) and canary (v2)
Echo servers that register themselves through their deployment agent, and a load generator
calling through the typed client on a routed channel.

Traffic shares are measured where the calls land: from the `grpc_server_handled_total` of
each Echo server's `/metrics`, read whenever the deployment changes step.

The analysis reads the canary's metrics by scraping it, or, in the `mesh_on_prometheus`
variant, from a real Prometheus server that scrapes both versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from clients.channel import ChannelOptions
from clients.deployment import DeploymentClient
from clients.errors import ShieldxError
from clients.routing import RoutedChannel, open_routed_channel
from clients.rpc import ServiceClient, Unary
from servers.deployment.scrape import parse_scrape
from shieldx.deployment.v1 import deployment_pb2, faults_pb2, routing_pb2
from tests.support.echo import echo_pb2
from tests.support.processes import ServerProcess, wait_serving
from tests.support.prometheus import PrometheusServer, prometheus_binary

ECHO = "meshtest.v1.EchoService"
INTERVAL = 1.0
PAUSE = 2.5
STEPS = (10, 25, 50, 100)
TOLERANCE = 3.0
PROMETHEUS_SCRAPE = "250ms"
PROMETHEUS_INTERVAL = 2.0
"""Prometheus needs two scrapes in the window for `increase`, so its analyses look further back."""


class EchoClient(ServiceClient):
    """The typed client of the test Echo service."""

    service = ECHO
    echo = Unary("Echo", echo_pb2.EchoRequest, echo_pb2.EchoResponse)


def seconds(value: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(value * 1e9))
    return message


def handled_calls(metrics_port: int) -> float:
    """Echo calls an instance completed (any status), from its /metrics."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
    ) as answer:
        scrape = parse_scrape(answer.read().decode(), services=[ECHO])
    return sum(scrape.handled.values())


@dataclass
class Mesh:
    """The processes of one test and the clients that talk to them."""

    deployment: ServerProcess
    stable: ServerProcess
    canary: ServerProcess
    control: grpc.aio.Channel
    client: DeploymentClient
    routed: RoutedChannel
    interval: float = INTERVAL
    """The analysis interval of the deployments it creates."""
    prometheus: PrometheusServer | None = None
    """The Prometheus server the deployment server reads, if any (otherwise it scrapes)."""
    outcomes: Counter[str] = field(default_factory=Counter)

    async def counters(self) -> tuple[float, float]:
        """(stable, canary) Echo calls handled so far."""
        stable, canary = await asyncio.gather(
            asyncio.to_thread(handled_calls, self.stable.metrics_port),
            asyncio.to_thread(handled_calls, self.canary.metrics_port),
        )
        return stable, canary

    async def create(self, **analysis: Any) -> deployment_pb2.Deployment:
        thresholds = deployment_pb2.AnalysisThresholds(interval=seconds(self.interval), min_requests=20, **analysis)
        answer = await self.client.create_deployment(
            deployment_pb2.CreateDeploymentRequest(
                request_id=f"canary-{time.monotonic_ns()}",
                service="echo",
                from_version="v1",
                to_version="v2",
                pause_duration=seconds(PAUSE),
                analysis=thresholds,
            )
        )
        return answer.deployment


def echo_process(tmp_path: Path, version: str, deployment: ServerProcess) -> ServerProcess:
    return ServerProcess(
        "tests.support.echo_server",
        tmp_path,
        env={
            "SHIELDX_VERSION": version,
            "SHIELDX_ENDPOINTS": f"deployment={deployment.address}",
            "SHIELDX_AGENT__ENABLED": "true",
            "SHIELDX_AGENT__SERVICE": "echo",
            "SHIELDX_AGENT__HEARTBEAT_SECONDS": "5",
        },
        name=f"echo-{version}",
    )


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with start_mesh(tmp_path, prometheus=False) as started:
        yield started


@pytest.fixture
async def mesh_on_prometheus(tmp_path: Path) -> AsyncIterator[Mesh]:
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed (Debian package `prometheus`)")
    async with start_mesh(tmp_path, prometheus=True) as started:
        yield started


@contextlib.asynccontextmanager
async def start_mesh(tmp_path: Path, *, prometheus: bool) -> AsyncIterator[Mesh]:
    env = {"SHIELDX_DEPLOYMENT__CONTROLLER_TICK_SECONDS": "0.2", "SHIELDX_LOG_LEVEL": "INFO"}
    deployment = ServerProcess("servers.deployment", tmp_path, env=env)
    stable, canary = echo_process(tmp_path, "v1", deployment), echo_process(tmp_path, "v2", deployment)
    scraper: PrometheusServer | None = None
    if prometheus:
        targets = [f"127.0.0.1:{p.metrics_port}" for p in (stable, canary)]
        scraper = PrometheusServer(tmp_path, targets, scrape_interval=PROMETHEUS_SCRAPE).start()
        deployment.env["SHIELDX_DEPLOYMENT__PROMETHEUS_URL"] = scraper.url
    processes = [deployment, stable, canary]
    for process in processes:
        process.start(wait=False)
    control = grpc.aio.insecure_channel(deployment.address)
    routed: RoutedChannel | None = None
    try:
        for process in processes:
            await asyncio.to_thread(wait_serving, process.address, 60.0, process.process)
        if scraper is not None:
            await asyncio.to_thread(scraper.wait_scraped)
        client = DeploymentClient(control)
        await _registered(client, 2)
        # Plain target without a route: the stable instance. No transparent retries, so every
        # failed call is seen by the load generator.
        routed = open_routed_channel("echo", stable.address, control, ChannelOptions(retry=None), seed=0.5)
        assert await routed.wait_for_route(10.0), "no route for echo arrived"
        interval = PROMETHEUS_INTERVAL if prometheus else INTERVAL
        yield Mesh(deployment, stable, canary, control, client, routed, interval, scraper)
    finally:
        if routed is not None:
            await routed.close()
        await control.close()
        for process in reversed(processes):
            process.stop()
        if scraper is not None:
            scraper.stop()


async def _registered(client: DeploymentClient, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = await client.list_instances(routing_pb2.ListInstancesRequest(service="echo"))
        if len(listed.instances) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the Echo servers did not register with the deployment server")


@contextlib.asynccontextmanager
async def load(mesh: Mesh, workers: int = 12) -> AsyncIterator[None]:
    """Echo calls through the typed client on the routed channel, for as long as the block runs."""
    client = EchoClient(mesh.routed, default_timeout=5.0)
    stop = asyncio.Event()

    async def worker() -> None:
        request = echo_pb2.EchoRequest(text="canary?")
        while not stop.is_set():
            try:
                await client.echo(request)
                mesh.outcomes["OK"] += 1
            except ShieldxError as error:
                mesh.outcomes[error.code.name] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_healthy_canary_walks_the_steps_with_matching_traffic_and_is_promoted(mesh: Mesh) -> None:
    async with load(mesh):
        await asyncio.sleep(0.5)
        marks: list[tuple[int, tuple[float, float]]] = []  # (canary weight from now on, counters)
        created = await mesh.create()
        marks.append((created.current_weight_percent, await mesh.counters()))
        final = created
        watch = mesh.client.watch_deployment(deployment_pb2.WatchDeploymentRequest(deployment_id=created.id))
        async with asyncio.timeout(40):
            async for message in watch:
                final = message.deployment
                if message.HasField("change") and message.change.weight_percent != marks[-1][0]:
                    marks.append((message.change.weight_percent, await mesh.counters()))
                if final.state == deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED:
                    break
        marks.append((-1, await mesh.counters()))

    assert final.state == deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED, final
    assert [weight for weight, _ in marks[:-1]] == list(STEPS)
    shares = []
    for (weight, (stable_0, canary_0)), (_, (stable_1, canary_1)) in itertools.pairwise(marks):
        stable, canary = stable_1 - stable_0, canary_1 - canary_0
        assert stable + canary > 100, f"too few calls at {weight} % to measure"
        shares.append((weight, 100 * canary / (stable + canary), int(stable + canary)))
    print("\nstep weight -> measured canary share (calls):", shares)
    for weight, measured, _ in shares:
        assert abs(measured - weight) <= TOLERANCE, shares
    events = [(entry.event, entry.weight_percent) for entry in final.history]
    assert events[0] == ("CREATED", 10)
    assert final.history[-1].to_state == deployment_pb2.DEPLOYMENT_STATE_SUCCEEDED
    assert mesh.outcomes["OK"] > 0 and sum(n for code, n in mesh.outcomes.items() if code != "OK") == 0


async def test_failing_canary_is_rolled_back_and_traffic_returns_to_stable(mesh: Mesh) -> None:
    await roll_back_a_failing_canary(mesh)


async def test_failing_canary_is_rolled_back_on_the_numbers_prometheus_scraped(mesh_on_prometheus: Mesh) -> None:
    prometheus = mesh_on_prometheus.prometheus
    assert prometheus is not None
    queries_before = prometheus.queries_answered()
    await roll_back_a_failing_canary(mesh_on_prometheus)
    # Two failed analyses, each four instant queries (calls, errors, latency buckets, instances up).
    assert prometheus.queries_answered() - queries_before >= 8, "the analyses asked Prometheus"


async def roll_back_a_failing_canary(mesh: Mesh) -> None:
    """A canary failing 30 % of its calls: rolled back after two failed analyses, traffic back on stable."""
    await mesh.client.create_fault_injection(
        faults_pb2.CreateFaultInjectionRequest(
            service="echo",
            version="v2",
            method_pattern=f"{ECHO}/*",
            abort_code=grpc.StatusCode.UNAVAILABLE.value[0],
            percentage=30.0,
            duration=seconds(120),
        )
    )
    await _fault_reached(mesh.canary.address)
    async with load(mesh):
        await asyncio.sleep(0.5)
        created = await mesh.create(failure_limit=2)
        final = created
        watch = mesh.client.watch_deployment(deployment_pb2.WatchDeploymentRequest(deployment_id=created.id))
        async with asyncio.timeout(30):
            async for message in watch:
                final = message.deployment
                if final.state == deployment_pb2.DEPLOYMENT_STATE_ROLLED_BACK:
                    break
        rolled_back_at = time.monotonic()
        await asyncio.sleep(INTERVAL)  # calls in flight at the switch finish
        _, canary_before = await mesh.counters()
        await asyncio.sleep(1.0)
        stable_after, canary_after = await mesh.counters()
        settled = time.monotonic() - rolled_back_at

    assert final.state == deployment_pb2.DEPLOYMENT_STATE_ROLLED_BACK, final
    assert canary_after == canary_before, f"the canary still got calls {settled:.1f} s after the rollback"
    assert stable_after > 0
    assert mesh.outcomes["UNAVAILABLE"] > 0, "the injected failures reached the callers"
    last = final.history[-1]
    assert (last.event, last.actor, last.weight_percent) == ("ANALYSIS", "controller", 0)
    assert last.verdict == deployment_pb2.VERDICT_FAIL
    assert "ERROR_RATE_TOO_HIGH" in last.detail
    stored = (
        await mesh.client.get_deployment(deployment_pb2.GetDeploymentRequest(deployment_id=created.id))
    ).deployment
    assert stored.history[-1] == last
    routes = await mesh.client.get_routes(routing_pb2.GetRoutesRequest(services=["echo"]))
    weights = {v.version: v.weight_bp for v in routes.routes[0].versions}
    assert weights == {"v1": 10_000, "v2": 0}
    instances = await mesh.client.list_instances(routing_pb2.ListInstancesRequest(service="echo", version="v2"))
    assert [i.drained for i in instances.instances] == [True]


async def _fault_reached(address: str) -> None:
    """Wait until direct calls to the canary fail some of the time: its agent installed the fault."""
    async with grpc.aio.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as channel:
        echo = channel.unary_unary(
            f"/{ECHO}/Echo",
            request_serializer=echo_pb2.EchoRequest.SerializeToString,
            response_deserializer=echo_pb2.EchoResponse.FromString,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for _ in range(20):
                try:
                    await echo(echo_pb2.EchoRequest(text="probe"), timeout=5)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the canary never injected the fault")
