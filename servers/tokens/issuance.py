"""IssueToken's decision: client credentials, then scopes, audience, lifetime and second factor."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from servers.mesh.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from servers.tokens import totp
from servers.tokens.domain import (
    MAX_AUDIENCE_LENGTH,
    MFA_NOT_ENROLLED,
    Client,
    SecretChecker,
    TokenSettings,
    validate_scopes,
)
from servers.tokens.lockout import MfaFailures, refuse_if_locked

INVALID_CLIENT = "INVALID_CLIENT"
"""Reason: unknown client id or wrong secret (deliberately the same answer for both)."""
CLIENT_DISABLED = "CLIENT_DISABLED"
"""Reason: the credentials are right but the client is disabled."""
SCOPE_NOT_ALLOWED = "SCOPE_NOT_ALLOWED"
"""Reason: a requested scope is not among the client's allowed scopes."""
AUDIENCE_NOT_ALLOWED = "AUDIENCE_NOT_ALLOWED"
"""Reason: the requested audience is not among the client's allowed audiences."""
AUDIENCE_REQUIRED = "AUDIENCE_REQUIRED"
"""Reason: no audience requested and the client is allowed more than one."""
TTL_TOO_LONG = "TTL_TOO_LONG"
"""Reason: the requested lifetime exceeds the configured maximum."""
MFA_REQUIRED = "MFA_REQUIRED"
"""Reason: the client is a person with MFA enabled and sent no TOTP code."""
MFA_INVALID = "MFA_INVALID"
"""Reason: the TOTP code is wrong (or outside the drift window)."""
MFA_REPLAYED = "MFA_REPLAYED"
"""Reason: the TOTP code was right but has been used already; wait for the next one."""


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """An IssueToken request: client credentials and what the token should allow."""

    client_id: str
    """The client's id."""
    client_secret: str = field(repr=False)
    """The client's secret."""
    scopes: Collection[str] = ()
    """Requested scopes; empty asks for every allowed scope."""
    audience: str = ""
    """Requested audience; empty means the client's only allowed audience."""
    ttl: timedelta | None = None
    """Requested lifetime; None asks for the default."""
    totp_code: str = field(default="", repr=False)
    """Current TOTP code, for people with MFA enabled."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """The decision to issue: what the token says. The servicer signs it."""

    client_id: str
    """`client_id` and `sub` of the token."""
    audience: str
    """`aud` of the token."""
    scopes: frozenset[str]
    """`scope` of the token."""
    ttl: timedelta
    """Lifetime from the issue time."""
    mfa_step: int | None = None
    """TOTP step just accepted: the store must record it as `last_used_step` (compare-and-set
    against the step read with the client) before the token is handed out."""


def authorize_issue(
    client: Client | None,
    request: TokenRequest,
    settings: TokenSettings,
    secrets: SecretChecker,
    now: datetime,
    mfa_failures: MfaFailures | None = None,
) -> TokenGrant:
    """Decide an IssueToken request for `client` (None if the id is unknown).

    Order matters: request shape first (cheap, reveals nothing), then the credentials
    (an unknown id and a wrong secret are the same INVALID_CLIENT), then what the client
    may ask for, and the TOTP code last so a refused request does not spend it. A client
    locked by wrong codes (`mfa_failures`) is refused MFA_LOCKED before its code is looked at.
    """
    if not request.client_id:
        raise InvalidArgument("client_id", "is required")
    if not request.client_secret:
        raise InvalidArgument("client_secret", "is required")
    scopes = validate_scopes(request.scopes, "scopes")
    ttl = _granted_ttl(request.ttl, settings)
    secret_matches = secrets.check_secret(None if client is None else client.secret_hash, request.client_secret)
    if client is None or not secret_matches:
        raise Unauthenticated("unknown client or wrong secret", reason=INVALID_CLIENT)
    if not client.enabled:
        raise PermissionDenied(f"client {client.client_id!r} is disabled", reason=CLIENT_DISABLED)
    granted_scopes = _granted_scopes(client, scopes)
    audience = _granted_audience(client, request.audience)
    mfa_step = None
    if client.mfa_enabled:
        refuse_if_locked(mfa_failures or MfaFailures(), now)
        mfa_step = _check_second_factor(client, request.totp_code, settings, now)
    return TokenGrant(
        client_id=client.client_id,
        audience=audience,
        scopes=granted_scopes,
        ttl=ttl,
        mfa_step=mfa_step,
    )


def _granted_ttl(requested: timedelta | None, settings: TokenSettings) -> timedelta:
    if requested is None or requested == timedelta(0):
        return settings.default_ttl
    if requested < timedelta(seconds=1):
        raise InvalidArgument("ttl", "must be at least one second")
    if requested > settings.max_ttl:
        raise InvalidArgument("ttl", f"must not exceed {int(settings.max_ttl.total_seconds())}s", reason=TTL_TOO_LONG)
    return requested


def _granted_scopes(client: Client, requested: frozenset[str]) -> frozenset[str]:
    if not requested:
        return client.allowed_scopes
    refused = requested - client.allowed_scopes
    if refused:
        raise PermissionDenied(
            f"scopes not allowed for this client: {' '.join(sorted(refused))}",
            reason=SCOPE_NOT_ALLOWED,
            metadata={"scopes": " ".join(sorted(refused))},
        )
    return requested


def _granted_audience(client: Client, requested: str) -> str:
    if not requested:
        if len(client.allowed_audiences) == 1:
            return next(iter(client.allowed_audiences))
        raise InvalidArgument(
            "audience", "is required when a client has several allowed audiences", reason=AUDIENCE_REQUIRED
        )
    if requested not in client.allowed_audiences:
        raise PermissionDenied(
            "audience not allowed for this client",
            reason=AUDIENCE_NOT_ALLOWED,
            metadata={"audience": requested[:MAX_AUDIENCE_LENGTH]},
        )
    return requested


def _check_second_factor(client: Client, code: str, settings: TokenSettings, now: datetime) -> int:
    enrolment = client.mfa
    if enrolment is None:
        raise FailedPrecondition(f"client {client.client_id!r} has no MFA enrolment", reason=MFA_NOT_ENROLLED)
    if not code:
        raise Unauthenticated("this client must present a TOTP code", reason=MFA_REQUIRED)
    at = now.timestamp()
    step = totp.verify(
        enrolment.secret, code, at, last_used_step=enrolment.last_used_step, parameters=settings.totp_parameters
    )
    if step is not None:
        return step
    if enrolment.last_used_step is not None and totp.verify(
        enrolment.secret, code, at, parameters=settings.totp_parameters
    ):
        raise Unauthenticated("this TOTP code was used already", reason=MFA_REPLAYED)
    raise Unauthenticated("wrong TOTP code", reason=MFA_INVALID)


def record_mfa_use(client: Client, step: int, now: datetime) -> Client:
    """The client after a TOTP code of `step` was accepted."""
    if client.mfa is None:
        raise FailedPrecondition(f"client {client.client_id!r} has no MFA enrolment", reason=MFA_NOT_ENROLLED)
    return replace(client, mfa=replace(client.mfa, last_used_step=step), update_time=now)
