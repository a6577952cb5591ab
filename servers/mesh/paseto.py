"""PASETO v4.public tokens and PASERK k4 key serialisation on libsodium's Ed25519 (pynacl).

Only `v4.public.` is accepted: no v4.local, no other version, no algorithm negotiation. The
format layer knows nothing of claims; it returns the exact payload bytes that were signed so
the caller parses those, never a re-serialised copy. Rejected tokens raise
`servers.mesh.errors.Unauthenticated` with an UPPER_SNAKE reason.

Specifications: PASETO v4 (paseto-standard/paseto-spec, docs/01-Protocol-Versions/Version4.md),
PAE (docs/01-Protocol-Versions/Common.md) and PASERK (paseto-standard/paserk, types/public.md,
types/secret.md, types/pid.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Callable

import nacl.bindings
import nacl.exceptions
import nacl.signing

from servers.mesh.errors import Unauthenticated

HEADER = "v4.public."
"""The only header this module signs or accepts."""

SIGNATURE_SIZE = 64
"""Bytes of an Ed25519 signature, appended to the payload inside the token body."""

PUBLIC_KEY_SIZE = 32
"""Bytes of an Ed25519 public key."""

SECRET_KEY_SIZE = 64
"""Bytes of a libsodium Ed25519 secret key: the 32-byte seed followed by the public key."""

DEFAULT_MAX_TOKEN_LENGTH = 4096
"""Longest token string accepted by default; longer ones are refused before any decoding.

ShieldX tokens are a few hundred bytes. The limit stays well under gRPC's soft metadata limit
(8 KiB for all headers), above which the transport itself refuses requests at random with
RESOURCE_EXHAUSTED before any interceptor runs; a token between the two is refused here,
every time, with TOKEN_TOO_LARGE."""

TOKEN_MALFORMED = "TOKEN_MALFORMED"
"""Reason: not a well-formed v4.public token (bad base64url, missing parts, too short)."""

TOKEN_UNSUPPORTED = "TOKEN_UNSUPPORTED"
"""Reason: a PASETO of another version or purpose (v4.local, v3.*, ...)."""

TOKEN_TOO_LARGE = "TOKEN_TOO_LARGE"
"""Reason: the token is longer than the configured maximum."""

TOKEN_SIGNATURE_INVALID = "TOKEN_SIGNATURE_INVALID"
"""Reason: the signature does not verify under the given key and implicit assertion."""

PASERK_PUBLIC = "k4.public."
PASERK_SECRET = "k4.secret."
PASERK_PID = "k4.pid."

_HEADER_BYTES = HEADER.encode("ascii")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_BASE64URL_VALUES = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# Minimum body: an empty payload still carries a 64-byte signature (86 base64url characters).
_MIN_BODY_CHARS = 86


class InvalidPaserk(ValueError):
    """A PASERK string or raw key that is not a valid k4 key of the expected type."""


def pae(*pieces: bytes) -> bytes:
    """Pre-Authentication Encoding: LE64(count), then LE64(len) || piece for each piece."""
    out = [_le64(len(pieces))]
    for piece in pieces:
        out.append(_le64(len(piece)))
        out.append(piece)
    return b"".join(out)


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as PASETO and PASERK write it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: the alphabet only, no `=`, canonical trailing bits.

    Raises ValueError on anything a conforming encoder would not have produced, so one
    token has exactly one string form (no malleable re-encodings of the same bytes).
    """
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not unpadded base64url")
    remainder = len(text) % 4
    if remainder == 1:
        raise ValueError("impossible base64url length")
    if remainder:
        # The last character carries 2 (remainder 3) or 4 (remainder 2) unused low bits;
        # a canonical encoder leaves them zero.
        unused_mask = 0b1111 if remainder == 2 else 0b11
        if _BASE64URL_VALUES[text[-1]] & unused_mask:
            raise ValueError("non-canonical base64url trailing bits")
    padded = (text + "=" * (-remainder % 4)).encode("ascii").translate(_URLSAFE_TO_STANDARD)
    return binascii.a2b_base64(padded)


