"""The trust follower (servers/mesh/trust.py) against a real token service: revocations arrive, the
stream resumes from its point after a break, keys reload (on the stream, on demand, on rotation),
and a follower is ready only once it has caught up with every revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from clients.credentials import CredentialsFile
from clients.tokens import TokenClient
from servers.mesh.errors import Unauthenticated
from servers.mesh.trust import MeshTrust
from servers.tokens.service import build
from shieldx.tokens.v1 import tokens_pb2 as pb
from tests.conftest import Running, StartService, test_config
from tests.support.polling import eventually
from tests.support.severable import SeverableRelay


class WatchRequests(grpc.aio.UnaryStreamClientInterceptor):
    """Records every WatchRevocations request the follower sends (its resume points)."""

    def __init__(self) -> None:
        self.after_sequences: list[int] = []

    async def intercept_unary_stream(
        self, continuation: Callable[..., Awaitable[Any]], client_call_details: Any, request: Any
    ) -> Any:
        if isinstance(request, pb.WatchRevocationsRequest):
            self.after_sequences.append(request.after_sequence)
        return await continuation(client_call_details, request)


@pytest.fixture
async def tokens(store_config: dict[str, str], tmp_path: Path, start_service: StartService) -> Running:
    config = test_config(
        tmp_path,
        service="tokens",
        settings={"argon2_opslimit": 1, "argon2_memlimit": 64 * 1024, "bootstrap": True},
        **store_config,
    )
    return await start_service(build, config)


@pytest.fixture
async def relay(tokens: Running) -> AsyncIterator[SeverableRelay]:
    relay = SeverableRelay("127.0.0.1", tokens.server.port)
    await relay.start()
    yield relay
    await relay.close()


class Follower:
    """A MeshTrust on its own channel (through `relay` if given), its loops running."""

    def __init__(self, address: str, **settings: Any) -> None:
        self.requests = WatchRequests()
        self.channel = grpc.aio.insecure_channel(address, interceptors=[self.requests])
        self.trust = MeshTrust(self.channel, audience="shieldx", leeway_seconds=0, **settings)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.trust.refresh_keys_forever()),
            asyncio.create_task(self.trust.follow_revocations_forever()),
        ]

    def stream_up(self) -> float:
        [metric] = self.trust.stream_up.collect()
        return metric.samples[0].value

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.channel.close()


@pytest.fixture
async def follow() -> AsyncIterator[Callable[..., Awaitable[Follower]]]:
    started: list[Follower] = []

    async def start(address: str, **settings: Any) -> Follower:
        follower = Follower(address, **settings)
        started.append(follower)
        follower.start()
        await asyncio.wait_for(follower.trust.wait_ready(), 20)
        return follower

    yield start
    for follower in started:
        await follower.close()


async def issue(tokens: Running) -> pb.IssueTokenResponse:
    admin = CredentialsFile.load(Path(tokens.runtime.config.data_dir) / "credentials").clients["admin"]
    return await TokenClient(tokens.channel).issue_token(
        pb.IssueTokenRequest(client_id=admin.client_id, client_secret=admin.client_secret)
    )


async def revoke(tokens: Running, token: str) -> None:
    await TokenClient(tokens.channel).revoke_token(pb.RevokeTokenRequest(token=token))


def refusal(trust: MeshTrust, token: str) -> str:
    """The reason the follower's verifier refuses `token` now, or "" if it accepts it."""
    try:
        trust.verifier.verify(token)
    except Unauthenticated as refused:
        return refused.reason
    return ""


async def test_a_revocation_reaches_the_follower_and_only_the_revoked_token_is_refused(
    tokens: Running, follow: Callable[..., Awaitable[Follower]]
) -> None:
    follower = await follow(tokens.address)
    victim, bystander = await issue(tokens), await issue(tokens)
    assert refusal(follower.trust, victim.access_token) == "" and follower.stream_up() == 1

    await revoke(tokens, victim.access_token)
    await eventually(lambda: refusal(follower.trust, victim.access_token), what="the revocation on the stream")
    assert refusal(follower.trust, victim.access_token) == "TOKEN_REVOKED"
    assert refusal(follower.trust, bystander.access_token) == ""
    assert follower.trust.sequence > 0
    assert follower.requests.after_sequences == [0], "one stream, never reopened"


