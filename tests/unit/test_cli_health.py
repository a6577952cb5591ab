"""`shieldx health`: the probe the container HEALTHCHECK and Kubernetes run, readiness and liveness apart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.endpoints import free_port
from servers.cli import main
from servers.mesh.server import LIVENESS, Runtime, create_server
from tests.conftest import test_config


async def health(*args: str) -> int:
    return await asyncio.to_thread(main, ["health", *args])


async def test_liveness_answers_serving_while_readiness_waits_for_the_servers_peers(tmp_path: Path) -> None:
    runtime = Runtime(test_config(tmp_path))
    server = create_server([], runtime, address="127.0.0.1:0")
    await server.start(metrics=False, serving=False)  # as a server still waiting for the token service
    address = f"127.0.0.1:{server.port}"
    try:
        assert await health("--address", address) == 1
        assert await health("--address", address, "--service", LIVENESS) == 0
        await server.set_serving()
        assert await health("--address", address) == 0
    finally:
        await server.stop(grace=0, drain_delay=0)
        await runtime.close()
    assert await health("--address", address, "--service", LIVENESS, "--timeout", "0.5") == 1


async def test_nothing_listening_is_unhealthy() -> None:
    assert await health("--address", f"127.0.0.1:{free_port()}", "--timeout", "0.5") == 1
