"""PASETO interop with pyseto, an implementation nobody here wrote: it verifies the tokens our
token service issues with the key from ListPublicKeys, and our mesh verifier accepts what it signs."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nacl.signing
import pyseto
import pytest

from clients.tokens import TokenClient
from servers.mesh.errors import Unauthenticated
from servers.mesh.verifier import TokenVerifier, TrustedKey
from shieldx.tokens.v1 import tokens_pb2 as pb
from tests.integration.test_tokens_service import FAST_ARGON2, admin_token, running, tokens_config  # noqa: F401


def paserk(kind: str, key: bytes) -> str:
    """A PASERK `k4.public` or `k4.secret` string, written here (not by our code or pyseto's)."""
    return f"k4.{kind}." + base64.urlsafe_b64encode(key).rstrip(b"=").decode()


@pytest.fixture
def config(tmp_path: Path, store_config: dict[str, str]) -> Any:
    return tokens_config(tmp_path, store_config, **FAST_ARGON2)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def test_pyseto_verifies_issued_tokens_with_the_published_key(running: Any, config: Any) -> None:  # noqa: F811
    client = TokenClient(running.channel)
    token = await admin_token(client, config)
    keys = (await client.list_public_keys(pb.ListPublicKeysRequest())).keys
    active = next(k for k in keys if k.state == pb.KEY_STATE_ACTIVE)

    public = pyseto.Key.from_paserk(active.paserk)
    decoded = pyseto.decode(public, token, deserializer=json)
    assert decoded.footer == {"kid": active.kid}
    assert public.to_paserk_id() == active.kid, "our kid is the PASERK k4.pid of the key"
    claims = decoded.payload
    assert claims["aud"] == "shieldx"
    assert claims["iss"] == "shieldx-tokens"
    assert datetime.fromisoformat(claims["exp"]) > datetime.now(UTC)

    head, body = token.rsplit(".", 1)
    tampered = f"{head[:-2]}{'A' if head[-2] != 'A' else 'B'}{head[-1]}.{body}"
    with pytest.raises(pyseto.VerifyError):
        pyseto.decode(public, tampered)


def test_the_mesh_verifier_accepts_what_pyseto_signs_and_nothing_else() -> None:
    signing = nacl.signing.SigningKey.generate()
    secret = pyseto.Key.from_paserk(paserk("secret", bytes(signing) + bytes(signing.verify_key)))
    public_paserk = paserk("public", bytes(signing.verify_key))
    public = pyseto.Key.from_paserk(public_paserk)
    kid = public.to_paserk_id()
    now = datetime.now(UTC)
    claims = {
        "iss": "shieldx-tokens",
        "aud": "shieldx",
        "sub": "pyseto-client",
        "jti": uuid.uuid4().hex,
        "iat": rfc3339(now),
        "nbf": rfc3339(now),
        "exp": rfc3339(now + timedelta(minutes=5)),
        "scope": "credits.read",
    }
    token = pyseto.encode(secret, claims, footer={"kid": kid}).decode()

    verifier = TokenVerifier(
        audience="shieldx",
        keys=[TrustedKey.from_paserk(public_paserk, kid=kid)],
        issuer="shieldx-tokens",
        clock=time.time,
    )
    verified = verifier.verify(token)
    assert verified.sub == "pyseto-client"
    assert "credits.read" in verified.scope_string

    other = nacl.signing.SigningKey.generate()
    foreign_key = pyseto.Key.from_paserk(paserk("secret", bytes(other) + bytes(other.verify_key)))
    foreign = pyseto.encode(foreign_key, claims, footer={"kid": kid}).decode()
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(foreign)
    assert refused.value.reason == "TOKEN_SIGNATURE_INVALID"
