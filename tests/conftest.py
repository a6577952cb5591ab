"""Shared fixtures: in-process servers on port 0, and both storage backends."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported: no C-core INFO lines

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from servers.mesh.config import MeshConfig, load_config
from servers.mesh.server import MeshServer, Mount, Runtime, Service, ServiceBuilder, create_server
from tests.support.pgcluster import PgWorkspace, workspace_or_skip

POSTGRES_URL = os.environ.get("SHIELDX_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Tests drive servers far past one production caller's share (servers/mesh/config.py derives
# 400 calls/s per caller for this machine), from one address and often one client; the
# servers they start as processes inherit this, and the rate limiter's own tests set theirs.
TEST_CALLS_PER_SECOND = 1_000_000.0
os.environ.setdefault("SHIELDX_RATE_LIMIT__RATE_PER_SECOND", str(TEST_CALLS_PER_SECOND))
os.environ.setdefault("SHIELDX_RATE_LIMIT__BURST", str(TEST_CALLS_PER_SECOND))
ROOT = Path(__file__).resolve().parents[1]
# The skip guard fails a run with a skip not in tests/allowed_skips.toml; fuzz prints its reports.
pytest_plugins = ["tests.support.skip_guard", "tests.support.fuzz"]


def test_config(tmp_path: Path, service: str = "compliance", **changes: Any) -> MeshConfig:
    """A config for an in-process test server: free ports, private data dir, auth off unless asked,
    per-caller rate limit out of the way unless asked."""
    config = load_config(service, environ={})
    config.port = 0
    config.metrics_port = 0
    config.data_dir = str(tmp_path)
    config.auth.enabled = False
    config.rate_limit.rate_per_second = config.rate_limit.burst = TEST_CALLS_PER_SECOND
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            setattr(getattr(config, section), name, value)
        else:
            setattr(config, key, value)
    return config


test_config.__test__ = False  # type: ignore[attr-defined]


@dataclasses.dataclass
class Running:
    """A started in-process server and a plain channel to it."""

    server: MeshServer
    channel: grpc.aio.Channel
    runtime: Runtime
    service: Service | None = None
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


StartServer = Callable[..., Awaitable[Running]]
StartService = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Factory: start a server for mounts built from a runtime; everything is stopped afterwards."""
    started: list[Running] = []

    async def start(
        build_mounts: Callable[[Runtime], list[Mount]],
        config: MeshConfig,
        *,
        metrics: bool = False,
        **runtime_args: Any,
    ) -> Running:
        runtime = Runtime(config, **runtime_args)
        server = create_server(build_mounts(runtime), runtime, address="127.0.0.1:0")
        await server.start(metrics=metrics)
        running = Running(server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"), runtime)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await running.channel.close()
        await running.server.stop(grace=0, drain_delay=0)
        await running.runtime.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Where a test's store lives: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield {"data_dir": str(tmp_path), "database_url": ""}
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield {"data_dir": str(tmp_path), "database_url": POSTGRES_URL, "database_schema": schema}
    drop_schema(schema)


def drop_schema(schema: str) -> None:
    """Drop a test schema, first ending any session still using it (a service torn down later
    than this fixture would otherwise hold locks that make DROP wait forever)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (f"shieldx:{schema}",),
        )
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="session", autouse=True)
def tracing() -> None:
    """A real SDK tracer provider, as every server process has (no exporter unless OTEL_* say so)."""
    from servers.mesh.tracing import configure_tracing

    configure_tracing("tests")


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    """Factory: run a service's real `build(runtime)` (store, background tasks) on an in-process server.

    `start_service(build, config, **runtime_args)`; everything is stopped, closed and its tasks
    cancelled afterwards. Start it again on the same config to test a restart.
    """
    started: list[Running] = []

    async def start(
        build: ServiceBuilder, config: MeshConfig, *, metrics: bool = False, **runtime_args: Any
    ) -> Running:
        runtime = Runtime(config, **runtime_args)
        service = await build(runtime)
        server = create_server(service.mounts, runtime, address="127.0.0.1:0")
        await server.start(metrics=metrics)
        tasks = [asyncio.create_task(task()) for task in service.tasks]
        running = Running(server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"), runtime, service, tasks)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        await stop_service(running)


async def stop_service(running: Running) -> None:
    """Stop a service started by `start_service`: server, background tasks, stores (idempotent)."""
    if running.service is None:
        return
    await running.channel.close()
    await running.server.stop(grace=0, drain_delay=0)
    for task in running.tasks:
        task.cancel()
    for task in running.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for close in reversed(running.service.closers):
        await close()
    await running.runtime.close()
    running.service = None


@pytest.fixture
def pg() -> Iterator[PgWorkspace]:
    """Throwaway PostgreSQL clusters (primaries, streaming replicas) for one test; skipped without the binaries."""
    with workspace_or_skip() as workspace:
        yield workspace
