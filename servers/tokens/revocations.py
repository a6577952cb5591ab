"""Revocations (RFC 7009): what RevokeToken records, how long it is kept, and how watchers resume.

A revocation names a token by its `jti` and is kept until the token would be refused anyway
(its `exp` plus the verifiers' leeway). Revoking something that is not a valid token, or is
already revoked or expired, succeeds without recording anything, as RFC 7009 asks: the
answer never tells the caller whether the token was valid. Each recorded revocation gets a
sequence number from the store, increasing by one per revocation, which is the resume point
of WatchRevocations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from servers.mesh.claims import TokenClaims
from servers.mesh.errors import InvalidArgument, Unauthenticated
from servers.tokens.domain import TokenSettings

MAX_JTI_LENGTH = 128
"""Longest `jti` accepted by RevokeToken (ours are 22 characters)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked token id."""

    jti: str
    """The revoked token's id."""
    expire_time: datetime
    """Until when it must stay revoked: the token's `exp` (or an upper bound of it)."""
    revoke_time: datetime
    """When it was revoked."""
    sequence: int = 0
    """Position in the revocation stream, assigned by the store when recorded (0: not yet)."""

    def is_stale(self, now: datetime, settings: TokenSettings) -> bool:
        """True once every verifier refuses the token by expiry alone, so the revocation may go."""
        return self.expire_time + settings.leeway <= now


class TokenInspector(Protocol):
    """Verifies a token with the service's own keys and revocations (a `TokenVerifier` with any audience)."""

    def verify(self, token: str) -> TokenClaims:
        """The token's claims, or Unauthenticated."""
        ...


def plan_revocation(
    *,
    token: str,
    jti: str,
    inspector: TokenInspector,
    settings: TokenSettings,
    now: datetime,
) -> Revocation | None:
    """The revocation to record for a RevokeToken request, or None if there is nothing to record.

    By token: only a token that currently verifies is recorded, until its own `exp`. By jti:
    the token is not at hand, so it is kept for `max_ttl`, the longest any token issued up to
    now can still live. The store ignores a jti it holds already.
    """
    if token and jti:
        raise InvalidArgument("jti", "set either token or jti, not both")
    if token:
        return _revocation_of_token(token, inspector, now)
    if not jti:
        raise InvalidArgument("token", "set the token or the jti to revoke")
    if len(jti) > MAX_JTI_LENGTH or not jti.isascii() or not jti.isprintable():
        raise InvalidArgument("jti", f"must be 1-{MAX_JTI_LENGTH} printable ASCII characters")
    return Revocation(jti=jti, expire_time=now + settings.max_ttl, revoke_time=now)


def _revocation_of_token(token: str, inspector: TokenInspector, now: datetime) -> Revocation | None:
    try:
        claims = inspector.verify(token)
    except Unauthenticated:
        # Invalid, expired, unknown key or already revoked: RFC 7009 says succeed silently.
        return None
    return Revocation(jti=claims.jti, expire_time=claims.exp, revoke_time=now)


def introspect(token: str, inspector: TokenInspector) -> TokenClaims | None:
    """RFC 7662: the claims of an active token, or None (inactive) without saying why."""
    if not token:
        raise InvalidArgument("token", "is required")
    try:
        return inspector.verify(token)
    except Unauthenticated:
        return None


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a WatchRevocations stream starts."""

    after_sequence: int
    """Send revocations with a sequence above this."""
    reset: bool
    """The watcher's set is from another history: it must replace it with what follows."""


def resume_point(after_sequence: int, latest_sequence: int, purged_through: int = 0) -> ResumePoint:
    """Where to resume a watcher that has seen everything up to `after_sequence`.

    A watcher ahead of the store (the service's history was restored from an older backup,
    or reset) cannot be resumed: it gets everything, flagged as a reset. So does a watcher
    whose point lies below `purged_through`, the highest sequence purged so far: nothing it
    lacks is lost (purged revocations were for expired tokens), but it may hold revocations
    the store has forgotten, and a fresh snapshot lets it drop them. A watcher at 0 holds
    nothing and simply gets everything.
    """
    if after_sequence < 0:
        raise InvalidArgument("after_sequence", "must not be negative")
    if after_sequence > latest_sequence or 0 < after_sequence < purged_through:
        return ResumePoint(after_sequence=0, reset=True)
    return ResumePoint(after_sequence=after_sequence, reset=False)
