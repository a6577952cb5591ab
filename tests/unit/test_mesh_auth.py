"""Mesh auth on a real server with real PASETO v4.public tokens: who gets in, and why not."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import nacl.signing
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servers.mesh import paseto
from servers.mesh.claims import TokenSigner
from tests.conftest import Running, StartServer, test_config
from tests.support.echo import echo_mount, echo_pb2, echo_pb2_grpc
from tests.support.tokens import ISSUER, TestAuthority
from tests.unit.test_mesh_server import unpack


@pytest.fixture
async def secured(start_server: StartServer, tmp_path: Path) -> tuple[Running, TestAuthority]:
    authority = TestAuthority()
    running = await start_server(
        lambda rt: [echo_mount(rt)], test_config(tmp_path, auth__enabled=True), verifier=authority.verifier
    )
    return running, authority


async def refused(
    running: Running, metadata: tuple[tuple[str, str], ...], method: str = "Echo"
) -> tuple[grpc.StatusCode, str]:
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(echo_pb2.EchoRequest(text="hi"), metadata=metadata)
    info = unpack(caught.value)["ErrorInfo"]
    return caught.value.code(), info.reason  # type: ignore[attr-defined]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def flip(token: str, part: int) -> str:
    pieces = token.split(".")
    raw = bytearray(paseto.b64url_decode(pieces[part]))
    raw[0] ^= 0x01
    pieces[part] = paseto.b64url_encode(bytes(raw))
    return ".".join(pieces)


async def test_valid_token_with_scope_is_served(secured: tuple[Running, TestAuthority]) -> None:
    running, authority = secured
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    reply = await stub.Echo(echo_pb2.EchoRequest(text="hi"), metadata=authority.metadata(["echo.read"]))
    assert reply.text == "hi"


async def test_health_reflection_and_public_rpcs_need_no_token(secured: tuple[Running, TestAuthority]) -> None:
    running, _ = secured
    health = await health_pb2_grpc.HealthStub(running.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await echo_pb2_grpc.EchoServiceStub(running.channel).Ping(echo_pb2.EchoRequest())).text == "pong"


async def test_scope_and_closed_rpcs_are_permission_denied(secured: tuple[Running, TestAuthority]) -> None:
    running, authority = secured
    assert await refused(running, authority.metadata(["credits.read"])) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "SCOPE_MISSING",
    )
    assert await refused(running, authority.metadata(["echo.read"]), "Closed") == (
        grpc.StatusCode.PERMISSION_DENIED,
        "RPC_CLOSED",
    )


def _cases(authority: TestAuthority) -> dict[str, tuple[str, str]]:
    good = authority.token(["echo.read"])
    stranger = TokenSigner(nacl.signing.SigningKey.generate(), issuer=ISSUER)
    return {
        "missing": ("", "TOKEN_MISSING"),
        "garbage": ("not-a-token", "TOKEN_MALFORMED"),
        "tampered payload": (flip(good, 2), "TOKEN_SIGNATURE_INVALID"),
        "tampered footer": (flip(good, 3), "TOKEN_MALFORMED"),
        "wrong key": (
            stranger.mint(audience="shieldx", ttl=timedelta(minutes=1), scopes=["echo.read"]).token,
            "TOKEN_UNKNOWN_KEY",
        ),
        "wrong audience": (
            authority.signer.mint(audience="elsewhere", ttl=timedelta(minutes=1), scopes=["echo.read"]).token,
            "TOKEN_AUDIENCE_MISMATCH",
        ),
        "v4.local": ("v4.local." + good.split(".", 2)[2], "TOKEN_UNSUPPORTED"),
        "v3": ("v3.public." + good.split(".", 2)[2], "TOKEN_UNSUPPORTED"),
        "padded": (good + "=", "TOKEN_MALFORMED"),
        "oversized": ("v4.public." + "A" * 6000, "TOKEN_TOO_LARGE"),
    }


async def test_bad_tokens_are_unauthenticated_with_a_reason(secured: tuple[Running, TestAuthority]) -> None:
    running, authority = secured
    cases = _cases(authority)
    for name, (token, reason) in cases.items():
        code, got = await refused(running, bearer(token) if token else ())
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
        assert got == reason, name
    health = await health_pb2_grpc.HealthStub(running.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_expired_not_yet_valid_and_revoked_tokens_are_refused(start_server: StartServer, tmp_path: Path) -> None:
    now = [1_900_000_000.0]
    authority = TestAuthority()
    authority.verifier._clock = lambda: now[0]  # the verifier's clock is injectable; move it, not the signer's
    running = await start_server(
        lambda rt: [echo_mount(rt)], test_config(tmp_path, auth__enabled=True), verifier=authority.verifier
    )
    signer = TokenSigner(authority.key, issuer=ISSUER, clock=lambda: now[0])
    token = signer.mint(audience="shieldx", ttl=timedelta(minutes=5), scopes=["echo.read"])
    stub = echo_pb2_grpc.EchoServiceStub(running.channel)
    await stub.Echo(echo_pb2.EchoRequest(text="ok"), metadata=bearer(token.token))
    now[0] += 600
    assert await refused(running, bearer(token.token)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    future = TokenSigner(authority.key, issuer=ISSUER, clock=lambda: now[0] + 3600).mint(
        audience="shieldx", ttl=timedelta(minutes=5), scopes=["echo.read"]
    )
    assert await refused(running, bearer(future.token)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_NOT_YET_VALID")
    fresh = signer.mint(audience="shieldx", ttl=timedelta(minutes=5), scopes=["echo.read"])
    await stub.Echo(echo_pb2.EchoRequest(text="ok"), metadata=bearer(fresh.token))
    authority.verifier.revoke(fresh.claims.jti, fresh.claims.exp)
    assert await refused(running, bearer(fresh.token)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
