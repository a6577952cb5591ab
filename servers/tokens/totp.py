"""Time-based one-time passwords (RFC 6238 TOTP over RFC 4226 HOTP) for people's second factor.

The defaults are the ones every authenticator app understands: SHA-1, 6 digits, 30-second
steps. Verification accepts the current step and one on either side (clock drift), and
refuses any step at or before the last one accepted for the same secret, so a code that was
seen once (over a shoulder, in a log) cannot be used again: the caller stores the step that
`verify` returns and passes it back next time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

Algorithm = Literal["SHA1", "SHA256", "SHA512"]

SECRET_BYTES = 20
"""Length of a generated secret: 160 bits, as RFC 4226 recommends for HMAC-SHA-1."""

_DIGESTS = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}


@dataclass(frozen=True, slots=True)
class TotpParameters:
    """How codes are computed; must match what the authenticator app was provisioned with."""

    digits: int = 6
    """Digits per code (6 to 8)."""
    period: int = 30
    """Seconds per time step."""
    algorithm: Algorithm = "SHA1"
    """HMAC hash function."""
    window: int = 1
    """Steps accepted on either side of the current one, for clock drift."""

    def __post_init__(self) -> None:
        if not 6 <= self.digits <= 8:
            raise ValueError("digits must be between 6 and 8")
        if self.period <= 0:
            raise ValueError("period must be positive")
        if self.algorithm not in _DIGESTS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}")
        if not 0 <= self.window <= 10:
            raise ValueError("window must be between 0 and 10")


DEFAULT_PARAMETERS = TotpParameters()


def generate_secret() -> bytes:
    """A fresh random TOTP secret."""
    return secrets.token_bytes(SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    """The secret as unpadded upper-case base32, the form authenticator apps accept."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def decode_secret(text: str) -> bytes:
    """A base32 secret as people type it (any case, spaces and padding optional); ValueError if not base32."""
    compact = text.replace(" ", "").rstrip("=").upper()
    if not compact:
        raise ValueError("empty TOTP secret")
    try:
        return base64.b32decode(compact + "=" * (-len(compact) % 8))
    except ValueError:
        raise ValueError("TOTP secret is not base32") from None


def hotp(secret: bytes, counter: int, *, digits: int = 6, algorithm: Algorithm = "SHA1") -> str:
    """The RFC 4226 HOTP value of `counter`, zero-padded to `digits`."""
    mac = hmac.new(secret, struct.pack(">Q", counter), _DIGESTS[algorithm]).digest()
    offset = mac[-1] & 0x0F
    binary = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFF_FFFF
    return str(binary % 10**digits).zfill(digits)


def time_step(at: float, parameters: TotpParameters = DEFAULT_PARAMETERS) -> int:
    """The RFC 6238 time step counter for Unix time `at` (T0 = 0)."""
    return int(at // parameters.period)


def code_at(secret: bytes, at: float, parameters: TotpParameters = DEFAULT_PARAMETERS) -> str:
    """The code an authenticator shows at Unix time `at`."""
    return hotp(secret, time_step(at, parameters), digits=parameters.digits, algorithm=parameters.algorithm)


def verify(
    secret: bytes,
    code: str,
    at: float,
    *,
    last_used_step: int | None = None,
    parameters: TotpParameters = DEFAULT_PARAMETERS,
) -> int | None:
    """The time step `code` belongs to if it is valid at `at` and newer than `last_used_step`, else None.

    The caller persists the returned step as the new `last_used_step` (atomically with the
    check, so two concurrent requests cannot both spend one code). Every candidate step is
    compared, in constant time, so timing does not tell which step matched.
    """
    if len(code) != parameters.digits or not code.isascii() or not code.isdigit():
        return None
    current = time_step(at, parameters)
    matched: int | None = None
    for step in range(current - parameters.window, current + parameters.window + 1):
        if step < 0 or (last_used_step is not None and step <= last_used_step):
            continue
        expected = hotp(secret, step, digits=parameters.digits, algorithm=parameters.algorithm)
        if hmac.compare_digest(expected, code) and matched is None:
            matched = step
    return matched


def provisioning_uri(
    secret: bytes,
    *,
    account: str,
    issuer: str,
    parameters: TotpParameters = DEFAULT_PARAMETERS,
) -> str:
    """An `otpauth://totp/...` URI (the Key URI format authenticator apps scan as a QR code)."""
    if not account or not issuer:
        raise ValueError("account and issuer must not be empty")
    label = quote(issuer, safe="") + ":" + quote(account, safe="")
    query = urlencode(
        {
            "secret": encode_secret(secret),
            "issuer": issuer,
            "algorithm": parameters.algorithm,
            "digits": parameters.digits,
            "period": parameters.period,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"
