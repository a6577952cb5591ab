"""The deception server's services (not implemented yet: every RPC answers UNIMPLEMENTED)."""

from __future__ import annotations

from servers.mesh.server import Mount, Runtime, Service
from shieldx.deception.v1 import deception_pb2, deception_pb2_grpc


async def build(runtime: Runtime) -> Service:
    """The services this process serves."""
    return Service(mounts=[Mount.of(deception_pb2, deception_pb2_grpc, "DeceptionService")])
