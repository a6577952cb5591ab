"""Typed domain errors: the vocabulary in which every service's rules say no.

This module imports nothing but the standard library, so `domain.py` files may raise these
without knowing about gRPC. `servers.mesh.status` holds the one table that turns each class
into a status code with `google.rpc.Status` details.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (becomes a `BadRequest.FieldViolation`)."""

    field: str
    """Path of the field, e.g. `amount` or `steps[2].weight`."""
    description: str
    """What is wrong with it, for a person."""


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (becomes a `PreconditionFailure.Violation`)."""

    type: str
    """UPPER_SNAKE kind of precondition, e.g. `BALANCE`."""
    subject: str
    """What it is about, e.g. `accounts/acme`."""
    description: str
    """How it failed, for a person."""


class DomainError(Exception):
    """A rule refused a request. `reason` is the UPPER_SNAKE `ErrorInfo.reason`."""

    default_reason = "DOMAIN_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """A request field is malformed or out of range (INVALID_ARGUMENT + BadRequest)."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        field: str,
        description: str,
        *,
        reason: str | None = None,
        more: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(f"{field}: {description}", reason=reason, metadata={"field": field})
        self.violations = (FieldViolation(field, description), *more)


class NotFound(DomainError):
    """The named resource does not exist (NOT_FOUND)."""

    default_reason = "NOT_FOUND"

    def __init__(self, resource_type: str, name: str, *, reason: str | None = None) -> None:
        super().__init__(
            f"{resource_type} {name!r} not found",
            reason=reason,
            metadata={"resource_type": resource_type, "resource_name": name},
        )
        self.resource_type = resource_type
        self.resource_name = name


class AlreadyExists(DomainError):
    """The resource to create exists already (ALREADY_EXISTS)."""

    default_reason = "ALREADY_EXISTS"

    def __init__(self, resource_type: str, name: str, *, reason: str | None = None) -> None:
        super().__init__(
            f"{resource_type} {name!r} already exists",
            reason=reason,
            metadata={"resource_type": resource_type, "resource_name": name},
        )


class FailedPrecondition(DomainError):
    """The system is not in a state that allows this (FAILED_PRECONDITION + PreconditionFailure)."""

    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: tuple[PreconditionViolation, ...] = (),
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = violations


class Conflict(DomainError):
    """A concurrent change won; the caller may retry the whole operation (ABORTED)."""

    default_reason = "CONCURRENT_MODIFICATION"


class QuotaExceeded(DomainError):
    """A limit was reached (RESOURCE_EXHAUSTED + QuotaFailure, RetryInfo when known)."""

    default_reason = "QUOTA_EXCEEDED"

    def __init__(
        self,
        subject: str,
        description: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(description, reason=reason, metadata={"subject": subject})
        self.subject = subject
        self.description = description
        self.retry_after = retry_after


class Unauthenticated(DomainError):
    """No credentials, or credentials that do not verify (UNAUTHENTICATED)."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    """Verified caller lacking the right to do this (PERMISSION_DENIED)."""

    default_reason = "PERMISSION_DENIED"


class Unavailable(DomainError):
    """A dependency is down for now; retrying later may work (UNAVAILABLE + RetryInfo)."""

    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


def require(condition: bool, field: str, description: str) -> None:
    """Raise `InvalidArgument(field, description)` unless `condition` holds."""
    if not condition:
        raise InvalidArgument(field, description)
