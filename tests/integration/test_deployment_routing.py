"""Traffic routing in the client channel against a real deployment server and real Echo servers:
weighted splits, sticky callers, the plain target without a route, and a deployment server
that goes away."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.channel import ChannelOptions
from clients.deployment import DeploymentClient
from clients.routing import RoutedChannel, open_routed_channel
from clients.rpc import ServerStream, ServiceClient, Unary
from servers.deployment.service import build
from servers.mesh.server import Mount, Runtime
from shieldx.deployment.v1 import routing_pb2
from tests.conftest import Running, StartServer, StartService, stop_service, test_config
from tests.support.echo import EchoServicer, echo_pb2, echo_pb2_grpc
from tests.support.polling import eventually

STICKY = "x-user-id"


class EchoClient(ServiceClient):
    """The typed client of the test Echo service."""

    service = "meshtest.v1.EchoService"
    echo = Unary("Echo", echo_pb2.EchoRequest, echo_pb2.EchoResponse)
    repeat = ServerStream("Repeat", echo_pb2.RepeatRequest, echo_pb2.EchoResponse)


class VersionedEcho(EchoServicer):
    """Echo that answers with the version of the server it runs in."""

    def __init__(self, runtime: Runtime, version: str) -> None:
        super().__init__(runtime)
        self.version = version

    async def Echo(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(text=self.version)

    async def Repeat(self, request: Any, context: Any) -> Any:
        for _ in range(request.count):
            yield echo_pb2.EchoResponse(text=self.version)


class Mesh:
    """A deployment server and one Echo server per version, registered as `echo`."""

    def __init__(self, deployment: Running, echoes: dict[str, Running]) -> None:
        self.deployment = deployment
        self.echoes = echoes
        self.client = DeploymentClient(deployment.channel)

    async def set_weights(self, weights: dict[str, int], sticky: str = "") -> int:
        answer = await self.client.set_route_weights(
            routing_pb2.SetRouteWeightsRequest(
                service="echo",
                weights=[routing_pb2.VersionWeight(version=v, weight_bp=w) for v, w in weights.items()],
                sticky_metadata_key=sticky,
            )
        )
        return answer.route.revision

    def routed(self, service: str = "echo", fallback: str = "v1") -> RoutedChannel:
        return open_routed_channel(
            service, self.echoes[fallback].address, self.deployment.channel, ChannelOptions(retry=None)
        )


@pytest.fixture
async def mesh(start_service: StartService, start_server: StartServer, tmp_path: Path) -> Mesh:
    deployment = await start_service(build, test_config(tmp_path / "deployment", "deployment"))
    echoes: dict[str, Running] = {}
    client = DeploymentClient(deployment.channel)
    for version in ("v1", "v2"):

        def mounts(runtime: Runtime, version: str = version) -> list[Mount]:
            return [
                Mount(
                    echo_pb2.DESCRIPTOR.services_by_name["EchoService"],
                    VersionedEcho(runtime, version),
                    echo_pb2_grpc.add_EchoServiceServicer_to_server,
                )
            ]

        echoes[version] = await start_server(mounts, test_config(tmp_path / version, version=version))
        await client.register_instance(
            routing_pb2.RegisterInstanceRequest(service="echo", version=version, address=echoes[version].address)
        )
    return Mesh(deployment, echoes)


@pytest.fixture
async def routed(mesh: Mesh) -> AsyncIterator[RoutedChannel]:
    channel = mesh.routed()
    yield channel
    await channel.close()


async def wait_revision(channel: RoutedChannel, revision: int) -> None:
    # Routes arrive on the watch stream a moment after the change.
    await eventually(
        lambda: channel.route is not None and channel.route.revision >= revision, 5, "route followed", 0.01
    )


async def versions_of(client: EchoClient, calls: int, metadata: tuple[tuple[str, str], ...] = ()) -> Counter[str]:
    answers = [await client.echo(echo_pb2.EchoRequest(text="?"), metadata=metadata) for _ in range(calls)]
    return Counter(answer.text for answer in answers)


async def test_a_ten_percent_canary_gets_ten_percent_of_the_calls(mesh: Mesh, routed: RoutedChannel) -> None:
    revision = await mesh.set_weights({"v1": 9000, "v2": 1000})
    await wait_revision(routed, revision)
    seen = await versions_of(EchoClient(routed), 1000)
    assert 95 <= seen["v2"] <= 105, seen
    revision = await mesh.set_weights({"v1": 2500, "v2": 7500})
    await wait_revision(routed, revision)
    seen = await versions_of(EchoClient(routed), 400)
    assert 290 <= seen["v2"] <= 310, seen
    streamed = [m.text async for m in EchoClient(routed).repeat(echo_pb2.RepeatRequest(text="x", count=3))]
    assert len(streamed) == 3 and len(set(streamed)) == 1


async def test_a_sticky_caller_stays_on_its_version_and_raising_the_weight_only_adds_callers(
    mesh: Mesh, routed: RoutedChannel
) -> None:
    client = EchoClient(routed)
    revision = await mesh.set_weights({"v1": 8000, "v2": 2000}, sticky=STICKY)
    await wait_revision(routed, revision)
    users = [f"user-{i}" for i in range(150)]

    async def placement() -> dict[str, str]:
        found: dict[str, str] = {}
        for user in users:
            seen = await versions_of(client, 3, ((STICKY, user),))
            assert len(seen) == 1, f"{user} moved between versions: {seen}"
            found[user] = next(iter(seen))
        return found

    at_20 = await placement()
    on_canary = {user for user, version in at_20.items() if version == "v2"}
    assert 0.08 < len(on_canary) / len(users) < 0.35
    revision = await mesh.set_weights({"v1": 5000, "v2": 5000}, sticky=STICKY)
    await wait_revision(routed, revision)
    at_50 = await placement()
    assert on_canary < {user for user, version in at_50.items() if version == "v2"}


async def test_without_a_route_calls_go_to_the_plain_target(mesh: Mesh) -> None:
    channel = mesh.routed(service="ghost", fallback="v2")
    try:
        assert not await channel.wait_for_route(0.3)
        assert channel.route is None
        assert await versions_of(EchoClient(channel), 5) == Counter({"v2": 5})
    finally:
        await channel.close()


async def test_a_removed_route_falls_back_and_a_lost_deployment_server_keeps_the_last_route(
    mesh: Mesh, routed: RoutedChannel
) -> None:
    revision = await mesh.set_weights({"v1": 0, "v2": 10_000})
    await wait_revision(routed, revision)
    assert await versions_of(EchoClient(routed), 5) == Counter({"v2": 5})
    await stop_service(mesh.deployment)
    await asyncio.sleep(0.2)
    assert routed.route is not None and routed.route.revision == revision
    assert await versions_of(EchoClient(routed), 5) == Counter({"v2": 5})


async def test_the_route_goes_away_with_the_last_instance(mesh: Mesh, routed: RoutedChannel) -> None:
    revision = await mesh.set_weights({"v1": 0, "v2": 10_000})
    await wait_revision(routed, revision)
    for running in mesh.echoes.values():
        await mesh.client.deregister_instance(
            routing_pb2.DeregisterInstanceRequest(service="echo", address=running.address)
        )
    await eventually(lambda: routed.route is None, 5, "route withdrawn", 0.01)
    assert await versions_of(EchoClient(routed), 3) == Counter({"v1": 3})  # the plain target
    assert isinstance(routed, grpc.aio.Channel)
