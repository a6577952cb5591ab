"""The one exception typed clients raise: a gRPC status with its `google.rpc` details parsed on demand."""

from __future__ import annotations

import functools
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2


class ShieldxError(Exception):
    """A call ended with a non-OK status.

    `code` and `message` are always there; `reason`, `metadata`, `field_violations`,
    `retry_delay` and friends decode the `grpc-status-details-bin` trailer only when read.
    """

    def __init__(self, code: grpc.StatusCode, message: str, status_details: bytes | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self._status_details = status_details

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> ShieldxError:
        """Wrap an `AioRpcError`, keeping its rich-status trailer."""
        raw = None
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                raw = value
        return cls(error.code(), error.details() or "", raw)

    @functools.cached_property
    def details(self) -> list[Any]:
        """The unpacked `google.rpc` detail messages (ErrorInfo, BadRequest, ...)."""
        if not self._status_details:
            return []
        status = status_pb2.Status.FromString(self._status_details)
        unpacked: list[Any] = []
        for packed in status.details:
            for kind in (
                error_details_pb2.ErrorInfo,
                error_details_pb2.BadRequest,
                error_details_pb2.PreconditionFailure,
                error_details_pb2.QuotaFailure,
                error_details_pb2.RetryInfo,
                error_details_pb2.ResourceInfo,
            ):
                if packed.Is(kind.DESCRIPTOR):
                    message = kind()
                    packed.Unpack(message)
                    unpacked.append(message)
        return unpacked

    def _first(self, kind: type[Any]) -> Any:
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The ErrorInfo detail, if the server sent one."""
        found: error_details_pb2.ErrorInfo | None = self._first(error_details_pb2.ErrorInfo)
        return found

    @property
    def reason(self) -> str:
        """ErrorInfo.reason (UPPER_SNAKE), or "" without one."""
        return self.error_info.reason if self.error_info else ""

    @property
    def metadata(self) -> dict[str, str]:
        """ErrorInfo.metadata."""
        return dict(self.error_info.metadata) if self.error_info else {}

    @property
    def field_violations(self) -> dict[str, str]:
        """BadRequest field → description."""
        bad: error_details_pb2.BadRequest | None = self._first(error_details_pb2.BadRequest)
        return {v.field: v.description for v in bad.field_violations} if bad else {}

    @property
    def retry_delay(self) -> float | None:
        """RetryInfo's delay in seconds, if given."""
        retry: error_details_pb2.RetryInfo | None = self._first(error_details_pb2.RetryInfo)
        return retry.retry_delay.ToNanoseconds() / 1e9 if retry else None

    @property
    def precondition_violations(self) -> list[error_details_pb2.PreconditionFailure.Violation]:
        """PreconditionFailure violations."""
        failure: error_details_pb2.PreconditionFailure | None = self._first(error_details_pb2.PreconditionFailure)
        return list(failure.violations) if failure else []
