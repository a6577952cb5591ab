"""The token service's rules: its settings and the client registry (ids, secrets, scopes, MFA).

Pure decisions over immutable records; the store persists them and the servicer maps them
to messages. Secrets are made and checked through the `SecretChecker` protocol (Argon2id in
`client_secrets.py`), so these rules are tested without a slow hash. Whether a token may be
issued is decided in `issuance.py`, revocations in `revocations.py`, signing keys in `keys.py`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from servers.mesh.errors import (
    FailedPrecondition,
    InvalidArgument,
)
from servers.tokens import totp
from servers.tokens.lockout import LockoutPolicy

MFA_NOT_FOR_WORKLOADS = "MFA_NOT_FOR_WORKLOADS"
"""Reason: MFA enrolment asked for a workload client; only people enrol."""
MFA_NOT_ENROLLED = "MFA_NOT_ENROLLED"
"""Reason: MFA switched on for a client that never enrolled."""

_CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
# Scopes are RFC 6749 scope-tokens, narrowed to the mesh's `<service>.<level>` vocabulary.
_SCOPE = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)*", re.ASCII)
_AUDIENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", re.ASCII)
MAX_SCOPE_LENGTH = 64
MAX_AUDIENCE_LENGTH = 128
MAX_SCOPES = 100
MAX_AUDIENCES = 50
MAX_DISPLAY_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """How the token service issues tokens and rotates keys."""

    issuer: str = "shieldx-tokens"
    """`iss` of every token, and what verifiers may require."""
    default_ttl: timedelta = timedelta(minutes=15)
    """Lifetime of a token when the request names none."""
    max_ttl: timedelta = timedelta(hours=1)
    """Longest lifetime a request may ask for."""
    rotation_overlap: timedelta = timedelta(hours=1)
    """How long a replaced signing key still verifies; at least `max_ttl` lets every token live out its life."""
    signing_key_max_age: timedelta | None = timedelta(days=30)
    """Age at which the active key is rotated automatically (None: only on request)."""
    leeway: timedelta = timedelta(seconds=30)
    """Clock skew tolerated when checking exp and nbf; revocations are kept this much past exp."""
    mfa_issuer: str = "ShieldX"
    """Issuer name authenticator apps show next to the account."""
    totp_parameters: totp.TotpParameters = field(default_factory=totp.TotpParameters)
    mfa_lockout: LockoutPolicy = field(default_factory=LockoutPolicy)
    """When wrong TOTP codes lock a person out, and for how long."""
    """TOTP digits, period, algorithm and drift window."""

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("issuer must not be empty")
        if self.max_ttl <= timedelta(0) or self.default_ttl <= timedelta(0):
            raise ValueError("default_ttl and max_ttl must be positive")
        if self.default_ttl > self.max_ttl:
            raise ValueError("default_ttl must not exceed max_ttl")
        if self.rotation_overlap < timedelta(0) or self.leeway < timedelta(0):
            raise ValueError("rotation_overlap and leeway must not be negative")
        if self.signing_key_max_age is not None and self.signing_key_max_age <= timedelta(0):
            raise ValueError("signing_key_max_age must be positive (or None)")


class ClientKind(StrEnum):
    """Who a client is: a program, or a person (who may have to present a second factor)."""

    WORKLOAD = "workload"
    """A server or job; authenticates with its secret alone."""
    PERSON = "person"
    """A human operator; also presents a TOTP code once enrolled in MFA."""


@dataclass(frozen=True, slots=True)
class MfaEnrolment:
    """A person's TOTP enrolment."""

    secret: bytes = field(repr=False)
    """The shared TOTP secret (the store should keep it encrypted at rest)."""
    enabled: bool
    """Whether IssueToken demands a code."""
    enroll_time: datetime
    """When the secret was issued."""
    last_used_step: int | None = None
    """Time step of the last code accepted; older and equal steps are refused (replay guard)."""


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client of the token service."""

    client_id: str
    """Unique id, `[a-z0-9][a-z0-9._-]{0,62}`."""
    kind: ClientKind
    """Workload or person."""
    secret_hash: str = field(repr=False)
    """Argon2id hash string of the secret; the secret itself is never stored."""
    allowed_scopes: frozenset[str]
    """Scopes the client may ask for."""
    allowed_audiences: frozenset[str]
    """Audiences the client may ask for."""
    enabled: bool
    """Disabled clients get no tokens."""
    create_time: datetime
    """When the client was registered."""
    update_time: datetime
    """When the client last changed."""
    display_name: str = ""
    """Free text for people reading lists."""
    mfa: MfaEnrolment | None = None
    """TOTP enrolment (people only)."""

    @property
    def mfa_enabled(self) -> bool:
        """True if IssueToken demands a TOTP code from this client."""
        return self.kind is ClientKind.PERSON and self.mfa is not None and self.mfa.enabled


class SecretChecker(Protocol):
    """Hashes and checks client secrets (`client_secrets.ClientSecretHasher`)."""

    def new_secret(self) -> str:
        """A fresh random secret."""
        ...

    def hash_secret(self, secret: str) -> str:
        """The hash to store for `secret`."""
        ...

    def check_secret(self, secret_hash: str | None, secret: str) -> bool:
        """True if `secret` matches; None (unknown client) must fail in about the same time."""
        ...


# --- client registry -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """What CreateClient asks for."""

    client_id: str
    """Requested id."""
    kind: ClientKind | None
    """Workload or person; None (unspecified) is refused."""
    allowed_scopes: Collection[str] = ()
    """Scopes it may ask for."""
    allowed_audiences: Collection[str] = ()
    """Audiences it may ask for."""
    display_name: str = ""
    """Free text."""
    enabled: bool = True
    """Whether it may get tokens right away."""


def register_client(spec: ClientSpec, secrets: SecretChecker, now: datetime) -> tuple[Client, str]:
    """A new client and its secret; the secret is returned once and only its hash is kept."""
    validate_client_id(spec.client_id, "client_id")
    if spec.kind is None:
        raise InvalidArgument("client.kind", "must be CLIENT_KIND_WORKLOAD or CLIENT_KIND_PERSON")
    scopes = validate_scopes(spec.allowed_scopes, "client.allowed_scopes")
    audiences = validate_audiences(spec.allowed_audiences, "client.allowed_audiences")
    display_name = validate_display_name(spec.display_name, "client.display_name")
    secret = secrets.new_secret()
    client = Client(
        client_id=spec.client_id,
        kind=spec.kind,
        secret_hash=secrets.hash_secret(secret),
        allowed_scopes=scopes,
        allowed_audiences=audiences,
        enabled=spec.enabled,
        create_time=now,
        update_time=now,
        display_name=display_name,
    )
    return client, secret


UPDATABLE_FIELDS = frozenset({"display_name", "enabled", "allowed_scopes", "allowed_audiences", "mfa_enabled"})
"""Client fields UpdateClient's `update_mask` may name."""


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """The fields UpdateClient changes; None leaves a field as it is."""

    display_name: str | None = None
    """New display name."""
    enabled: bool | None = None
    """Enable or disable the client."""
    allowed_scopes: Collection[str] | None = None
    """Replaces the allowed scopes."""
    allowed_audiences: Collection[str] | None = None
    """Replaces the allowed audiences."""
    mfa_enabled: bool | None = None
    """Switch MFA off, or back on for an enrolled person."""


