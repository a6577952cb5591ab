"""Channels to a running mesh for people and tools: endpoints and credentials from `shieldx up`.

from clients.connect import connect
from clients.credits import CreditsClient

credits = CreditsClient(connect("credits"))          # admin credentials from .shieldx/
balance = await credits.get_balance(GetBalanceRequest(account_id="acme"))
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc

from clients.channel import ChannelOptions, open_channel
from clients.credentials import CREDENTIALS_FILE, CredentialsFileTokenSource
from clients.endpoints import ENDPOINTS_FILE, read_endpoints
from clients.routing import open_routed_channel

UNROUTED = frozenset({"deployment", "tokens"})
"""Services a routed channel cannot follow: the one publishing routes, and the one its token needs."""


def connect(
    service: str,
    *,
    data_dir: str | os.PathLike[str] = ".shieldx",
    principal: str = "admin",
    target: str | None = None,
    routed: bool = True,
) -> grpc.aio.Channel:
    """A traced channel to `service` that authenticates as `principal` of `<data_dir>/credentials`.

    The target defaults to where `shieldx up` said the service listens. Without a credentials
    file the channel sends no token (a mesh running with auth off). Calls follow the route the
    deployment server publishes for the service (a canary's weights, sticky keys), falling back
    to the target while there is none. A plain channel instead with `routed=False`, an explicit
    `target`, no endpoints file of `shieldx up`, outside a running event loop, and for the
    deployment and token services themselves.
    """
    directory = Path(data_dir)
    endpoints = read_endpoints(directory)
    address = target or endpoints[service].address
    credentials = directory / CREDENTIALS_FILE
    source = None
    if credentials.exists():
        source = CredentialsFileTokenSource(credentials, principal, open_channel)
    options = ChannelOptions(token_source=source)
    local_mesh = target is None and (directory / ENDPOINTS_FILE).exists()  # never a stranger's default ports
    if not routed or not local_mesh or service in UNROUTED or "deployment" not in endpoints or not _in_event_loop():
        return open_channel(address, options)
    control = open_channel(endpoints["deployment"].address, options)
    return open_routed_channel(service, address, control, options, close_control=True)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
