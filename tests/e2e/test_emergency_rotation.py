"""An emergency rotation (zero overlap) reaches the mesh at once: credits and sharding, separate
processes, refuse a token of the cut-off key within a second, and a server's own outgoing calls,
whose token the rotation cut off too, work again on the very next call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2

from clients.channel import ChannelOptions, StaticToken, open_channel
from clients.credentials import CredentialsFile
from clients.credits import CreditsClient
from clients.errors import ShieldxError
from clients.sharding import ShardingClient
from clients.tokens import TokenClient
from servers.mesh.config import load_config
from servers.mesh.server import Runtime
from shieldx.credits.v1 import credits_pb2
from shieldx.sharding.v1 import sharding_pb2
from shieldx.tokens.v1 import tokens_pb2
from tests.support.processes import ServerProcess


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, ServerProcess]]:
    shared = tmp_path / "state"
    auth = {"SHIELDX_AUTH__ENABLED": "true", "SHIELDX_DATA_DIR": str(shared)}
    servers = {
        "tokens": ServerProcess("servers.tokens", tmp_path, env={**auth, "SHIELDX_TOKENS__BOOTSTRAP": "true"}),
        "credits": ServerProcess("servers.credits", tmp_path, env=auth),
        "sharding": ServerProcess("servers.sharding", tmp_path, env=auth),
    }
    peers = ",".join(f"{name}={server.address}" for name, server in servers.items())
    for server in servers.values():
        server.env["SHIELDX_ENDPOINTS"] = peers
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in reversed(servers.values()):
            server.stop()


async def outcome(call: Awaitable[Any]) -> str:
    """OK, or the ErrorInfo reason (the code's name without one)."""
    try:
        await call
    except ShieldxError as error:
        return error.reason or error.code.name
    return "OK"


async def refused_within(probe: Callable[[], Awaitable[str]], deadline: float) -> tuple[float, str]:
    """(seconds since the rotation, reason) of the first UNAUTHENTICATED answer; fails at the deadline."""
    began = time.monotonic()
    while True:
        reason = await probe()
        if reason.startswith("TOKEN_"):
            return time.monotonic() - began, reason
        assert time.monotonic() - began < deadline, f"still answered {reason} after {deadline}s"
        await asyncio.sleep(0.005)


async def test_a_cut_off_key_is_refused_mesh_wide_within_a_second_and_servers_reissue_their_tokens(
    mesh: dict[str, ServerProcess], tmp_path: Path
) -> None:
    shared = tmp_path / "state"
    admin = CredentialsFile.load(shared / "credentials").clients["admin"]
    tokens = TokenClient(open_channel(mesh["tokens"].address))
    old = (
        await tokens.issue_token(
            tokens_pb2.IssueTokenRequest(client_id=admin.client_id, client_secret=admin.client_secret)
        )
    ).access_token
    credits = CreditsClient(open_channel(mesh["credits"].address, ChannelOptions(token_source=StaticToken(old))))
    sharding = ShardingClient(open_channel(mesh["sharding"].address, ChannelOptions(token_source=StaticToken(old))))

    def balance() -> Awaitable[str]:
        return outcome(credits.get_balance(credits_pb2.GetBalanceRequest(account_id="acct-1")))

    def ring() -> Awaitable[str]:
        return outcome(sharding.get_ring_stats(sharding_pb2.GetRingStatsRequest()))

    assert not (await balance()).startswith("TOKEN_") and not (await ring()).startswith("TOKEN_")

    # A server's own outgoing calls: compliance's workload credentials, through the runtime's
    # channels (the same token source and interceptors a running server uses).
    config = load_config("compliance", environ={})
    config.data_dir = str(shared)
    config.auth.enabled = True
    config.endpoints = {name: server.address for name, server in mesh.items()}
    runtime = Runtime(config)
    runtime.use_credentials_file()
    own_credits = CreditsClient(runtime.channel("credits"))
    assert not (await outcome(own_credits.get_balance(credits_pb2.GetBalanceRequest(account_id="acct-1")))).startswith(
        "TOKEN_"
    )

    bearer = (("authorization", f"Bearer {old}"),)
    await tokens.rotate_signing_key(
        tokens_pb2.RotateSigningKeyRequest(overlap=duration_pb2.Duration(seconds=0)), metadata=bearer
    )
    took_credits, reason_credits = await refused_within(balance, 1.0)
    took_sharding, reason_sharding = await refused_within(ring, 1.0)
    print(f"cut-off key refused by credits after {took_credits * 1e3:.0f} ms, sharding {took_sharding * 1e3:.0f} ms")
    assert reason_credits == reason_sharding == "TOKEN_UNKNOWN_KEY"

    # The server's token was cut off as well: its next call fetches a new one and succeeds.
    own_answer = await outcome(own_credits.get_balance(credits_pb2.GetBalanceRequest(account_id="acct-1")))
    assert not own_answer.startswith("TOKEN_"), own_answer
    own_sharding = ShardingClient(runtime.channel("sharding"))
    assert not (await outcome(own_sharding.get_ring_stats(sharding_pb2.GetRingStatsRequest()))).startswith("TOKEN_")
    await runtime.close()
