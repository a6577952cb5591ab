"""Where a local mesh listens: the default ports, and the endpoints `shieldx up` wrote."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "tokens": (8080, 9080),
    "credits": (5004, 9004),
    "deployment": (5005, 9005),
    "sharding": (5006, 9006),
    "compliance": (5007, 9007),
    "deception": (8089, 9089),
}
"""The default (gRPC, metrics) ports of each service; the token service first, since it starts
first (every other server fetches its keys)."""
SERVICES = tuple(DEFAULT_PORTS)
ENDPOINTS_FILE = "endpoints.json"


@dataclass
class Endpoint:
    """Where one server listens."""

    service: str
    host: str
    port: int
    metrics_port: int
    version: str = "v1"
    """The deployed version this process runs (what traffic routing splits on)."""

    @property
    def address(self) -> str:
        """`host:port` of the gRPC port."""
        return f"{self.host}:{self.port}"

    @property
    def name(self) -> str:
        """`credits` for the main instance, `credits@v2` for another version."""
        return self.service if self.version == "v1" else f"{self.service}@{self.version}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def plan_endpoints(
    services: Sequence[str], host: str, free_ports: bool, versions: Sequence[tuple[str, str]] = ()
) -> dict[str, Endpoint]:
    """Default ports, or free ones (for tests and for running two meshes side by side); each
    extra `(service, version)` runs beside the main instance on free ports."""
    plan: dict[str, Endpoint] = {}
    for name in services:
        grpc_port, metrics_port = (free_port(host), free_port(host)) if free_ports else DEFAULT_PORTS[name]
        plan[name] = Endpoint(name, host, grpc_port, metrics_port)
    for service, version in versions:
        extra = Endpoint(service, host, free_port(host), free_port(host), version)
        plan[extra.name] = extra
    return plan


def read_endpoints(data_dir: Path) -> dict[str, Endpoint]:
    """The endpoints the last `shieldx up` wrote, or the defaults."""
    path = data_dir / ENDPOINTS_FILE
    if path.exists():
        return {name: Endpoint(**entry) for name, entry in json.loads(path.read_text()).items()}
    return plan_endpoints(SERVICES, "127.0.0.1", free_ports=False)


async def health_status(address: str, service: str = "", timeout: float = 2.0) -> str:
    """`SERVING`, `NOT_SERVING`, ... or `UNREACHABLE`."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
