"""Token claims: what a ShieldX bearer token says, how it is encoded, and the signer that mints it.

A token is a PASETO v4.public whose footer is `{"kid": "k4.pid..."}` and whose payload is a
JSON object of registered claims (iss, sub, aud, exp, nbf, iat, jti as RFC 3339 times and
strings) plus `scope` (space-separated, RFC 8693 / RFC 6749 section 3.3) and `client_id`.
Verification lives in `servers.mesh.verifier`.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nacl.signing

from servers.mesh import paseto
from servers.mesh.errors import Unauthenticated

# Every reason a bearer token can be refused for; the format-level ones come from `paseto`.
TOKEN_MALFORMED = paseto.TOKEN_MALFORMED
"""Reason: not a well-formed token, or its footer or claims do not parse."""
TOKEN_UNSUPPORTED = paseto.TOKEN_UNSUPPORTED
"""Reason: a PASETO of another version or purpose than v4.public."""
TOKEN_TOO_LARGE = paseto.TOKEN_TOO_LARGE
"""Reason: longer than the verifier's maximum token length."""
TOKEN_UNKNOWN_KEY = "TOKEN_UNKNOWN_KEY"
"""Reason: the footer names a key id this server does not (or no longer) trust."""
TOKEN_KEY_INACTIVE = "TOKEN_KEY_INACTIVE"
"""Reason: the signing key is known but outside its published validity window (e.g. retired)."""
TOKEN_SIGNATURE_INVALID = paseto.TOKEN_SIGNATURE_INVALID
"""Reason: the signature does not verify under the key the footer names."""
TOKEN_EXPIRED = "TOKEN_EXPIRED"
"""Reason: `exp` has passed (beyond the leeway)."""
TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
"""Reason: `nbf` lies in the future (beyond the leeway)."""
TOKEN_AUDIENCE_MISMATCH = "TOKEN_AUDIENCE_MISMATCH"
"""Reason: `aud` is not an audience this server accepts."""
TOKEN_ISSUER_MISMATCH = "TOKEN_ISSUER_MISMATCH"
"""Reason: `iss` is not the issuer this server trusts."""
TOKEN_REVOKED = "TOKEN_REVOKED"
"""Reason: the token's `jti` was revoked."""

DEFAULT_LEEWAY = timedelta(seconds=30)
"""Clock skew tolerated between the issuer and a verifier by default."""

DEFAULT_CACHE_SIZE = 10_000
"""Verified tokens remembered per verifier by default."""

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")
_STRING_CLAIMS = ("iss", "sub", "aud", "jti", "client_id", "scope")
_TIME_CLAIMS = ("exp", "nbf", "iat")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time (offset required, fractional seconds allowed) as an aware UTC datetime.

    Raises ValueError for anything else, including date-only and offset-less ISO 8601 forms
    that `datetime.fromisoformat` would accept. A leap second (`:60`) is read as the next
    second, since `datetime` cannot represent it.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time: {text[:40]!r}")
    leap = match.group(6) == "60"
    if leap:
        text = text[: match.start(6)] + "59" + text[match.end(6) :]
    if match.group(8) == "z":
        text = text[:-1] + "Z"  # fromisoformat (3.11) knows 'Z' and any separator, not 'z'
    try:
        moment = datetime.fromisoformat(text)
        if leap:
            moment += timedelta(seconds=1)
        return moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"date-time out of range: {text[:40]!r}") from None


