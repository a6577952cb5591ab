"""The base every server interceptor builds on: one place that wraps all four RPC shapes."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

State = TypeVar("State")
Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[..., Any]

# Infrastructure services that every interceptor may treat specially.
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset({"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"})


@dataclass(frozen=True, slots=True)
class Method:
    """A parsed gRPC method path such as `/shieldx.credits.v1.CreditsService/Consume`."""

    path: str
    """The full path as on the wire."""
    service: str
    """Fully qualified service, e.g. `shieldx.credits.v1.CreditsService`."""
    name: str
    """Method name, e.g. `Consume`."""
    kind: str
    """`unary`, `server_stream`, `client_stream` or `bidi_stream` (prometheus `grpc_type`)."""

    @classmethod
    def parse(cls, path: str, handler: grpc.RpcMethodHandler[Any, Any] | None = None) -> Method:
        """Parse a wire path; the handler, when known, tells the streaming shape."""
        service, _, name = path.lstrip("/").rpartition("/")
        return cls(path, service or "unknown", name or path, _kind(handler))

    @property
    def span_name(self) -> str:
        """`package.Service/Method`, the OpenTelemetry RPC span name."""
        return f"{self.service}/{self.name}"

    @property
    def package(self) -> str:
        """The protobuf package, e.g. `shieldx.credits.v1`."""
        return self.service.rpartition(".")[0]

    @property
    def is_infrastructure(self) -> bool:
        """Health and reflection: always open, never rate limited or faulted."""
        return self.service == HEALTH_SERVICE or self.service in REFLECTION_SERVICES


def _kind(handler: grpc.RpcMethodHandler[Any, Any] | None) -> str:
    if handler is None:
        return "unary"
    return {
        (False, False): "unary",
        (False, True): "server_stream",
        (True, False): "client_stream",
        (True, True): "bidi_stream",
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]


async def _finish(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


class CallInterceptor(grpc.aio.ServerInterceptor, Generic[State]):
    """An interceptor expressed as `enter`/`exit` around a call, whatever its shape.

    Subclasses implement `enter` (before the handler; may abort) and `exit` (after it, with the
    exception it raised or None; may raise a different one). The wrapped handler is built once
    per method and cached, so the per-call cost is the two hooks.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    def applies_to(self, method: Method) -> bool:
        """Whether this interceptor wraps `method` at all (a filter predicate)."""
        return True

    async def enter(self, method: Method, context: Context, request: Any) -> State:
        """Run before the handler; returns state handed to `exit`."""
        raise NotImplementedError

    async def exit(self, method: Method, context: Context, state: State, error: BaseException | None) -> None:
        """Run after the handler (error is what it raised, or None)."""

    def deserializer(self, method: Method, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """The request deserializer to use; the default keeps the inner one."""
        return inner

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        path: str = handler_call_details.method
        try:
            return self._handlers[path]
        except KeyError:
            pass
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        method = Method.parse(path, handler)
        wrapped = handler if handler is None or not self.applies_to(method) else self._wrap(method, handler)
        self._handlers[path] = wrapped
        return wrapped

    def _wrap(self, method: Method, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        deserialize = self.deserializer(method, handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), deserialize, serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary), deserialize, serialize
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream), deserialize, serialize
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream), deserialize, serialize
        )

    def _unary(self, method: Method, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: Context) -> Any:
            state = await self.enter(method, context, request)
            try:
                response = await _finish(behavior(request, context))
            except BaseException as error:
                await self.exit(method, context, state, error)
                raise
            await self.exit(method, context, state, None)
            return response

        return call

    def _stream(self, method: Method, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            state = await self.enter(method, context, request)
            try:
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for response in result:
                        yield response
                else:  # a handler that writes with context.write
                    await _finish(result)
            except BaseException as error:
                await self.exit(method, context, state, error)
                raise
            await self.exit(method, context, state, None)

        return call


def final_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, seen from an interceptor outside the error mapping."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def finalized_elsewhere(error: BaseException | None) -> bool:
    """True when a response stream is being closed from outside its task (the client went away).

    Context variables set in `enter` belong to the call's own context and cannot be reset from
    the one closing the generator; that context ends with the call anyway.
    """
    return isinstance(error, GeneratorExit)