def sign(
    secret_key: nacl.signing.SigningKey,
    payload: bytes,
    footer: bytes = b"",
    implicit: bytes = b"",
) -> str:
    """A `v4.public.` token carrying `payload` (and `footer`, if any), signed with `secret_key`.

    The implicit assertion is signed but not carried: the verifier must supply the same bytes.
    """
    signed_message = pae(_HEADER_BYTES, payload, footer, implicit)
    signature = secret_key.sign(signed_message).signature
    token = HEADER + b64url_encode(payload + signature)
    if footer:
        token += "." + b64url_encode(footer)
    return token


def verify(
    token: str,
    public_key: nacl.signing.VerifyKey,
    implicit: bytes = b"",
    *,
    max_length: int = DEFAULT_MAX_TOKEN_LENGTH,
) -> tuple[bytes, bytes]:
    """Check a `v4.public.` token's signature; return the signed `(payload, footer)` bytes.

    Raises Unauthenticated with reason TOKEN_TOO_LARGE, TOKEN_UNSUPPORTED, TOKEN_MALFORMED
    or TOKEN_SIGNATURE_INVALID. The footer is authenticated but not compared with an
    expectation; callers that need a particular footer check the returned bytes.
    """
    body, footer = _split(token, max_length)
    return _verified(body, footer, public_key, implicit)


def verify_by_footer(
    token: str,
    key_for: Callable[[bytes], nacl.signing.VerifyKey],
    implicit: bytes = b"",
    *,
    max_length: int = DEFAULT_MAX_TOKEN_LENGTH,
) -> tuple[bytes, bytes]:
    """Like `verify`, with the key chosen by `key_for(footer)` from the not yet trusted footer.

    The token is decoded once; `key_for` typically reads the `kid` and raises Unauthenticated
    for an unknown one. Nothing in the footer is trusted until the signature has verified.
    """
    body, footer = _split(token, max_length)
    return _verified(body, footer, key_for(footer), implicit)


def _verified(body: bytes, footer: bytes, public_key: nacl.signing.VerifyKey, implicit: bytes) -> tuple[bytes, bytes]:
    payload, signature = body[:-SIGNATURE_SIZE], body[-SIGNATURE_SIZE:]
    signed_message = pae(_HEADER_BYTES, payload, footer, implicit)
    try:
        public_key.verify(signed_message, signature)
    except nacl.exceptions.BadSignatureError:
        raise Unauthenticated("token signature does not verify", reason=TOKEN_SIGNATURE_INVALID) from None
    return payload, footer


def peek_footer(token: str, *, max_length: int = DEFAULT_MAX_TOKEN_LENGTH) -> bytes:
    """The footer bytes of a well-formed `v4.public.` token, NOT yet authenticated.

    Lets a verifier read the key id before choosing the key; trust nothing in it until
    `verify` has succeeded with the key it names.
    """
    return _split(token, max_length)[1]


def _split(token: str, max_length: int) -> tuple[bytes, bytes]:
    if len(token) > max_length:
        raise Unauthenticated(f"token longer than {max_length} characters", reason=TOKEN_TOO_LARGE)
    if not token.startswith(HEADER):
        raise Unauthenticated("only v4.public tokens are accepted", reason=_wrong_header_reason(token))
    rest = token[len(HEADER) :]
    encoded_body, dot, encoded_footer = rest.partition(".")
    if dot and not encoded_footer:
        # An empty footer is written without the dot; accepting both would make tokens malleable.
        raise Unauthenticated("token has an empty footer part", reason=TOKEN_MALFORMED)
    if len(encoded_body) < _MIN_BODY_CHARS:
        raise Unauthenticated("token body too short to hold a signature", reason=TOKEN_MALFORMED)
    try:
        body = b64url_decode(encoded_body)
        footer = b64url_decode(encoded_footer)
    except ValueError:
        # A '.' inside the footer part lands here too: it is outside the base64url alphabet.
        raise Unauthenticated("token is not strict base64url", reason=TOKEN_MALFORMED) from None
    return body, footer


