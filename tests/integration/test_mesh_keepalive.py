"""Keepalive: servers accept the pings mesh clients send, so a quiet watch stream outlives many ping intervals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from clients.channel import ChannelOptions, Keepalive, open_channel
from clients.deployment import DeploymentClient
from clients.errors import ShieldxError
from servers.deployment.service import build
from shieldx.deployment.v1 import routing_pb2
from tests.conftest import StartService, test_config

INTERVAL = 0.2
"""Ping interval of the test (30 s in production), so several pass in a couple of seconds."""


async def quiet_watch(start_service: StartService, tmp_path: Path, server_interval: float) -> BaseException | None:
    """Hold a WatchRoutes stream open, with nothing to send, for forty client ping intervals; then
    register an instance. None if the stream delivered that change, else the error that ended it."""
    config = test_config(tmp_path, "deployment", keepalive__interval_seconds=server_interval)
    running = await start_service(build, config)
    channel = open_channel(
        f"127.0.0.1:{running.server.port}",
        ChannelOptions(keepalive=Keepalive(interval_seconds=INTERVAL, timeout_seconds=5.0), retry=None),
    )
    client = DeploymentClient(channel)
    try:
        stream = client.watch_routes(routing_pb2.WatchRoutesRequest(services=["echo"])).__aiter__()
        await stream.__anext__()  # the current routes: none yet
        following = asyncio.create_task(stream.__anext__())
        await asyncio.wait([following], timeout=40 * INTERVAL)
        if following.done():
            return following.exception() or AssertionError(f"unexpected change {following.result()}")
        request = routing_pb2.RegisterInstanceRequest(service="echo", version="v1", address="127.0.0.1:7")
        await DeploymentClient(running.channel).register_instance(request)
        try:
            change = await asyncio.wait_for(following, 30)
        except (ShieldxError, grpc.aio.AioRpcError) as exc:
            return exc
        assert [r.service for r in change.routes] == ["echo"]
        return None
    finally:
        await channel.close()


async def test_a_watch_stream_outlives_many_ping_intervals_when_server_and_client_agree(
    start_service: StartService, tmp_path: Path
) -> None:
    assert await quiet_watch(start_service, tmp_path, server_interval=INTERVAL) is None


async def test_a_server_expecting_rarer_pings_ends_the_stream(start_service: StartService, tmp_path: Path) -> None:
    # The mismatch the mesh had: clients pinging every 30 s, servers on gRPC's default policy
    # (a ping within 5 minutes of the last is a strike): GOAWAY too_many_pings after a few.
    error = await quiet_watch(start_service, tmp_path, server_interval=600.0)
    assert isinstance(error, ShieldxError | grpc.aio.AioRpcError), error
    code = error.code if isinstance(error, ShieldxError) else error.code()
    assert code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("interval", [30.0, 0.2])
def test_servers_accept_pings_at_half_the_client_interval(interval: float) -> None:
    policy = Keepalive(interval_seconds=interval)
    server = dict(policy.server_options())
    client = dict(policy.client_options())
    assert server["grpc.http2.min_ping_interval_without_data_ms"] * 2 <= client["grpc.keepalive_time_ms"]
    assert server["grpc.keepalive_permit_without_calls"] == client["grpc.keepalive_permit_without_calls"] == 1
