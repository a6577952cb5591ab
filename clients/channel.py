"""The channel factory: target, TLS, bearer token, retry policy, circuit breaker and telemetry in one call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry

from clients.breaker import BreakerSettings, CircuitBreaker, Gate, breaker_metrics, guard_interceptors
from clients.errors import ShieldxError
from clients.telemetry import ClientTelemetry, client_metrics

STALE_TOKEN_REASONS = frozenset({"TOKEN_UNKNOWN_KEY", "TOKEN_KEY_INACTIVE", "TOKEN_REVOKED", "TOKEN_EXPIRED"})
"""UNAUTHENTICATED reasons that mean the token stopped working (a rotation, a revocation, its age),
not that the caller may not call: a fresh token from the same credentials can succeed."""


class TokenSource(Protocol):
    """Something that hands out a currently valid bearer token."""

    async def token(self) -> str:
        """A token to send now (renewing it first if it is about to expire)."""
        ...

    def refused(self, token: str) -> None:
        """`token` stopped working (see `STALE_TOKEN_REASONS`): the next `token()` gets a new one."""
        ...


@dataclass(frozen=True)
class StaticToken:
    """A fixed bearer token."""

    value: str

    async def token(self) -> str:
        """The token."""
        return self.value

    def refused(self, token: str) -> None:
        """Nothing to renew: a fixed token stays what it is."""


@dataclass(frozen=True)
class ChannelTls:
    """TLS for a channel; with `cert_file`/`key_file` it is mutual TLS."""

    ca_file: str = ""
    """PEM roots to trust (empty: the system roots)."""
    cert_file: str = ""
    """Client certificate chain for mutual TLS."""
    key_file: str = ""
    """Key of the client certificate."""
    server_name: str = ""
    """Override of the name checked in the server certificate."""

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials."""

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Transparent retries as gRPC service config (only for codes safe to retry)."""

    max_attempts: int = 4
    """Attempts in all, the first included."""
    initial_backoff_seconds: float = 0.1
    """Delay before the first retry."""
    max_backoff_seconds: float = 2.0
    """Upper bound on a delay."""
    multiplier: float = 2.0
    """Growth of the delay per attempt."""
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)
    """Status codes that are retried."""

    def service_config(self) -> str:
        """The service config JSON applying this policy to every method."""
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_seconds}s",
            "maxBackoff": f"{self.max_backoff_seconds}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": list(self.retryable_codes),
        }
        return json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": policy}]})


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
    metadata["authorization"] = f"Bearer {token}"
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


async def _stale_token(call: grpc.aio.Call) -> bool:
    """True if `call` ended UNAUTHENTICATED for a reason a fresh token cures."""
    if await call.code() != grpc.StatusCode.UNAUTHENTICATED:
        return False
    details = next(
        (v for k, v in await call.trailing_metadata() or () if k == "grpc-status-details-bin" and isinstance(v, bytes)),
        None,
    )
    return ShieldxError(grpc.StatusCode.UNAUTHENTICATED, "", details).reason in STALE_TOKEN_REASONS


class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    """Sends the source's token; a call refused for a stale token is sent once more with a new one
    (UNAUTHENTICATED means the server did nothing, so the retry is safe)."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        token = await self._source.token()
        call = await continuation(_with_token(client_call_details, token), request)
        if not await _stale_token(call):
            return call
        self._source.refused(token)
        return await continuation(_with_token(client_call_details, await self._source.token()), request)


class _StreamBearer(grpc.aio.UnaryStreamClientInterceptor):
    """Sends the source's token; a stream refused for a stale token makes the source fetch a new
    one, so the watcher's reconnect succeeds (a stream is not replayed: its reader may have seen
    messages already)."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source
        self._checks: set[asyncio.Task[None]] = set()

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        token = await self._source.token()
        call = await continuation(_with_token(client_call_details, token), request)
        call.add_done_callback(lambda done: self._check_later(done, token))
        return call

    def _check_later(self, call: grpc.aio.Call, token: str) -> None:
        task = asyncio.get_running_loop().create_task(self._check(call, token))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check(self, call: grpc.aio.Call, token: str) -> None:
        if await _stale_token(call):
            self._source.refused(token)


def bearer_auth(source: TokenSource) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding `authorization: Bearer <token>` from `source` to unary and streaming calls.

    grpc.aio files an interceptor object under the first call type it implements only, hence
    one object per call type.
    """
    return [_UnaryBearer(source), _StreamBearer(source)]