def _wrong_header_reason(token: str) -> str:
    # "v3.public.x" or "v4.local.x" is a PASETO we deliberately refuse; anything else is junk.
    parts = token.split(".", 2)
    is_paseto = len(parts) == 3 and re.fullmatch(r"v\d+", parts[0]) and parts[1] in ("local", "public")
    return TOKEN_UNSUPPORTED if is_paseto else TOKEN_MALFORMED


def _le64(n: int) -> bytes:
    # PAE clears the top bit so that languages without unsigned integers agree.
    return struct.pack("<Q", n & 0x7FFF_FFFF_FFFF_FFFF)


# --- PASERK k4 -----------------------------------------------------------------------------


def paserk_public(public_key: nacl.signing.VerifyKey | bytes) -> str:
    """The `k4.public.` PASERK of an Ed25519 public key."""
    raw = _raw_public_key(public_key)
    return PASERK_PUBLIC + b64url_encode(raw)


def paserk_secret(secret_key: nacl.signing.SigningKey | bytes) -> str:
    """The `k4.secret.` PASERK of an Ed25519 secret key (seed || public key, 64 bytes).

    A SigningKey is serialised in that 64-byte form; raw bytes must already be 64 bytes.
    """
    raw = _raw_secret_key(secret_key)
    return PASERK_SECRET + b64url_encode(raw)


def paserk_pid(public_key: nacl.signing.VerifyKey | bytes) -> str:
    """The `k4.pid.` key id of a public key: BLAKE2b-264 over `k4.pid.` || its k4.public PASERK."""
    digest = hashlib.blake2b(
        PASERK_PID.encode("ascii") + paserk_public(public_key).encode("ascii"), digest_size=33
    ).digest()
    return PASERK_PID + b64url_encode(digest)


def parse_paserk_public(paserk: str) -> nacl.signing.VerifyKey:
    """The public key in a `k4.public.` PASERK; InvalidPaserk for anything else."""
    raw = _paserk_data(paserk, PASERK_PUBLIC, PUBLIC_KEY_SIZE)
    return nacl.signing.VerifyKey(raw)


def parse_paserk_secret(paserk: str) -> nacl.signing.SigningKey:
    """The secret key in a `k4.secret.` PASERK; InvalidPaserk for anything else.

    The embedded public half must be the one derived from the seed, so a spliced key
    (someone else's public key next to our seed) is refused rather than signing garbage.
    """
    raw = _paserk_data(paserk, PASERK_SECRET, SECRET_KEY_SIZE)
    signing_key = nacl.signing.SigningKey(raw[:32])
    if bytes(signing_key.verify_key) != raw[32:]:
        raise InvalidPaserk("k4.secret public half does not match its seed")
    return signing_key


def _paserk_data(paserk: str, prefix: str, size: int) -> bytes:
    if not paserk.startswith(prefix):
        raise InvalidPaserk(f"expected a {prefix.rstrip('.')} PASERK")
    try:
        raw = b64url_decode(paserk[len(prefix) :])
    except ValueError as exc:
        raise InvalidPaserk(f"{prefix.rstrip('.')} data: {exc}") from None
    if len(raw) != size:
        raise InvalidPaserk(f"{prefix.rstrip('.')} key must be {size} bytes, got {len(raw)}")
    return raw


def _raw_public_key(public_key: nacl.signing.VerifyKey | bytes) -> bytes:
    raw = bytes(public_key)
    if len(raw) != PUBLIC_KEY_SIZE:
        raise InvalidPaserk(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    return raw


def _raw_secret_key(secret_key: nacl.signing.SigningKey | bytes) -> bytes:
    if isinstance(secret_key, nacl.signing.SigningKey):
        return bytes(secret_key) + bytes(secret_key.verify_key)
    raw = bytes(secret_key)
    if len(raw) != SECRET_KEY_SIZE:
        raise InvalidPaserk(f"an Ed25519 secret key is {SECRET_KEY_SIZE} bytes, got {len(raw)}")
    seed_public = nacl.bindings.crypto_sign_seed_keypair(raw[:32])[0]
    if seed_public != raw[32:]:
        raise InvalidPaserk("Ed25519 secret key public half does not match its seed")
    return raw
