"""How the extension's functions reach the mesh: configuration keys to a channel, one event loop per call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc

from clients.channel import ChannelOptions, open_channel
from clients.connect import connect

T = TypeVar("T")
Configuration = Mapping[str, Any] | None


def channel(service: str, configuration: Configuration) -> grpc.aio.Channel:
    """A channel to `service`: `shieldx_<service>` in the configuration (`host:port`), else the local mesh."""
    settings = configuration or {}
    target = settings.get(f"shieldx_{service}")
    if target:
        return open_channel(str(target), ChannelOptions(retry=None))
    return connect(service, data_dir=settings.get("shieldx_data_dir", ".shieldx"))


def call(service: str, configuration: Configuration, work: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
    """Run `work` with a channel to `service` in a fresh event loop (Chaos Toolkit calls functions synchronously)."""

    async def main() -> T:
        async with channel(service, configuration) as opened:
            return await work(opened)

    return asyncio.run(main())
