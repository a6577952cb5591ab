"""Client secrets: Argon2id at rest, a remembered fast path, and no timing hint for unknown clients."""

from __future__ import annotations

import pytest

from servers.tokens.client_secrets import MAX_SECRET_LENGTH, Argon2idCost, ClientSecretHasher

# The smallest cost libsodium allows keeps these tests fast; production uses the defaults.
CHEAP = Argon2idCost(opslimit=1, memlimit=8192)


@pytest.fixture
def hasher() -> ClientSecretHasher:
    return ClientSecretHasher(CHEAP)


def test_new_secrets_are_long_and_distinct() -> None:
    first, second = ClientSecretHasher.new_secret(), ClientSecretHasher.new_secret()
    assert first != second
    assert len(first) == 43


def test_hash_is_argon2id_with_the_configured_cost(hasher: ClientSecretHasher) -> None:
    secret_hash = hasher.hash_secret("s3cret")
    assert secret_hash.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert "s3cret" not in secret_hash
    assert hasher.hash_secret("s3cret") != secret_hash  # salted


def test_default_cost_is_owasp_minimum() -> None:
    assert Argon2idCost() == Argon2idCost(opslimit=2, memlimit=19 * 1024 * 1024)


def test_right_secret_matches_and_wrong_one_does_not(hasher: ClientSecretHasher) -> None:
    secret_hash = hasher.hash_secret("s3cret")
    assert hasher.check_secret(secret_hash, "s3cret")
    assert not hasher.check_secret(secret_hash, "s3cret ")
    assert not hasher.check_secret(secret_hash, "")
    assert not hasher.check_secret(secret_hash, "x" * (MAX_SECRET_LENGTH + 1))


def test_remembered_secret_still_refuses_a_different_one(hasher: ClientSecretHasher) -> None:
    secret_hash = hasher.hash_secret("s3cret")
    assert not hasher.remembers(secret_hash, "s3cret"), "nothing verified yet"
    assert hasher.check_secret(secret_hash, "s3cret")
    assert hasher.remembers(secret_hash, "s3cret")
    assert not hasher.remembers(secret_hash, "guess") and not hasher.remembers(secret_hash, "")
    assert hasher.check_secret(secret_hash, "s3cret")  # from memory
    assert not hasher.check_secret(secret_hash, "guess")


def test_remembered_secret_skips_argon2(hasher: ClientSecretHasher) -> None:
    secret_hash = hasher.hash_secret("s3cret")
    assert hasher.check_secret(secret_hash, "s3cret")
    before = hasher.verifications
    assert hasher.check_secret(secret_hash, "s3cret")
    assert hasher.verifications == before
    hasher.forget(secret_hash)
    assert hasher.check_secret(secret_hash, "s3cret")  # back to Argon2id
    assert hasher.verifications == before + 1


@pytest.mark.parametrize(
    "known, presented",
    [
        (True, "wrong"),
        (True, "x" * 300),  # too long to be anyone's secret: refused, after the same work
        (True, ""),
        (False, "s3cret"),
        (False, "x" * 300),
        (False, ""),
    ],
)
def test_every_refusal_costs_exactly_one_argon2_verification(
    hasher: ClientSecretHasher, known: bool, presented: str
) -> None:
    secret_hash = hasher.hash_secret("s3cret")
    assert hasher.check_secret(secret_hash, "s3cret")  # remembered: a wrong guess must still pay
    before = hasher.verifications
    assert not hasher.check_secret(secret_hash if known else None, presented)
    assert hasher.verifications == before + 1


@pytest.mark.parametrize("stored", ["", "not a hash", "$argon2id$v=19$m=8,t=1,p=1$broken", "$2b$12$bcrypt"])
def test_corrupted_stored_hash_never_matches(hasher: ClientSecretHasher, stored: str) -> None:
    assert not hasher.check_secret(stored, "s3cret")


def test_hash_refuses_empty_or_oversized_secrets(hasher: ClientSecretHasher) -> None:
    with pytest.raises(ValueError):
        hasher.hash_secret("")
    with pytest.raises(ValueError):
        hasher.hash_secret("x" * (MAX_SECRET_LENGTH + 1))


def test_cost_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        Argon2idCost(opslimit=0)
    with pytest.raises(ValueError):
        Argon2idCost(memlimit=1)
