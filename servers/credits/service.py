"""The credits server's services (not implemented yet: every RPC answers UNIMPLEMENTED)."""

from __future__ import annotations

from servers.mesh.server import Mount, Runtime, Service
from shieldx.credits.v1 import credits_pb2, credits_pb2_grpc


async def build(runtime: Runtime) -> Service:
    """The services this process serves."""
    return Service(mounts=[Mount.of(credits_pb2, credits_pb2_grpc, "CreditsService")])
