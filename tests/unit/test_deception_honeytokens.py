"""Honeytokens: real-looking fake credentials, recognised by fingerprint and traced to their batch."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Sequence
from datetime import UTC, datetime

import nacl.signing
import numpy as np
import pytest

from servers.deception.honeytokens import (
    MAX_MINT,
    Honeytoken,
    HoneytokenKind,
    HoneytokenRegistry,
    _base64url,
    credential_fingerprint,
    honeytoken_rows,
    mint_honeytokens,
    plant_in_users,
)
from servers.deception.synthetic import ChunkPlan, DatasetKind, SyntheticDataGenerator
from servers.mesh import paseto
from servers.mesh.claims import TokenClaims, read_kid
from servers.mesh.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# The token service's own rule for client ids (servers/tokens/domain.py).
TOKEN_SERVICE_CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)


def mint(kind: HoneytokenKind, count: int = 3, seed: int = 0, usernames: Sequence[str] = ()) -> list[Honeytoken]:
    return mint_honeytokens(
        kind, count, batch_id="batch-7", rng=np.random.default_rng(seed), now=NOW, usernames=usernames
    )


def test_api_keys_look_like_the_token_services_client_credentials() -> None:
    for token in mint(HoneytokenKind.API_KEY, 20):
        assert re.fullmatch(r"svc-[a-z-]+-[0-9a-f]{6}", token.username)
        assert TOKEN_SERVICE_CLIENT_ID.fullmatch(token.username)
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token.secret)
        assert len(base64.urlsafe_b64decode(token.secret + "=")) == 32
        assert re.fullmatch(r"ht_[0-9a-f]{16}", token.honeytoken_id)
        assert token.batch_id == "batch-7" and token.row_index == -1


def test_vectorised_base64url_matches_the_standard_library() -> None:
    rng = np.random.default_rng(1)
    for width in (1, 2, 3, 16, 31, 32, 33):
        raw = rng.integers(0, 256, (50, width), dtype=np.uint8)
        expected = [base64.urlsafe_b64encode(bytes(row)).rstrip(b"=") for row in raw.tolist()]
        assert _base64url(raw).tolist() == expected


def test_bearer_honeytokens_parse_as_mesh_tokens_but_never_verify() -> None:
    token = mint(HoneytokenKind.BEARER_TOKEN, 1)[0]
    assert token.secret.startswith("v4.public.")
    footer = paseto.peek_footer(token.secret)
    assert read_kid(footer).startswith("k4.pid.")
    body = paseto.b64url_decode(token.secret.split(".")[2])
    claims = TokenClaims.from_payload(body[: -paseto.SIGNATURE_SIZE])
    assert claims.iss == "shieldx-tokens" and claims.aud == "shieldx"
    assert claims.client_id == token.username == claims.sub
    with pytest.raises(Unauthenticated) as caught:
        paseto.verify(token.secret, nacl.signing.SigningKey.generate().verify_key)
    assert caught.value.reason == paseto.TOKEN_SIGNATURE_INVALID


def test_a_presented_honeytoken_names_its_batch() -> None:
    tokens = mint(HoneytokenKind.API_KEY, 5)
    registry = HoneytokenRegistry(t.record() for t in tokens)
    hit = registry.match(tokens[3].secret, claimed_subject=tokens[3].username)
    assert hit is not None
    assert hit.record.honeytoken_id == tokens[3].honeytoken_id
    assert hit.record.batch_id == "batch-7"
    assert "batch-7" in hit.summary
    # An API key is a hit whoever claims it: the key itself is what leaked.
    assert registry.match(tokens[3].secret, claimed_subject="someone-else") is not None


def test_unregistered_and_oversized_credentials_do_not_match() -> None:
    registry = HoneytokenRegistry(t.record() for t in mint(HoneytokenKind.API_KEY))
    assert registry.match(mint(HoneytokenKind.API_KEY, seed=1)[0].secret) is None
    assert registry.match("") is None
    assert registry.match("x" * 100_000) is None


def test_the_registry_keeps_fingerprints_never_secrets() -> None:
    token = mint(HoneytokenKind.PASSWORD, 1)[0]
    record = token.record()
    assert token.secret not in repr(record)
    assert record.fingerprint == credential_fingerprint(token.secret)
    # A service that only forwards the fingerprint gets the same answer.
    registry = HoneytokenRegistry([record])
    assert registry.match_fingerprint(record.fingerprint, token.username) is not None


def test_a_password_matches_only_with_its_username() -> None:
    token = mint(HoneytokenKind.PASSWORD, 1, usernames=["dba.backup"])[0]
    assert token.username == "dba.backup"
    registry = HoneytokenRegistry([token.record()])
    assert registry.match(token.secret, "dba.backup") is not None
    assert registry.match(token.secret, "alice") is None
    assert registry.match(token.secret) is None


def test_passwords_read_like_peoples_passwords() -> None:
    for token in mint(HoneytokenKind.PASSWORD, 30):
        assert re.fullmatch(r"[A-Z][a-z]+[.\-_!@]?[a-z]+\d{2,4}[!?#$*]{0,2}", token.secret), token.secret


def test_registering_the_same_token_twice_is_harmless_but_a_clash_is_refused() -> None:
    token = mint(HoneytokenKind.API_KEY, 1)[0]
    registry = HoneytokenRegistry([token.record(), token.record()])
    assert len(registry) == 1
    other = mint(HoneytokenKind.API_KEY, 1, seed=5)[0].record()
    clash = dataclasses.replace(other, honeytoken_id=token.honeytoken_id)
    with pytest.raises(AlreadyExists) as caught:
        registry.register(clash)
    assert caught.value.reason == "HONEYTOKEN_EXISTS"


def test_registering_a_batch_with_one_clash_registers_none_of_it() -> None:
    registry = HoneytokenRegistry()
    first, second = mint(HoneytokenKind.API_KEY, 2)
    registry.register(first.record())
    fresh = mint(HoneytokenKind.API_KEY, 1, seed=9)[0].record()
    clash = dataclasses.replace(second.record(), fingerprint=first.record().fingerprint)
    with pytest.raises(AlreadyExists):
        registry.register_all([fresh, clash])
    assert len(registry) == 1
    with pytest.raises(NotFound):
        registry.get(fresh.honeytoken_id)


def test_lookup_of_an_unknown_honeytoken_is_not_found() -> None:
    with pytest.raises(NotFound) as caught:
        HoneytokenRegistry().get("ht_0000000000000000")
    assert caught.value.reason == "HONEYTOKEN_NOT_FOUND"


@pytest.mark.parametrize(
    ("count", "batch_id", "field"), [(0, "b", "count"), (MAX_MINT + 1, "b", "count"), (1, "", "batch_id")]
)
def test_bad_mint_requests_name_the_field(count: int, batch_id: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        mint_honeytokens(HoneytokenKind.API_KEY, count, batch_id=batch_id, rng=np.random.default_rng(0), now=NOW)
    assert caught.value.metadata["field"] == field


def test_planted_api_keys_are_rows_of_the_users_data_and_regenerate_identically() -> None:
    generator = SyntheticDataGenerator()
    seed, count = 31, 3000
    rows = honeytoken_rows(seed, count, 4)
    assert rows.tolist() == honeytoken_rows(seed, count, 4).tolist()
    planted = []
    for plan in [ChunkPlan(0, 0, 1500, False), ChunkPlan(1, 1500, 1500, True)]:
        columns = generator.generate_chunk(DatasetKind.USERS, seed, plan).columns
        tokens = plant_in_users(columns, row_offset=plan.row_offset, rows=rows, batch_id="b1", seed=seed, now=NOW)
        for token in tokens:
            local = token.row_index - plan.row_offset
            assert token.secret == columns["api_key"][local]
            assert token.username == columns["username"][local]
        planted += tokens
    assert [t.row_index for t in planted] == rows.tolist()
    again = plant_in_users(
        generator.generate_chunk(DatasetKind.USERS, seed, ChunkPlan(0, 0, 1500, False)).columns,
        row_offset=0,
        rows=rows,
        batch_id="b1",
        seed=seed,
        now=NOW,
    )
    assert again == [t for t in planted if t.row_index < 1500]
    registry = HoneytokenRegistry(t.record() for t in planted)
    assert all(registry.match(t.secret) is not None for t in planted)


@pytest.mark.parametrize("honeytoken_count", [-1, 11])
def test_more_honeytokens_than_rows_is_refused(honeytoken_count: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        honeytoken_rows(1, 10, honeytoken_count)
    assert caught.value.metadata["field"] == "honeytoken_count"
