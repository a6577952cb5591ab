"""The base of the typed clients: one declared attribute per RPC, one `_call` path for all of them.

Every call goes through `ServiceClient._unary` or `_stream`, which apply the default deadline
and caller metadata and turn `grpc.aio.AioRpcError` into `ShieldxError`. Token and trace
context are attached by the channel's interceptors (`clients.channel`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, Protocol, TypeVar, overload

import grpc
from google.protobuf.message import Message

from clients.errors import ShieldxError

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Req_contra = TypeVar("Req_contra", bound=Message, contravariant=True)
Resp_co = TypeVar("Resp_co", bound=Message, covariant=True)
Metadata = Sequence[tuple[str, str]]


class UnaryMethod(Protocol[Req_contra, Resp_co]):
    """A bound unary RPC of a typed client."""

    async def __call__(
        self, request: Req_contra, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> Resp_co: ...


class StreamMethod(Protocol[Req_contra, Resp_co]):
    """A bound server-streaming RPC of a typed client."""

    def __call__(
        self, request: Req_contra, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> AsyncIterator[Resp_co]: ...


class ServiceClient:
    """Base of one client class per service. Subclasses set `service` and declare RPCs."""

    service: str = ""
    """Fully qualified service name, e.g. `shieldx.credits.v1.CreditsService`."""

    def __init__(self, channel: grpc.aio.Channel, *, default_timeout: float | None = 30.0) -> None:
        self.channel = channel
        self.default_timeout = default_timeout
        self._callables: dict[str, Any] = {}

    def _callable(self, kind: str, name: str, request: Message, response: type[Message]) -> Any:
        found = self._callables.get(name)
        if found is None:
            path = f"/{self.service}/{name}"
            factory = self.channel.unary_unary if kind == "unary" else self.channel.unary_stream
            found = self._callables[name] = factory(
                path, request_serializer=type(request).SerializeToString, response_deserializer=response.FromString
            )
        return found

    async def _unary(
        self, name: str, response: type[Resp], request: Message, timeout: float | None, metadata: Metadata
    ) -> Resp:
        call = self._callable("unary", name, request, response)
        try:
            result: Resp = await call(request, timeout=timeout or self.default_timeout, metadata=tuple(metadata))
        except grpc.aio.AioRpcError as error:
            raise ShieldxError.from_rpc_error(error) from None
        return result

    async def _stream(
        self, name: str, response: type[Resp], request: Message, timeout: float | None, metadata: Metadata
    ) -> AsyncIterator[Resp]:
        call = self._callable("stream", name, request, response)
        try:
            async for item in call(request, timeout=timeout, metadata=tuple(metadata)):
                yield item
        except grpc.aio.AioRpcError as error:
            raise ShieldxError.from_rpc_error(error) from None


class Unary(Generic[Req, Resp]):
    """Declares a unary RPC on a `ServiceClient` subclass: `consume = Unary("Consume", Req, Resp)`."""

    def __init__(self, name: str, request: type[Req], response: type[Resp]) -> None:
        self.name = name
        self.request = request
        self.response = response

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Unary[Req, Resp]: ...
    @overload
    def __get__(self, client: ServiceClient, owner: type[Any]) -> UnaryMethod[Req, Resp]: ...
    def __get__(self, client: ServiceClient | None, owner: type[Any]) -> Any:
        if client is None:
            return self
        name, response = self.name, self.response

        async def call(request: Req, *, timeout: float | None = None, metadata: Metadata = ()) -> Resp:
            return await client._unary(name, response, request, timeout, metadata)

        return call


class ServerStream(Generic[Req, Resp]):
    """Declares a server-streaming RPC: `watch_alerts = ServerStream("WatchAlerts", Req, Resp)`.

    Streams get no default deadline: watches are meant to stay open.
    """

    def __init__(self, name: str, request: type[Req], response: type[Resp]) -> None:
        self.name = name
        self.request = request
        self.response = response

    @overload
    def __get__(self, client: None, owner: type[Any]) -> ServerStream[Req, Resp]: ...
    @overload
    def __get__(self, client: ServiceClient, owner: type[Any]) -> StreamMethod[Req, Resp]: ...
    def __get__(self, client: ServiceClient | None, owner: type[Any]) -> Any:
        if client is None:
            return self
        name, response = self.name, self.response

        def call(request: Req, *, timeout: float | None = None, metadata: Metadata = ()) -> AsyncIterator[Resp]:
            return client._stream(name, response, request, timeout, metadata)

        return call