async def test_after_a_break_the_stream_resumes_from_the_last_sequence_and_brings_what_was_missed(
    tokens: Running, relay: SeverableRelay, follow: Callable[..., Awaitable[Follower]]
) -> None:
    follower = await follow(relay.address)
    first, missed, later = await issue(tokens), await issue(tokens), await issue(tokens)
    await revoke(tokens, first.access_token)
    await eventually(lambda: refusal(follower.trust, first.access_token), what="the first revocation")
    resume_point = follower.trust.sequence

    relay.sever()
    await eventually(lambda: follower.stream_up() == 0, what="the follower noticing the break")
    await revoke(tokens, missed.access_token)  # while the follower cannot hear it
    assert refusal(follower.trust, missed.access_token) == ""
    relay.restore()

    await eventually(lambda: refusal(follower.trust, missed.access_token), what="the missed revocation")
    await eventually(lambda: follower.stream_up() == 1, what="the stream up again")
    assert refusal(follower.trust, first.access_token) == "TOKEN_REVOKED", "what it had is kept"
    assert follower.requests.after_sequences[0] == 0
    assert set(follower.requests.after_sequences[1:]) == {resume_point}, "every reconnect resumes where it was"
    assert follower.trust.sequence > resume_point
    await revoke(tokens, later.access_token)
    await eventually(lambda: refusal(follower.trust, later.access_token), what="live revocations after the resume")


async def test_a_follower_started_after_revocations_is_ready_only_with_them(
    tokens: Running, follow: Callable[..., Awaitable[Follower]]
) -> None:
    revoked = await issue(tokens)
    await revoke(tokens, revoked.access_token)
    follower = await follow(tokens.address)
    # No waiting: ready means caught up, so the revocation made before it started is already there.
    assert follower.trust.ready and refusal(follower.trust, revoked.access_token) == "TOKEN_REVOKED"


async def test_a_rotated_key_is_trusted_without_a_scheduled_refresh_and_a_cut_off_key_is_refused(
    tokens: Running, follow: Callable[..., Awaitable[Follower]]
) -> None:
    follower = await follow(tokens.address, refresh_seconds=3600.0)
    old = await issue(tokens)
    [old_kid] = follower.trust.verifier.kids
    client = TokenClient(tokens.channel)

    rotated = await client.rotate_signing_key(pb.RotateSigningKeyRequest())
    new = await issue(tokens)
    # Pushed on the revocation stream, or fetched on the first token naming the new key.
    assert (await follower.trust.verify(new.access_token)).jti == new.jti
    assert rotated.active_key.kid in follower.trust.verifier.kids
    assert refusal(follower.trust, old.access_token) == "", "the replaced key keeps verifying for the overlap"

    await client.rotate_signing_key(pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration(seconds=0)))
    await eventually(
        lambda: (
            old_kid not in follower.trust.verifier.kids and rotated.active_key.kid not in follower.trust.verifier.kids
        ),
        what="the emergency rotation reaching the follower without a refresh",
    )
    assert refusal(follower.trust, old.access_token) == "TOKEN_UNKNOWN_KEY"
    with pytest.raises(Unauthenticated):
        await follower.trust.verify(new.access_token)


async def test_keys_reload_on_the_refresh_interval(tokens: Running, follow: Callable[..., Awaitable[Follower]]) -> None:
    follower = await follow(tokens.address, refresh_seconds=0.05)
    follower.trust.verifier.replace_keys([])  # as if the keys were lost
    await eventually(lambda: follower.trust.verifier.kids, what="the scheduled reload")
    assert refusal(follower.trust, (await issue(tokens)).access_token) == ""
