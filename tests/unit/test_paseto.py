"""PASETO v4.public and PASERK k4 conformance: the public test vectors, then tampering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from servers.mesh import paseto
from servers.mesh.errors import Unauthenticated

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "paseto"


def _load(name: str) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())["tests"]
    return tests


V4 = _load("v4.json")
PUBLIC_SUCCESS = [t for t in V4 if t["name"].startswith("4-S-")]
EXPECT_FAIL = [t for t in V4 if t["name"].startswith("4-F-")]
# The key of the v4.public success vectors: every expect-fail case must be refused under it.
VECTOR_PUBLIC_KEY = nacl.signing.VerifyKey(bytes.fromhex(PUBLIC_SUCCESS[0]["public-key"]))
VECTOR_SECRET_KEY = nacl.signing.SigningKey(bytes.fromhex(PUBLIC_SUCCESS[0]["secret-key-seed"]))


def _ids(tests: list[dict[str, Any]]) -> list[str]:
    return [t["name"] for t in tests]


def test_vector_files_hold_the_cases_this_suite_relies_on() -> None:
    assert _ids(PUBLIC_SUCCESS) == ["4-S-1", "4-S-2", "4-S-3"]
    assert _ids(EXPECT_FAIL) == ["4-F-1", "4-F-2", "4-F-3", "4-F-4", "4-F-5"]


@pytest.mark.parametrize("vector", PUBLIC_SUCCESS, ids=_ids(PUBLIC_SUCCESS))
def test_success_vector_is_reproduced_byte_for_byte(vector: dict[str, Any]) -> None:
    seed = bytes.fromhex(vector["secret-key-seed"])
    secret_key = nacl.signing.SigningKey(seed)
    assert bytes(secret_key) + bytes(secret_key.verify_key) == bytes.fromhex(vector["secret-key"])
    token = paseto.sign(
        secret_key,
        vector["payload"].encode(),
        vector["footer"].encode(),
        vector["implicit-assertion"].encode(),
    )
    assert token == vector["token"]


@pytest.mark.parametrize("vector", PUBLIC_SUCCESS, ids=_ids(PUBLIC_SUCCESS))
def test_success_vector_verifies_and_returns_the_signed_bytes(vector: dict[str, Any]) -> None:
    public_key = nacl.signing.VerifyKey(bytes.fromhex(vector["public-key"]))
    payload, footer = paseto.verify(vector["token"], public_key, vector["implicit-assertion"].encode())
    assert payload == vector["payload"].encode()
    assert footer == vector["footer"].encode()
    assert paseto.peek_footer(vector["token"]) == vector["footer"].encode()


def test_implicit_assertion_is_bound_to_the_signature() -> None:
    vector = PUBLIC_SUCCESS[2]
    assert vector["implicit-assertion"]
    with pytest.raises(Unauthenticated) as caught:
        paseto.verify(vector["token"], VECTOR_PUBLIC_KEY, b"")
    assert caught.value.reason == paseto.TOKEN_SIGNATURE_INVALID


@pytest.mark.parametrize("vector", EXPECT_FAIL, ids=_ids(EXPECT_FAIL))
def test_expect_fail_vector_is_refused_by_a_v4_public_verifier(vector: dict[str, Any]) -> None:
    # 4-F-1: a v4.local token presented with the v4.public key; 4-F-2: a v4.public token
    # whose "key" is a v4.local symmetric key (it must not verify under it, nor under the
    # real public key); 4-F-3: v3.local; 4-F-4/5: v4.local, 4-F-5 also padded with '='.
    implicit = vector["implicit-assertion"].encode()
    candidate_keys = [VECTOR_PUBLIC_KEY]
    if "key" in vector:
        candidate_keys.append(nacl.signing.VerifyKey(bytes.fromhex(vector["key"])))
    for key in candidate_keys:
        with pytest.raises(Unauthenticated) as caught:
            paseto.verify(vector["token"], key, implicit)
        assert caught.value.reason in {
            paseto.TOKEN_UNSUPPORTED,
            paseto.TOKEN_MALFORMED,
            paseto.TOKEN_SIGNATURE_INVALID,
        }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("4-F-1", paseto.TOKEN_UNSUPPORTED),
        ("4-F-2", paseto.TOKEN_SIGNATURE_INVALID),
        ("4-F-3", paseto.TOKEN_UNSUPPORTED),
        ("4-F-4", paseto.TOKEN_UNSUPPORTED),
        ("4-F-5", paseto.TOKEN_UNSUPPORTED),
    ],
)
def test_expect_fail_vector_is_refused_for_the_right_reason(name: str, reason: str) -> None:
    vector = next(t for t in EXPECT_FAIL if t["name"] == name)
    with pytest.raises(Unauthenticated) as caught:
        paseto.verify(vector["token"], VECTOR_PUBLIC_KEY, vector["implicit-assertion"].encode())
    assert caught.value.reason == reason


# --- PASERK ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _load("k4.public.json"), ids=_ids(_load("k4.public.json")))
def test_k4_public_vector(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["key"])
    if vector["expect-fail"]:
        with pytest.raises(paseto.InvalidPaserk):
            paseto.paserk_public(raw)
        return
    assert paseto.paserk_public(raw) == vector["paserk"]
    assert paseto.paserk_public(nacl.signing.VerifyKey(raw)) == vector["paserk"]
    assert bytes(paseto.parse_paserk_public(vector["paserk"])) == raw


@pytest.mark.parametrize("vector", _load("k4.secret.json"), ids=_ids(_load("k4.secret.json")))
def test_k4_secret_vector(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["key"])
    if vector["expect-fail"]:
        with pytest.raises(paseto.InvalidPaserk):
            paseto.paserk_secret(raw)
        return
    seed_key = nacl.signing.SigningKey(bytes.fromhex(vector["secret-key-seed"]))
    assert bytes(seed_key.verify_key).hex() == vector["public-key"]
    assert paseto.paserk_secret(raw) == vector["paserk"]
    assert paseto.paserk_secret(seed_key) == vector["paserk"]
    parsed = paseto.parse_paserk_secret(vector["paserk"])
    assert bytes(parsed) + bytes(parsed.verify_key) == raw


@pytest.mark.parametrize("vector", _load("k4.pid.json"), ids=_ids(_load("k4.pid.json")))
def test_k4_pid_vector(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["key"])
    if vector["expect-fail"]:
        with pytest.raises(paseto.InvalidPaserk):
            paseto.paserk_pid(raw)
        return
    assert paseto.paserk_pid(raw) == vector["paserk"]


@pytest.mark.parametrize(
    "paserk",
    [
        "k3.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "k4.secret.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
        "k4.public.AAAA",
        "k4.public.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+",
    ],
)
def test_malformed_public_paserk_is_refused(paserk: str) -> None:
    with pytest.raises(paseto.InvalidPaserk):
        paseto.parse_paserk_public(paserk)


def test_secret_paserk_with_a_foreign_public_half_is_refused() -> None:
    other = nacl.signing.SigningKey.generate()
    raw = bytes(VECTOR_SECRET_KEY) + bytes(other.verify_key)
    with pytest.raises(paseto.InvalidPaserk):
        paseto.parse_paserk_secret(paseto.PASERK_SECRET + paseto.b64url_encode(raw))
    with pytest.raises(paseto.InvalidPaserk):
        paseto.paserk_secret(raw)


# --- tampering ---------------------------------------------------------------------------------


def _signed(footer: bytes = b'{"kid":"k"}', payload: bytes = b'{"exp":"2030-01-01T00:00:00Z"}') -> str:
    return paseto.sign(VECTOR_SECRET_KEY, payload, footer)


def _reason_of(token: str, **kwargs: Any) -> str:
    with pytest.raises(Unauthenticated) as caught:
        paseto.verify(token, VECTOR_PUBLIC_KEY, **kwargs)
    return caught.value.reason


def _flip_char(text: str, index: int) -> str:
    replacement = "B" if text[index] != "B" else "C"
    return text[:index] + replacement + text[index + 1 :]


def test_flipping_any_payload_byte_breaks_the_signature() -> None:
    token = _signed()
    body = token[len(paseto.HEADER) :].split(".")[0]
    raw = paseto.b64url_decode(body)
    for index in range(len(raw) - paseto.SIGNATURE_SIZE):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        forged = paseto.HEADER + paseto.b64url_encode(bytes(tampered)) + token[len(paseto.HEADER) + len(body) :]
        assert _reason_of(forged) == paseto.TOKEN_SIGNATURE_INVALID


def test_flipping_any_signature_byte_breaks_the_signature() -> None:
    token = _signed(footer=b"")
    raw = paseto.b64url_decode(token[len(paseto.HEADER) :])
    for index in range(len(raw) - paseto.SIGNATURE_SIZE, len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x80
        assert _reason_of(paseto.HEADER + paseto.b64url_encode(bytes(tampered))) == (paseto.TOKEN_SIGNATURE_INVALID)


def test_tampered_footer_breaks_the_signature() -> None:
    token = _signed(footer=b'{"kid":"a"}')
    forged = token.rsplit(".", 1)[0] + "." + paseto.b64url_encode(b'{"kid":"b"}')
    assert _reason_of(forged) == paseto.TOKEN_SIGNATURE_INVALID


def test_removed_or_added_footer_breaks_the_signature() -> None:
    with_footer = _signed(footer=b'{"kid":"a"}')
    without_footer = _signed(footer=b"")
    assert _reason_of(with_footer.rsplit(".", 1)[0]) == paseto.TOKEN_SIGNATURE_INVALID
    assert _reason_of(without_footer + "." + paseto.b64url_encode(b"x")) == paseto.TOKEN_SIGNATURE_INVALID


def test_wrong_key_does_not_verify() -> None:
    other = nacl.signing.SigningKey.generate().verify_key
    with pytest.raises(Unauthenticated) as caught:
        paseto.verify(_signed(), other)
    assert caught.value.reason == paseto.TOKEN_SIGNATURE_INVALID


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: t + "=", id="padding-after-footer"),
        pytest.param(lambda t: t.replace(".", "=.", 2).replace("=.", ".", 1), id="padding-after-body"),
        pytest.param(lambda t: t + ".", id="trailing-dot"),
        pytest.param(lambda t: t + ".eyJ9", id="fifth-part"),
        pytest.param(lambda t: t.replace("_", "/").replace("-", "+") + "+/", id="standard-alphabet"),
        pytest.param(lambda t: t[:20] + " " + t[20:], id="space"),
        pytest.param(lambda t: t[:20] + "é" + t[20:], id="non-ascii"),
        pytest.param(lambda t: paseto.HEADER + "AAAA", id="too-short-for-a-signature"),
        pytest.param(lambda t: paseto.HEADER, id="empty-body"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "Bearer " + t, id="scheme-prefix"),
        pytest.param(lambda t: t.upper(), id="upper-case-header"),
    ],
)
def test_malformed_token_is_refused(mutate: Any) -> None:
    assert _reason_of(mutate(_signed())) == paseto.TOKEN_MALFORMED


def test_body_of_impossible_base64_length_is_malformed() -> None:
    token = _signed(footer=b"")
    body_length = len(token) - len(paseto.HEADER)
    # One character past a multiple of four encodes 6 bits, which no encoder writes.
    extra = "A" * ((1 - body_length) % 4 or 4)
    assert (body_length + len(extra)) % 4 == 1
    assert _reason_of(token + extra) == paseto.TOKEN_MALFORMED


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.mark.parametrize("payload", [b"{} ", b"{}  "], ids=["2-mod-4", "3-mod-4"])
def test_non_canonical_trailing_bits_are_refused(payload: bytes) -> None:
    # A body whose length is 2 or 3 mod 4 leaves unused low bits in its last character;
    # setting them decodes to the same bytes, so accepting it would make tokens malleable.
    token = _signed(footer=b"", payload=payload)
    body = token[len(paseto.HEADER) :]
    assert len(body) % 4 in (2, 3)
    sloppy = body[:-1] + _ALPHABET[_ALPHABET.index(body[-1]) | 1]
    assert sloppy != body
    assert _reason_of(paseto.HEADER + sloppy) == paseto.TOKEN_MALFORMED


def test_footer_with_non_canonical_trailing_bits_is_refused() -> None:
    token = _signed(footer=b"ab")  # "YWI": 3 chars, 2 unused bits
    assert token.endswith(".YWI")
    assert _reason_of(token[:-1] + "J") == paseto.TOKEN_MALFORMED


@pytest.mark.parametrize("header", ["v4.local.", "v3.public.", "v3.local.", "v2.public.", "v1.local.", "v5.public."])
def test_other_versions_and_purposes_are_unsupported(header: str) -> None:
    token = header + _signed()[len(paseto.HEADER) :]
    assert _reason_of(token) == paseto.TOKEN_UNSUPPORTED


def test_oversized_token_is_refused_before_decoding() -> None:
    huge = paseto.HEADER + "A" * paseto.DEFAULT_MAX_TOKEN_LENGTH
    assert _reason_of(huge) == paseto.TOKEN_TOO_LARGE
    # Junk of the same size is refused the same way: the length check comes first.
    assert _reason_of("!" * (paseto.DEFAULT_MAX_TOKEN_LENGTH + 1)) == paseto.TOKEN_TOO_LARGE


def test_maximum_length_is_configurable() -> None:
    token = _signed()
    assert paseto.verify(token, VECTOR_PUBLIC_KEY, max_length=len(token))[1] == b'{"kid":"k"}'
    assert _reason_of(token, max_length=len(token) - 1) == paseto.TOKEN_TOO_LARGE


def test_round_trip_of_arbitrary_bytes() -> None:
    payload = bytes(range(256))
    token = paseto.sign(VECTOR_SECRET_KEY, payload, b"\x00\xff", b"context")
    assert paseto.verify(token, VECTOR_PUBLIC_KEY, b"context") == (payload, b"\x00\xff")


def test_pae_matches_the_specification_examples() -> None:
    # From the PASETO specification, Common.md.
    assert paseto.pae() == b"\x00" * 8
    assert paseto.pae(b"") == b"\x01" + b"\x00" * 7 + b"\x00" * 8
    assert paseto.pae(b"test") == (b"\x01" + b"\x00" * 7 + b"\x04" + b"\x00" * 7 + b"test")


def test_strict_base64url_decoder() -> None:
    assert paseto.b64url_decode("") == b""
    assert paseto.b64url_decode("YQ") == b"a"
    for bad in ("Y", "YR", "YQ=", "YQ==", "Y+", "Y/", "YQ\n", "YQ.", "====="):
        with pytest.raises(ValueError):
            paseto.b64url_decode(bad)


def test_verify_by_footer_picks_the_key_from_the_footer() -> None:
    token = _signed(footer=b'{"kid":"vector"}')
    seen: list[bytes] = []

    def key_for(footer: bytes) -> nacl.signing.VerifyKey:
        seen.append(footer)
        return VECTOR_PUBLIC_KEY

    assert paseto.verify_by_footer(token, key_for)[1] == b'{"kid":"vector"}'
    assert seen == [b'{"kid":"vector"}']


def test_verify_by_footer_lets_the_key_chooser_refuse() -> None:
    def unknown(footer: bytes) -> nacl.signing.VerifyKey:
        raise Unauthenticated("no such key", reason="TOKEN_UNKNOWN_KEY")

    with pytest.raises(Unauthenticated) as caught:
        paseto.verify_by_footer(_signed(), unknown)
    assert caught.value.reason == "TOKEN_UNKNOWN_KEY"


def test_verify_by_footer_checks_the_format_before_asking_for_a_key() -> None:
    def never(footer: bytes) -> nacl.signing.VerifyKey:
        raise AssertionError("asked for a key for a malformed token")

    with pytest.raises(Unauthenticated) as caught:
        paseto.verify_by_footer(_signed() + "=", never)
    assert caught.value.reason == paseto.TOKEN_MALFORMED
