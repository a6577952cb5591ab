"""The deployment server's services (not implemented yet: every RPC answers UNIMPLEMENTED)."""

from __future__ import annotations

from servers.mesh.server import Mount, Runtime, Service
from shieldx.deployment.v1 import (
    deployment_pb2,
    deployment_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    flags_pb2,
    flags_pb2_grpc,
)


async def build(runtime: Runtime) -> Service:
    """The services this process serves."""
    return Service(
        mounts=[
            Mount.of(deployment_pb2, deployment_pb2_grpc, "DeploymentService"),
            Mount.of(flags_pb2, flags_pb2_grpc, "FlagService"),
            Mount.of(experiments_pb2, experiments_pb2_grpc, "ExperimentService"),
        ]
    )
