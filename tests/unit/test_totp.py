"""TOTP: the RFC 6238 appendix B and RFC 4226 appendix D vectors, drift window, replay, provisioning."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from servers.tokens import totp
from servers.tokens.totp import TotpParameters

SEED_SHA1 = b"12345678901234567890"
SEED_SHA256 = b"12345678901234567890123456789012"
SEED_SHA512 = b"1234567890123456789012345678901234567890123456789012345678901234"
SEEDS: dict[totp.Algorithm, bytes] = {"SHA1": SEED_SHA1, "SHA256": SEED_SHA256, "SHA512": SEED_SHA512}

# RFC 6238 appendix B: (Unix time, expected 8-digit TOTP, mode).
RFC6238_VECTORS: list[tuple[int, str, totp.Algorithm]] = [
    (59, "94287082", "SHA1"),
    (59, "46119246", "SHA256"),
    (59, "90693936", "SHA512"),
    (1111111109, "07081804", "SHA1"),
    (1111111109, "68084774", "SHA256"),
    (1111111109, "25091201", "SHA512"),
    (1111111111, "14050471", "SHA1"),
    (1111111111, "67062674", "SHA256"),
    (1111111111, "99943326", "SHA512"),
    (1234567890, "89005924", "SHA1"),
    (1234567890, "91819424", "SHA256"),
    (1234567890, "93441116", "SHA512"),
    (2000000000, "69279037", "SHA1"),
    (2000000000, "90698825", "SHA256"),
    (2000000000, "38618901", "SHA512"),
    (20000000000, "65353130", "SHA1"),
    (20000000000, "77737706", "SHA256"),
    (20000000000, "47863826", "SHA512"),
]

# RFC 4226 appendix D: HOTP values for counters 0..9 with the SHA-1 seed.
RFC4226_VALUES = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]


@pytest.mark.parametrize(("at", "expected", "algorithm"), RFC6238_VECTORS)
def test_rfc6238_appendix_b_vector(at: int, expected: str, algorithm: totp.Algorithm) -> None:
    parameters = TotpParameters(digits=8, algorithm=algorithm)
    assert totp.code_at(SEEDS[algorithm], at, parameters) == expected
    assert totp.verify(SEEDS[algorithm], expected, at, parameters=parameters) == at // 30


@pytest.mark.parametrize(("counter", "expected"), list(enumerate(RFC4226_VALUES)))
def test_rfc4226_appendix_d_value(counter: int, expected: str) -> None:
    assert totp.hotp(SEED_SHA1, counter) == expected


def test_default_code_is_six_digits_of_the_same_hotp() -> None:
    assert totp.code_at(SEED_SHA1, 59) == "287082"  # step 1: RFC 4226 counter 1
    assert totp.code_at(SEED_SHA1, 59.999) == "287082"
    assert totp.code_at(SEED_SHA1, 60) == "359152"


def test_adjacent_steps_are_accepted_and_further_ones_refused() -> None:
    now = 1111111111.0
    step = int(now // 30)
    for offset in (-1, 0, 1):
        code = totp.hotp(SEED_SHA1, step + offset)
        assert totp.verify(SEED_SHA1, code, now) == step + offset
    for offset in (-2, 2):
        assert totp.verify(SEED_SHA1, totp.hotp(SEED_SHA1, step + offset), now) is None


def test_window_zero_accepts_only_the_current_step() -> None:
    now = 1111111111.0
    step = int(now // 30)
    exact = TotpParameters(window=0)
    assert totp.verify(SEED_SHA1, totp.hotp(SEED_SHA1, step), now, parameters=exact) == step
    assert totp.verify(SEED_SHA1, totp.hotp(SEED_SHA1, step - 1), now, parameters=exact) is None


def test_a_code_cannot_be_replayed() -> None:
    now = 1111111111.0
    code = totp.code_at(SEED_SHA1, now)
    used = totp.verify(SEED_SHA1, code, now)
    assert used is not None
    assert totp.verify(SEED_SHA1, code, now, last_used_step=used) is None
    assert totp.verify(SEED_SHA1, code, now + 20, last_used_step=used) is None


def test_an_older_code_is_refused_once_a_newer_one_was_used() -> None:
    now = 1111111111.0
    step = int(now // 30)
    newer = totp.verify(SEED_SHA1, totp.hotp(SEED_SHA1, step + 1), now)
    assert newer == step + 1
    assert totp.verify(SEED_SHA1, totp.hotp(SEED_SHA1, step), now, last_used_step=newer) is None


def test_the_next_code_is_accepted_after_one_was_used() -> None:
    now = 1111111111.0
    used = totp.verify(SEED_SHA1, totp.code_at(SEED_SHA1, now), now)
    assert used is not None
    assert totp.verify(SEED_SHA1, totp.code_at(SEED_SHA1, now + 30), now + 30, last_used_step=used) == used + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "１２３４５６", " 28708", "287082\n", "-28708"])
def test_malformed_codes_are_refused(code: str) -> None:
    assert totp.verify(SEED_SHA1, code, 59) is None


def test_wrong_code_is_refused() -> None:
    assert totp.verify(SEED_SHA1, "000000", 59) is None


def test_secret_base32_round_trip_and_lenient_typing() -> None:
    secret = totp.generate_secret()
    assert len(secret) == totp.SECRET_BYTES
    encoded = totp.encode_secret(secret)
    assert "=" not in encoded
    assert totp.decode_secret(encoded) == secret
    spaced = " ".join(encoded[i : i + 4] for i in range(0, len(encoded), 4)).lower()
    assert totp.decode_secret(spaced) == secret
    assert totp.encode_secret(SEED_SHA1) == "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


@pytest.mark.parametrize("text", ["", "   ", "GEZDGNB1", "!!!!"])
def test_invalid_base32_secret_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        totp.decode_secret(text)


def test_generated_secrets_differ() -> None:
    assert totp.generate_secret() != totp.generate_secret()


def test_provisioning_uri_carries_label_secret_and_parameters() -> None:
    uri = totp.provisioning_uri(SEED_SHA1, account="alice@example.com", issuer="ShieldX Mesh")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert unquote(parts.path) == "/ShieldX Mesh:alice@example.com"
    query = parse_qs(parts.query)
    assert query == {
        "secret": ["GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"],
        "issuer": ["ShieldX Mesh"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["30"],
    }


def test_provisioning_uri_escapes_a_colon_in_the_account() -> None:
    uri = totp.provisioning_uri(SEED_SHA1, account="a:b", issuer="I")
    assert urlsplit(uri).path == "/I:a%3Ab"


@pytest.mark.parametrize(
    "arguments",
    [{"digits": 5}, {"digits": 9}, {"period": 0}, {"window": -1}, {"algorithm": "MD5"}],
)
def test_unusable_parameters_are_refused(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TotpParameters(**arguments)  # type: ignore[arg-type]
