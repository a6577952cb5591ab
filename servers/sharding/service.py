"""The sharding server's services (not implemented yet: every RPC answers UNIMPLEMENTED)."""

from __future__ import annotations

from servers.mesh.server import Mount, Runtime, Service
from shieldx.sharding.v1 import sharding_pb2, sharding_pb2_grpc


async def build(runtime: Runtime) -> Service:
    """The services this process serves."""
    return Service(mounts=[Mount.of(sharding_pb2, sharding_pb2_grpc, "ShardingService")])