def check_update_mask(paths: Iterable[str]) -> frozenset[str]:
    """The update mask as a set; InvalidArgument(update_mask) if empty or naming other fields."""
    mask = frozenset(paths)
    if not mask:
        raise InvalidArgument("update_mask", "names no field to update")
    unknown = sorted(mask - UPDATABLE_FIELDS)
    if unknown:
        raise InvalidArgument("update_mask", f"cannot update {', '.join(unknown)}")
    return mask


def update_client(client: Client, update: ClientUpdate, now: datetime) -> Client:
    """The client with `update` applied (validated like at creation); unchanged if nothing changes."""
    updated = replace(
        client,
        display_name=client.display_name
        if update.display_name is None
        else validate_display_name(update.display_name, "client.display_name"),
        enabled=client.enabled if update.enabled is None else update.enabled,
        allowed_scopes=client.allowed_scopes
        if update.allowed_scopes is None
        else validate_scopes(update.allowed_scopes, "client.allowed_scopes"),
        allowed_audiences=client.allowed_audiences
        if update.allowed_audiences is None
        else validate_audiences(update.allowed_audiences, "client.allowed_audiences"),
        mfa=client.mfa if update.mfa_enabled is None else _switch_mfa(client, update.mfa_enabled),
    )
    return client if updated == client else replace(updated, update_time=now)


