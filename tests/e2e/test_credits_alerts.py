"""Low-balance alerts across processes: two credits servers on one PostgreSQL store, a watcher on
one of them, the alert recorded through the other. The watcher hears of it through PostgreSQL
LISTEN/NOTIFY at once, not at its next poll (set to 30 s here, so only a notification can be in
time).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.credits import CreditsClient
from shieldx.credits.v1 import credits_pb2 as pb
from tests.conftest import POSTGRES_URL, drop_schema
from tests.support.processes import ServerProcess

POLL_SECONDS = 30


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    env = {
        "SHIELDX_DATABASE_URL": POSTGRES_URL,
        "SHIELDX_DATABASE_SCHEMA": schema,
        "SHIELDX_CREDITS__ALERT_POLL_SECONDS": str(POLL_SECONDS),
    }
    watched = ServerProcess("servers.credits", tmp_path, env=env, name="credits-watched")
    writer = ServerProcess("servers.credits", tmp_path, env=env, name="credits-writer")
    try:
        watched.start()
        writer.start()
        yield watched, writer
    finally:
        writer.stop()
        watched.stop()
        drop_schema(schema)


async def test_an_alert_recorded_by_another_process_reaches_the_watcher_at_once(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    watched, writer = servers
    async with grpc.aio.insecure_channel(watched.address) as one, grpc.aio.insecure_channel(writer.address) as other:
        here, there = CreditsClient(one), CreditsClient(other)
        await here.purchase(pb.PurchaseRequest(account_id="acme", amount=100, payment_reference="p-1"))
        await here.set_threshold(pb.SetThresholdRequest(account_id="acme", threshold=50))
        heard: asyncio.Queue[tuple[pb.WatchAlertsResponse, float]] = asyncio.Queue()

        async def watch() -> None:
            async for item in here.watch_alerts(pb.WatchAlertsRequest(account_id="acme")):
                heard.put_nowait((item, time.monotonic()))

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.sleep(0.5)  # the watch starts "from now"
            # Through the watched server: woken in process.
            await here.consume(pb.ConsumeRequest(account_id="acme", amount=60))
            first, _ = await asyncio.wait_for(heard.get(), 5)
            assert (first.alert.available, first.alert.version) == (40, 4)
            await asyncio.sleep(0.5)
            # Re-armed and crossed again through the other server.
            await there.purchase(pb.PurchaseRequest(account_id="acme", amount=100, payment_reference="p-2"))
            await there.consume(pb.ConsumeRequest(account_id="acme", amount=100))
            recorded = time.monotonic()
            second, arrived = await asyncio.wait_for(heard.get(), 5)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    assert (second.alert.available, second.alert.version) == (40, 7)
    latency = arrived - recorded
    assert latency < POLL_SECONDS / 3, f"heard after {latency:.2f} s: by a poll, not a notification"
    print(f"\nalert recorded by another process reached the watcher after {latency * 1000:.0f} ms")