def format_rfc3339(moment: datetime) -> str:
    """`moment` in UTC as RFC 3339, e.g. `2030-01-01T00:00:00+00:00` (microseconds only if any)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: a token time needs a time zone")
    utc = moment.astimezone(UTC)
    return utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")


def parse_scope(text: str) -> frozenset[str]:
    """The scopes of a space-separated `scope` string (RFC 6749 section 3.3); ValueError if malformed."""
    if text == "":
        return frozenset()
    scopes = text.split(" ")
    for scope in scopes:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(f"invalid scope token {scope[:40]!r}")
    return frozenset(scopes)


def format_scope(scopes: Iterable[str]) -> str:
    """Scopes as one space-separated string, sorted so equal sets give equal strings."""
    ordered = sorted(set(scopes))
    for scope in ordered:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(f"invalid scope token {scope[:40]!r}")
    return " ".join(ordered)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The claims of a verified token, as the issuer signed them."""

    aud: str
    """Audience: the service (or mesh) the token is meant for."""
    exp: datetime
    """Expiry (aware, UTC); the token is refused from this moment on, give or take the leeway."""
    jti: str
    """Unique token id; revocations name it."""
    iss: str = ""
    """Issuer: who minted the token ("" if the claim is absent)."""
    sub: str = ""
    """Subject: the workload or person the token speaks for ("" if absent)."""
    nbf: datetime | None = None
    """Not before (aware, UTC): the token is refused until then, give or take the leeway."""
    iat: datetime | None = None
    """Issued at (aware, UTC)."""
    scope: frozenset[str] = frozenset()
    """Granted scopes (the `scope` claim split on spaces)."""
    client_id: str = ""
    """The token service client the token was issued to ("" if absent)."""

    @property
    def scope_string(self) -> str:
        """The scopes as the space-separated string RFC 7662 introspection reports."""
        return format_scope(self.scope)

    def has_scope(self, scope: str) -> bool:
        """True if the token grants `scope`."""
        return scope in self.scope

    def to_payload(self) -> bytes:
        """The JSON payload bytes to sign (empty or absent optional claims are left out)."""
        document: dict[str, str] = {}
        if self.iss:
            document["iss"] = self.iss
        if self.sub:
            document["sub"] = self.sub
        document["aud"] = self.aud
        document["exp"] = format_rfc3339(self.exp)
        if self.nbf is not None:
            document["nbf"] = format_rfc3339(self.nbf)
        if self.iat is not None:
            document["iat"] = format_rfc3339(self.iat)
        document["jti"] = self.jti
        if self.scope:
            document["scope"] = self.scope_string
        if self.client_id:
            document["client_id"] = self.client_id
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_payload(cls, payload: bytes) -> TokenClaims:
        """Parse the signed payload bytes; Unauthenticated(TOKEN_MALFORMED) if they are not valid claims.

        Unknown claims are ignored; duplicate keys, non-objects, wrong types and a missing
        `exp`, `aud` or `jti` are refused.
        """
        try:
            document = _STRICT_JSON.decode(payload.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise malformed(f"payload is not a JSON object: {exc}") from None
        if not isinstance(document, dict):
            raise malformed("payload is not a JSON object")
        return _claims_from_document(document)


def _claims_from_document(document: dict[str, Any]) -> TokenClaims:
    for name in _STRING_CLAIMS + _TIME_CLAIMS:
        if name in document and not isinstance(document[name], str):
            raise malformed(f"claim {name!r} must be a string")
    for name in ("exp", "aud", "jti"):
        if name not in document:
            raise malformed(f"claim {name!r} is required")
    if not document["jti"]:
        raise malformed("claim 'jti' must not be empty")
    try:
        times = {name: parse_rfc3339(document[name]) for name in _TIME_CLAIMS if name in document}
        scope = parse_scope(document.get("scope", ""))
    except ValueError as exc:
        raise malformed(str(exc)) from None
    return TokenClaims(
        aud=document["aud"],
        exp=times["exp"],
        jti=document["jti"],
        iss=document.get("iss", ""),
        sub=document.get("sub", ""),
        nbf=times.get("nbf"),
        iat=times.get("iat"),
        scope=scope,
        client_id=document.get("client_id", ""),
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers could disagree on which duplicate wins; refusing them closes that gap.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key[:40]!r}")
        document[key] = value
    return document


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# One decoder for every token: building a JSONDecoder per call costs more than the decoding.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)


def malformed(message: str) -> Unauthenticated:
    """The refusal of a token whose footer or claims do not parse."""
    return Unauthenticated(message, reason=TOKEN_MALFORMED)


def read_kid(footer: bytes) -> str:
    """The `kid` of a token footer `{"kid": "k4.pid..."}`; Unauthenticated(TOKEN_MALFORMED) otherwise."""
    try:
        document = _STRICT_JSON.decode(footer.decode("utf-8"))
    except (ValueError, RecursionError):
        raise malformed("footer is not a JSON object") from None
    if not isinstance(document, dict) or not isinstance(document.get("kid"), str):
        raise malformed("footer carries no key id")
    kid: str = document["kid"]
    return kid


# Footers repeat (one per signing key), so their kid is parsed once; the bound keeps
# junk footers from growing it.
cached_kid = functools.lru_cache(maxsize=64)(read_kid)
"""`read_kid` remembering the few footers a server sees."""


def footer_for(kid: str) -> bytes:
    """The footer bytes naming key `kid`."""
    return json.dumps({"kid": kid}, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly minted token and the claims it carries."""

    token: str
    """The `v4.public.` token string."""
    claims: TokenClaims
    """The claims signed into it."""
    kid: str
    """The key id in its footer."""


class TokenSigner:
    """Mints tokens with one secret key; the footer names the key by its k4.pid."""

    def __init__(
        self,
        secret_key: nacl.signing.SigningKey,
        *,
        issuer: str,
        clock: Callable[[], float] = time.time,
        implicit_assertion: bytes = b"",
    ) -> None:
        """A signer for `issuer`; `clock` returns seconds since the epoch."""
        if not issuer:
            raise ValueError("issuer must not be empty")
        self._secret_key = secret_key
        self._issuer = issuer
        self._clock = clock
        self._implicit = implicit_assertion
        self.kid = paseto.paserk_pid(secret_key.verify_key)
        """The k4.pid of the public half, written into every footer."""
        self._footer = footer_for(self.kid)

    @property
    def public_key(self) -> nacl.signing.VerifyKey:
        """The public half of the signing key."""
        return self._secret_key.verify_key

    def mint(
        self,
        *,
        audience: str,
        ttl: timedelta,
        subject: str = "",
        scopes: Iterable[str] = (),
        client_id: str = "",
        not_before: datetime | None = None,
        jti: str | None = None,
    ) -> IssuedToken:
        """Sign a token for `audience` valid for `ttl` from now (whole seconds).

        `jti` defaults to 128 random bits; `not_before` defaults to the issue time.
        """
        if not audience:
            raise ValueError("audience must not be empty")
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        issued_at = datetime.fromtimestamp(int(self._clock()), UTC)
        claims = TokenClaims(
            aud=audience,
            exp=issued_at + ttl,
            jti=jti or secrets.token_urlsafe(16),
            iss=self._issuer,
            sub=subject,
            nbf=not_before or issued_at,
            iat=issued_at,
            scope=parse_scope(format_scope(scopes)),
            client_id=client_id,
        )
        token = paseto.sign(self._secret_key, claims.to_payload(), self._footer, self._implicit)
        return IssuedToken(token=token, claims=claims, kid=self.kid)
