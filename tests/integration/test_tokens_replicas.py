"""Two token servers on one PostgreSQL schema are one service: each verifies the other's tokens,
a rotation on one is used by the other, and neither replaces the other's key (the keys live in the
database, sealed under the key-encryption key both are given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clients.tokens import TokenClient
from servers.mesh.vault import load_kek
from servers.tokens.service import build
from shieldx.tokens.v1 import tokens_pb2 as pb
from tests.conftest import StartService
from tests.integration.test_tokens_service import active_kid, admin_token, credentials, issue, tokens_config
from tests.support.polling import eventually


@pytest.mark.parametrize("store_config", ["postgres"], indirect=True)
async def test_two_token_servers_share_keys_and_rotations(
    store_config: dict[str, str], tmp_path: Path, start_service: StartService
) -> None:
    kek = _shared_kek(tmp_path)
    first_config = tokens_config(tmp_path / "a", {**store_config, "data_dir": str(tmp_path / "a")})
    second_config = tokens_config(tmp_path / "b", {**store_config, "data_dir": str(tmp_path / "b")}, bootstrap=False)
    for config in (first_config, second_config):
        config.secrets.kek = kek
    first = await start_service(build, first_config)
    second = await start_service(build, second_config)
    one, two = TokenClient(first.channel), TokenClient(second.channel)
    kid = await active_kid(one)
    assert await active_kid(two) == kid, "the second server uses the first one's key instead of making its own"

    admin = credentials(first_config).clients["admin"]
    from_one = (await issue(one, admin.client_id, admin.client_secret)).access_token
    from_two = (await issue(two, admin.client_id, admin.client_secret)).access_token
    assert await introspected(two, from_one) and await introspected(one, from_two)

    await one.rotate_signing_key(pb.RotateSigningKeyRequest(), metadata=await bearer_of(one, first_config))
    rotated = await active_kid(one)
    assert rotated != kid
    await eventually(lambda: active_kid_is(two, rotated), timeout=10, what="the second server uses the rotated key")
    signed = await issue(two, admin.client_id, admin.client_secret)
    assert signed.kid == rotated, "the second server signs with the key the first one made"
    assert await introspected(one, signed.access_token)
    third = await start_service(build, second_config)  # one more replica starting later
    assert await active_kid(TokenClient(third.channel)) == await active_kid(one) == rotated


def _shared_kek(tmp_path: Path) -> str:
    load_kek("", "", tmp_path)  # generates <tmp_path>/kek, as a local start would
    return (tmp_path / "kek").read_text().strip()


async def bearer_of(client: TokenClient, config: Any) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {await admin_token(client, config)}"),)


async def introspected(client: TokenClient, token: str) -> bool:
    return bool((await client.introspect_token(pb.IntrospectTokenRequest(token=token))).active)


async def active_kid_is(client: TokenClient, kid: str) -> bool:
    return await active_kid(client) == kid
