"""Channels to a running mesh for people and tools: endpoints and credentials from `shieldx up`.

from clients.connect import connect
from clients.credits import CreditsClient

credits = CreditsClient(connect("credits"))          # admin credentials from .shieldx/
balance = await credits.get_balance(GetBalanceRequest(account_id="acme"))
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from clients.channel import ChannelOptions, open_channel
from clients.credentials import CREDENTIALS_FILE, CredentialsFileTokenSource
from clients.endpoints import read_endpoints


def connect(
    service: str,
    *,
    data_dir: str | os.PathLike[str] = ".shieldx",
    principal: str = "admin",
    target: str | None = None,
) -> grpc.aio.Channel:
    """A traced channel to `service` that authenticates as `principal` of `<data_dir>/credentials`.

    The target defaults to where `shieldx up` said the service listens. Without a credentials
    file the channel sends no token (a mesh running with auth off).
    """
    directory = Path(data_dir)
    address = target or read_endpoints(directory)[service].address
    credentials = directory / CREDENTIALS_FILE
    source = None
    if credentials.exists():
        source = CredentialsFileTokenSource(credentials, principal, open_channel)
    return open_channel(address, ChannelOptions(token_source=source))
