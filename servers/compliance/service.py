"""The compliance server's services (not implemented yet: every RPC answers UNIMPLEMENTED)."""

from __future__ import annotations

from servers.mesh.server import Mount, Runtime, Service
from shieldx.compliance.v1 import compliance_pb2, compliance_pb2_grpc


async def build(runtime: Runtime) -> Service:
    """The services this process serves."""
    return Service(mounts=[Mount.of(compliance_pb2, compliance_pb2_grpc, "ComplianceService")])