@dataclass(frozen=True)
class Keepalive:
    """The keepalive policy clients and servers of the mesh share, so that they agree.

    Clients ping a connection that has been quiet for `interval_seconds` (also with no call
    open, so idle channels stay usable behind NATs and balancers) and drop it if the answer takes
    longer than `timeout_seconds`. A gRPC server by default counts a ping less than five
    minutes after the last as a strike and, after two, ends the connection with GOAWAY
    ENHANCE_YOUR_CALM `too_many_pings`, breaking watch streams; servers built with
    `server_options` accept pings every half interval instead.
    """

    interval_seconds: float = 30.0
    """Quiet time after which a ping is sent."""
    timeout_seconds: float = 10.0
    """How long a ping may go unanswered before the connection is closed."""

    def client_options(self) -> list[tuple[str, int]]:
        """Channel arguments of a client following this policy."""
        return [
            ("grpc.keepalive_time_ms", _ms(self.interval_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(self.timeout_seconds)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Keep pinging a watch stream on which nothing is sent for a long time.
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        """Server arguments accepting clients that follow this policy (and pinging them alike)."""
        return [
            ("grpc.keepalive_time_ms", _ms(self.interval_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(self.timeout_seconds)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Half the interval: timers drift and a reconnecting client pings early.
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(self.interval_seconds / 2)),
            ("grpc.http2.max_ping_strikes", 2),
        ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass
class ChannelOptions:
    """Everything `open_channel` accepts besides the target."""

    tls: ChannelTls | None = None
    """TLS settings; None for plaintext (loopback and sidecar set-ups)."""
    token_source: TokenSource | None = None
    """Where bearer tokens come from; None sends none."""
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    """Retry policy; None disables retries."""
    telemetry: bool = True
    """Client spans, traceparent propagation and `grpc_client_*` metrics."""
    metrics_registry: CollectorRegistry | None = None
    """Registry for client metrics (default: the process registry)."""
    extra_interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
    """Further interceptors, innermost (e.g. traffic routing)."""
    grpc_options: Sequence[tuple[str, Any]] = ()
    """Raw channel arguments."""
    keepalive: Keepalive = field(default_factory=Keepalive)
    """How often idle connections are pinged (servers of the mesh accept this policy)."""
    circuit_breaker: BreakerSettings | None = field(default_factory=BreakerSettings)
    """When the channel's circuit breaker opens and closes; None disables it."""
    outbound_gate: Gate | None = None
    """Asked before each call: a reason to refuse it (a network-partition fault), or None."""


def open_channel(target: str, options: ChannelOptions | None = None) -> grpc.aio.Channel:
    """An aio channel to `target` (`host:port`) with auth, retries and telemetry as configured."""
    options = options or ChannelOptions()
    interceptors: list[grpc.aio.ClientInterceptor] = []
    if options.telemetry:
        interceptors += ClientTelemetry(client_metrics(options.metrics_registry)).interceptors()
    breaker = None
    if options.circuit_breaker is not None:
        breaker = CircuitBreaker(target, options.circuit_breaker, metrics=breaker_metrics(options.metrics_registry))
    interceptors += guard_interceptors(breaker, options.outbound_gate)
    if options.token_source is not None:
        interceptors += bearer_auth(options.token_source)
    interceptors.extend(options.extra_interceptors)
    channel_args: list[tuple[str, Any]] = [
        *options.keepalive.client_options(),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        *options.grpc_options,
    ]
    if options.retry is not None:
        channel_args += [("grpc.enable_retries", 1), ("grpc.service_config", options.retry.service_config())]
    else:
        channel_args.append(("grpc.enable_retries", 0))
    if options.tls is not None:
        if options.tls.server_name:
            channel_args.append(("grpc.ssl_target_name_override", options.tls.server_name))
        return grpc.aio.secure_channel(target, options.tls.credentials(), channel_args, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, channel_args, interceptors=interceptors)