def _switch_mfa(client: Client, enabled: bool) -> MfaEnrolment | None:
    if client.mfa is None:
        if not enabled:
            return None
        raise FailedPrecondition(
            f"client {client.client_id!r} has not enrolled in MFA; call EnrollMfa first",
            reason=MFA_NOT_ENROLLED,
        )
    return replace(client.mfa, enabled=enabled)


@dataclass(frozen=True, slots=True)
class MfaProvisioning:
    """What EnrollMfa shows once: the secret and the URI an authenticator app scans."""

    secret: str
    """Base32 TOTP secret."""
    provisioning_uri: str
    """`otpauth://totp/...` URI."""


def enroll_mfa(
    client: Client, settings: TokenSettings, now: datetime, secret: bytes | None = None
) -> tuple[Client, MfaProvisioning]:
    """Give a person a new TOTP secret (replacing any earlier one) and require it from now on."""
    if client.kind is not ClientKind.PERSON:
        raise FailedPrecondition(
            f"client {client.client_id!r} is a workload; only people enrol in MFA",
            reason=MFA_NOT_FOR_WORKLOADS,
        )
    raw = secret if secret is not None else totp.generate_secret()
    enrolment = MfaEnrolment(secret=raw, enabled=True, enroll_time=now)
    provisioning = MfaProvisioning(
        secret=totp.encode_secret(raw),
        provisioning_uri=totp.provisioning_uri(
            raw, account=client.client_id, issuer=settings.mfa_issuer, parameters=settings.totp_parameters
        ),
    )
    return replace(client, mfa=enrolment, update_time=now), provisioning


# --- field validation ----------------------------------------------------------------------------


def validate_client_id(client_id: str, field_name: str) -> str:
    """`client_id` if well-formed, else InvalidArgument(field_name)."""
    if not _CLIENT_ID.fullmatch(client_id):
        raise InvalidArgument(field_name, "must be 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
    return client_id


def validate_scopes(scopes: Iterable[str], field_name: str) -> frozenset[str]:
    """Scopes as a set, each `service.level`-style; InvalidArgument(field_name) otherwise."""
    result = frozenset(scopes)
    if len(result) > MAX_SCOPES:
        raise InvalidArgument(field_name, f"at most {MAX_SCOPES} scopes")
    for scope in sorted(result):
        if len(scope) > MAX_SCOPE_LENGTH or not _SCOPE.fullmatch(scope):
            raise InvalidArgument(field_name, f"invalid scope {scope[:MAX_SCOPE_LENGTH]!r}")
    return result


def validate_audiences(audiences: Iterable[str], field_name: str) -> frozenset[str]:
    """Audiences as a set; InvalidArgument(field_name) if any is malformed."""
    result = frozenset(audiences)
    if len(result) > MAX_AUDIENCES:
        raise InvalidArgument(field_name, f"at most {MAX_AUDIENCES} audiences")
    for audience in sorted(result):
        if len(audience) > MAX_AUDIENCE_LENGTH or not _AUDIENCE.fullmatch(audience):
            raise InvalidArgument(field_name, f"invalid audience {audience[:MAX_AUDIENCE_LENGTH]!r}")
    return result


def validate_display_name(display_name: str, field_name: str) -> str:
    """The display name if it is short, printable text; InvalidArgument(field_name) otherwise."""
    if len(display_name) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidArgument(field_name, f"at most {MAX_DISPLAY_NAME_LENGTH} characters")
    if not display_name.isprintable():
        raise InvalidArgument(field_name, "must be printable text")
    return display_name
