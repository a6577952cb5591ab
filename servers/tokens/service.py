"""The tokens server's services (not implemented yet: every RPC answers UNIMPLEMENTED)."""

from __future__ import annotations

from servers.mesh.server import Mount, Runtime, Service
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc


async def build(runtime: Runtime) -> Service:
    """The services this process serves."""
    return Service(mounts=[Mount.of(tokens_pb2, tokens_pb2_grpc, "TokenService")])
