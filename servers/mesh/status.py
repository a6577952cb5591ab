"""The one table from domain errors to gRPC status codes with `google.rpc.Status` details."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from servers.mesh import errors, storage
from servers.mesh.interception import CallInterceptor, Context, Deserializer, Method
from servers.mesh.logs import current_trace_ids

log = logging.getLogger(__name__)

DetailBuilder: TypeAlias = Callable[[errors.DomainError], list[any_pb2.Any]]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_info(seconds: float | None) -> list[any_pb2.Any]:
    if seconds is None or not math.isfinite(seconds):
        return []
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, int(seconds * 1e9)))
    return [_pack(error_details_pb2.RetryInfo(retry_delay=delay))]


def _bad_request(error: errors.DomainError) -> list[any_pb2.Any]:
    assert isinstance(error, errors.InvalidArgument)
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description) for v in error.violations
    ]
    return [_pack(error_details_pb2.BadRequest(field_violations=violations))]


def _precondition_failure(error: errors.DomainError) -> list[any_pb2.Any]:
    assert isinstance(error, errors.FailedPrecondition)
    if not error.violations:
        return []
    violations = [
        error_details_pb2.PreconditionFailure.Violation(type=v.type, subject=v.subject, description=v.description)
        for v in error.violations
    ]
    return [_pack(error_details_pb2.PreconditionFailure(violations=violations))]


def _quota_failure(error: errors.DomainError) -> list[any_pb2.Any]:
    assert isinstance(error, errors.QuotaExceeded)
    violation = error_details_pb2.QuotaFailure.Violation(subject=error.subject, description=error.description)
    return [_pack(error_details_pb2.QuotaFailure(violations=[violation])), *_retry_info(error.retry_after)]


def _unavailable(error: errors.DomainError) -> list[any_pb2.Any]:
    assert isinstance(error, errors.Unavailable)
    return _retry_info(error.retry_after)


def _no_details(_: errors.DomainError) -> list[any_pb2.Any]:
    return []


# The table. Order matters only for subclasses; each class maps to one code.
STATUS_TABLE: dict[type[errors.DomainError], tuple[grpc.StatusCode, DetailBuilder]] = {
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, _bad_request),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, _no_details),
    errors.AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, _no_details),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, _precondition_failure),
    errors.Conflict: (grpc.StatusCode.ABORTED, _no_details),
    errors.QuotaExceeded: (grpc.StatusCode.RESOURCE_EXHAUSTED, _quota_failure),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, _no_details),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, _no_details),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, _unavailable),
    errors.DomainError: (grpc.StatusCode.FAILED_PRECONDITION, _no_details),
}


def _lookup(error: errors.DomainError) -> tuple[grpc.StatusCode, DetailBuilder]:
    for cls in type(error).__mro__:
        entry = STATUS_TABLE.get(cls)
        if entry is not None:
            return entry
    raise AssertionError("DomainError is in the table")  # pragma: no cover


def coded_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    domain: str,
    metadata: Mapping[str, str] | None = None,
    details: Sequence[any_pb2.Any] = (),
) -> grpc.Status:
    """A wire status with exactly one ErrorInfo, then any further details."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata or {}))
    packed = status_pb2.Status(code=code.value[0], message=message)
    packed.details.extend([_pack(info), *details])
    return _wire(packed)


def _wire(packed: status_pb2.Status) -> grpc.Status:
    wire: grpc.Status = rpc_status.to_status(packed)
    return wire


def to_status_proto(error: errors.DomainError, domain: str) -> status_pb2.Status:
    """The `google.rpc.Status` for `error`: its code, message, one ErrorInfo and the fitting details."""
    code, details = _lookup(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    packed = status_pb2.Status(code=code.value[0], message=error.message)
    packed.details.extend([_pack(info), *details(error)])
    return packed


def to_status(error: errors.DomainError, domain: str) -> grpc.Status:
    """The wire status for `error`."""
    if isinstance(error, ReplayedRejection):
        wire: grpc.Status = rpc_status.to_status(status_pb2.Status.FromString(error.status))
        return wire
    return _wire(to_status_proto(error, domain))


class ReplayedRejection(errors.DomainError):
    """A stored rejection answered again, byte for byte (see `servers.mesh.idempotency`)."""

    def __init__(self, status: bytes) -> None:
        super().__init__("replayed rejection", reason="REPLAYED")
        self.status = status


def internal_status(trace_id: str) -> grpc.Status:
    """INTERNAL with nothing from the exception, only the trace id to find it in the logs."""
    text = f"internal error (trace {trace_id})" if trace_id else "internal error"
    return coded_status(grpc.StatusCode.INTERNAL, text, "INTERNAL", "shieldx.mesh", {"trace_id": trace_id})


async def abort(context: Context, error: errors.DomainError, domain: str) -> NoReturn:
    """End the call with the status for `error` (raises, as `context.abort` does)."""
    await context.abort_with_status(to_status(error, domain))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


class MalformedRequest:
    """Stands in for a request whose bytes did not parse, so the call can end INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # grpc would answer UNKNOWN with the exception text
            return MalformedRequest(error)

    return parse


class ErrorMappingInterceptor(CallInterceptor[None]):
    """Innermost: domain errors become statuses from the table; anything unexpected is INTERNAL.

    It also owns request parsing, so undecodable bytes are INVALID_ARGUMENT instead of
    UNKNOWN with a parser message on the wire.
    """

    def deserializer(self, method: Method, inner: Deserializer | None) -> Deserializer | None:
        return None if inner is None else _lenient(inner)

    async def enter(self, method: Method, context: Context, request: Any) -> None:
        if isinstance(request, MalformedRequest):
            await context.abort_with_status(
                coded_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the request message could not be decoded",
                    "MALFORMED_REQUEST",
                    method.package,
                )
            )

    async def exit(self, method: Method, context: Context, state: None, error: BaseException | None) -> None:
        if error is None or isinstance(error, _PASS_THROUGH):
            return
        if isinstance(error, storage.TransientError):
            error = errors.Unavailable("the store is busy; retry", retry_after=0.05, reason="STORE_BUSY")
        if isinstance(error, errors.DomainError):
            await abort(context, error, method.package)
        if isinstance(error, NotImplementedError):
            await context.abort_with_status(
                coded_status(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{method.span_name} is not implemented yet",
                    "NOT_IMPLEMENTED",
                    method.package,
                )
            )
        trace_id, _ = current_trace_ids()
        log.error("unhandled error in %s", method.span_name, exc_info=error)
        await context.abort_with_status(internal_status(trace_id))


_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit)
